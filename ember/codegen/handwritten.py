"""Hand-written C++ kernels the runtime calls through ctypes (the LSTM and
DynamicQuantizeLSTM step loops, the small direct convolution): each is one source file, built once with the system C++
compiler and cached like every kernel library, shipped in artifacts (ember/artifact/
kernels.py: `source`, `library`, `install`) so that a load builds nothing."""

from __future__ import annotations

import ctypes
import logging
from pathlib import Path

from ..errors import ExecutionError
from . import cpu

log = logging.getLogger("ember.codegen")


class HandWritten:
    """The kernel `symbol` of `file` (next to this module), with its ctypes argument
    types; with `prelude`, ember's CPU prelude (codegen/cpu_prelude.py) is pasted first."""

    def __init__(self, file: str, symbol: str, argtypes: list, prelude: bool = False, what: str = "",
                 restype=None, instead: str = "torch's"):
        self.path = Path(__file__).with_name(file)
        self.symbol, self.argtypes, self.prelude, self.what = symbol, argtypes, prelude, what or symbol
        self.restype, self.instead = restype, instead  # what runs where it does not build
        self._installed: str | None = None  # a library an artifact shipped for this machine
        self._fn = None
        self._library = None  # the loaded library (its other functions: `companion`)
        self._companions: dict = {}  # symbol -> its ctypes function, typed once
        self._tried = False

    def source(self) -> str:
        text = self.path.read_text()
        if self.prelude:
            from .cpu_prelude import PRELUDE

            text = PRELUDE + text
        return text

    def library(self) -> Path | None:
        """The built library (built now if the kernel cache lacks it); None without a C++
        compiler."""
        if self._installed:
            return Path(self._installed)
        return None if cpu.compiler() is None else cpu.build(self.source())

    def install(self, path: str) -> None:
        """Use the library at `path` (an artifact's, built for this machine from this very
        source) rather than building it."""
        self._installed = path
        self.reset()

    def reset(self) -> None:
        """Forget the loaded function (the next call loads or builds it again)."""
        self._fn, self._library, self._tried = None, None, False
        self._companions = {}

    def fn(self):
        """The kernel's ctypes function, built on first use; None without a compiler or
        where it did not build."""
        if not self._tried:
            self._tried = True
            if self._installed or cpu.compiler() is not None:
                try:
                    library = cpu.load(str(self.library()))
                    fn = getattr(library, self.symbol)
                    fn.argtypes, fn.restype = self.argtypes, self.restype
                    self._fn, self._library = fn, library
                except ExecutionError as e:
                    log.warning("ember: the %s kernel did not build; it runs on %s instead:\n%s", self.what,
                                self.instead, e)
        return self._fn

    def available(self) -> bool:
        return self.fn() is not None

    def companion(self, symbol: str, argtypes: list, restype=None):
        """Another function of the kernel's library (a packing step beside the kernel), from
        the library `fn` loaded; None where the kernel is not available."""
        if self.fn() is None:
            return None
        fn = self._companions.get(symbol)
        if fn is None:  # typed once: an attention call asks for its function every run
            fn = self._companions[symbol] = getattr(self._library, symbol)
            fn.argtypes, fn.restype = argtypes, restype
        return fn


def program_uses(program, predicate) -> bool:
    """Whether a step of `program`, or of a control-flow body in it, is an extern that
    `predicate(step)` accepts (which hand-written kernels an artifact ships)."""
    return any(predicate(step) or (step.name == "control"
                                   and any(program_uses(body, predicate) for body in step.params.get("programs", ())))
               for step in program.steps if step.kind == "extern")
