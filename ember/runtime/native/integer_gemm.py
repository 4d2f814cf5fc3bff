"""The exact 8-bit integer GEMM (codegen's cpu_integer_gemm.cpp: ember/codegen/handwritten.py,
"integer_gemm"), called through ctypes: (A - a_zero) . (B - b_zero) summed in int32, its
result stored as int32, as float32 (times a scale, plus a bias) or requantized to 8 bits.
B is packed once (`pack`), in int8 where B less its type's shift lies in [-127, 127] (any
int8 value under VNNI: `any_int8`), else in int16."""

from __future__ import annotations

import ctypes

import numpy as np

from . import function

RUNS = [0]  # GEMMs run here (tests read it)
QUANTIZE_RUNS = [0]  # DynamicQuantizeLinears run here
KINDS = {0: "int16", 1: "int8"}  # the packed layouts

_P, _I = ctypes.c_void_p, ctypes.c_int64
MODES = {np.dtype(np.int32): 0, np.dtype(np.float32): 1, np.dtype(np.uint8): 2, np.dtype(np.int8): 3}
_EIGHT_BIT = (np.dtype(np.uint8), np.dtype(np.int8))


def _kernel():
    return function("integer_gemm", "ember_igemm", [_P, _I, _I, _I, _I, _I, _P, _I, _I, _P, _I, _P, _I, _P, _P, _I,
                                                    _I, _I], ctypes.c_int)


def available() -> bool:
    """Whether a Program named the kernel's library (and it built)."""
    return _kernel() is not None


def pack(b: np.ndarray, zero: np.ndarray | None) -> np.ndarray | None:
    """B [k, n] (uint8 or int8) less its zero point `zero` (None, one value, or one per
    column; B's dtype) in the kernel's panels: a 1-d uint8 array whose header names its
    layout, k and n. None where the kernel is not available or does not take B."""
    size = function("integer_gemm", "ember_igemm_packed_bytes", [_I, _I, _I], _I)
    if size is None or b.ndim != 2 or b.dtype not in _EIGHT_BIT:
        return None
    if zero is not None and (zero.dtype != b.dtype or zero.size not in (1, b.shape[1])):
        return None
    b = np.ascontiguousarray(b)
    z = None if zero is None else np.ascontiguousarray(zero).reshape(-1)
    k, n = b.shape
    fn = function("integer_gemm", "ember_igemm_pack", [_I, _P, _I, _I, _I, _I, _P, _I, _P], ctypes.c_int)
    for kind in (1, 0):
        out = np.empty(size(kind, k, n), dtype=np.uint8)
        if fn(kind, b.ctypes.data, int(b.dtype == np.int8), k, n, n, None if z is None else z.ctypes.data,
              0 if z is None else z.size, out.ctypes.data) == 0:
            return out
    return None


def any_int8() -> bool:
    """Whether the kernel's int8 layout takes every int8 B - shift, -128 included (its build
    multiplies with VNNI, whose products cannot saturate; AVX2's pairs can)."""
    fn = function("integer_gemm", "ember_igemm_any_int8", [], _I)
    return bool(fn is not None and fn())


def kind(packed: np.ndarray) -> str:
    """The layout of a `pack`ed B: "int8" or "int16"."""
    return KINDS[int(packed[:8].view(np.int64)[0])]


def run(a: np.ndarray, a_zero: int, packed: np.ndarray, n: int, y: np.ndarray, threads: int,
        scale: np.ndarray | None = None, bias: np.ndarray | None = None, multiplier: np.ndarray | None = None,
        y_zero: int = 0) -> bool:
    """y [rows, n] = (a [rows, k] - a_zero) . B, B `pack`ed, stored as y's dtype: int32 the
    sums; float32 sums * scale (float32, one value or n) + bias (float32 [n] or None);
    uint8 / int8 rint(sums * multiplier (float64, one value or n) + y_zero), clipped.
    a, y with contiguous rows. False where the call does not fit the kernel."""
    fn = _kernel()
    mode = MODES.get(y.dtype)
    if (fn is None or mode is None or a.dtype not in _EIGHT_BIT or a.ndim != 2 or y.ndim != 2 or a.strides[1] != 1
            or y.strides[1] != y.itemsize or y.shape != (a.shape[0], n)):
        return False
    if mode == 1 and (scale is None or scale.dtype != np.float32 or scale.size not in (1, n)
                      or (bias is not None and (bias.dtype != np.float32 or bias.size != n))):
        return False
    if mode >= 2 and (multiplier is None or multiplier.dtype != np.float64 or multiplier.size not in (1, n)):
        return False
    scale = None if scale is None else np.ascontiguousarray(scale).reshape(-1)
    bias = None if bias is None else np.ascontiguousarray(bias).reshape(-1)
    multiplier = None if multiplier is None else np.ascontiguousarray(multiplier).reshape(-1)
    rows, k = a.shape
    rc = fn(a.ctypes.data, int(a.dtype == np.int8), rows, k, a.strides[0], int(a_zero), packed.ctypes.data, n, mode,
            y.ctypes.data, y.strides[0] // y.itemsize, None if scale is None else scale.ctypes.data,
            0 if scale is None else scale.size, None if bias is None else bias.ctypes.data,
            None if multiplier is None else multiplier.ctypes.data, 0 if multiplier is None else multiplier.size,
            int(y_zero), threads)
    if rc:
        return False
    RUNS[0] += 1
    return True


def dynamic_quantize(x: np.ndarray, y: np.ndarray, scale: np.ndarray, zero: np.ndarray, threads: int) -> bool:
    """DynamicQuantizeLinear of x (float32, contiguous) into y (uint8, x's shape), scale
    (float32) and zero (uint8), as onnx's reference computes them. False where the kernel
    is not available or x holds a NaN or an infinity (nothing written)."""
    fn = function("integer_gemm", "ember_dynamic_quantize", [_P, _I, _P, _P, _P, _I], ctypes.c_int)
    if (fn is None or x.dtype != np.float32 or y.dtype != np.uint8 or not x.flags.c_contiguous
            or not y.flags.c_contiguous or x.size != y.size or scale.dtype != np.float32 or zero.dtype != np.uint8):
        return False
    if fn(x.ctypes.data, x.size, y.ctypes.data, scale.ctypes.data, zero.ctypes.data, threads):
        return False
    QUANTIZE_RUNS[0] += 1
    return True
