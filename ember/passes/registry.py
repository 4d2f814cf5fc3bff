"""Passes by name: ember's own, those registered with `register_pass`, and those that
installed packages advertise in the `ember.passes` entry-point group (each entry point
names a `Pass` subclass; its name is the pass's `name`)."""

from __future__ import annotations

import importlib.metadata
from collections.abc import Callable

from ..errors import UnsupportedError
from .base import Pass

ENTRY_POINT_GROUP = "ember.passes"
_PASSES: dict[str, Callable[[], Pass]] = {}
_entry_points_loaded = False


def register_pass(cls: type[Pass], *, replace: bool = False) -> type[Pass]:
    """Register a Pass subclass under its `name` (usable as a class decorator)."""
    if not cls.name:
        raise UnsupportedError(f"{cls.__name__} has no `name`")
    if cls.name in _PASSES and not replace and _PASSES[cls.name] is not cls:
        raise UnsupportedError(f"a pass named {cls.name!r} is already registered")
    _PASSES[cls.name] = cls
    return cls


def _load_entry_points() -> None:
    global _entry_points_loaded
    if _entry_points_loaded:
        return
    _entry_points_loaded = True
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        try:
            cls = ep.load()
        except Exception as e:  # a broken plugin must say which one it is
            raise UnsupportedError(f"entry point {ep.name!r} ({ep.value}) in group "
                                   f"{ENTRY_POINT_GROUP!r} failed to load: {e}") from e
        register_pass(cls, replace=True)


def get_pass(name: str) -> Pass:
    if name not in _PASSES:
        _load_entry_points()
    try:
        return _PASSES[name]()
    except KeyError:
        raise UnsupportedError(f"unknown pass {name!r}; known passes: {', '.join(registered_passes())}") from None


def registered_passes() -> list[str]:
    _load_entry_points()
    return sorted(_PASSES)
