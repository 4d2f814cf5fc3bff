"""The GEMM of a float32 x with a weight kept in llama.cpp's quantized blocks (codegen's
cpu_quantized_gemm.cpp: ember/codegen/handwritten.py, "quantized_gemm"), called through
ctypes: y = act(x W^T + bias), x quantized to int8 blocks once per call, each block's dot
product in exact 8-bit integer products (AVX2, VNNI where the CPU has it) scaled back in float32."""

from __future__ import annotations

import ctypes

import numpy as np

from . import empty, function

RUNS = [0]  # calls run here (tests read it)

_P, _I = ctypes.c_void_p, ctypes.c_int64
ACTIVATIONS = {"": 0, "relu": 1, "gelu": 2, "gelu_tanh": 3, "silu": 4}  # cpu_quantized_gemm.cpp's epilogues


def _kernel():
    return function("quantized_gemm", "ember_qgemm", [_I, _P, _I, _I, _I, _P, _I, _I, _P, _P, _I, _I, _I], ctypes.c_int)


def available() -> bool:
    """Whether a Program named the kernel's library (and it built)."""
    return _kernel() is not None


def pack(code: int, w: np.ndarray, k: int) -> np.ndarray | None:
    """The weight w [n, row_bytes] (blocks of format `code` along k inputs, contiguous rows)
    in the kernel's groups of 8 interleaved rows (cpu_quantized_gemm.cpp), or None where the
    kernel is not available or does not pack that format (its rows then run as they are)."""
    size = function("quantized_gemm", "ember_qgemm_packed_bytes", [_I, _I, _I], _I)
    if size is None or w.dtype != np.uint8 or w.ndim != 2 or w.strides[1] != 1:
        return None
    n = w.shape[0]
    nbytes = size(code, n, k)
    if not nbytes:
        return None
    out = empty(nbytes, np.uint8)
    function("quantized_gemm", "ember_qgemm_pack", [_I, _P, _I, _I, _I, _P])(code, w.ctypes.data, n, k, w.strides[0],
                                                                            out.ctypes.data)
    return out


def run(code: int, x: np.ndarray, w: np.ndarray, n: int, bias: np.ndarray | None, y: np.ndarray,
        activation: str, threads: int) -> bool:
    """y [rows, n] = act(x [rows, k] @ W^T + bias) for W [n, k] in blocks of format `code`
    (quant_formats.BlockFormat.code): x, y float32 with contiguous rows; w the weight's
    rows [n, row_bytes] (uint8, contiguous rows), or its 1-d `pack`. False where the call
    does not fit the kernel."""
    fn = _kernel()
    if (fn is None or x.dtype != np.float32 or y.dtype != np.float32 or w.dtype != np.uint8 or x.ndim != 2
            or y.ndim != 2 or w.ndim not in (1, 2) or x.strides[1] != 4 or y.strides[1] != 4 or w.strides[-1] != 1
            or (bias is not None and (bias.dtype != np.float32 or not bias.flags.c_contiguous))
            or activation not in ACTIVATIONS):
        return False
    rows, k = x.shape
    rc = fn(code, x.ctypes.data, rows, k, x.strides[0] // 4, w.ctypes.data, n, w.strides[0] if w.ndim == 2 else 0,
            None if bias is None else bias.ctypes.data, y.ctypes.data, y.strides[0] // 4, ACTIVATIONS[activation],
            threads)
    if rc:
        return False
    RUNS[0] += 1
    return True


def step(code: int, args: list, packed: np.ndarray | None, activation: str, threads: int):
    """The kernel's step form for an executor's chained run (`ember_qgemm_step`): args the
    step's (slot, shape, dtype) of x, w, bias (or None), y; (its address, its ctx) where the
    kernel takes them, else None."""
    fn = function("quantized_gemm", "ember_qgemm_step", [_P, _P, _P], ctypes.c_int)
    x, w, bias, y = args
    if (fn is None or x is None or w is None or y is None or x[2] != np.float32 or y[2] != np.float32
            or w[2] != np.uint8 or len(w[1]) != 2 or not x[1] or (bias is not None and bias[2] != np.float32)):
        return None
    k, n = x[1][-1], w[1][0]
    rows = int(np.prod(x[1][:-1]))
    if k % 32 or tuple(y[1]) != (*x[1][:-1], n) or activation not in ACTIVATIONS:
        return None
    ctx = np.array([code, x[0], w[0], 0 if packed is None else packed.ctypes.data, -1 if bias is None else bias[0],
                    y[0], rows, k, n, ACTIVATIONS[activation], threads], dtype=np.int64)
    return ctypes.cast(fn, ctypes.c_void_p).value, ctx


GATHERS = [0]  # row lookups run here (tests read it)


def dequantize_rows(code: int, w: np.ndarray, ids: np.ndarray, out: np.ndarray, threads: int) -> bool:
    """out [count, k] = rows `ids` (int64, contiguous) of the weight w [n, row_bytes] (uint8,
    contiguous rows) in blocks of format `code`, dequantized as gguf computes them (an
    embedding's lookup). False where the kernel is absent or the call does not fit it (an
    id out of range among them: the caller's path reports it)."""
    fn = function("quantized_gemm", "ember_qgemm_dequantize_rows", [_I, _P, _I, _I, _I, _P, _I, _P, _I], ctypes.c_int)
    if (fn is None or w.dtype != np.uint8 or w.ndim != 2 or w.strides[1] != 1 or ids.dtype != np.int64
            or not ids.flags.c_contiguous or out.dtype != np.float32 or out.ndim != 2 or not out.flags.c_contiguous
            or out.shape[0] != ids.size):
        return False
    if fn(code, w.ctypes.data, w.shape[0], out.shape[1], w.strides[0], ids.ctypes.data, ids.size, out.ctypes.data,
          threads):
        return False
    GATHERS[0] += 1
    return True


def dequantize_rows_step(code: int, args: list, threads: int):
    """The row lookup's step form (`ember_qgemm_dequantize_rows_step`): args the step's
    (slot, shape, dtype) of w, ids, out; (its address, its ctx), or None."""
    fn = function("quantized_gemm", "ember_qgemm_dequantize_rows_step", [_P, _P, _P], ctypes.c_int)
    w, ids, out = args
    if (fn is None or w is None or ids is None or out is None or w[2] != np.uint8 or len(w[1]) != 2
            or ids[2] != np.int64 or out[2] != np.float32 or not out[1]):
        return None
    count, k = int(np.prod(ids[1])), out[1][-1]
    if tuple(out[1]) != (*ids[1], k):
        return None
    ctx = np.array([code, w[0], ids[0], out[0], w[1][0], k, count, threads], dtype=np.int64)
    return ctypes.cast(fn, ctypes.c_void_p).value, ctx
