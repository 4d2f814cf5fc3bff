"""The step loop of a float32 LSTM (cpu_lstm.cpp): built once with the system C++
compiler, cached like every kernel library, called through ctypes with the data pointers
of torch tensors. The `recurrent` extern runs an LSTM on it where torch's RNN kernel
would spend its time on dispatch: batch 1-8 and small hidden sizes, as wake-word heads
and voice-activity models have (openWakeWord's hey_mycroft: two bidirectional LSTMs of 16
steps took 0.46 ms in torch).

`available()` says whether the kernel is there (a C++ compiler, a build that worked);
`run(...)` runs it on contiguous float32 tensors. An artifact ships the built library
(ember/artifact/kernels.py: `source`, `library`, `install`).
"""

from __future__ import annotations

import ctypes
import functools
import logging
from pathlib import Path

from ..errors import ExecutionError
from . import cpu

log = logging.getLogger("ember.codegen")

SOURCE = Path(__file__).with_name("cpu_lstm.cpp")

_INSTALLED: list[str] = []  # a library an artifact shipped for this machine


def source() -> str:
    from .cpu_prelude import PRELUDE

    return PRELUDE + SOURCE.read_text()


def library() -> Path | None:
    """The built library (built now if the kernel cache lacks it); None without a C++
    compiler."""
    if _INSTALLED:
        return Path(_INSTALLED[0])
    return None if cpu.compiler() is None else cpu.build(source())


def install(path: str) -> None:
    """Use the library at `path` (an artifact's, built for this machine from this very
    source) rather than building it."""
    _INSTALLED[:] = [path]


def used_by(program) -> bool:
    """Whether `program` (or a control-flow body in it) has an LSTM the kernel may run
    (the `recurrent` extern's)."""
    return any((step.name == "recurrent" and step.params.get("op") == "LSTM")
               or (step.name == "control" and any(used_by(body) for body in step.params.get("programs", ())))
               for step in program.steps if step.kind == "extern")


@functools.lru_cache(maxsize=None)
def _kernel():
    """The kernel, built on first use; None without a compiler or where it did not build."""
    if not _INSTALLED and cpu.compiler() is None:
        return None
    try:
        fn = cpu.load(str(library())).ember_lstm
    except ExecutionError as e:
        log.warning("ember: the LSTM kernel did not build; LSTMs run on torch's instead:\n%s", e)
        return None
    fn.argtypes = [ctypes.c_void_p] * 5 + [ctypes.c_int64] * 6
    fn.restype = None
    return fn


def available() -> bool:
    return _kernel() is not None


def run(xw, r, h, c, y, backward: list[bool], threads: int = 1) -> None:
    """xw [dirs, steps, batch, 4H] (X.W + both biases, gates i f g o), r [dirs, H, 4H]
    (R transposed);
    h and c [dirs, batch, H] hold the initial states and receive the final ones; y
    [steps, dirs, batch, H] (or None) every step's h. Directions in `backward` run from
    the last step."""
    dirs, steps, batch, n4 = xw.shape
    _kernel()(xw.data_ptr(), r.data_ptr(), h.data_ptr(), c.data_ptr(), None if y is None else y.data_ptr(),
              dirs, steps, batch, n4 // 4, sum(1 << d for d, back in enumerate(backward) if back),
              max(1, min(threads, dirs)))
