"""Real models ember cannot run correctly yet: each an expected failure (strict, so a
fix shows as an unexpected pass) with the stage it fails at and the first line of the
exception or the size of the error."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Failure:
    stage: str   # "compile": ember.compile raises; "run": a run raises; "wrong": outputs differ
    error: str   # the exception's class name (AssertionError for "wrong"): xfail(raises=...)
    reason: str


FAILURES: dict[str, Failure] = {}
