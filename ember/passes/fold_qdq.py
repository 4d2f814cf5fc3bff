"""fold_qdq: a MatMul of two DequantizeLinear outputs (what onnxruntime.quantization's
quantize_static writes in its QDQ format) becomes one com.microsoft.MatMulIntegerToFloat
on ember's exact integer GEMM, as onnxruntime's QDQ transformer folds it.

    MatMul(DequantizeLinear(xq, x_scale, x_zero), DequantizeLinear(Wq, W_scale, W_zero))
        -> com.microsoft.MatMulIntegerToFloat(xq, Wq, x_scale, W_scale, x_zero, W_zero)

xq 8-bit with one scale and zero point, Wq a constant 8-bit matrix with one scale and zero
point or one per column (axis 1). The DequantizeLinears stay for their other readers (and go
as dead code where they have none). The arithmetic differs from the graph's by float32
rounding only: the graph multiplies each dequantized value (rounded) and sums the rounded
products in float32; the integer GEMM sums (xq - x_zero)(Wq - W_zero) exactly and rounds
once, times x_scale * W_scale, which is closer to the exact product. It runs before
fold_constants, which would otherwise dequantize the weight into a float32 constant.
"""

from __future__ import annotations

import numpy as np

from .registry import register_pass
from .rewriter import Match, Rewrite, RewritePass

ITF = "com.microsoft.MatMulIntegerToFloat"
EIGHT_BIT = ("uint8", "int8")


def _dq(value):
    producer = value.producer if value is not None else None
    return producer if producer is not None and producer.op == "DequantizeLinear" else None


def _dtype(value) -> str | None:
    t = value.type if value is not None else None
    return None if t is None or t.dtype is None else t.dtype.name


def _size(value) -> int | None:
    t = value.type if value is not None else None
    if t is None or t.shape is None or not all(isinstance(d, int) for d in t.shape):
        return None
    return int(np.prod(t.shape, dtype=np.int64))


def _check(m: Match) -> str | None:
    x, w = _dq(m["x"]), _dq(m["w"])
    if x is None or w is None:
        return "an operand is not a DequantizeLinear's output"
    xq, x_scale, x_zero = (list(x.inputs) + [None])[:3]
    wq, w_scale, w_zero = (list(w.inputs) + [None])[:3]
    if _dtype(m["x"]) != "float32" or _dtype(m["w"]) != "float32":
        return "not float32"
    if _dtype(xq) not in EIGHT_BIT or _dtype(wq) not in EIGHT_BIT or wq.const is None or wq.const.ndim != 2:
        return "not 8-bit activations by a constant 8-bit matrix"
    if x.attrs.get("block_size") or w.attrs.get("block_size"):
        return "blocked scales"
    if _dtype(x_scale) != "float32" or _dtype(w_scale) != "float32":
        return "scales not float32"
    if _size(x_scale) != 1 or (x_zero is not None and _size(x_zero) != 1):
        return "activations with more than one scale or zero point"
    n = wq.const.shape[1]
    if any(v is not None and _size(v) not in (1, n) for v in (w_scale, w_zero)):
        return "weight scales / zero points neither one value nor one per column"
    if _size(w_scale) == n and n > 1 and w.attrs.get("axis", 1) not in (1, -1):
        return "weight scales along the rows, not the columns"
    return None


def _replacement(op, x, w):
    dx, dw = _dq(x), _dq(w)
    xq, x_scale, x_zero = (list(dx.inputs) + [None])[:3]
    wq, w_scale, w_zero = (list(dw.inputs) + [None])[:3]
    return op(ITF, xq, wq, x_scale, w_scale, x_zero, w_zero)


REWRITES = [Rewrite("qdq_matmul", lambda op, x, w: op.MatMul(x, w), _replacement, _check)]


@register_pass
class FoldQDQ(RewritePass):
    name = "fold_qdq"
    rewrites = REWRITES
