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

from ..ir.dtypes import DType
from ..ir.ops.contrib_microsoft import padded_inputs, type_dtype, type_shape
from .registry import register_pass
from .rewriter import Match, Rewrite, RewritePass

ITF = "com.microsoft.MatMulIntegerToFloat"
EIGHT_BIT = (DType.uint8, DType.int8)


def _dq(value):
    producer = value.producer if value is not None else None
    return producer if producer is not None and producer.op == "DequantizeLinear" else None


def _size(value) -> int | None:
    shape = type_shape(value)
    if shape is None or not all(isinstance(d, int) for d in shape):
        return None
    return int(np.prod(shape, dtype=np.int64))


def _check(m: Match) -> str | None:
    x, w = _dq(m["x"]), _dq(m["w"])
    if x is None or w is None:
        return "an operand is not a DequantizeLinear's output"
    xq, x_scale, x_zero = padded_inputs(x, 3)
    wq, w_scale, w_zero = padded_inputs(w, 3)
    if type_dtype(m["x"]) != DType.float32 or type_dtype(m["w"]) != DType.float32:
        return "not float32"
    if type_dtype(xq) not in EIGHT_BIT or type_dtype(wq) not in EIGHT_BIT or wq.const is None or wq.const.ndim != 2:
        return "not 8-bit activations by a constant 8-bit matrix"
    if x.attrs.get("block_size") or w.attrs.get("block_size"):
        return "blocked scales"
    if type_dtype(x_scale) != DType.float32 or type_dtype(w_scale) != DType.float32:
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
    xq, x_scale, x_zero = padded_inputs(_dq(x), 3)
    wq, w_scale, w_zero = padded_inputs(_dq(w), 3)
    return op(ITF, xq, wq, x_scale, w_scale, x_zero, w_zero)


REWRITES = [Rewrite("qdq_matmul", lambda op, x, w: op.MatMul(x, w), _replacement, _check)]


@register_pass
class FoldQDQ(RewritePass):
    name = "fold_qdq"
    rewrites = REWRITES
