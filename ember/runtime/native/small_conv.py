"""A direct convolution for tiny sizes (codegen's cpu_small_conv.cpp: ember/codegen/
handwritten.py, "small_conv"): the `conv` extern runs a call of at most `MAX_MACS`
multiply-adds on it instead of oneDNN, whose call costs 25-40 us before any work (silero
VAD's 18 Conv1d of a few thousand multiply-adds each took 1.2 of its 2.0 ms). Float32,
channels-first, 1-d (as height 1) or 2-d; the extern (runtime/externs.py, `_small_conv`)
calls `kernel()` with the data pointers, the sizes and the geometry, the filter laid out
[groups, C/groups, KH, KW, O/groups]."""

from __future__ import annotations

import ctypes

from . import function

MAX_MACS = 1 << 16
RUNS = [0]  # calls run here (tests read it)


def kernel():
    """The kernel's ctypes function; None where no Program named its library."""
    return function("small_conv", "ember_small_conv", [ctypes.c_void_p] * 4 + [ctypes.c_int64] * 17)
