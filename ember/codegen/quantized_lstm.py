"""The step loop of com.microsoft.DynamicQuantizeLSTM (cpu_quantized_lstm.cpp): built once
with the system C++ compiler, cached like every kernel library, called through ctypes with
the data pointers of its arrays. Each step quantizes h and runs a small integer GEMM, then
float32 gate arithmetic whose every bit must match onnxruntime's (the next step quantizes
its result), fused multiply-adds included: in torch, emulating those in float64 took ~90 us
a step for the logistic and tanh of one 256-unit layer alone; here a whole step takes ~15.

`available()` says whether the kernel is there (a C++ compiler, a build that worked);
`run(...)` runs it on float32 / int16 / int64 torch tensors, contiguous. An artifact ships
the built library (ember/artifact/kernels.py: `source`, `library`, `install`).
"""

from __future__ import annotations

import ctypes
import functools
import logging
from pathlib import Path

from ..errors import ExecutionError
from . import cpu

log = logging.getLogger("ember.codegen")

SOURCE = Path(__file__).with_name("cpu_quantized_lstm.cpp")
EXTERN = "quantized_lstm"  # the extern whose steps run this kernel

_INSTALLED: list[str] = []  # a library an artifact shipped for this machine


def source() -> str:
    return SOURCE.read_text()


def library() -> Path | None:
    """The built library (built now if the kernel cache lacks it); None without a C++
    compiler."""
    if _INSTALLED:
        return Path(_INSTALLED[0])
    return None if cpu.compiler() is None else cpu.build(source())


def install(path: str) -> None:
    """Use the library at `path` (an artifact's, built for this machine from this very
    source) rather than building it: loading an artifact runs no C++ compiler."""
    _INSTALLED[:] = [path]


def used_by(program) -> bool:
    return any(step.kind == "extern" and step.name == EXTERN for step in program.steps)


@functools.lru_cache(maxsize=None)
def _kernel():
    """The kernel, built on first use; None without a compiler or where it did not build."""
    if not _INSTALLED and cpu.compiler() is None:
        return None
    try:
        fn = cpu.load(str(library())).ember_quantized_lstm
    except ExecutionError as e:
        log.warning("ember: the DynamicQuantizeLSTM kernel did not build; it runs on the reference instead:\n%s", e)
        return None
    fn.argtypes = [ctypes.c_void_p] * 10 + [ctypes.c_int64] * 8
    fn.restype = ctypes.c_int
    return fn


def available() -> bool:
    return _kernel() is not None


def run(xw, r, r_scale, bias, peephole, lens, order, h, c, out, reversed_dirs: list[bool], group: int,
        has_y: bool, threads: int = 1) -> None:
    """The recurrence (see cpu_quantized_lstm.cpp for what each array holds), the
    directions in `reversed_dirs` backwards (step order[t, b] at step t), h quantized in
    groups of `group` rows, the directions on up to `threads` threads; h, c and out are
    written in place."""
    dirs, steps, batch, n4 = xw.shape

    def ptr(t):
        return None if t is None else t.data_ptr()

    _kernel()(ptr(xw), ptr(r), ptr(r_scale), ptr(bias), ptr(peephole), ptr(lens), ptr(order), ptr(h), ptr(c),
              ptr(out), dirs, steps, batch, n4 // 4, sum(1 << d for d, back in enumerate(reversed_dirs) if back),
              group, int(has_y), max(1, min(threads, dirs)))
