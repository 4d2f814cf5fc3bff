"""Modules imported on their first attribute access.

`import ember` and `ember.load` + a run reach only what they use: sympy (~0.4 s to
import on a 2-core EPYC, half of loading MiniLM's artifact from process start) and torch
(~1 s) load when a compile, a pass or an extern first touches them. A stand-in made here
is a module object; its first attribute lookup imports the real module and copies its
namespace in, so later lookups cost what a real module's do.
"""

from __future__ import annotations

import importlib
import types
from typing import Callable


class Deferred(types.ModuleType):
    """The module `name`, imported (by `importer`) on its first attribute access."""

    def __init__(self, name: str, importer: Callable[[str], types.ModuleType] = importlib.import_module):
        super().__init__(name)
        self.__dict__["_deferred"] = (name, importer)

    def __getattr__(self, attr: str):
        name, importer = self.__dict__["_deferred"]
        module = importer(name)
        self.__dict__.update(vars(module))  # from now on, plain lookups
        return getattr(module, attr)

    def __repr__(self) -> str:
        return f"<deferred module {self.__dict__['_deferred'][0]!r}>"


sympy = Deferred("sympy")
