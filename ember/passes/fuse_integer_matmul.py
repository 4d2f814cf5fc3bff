"""fuse_integer_matmul: an integer MatMul and the float rescale after it become one
com.microsoft.MatMulIntegerToFloat, the rescale (and a bias) in the integer GEMM's epilogue.

    Mul(Cast(MatMulInteger(a, b, a_zero?, b_zero?), to=float), scale)
        -> com.microsoft.MatMulIntegerToFloat(a, b, a_scale, b_scale, a_zero, b_zero)
    Add(MatMulIntegerToFloat(...), bias)  -> MatMulIntegerToFloat(..., bias)
    ember.Attention(MatMulIntegerToFloat(x, Bq, ...), (... Bk ...), (... Bv ...), mask)
        -> ember.Attention(MatMulIntegerToFloat(x, [Bq | Bk | Bv], ...), mask)   (packed q, k, v)

scale a float32 of one value or one per column: quantize_dynamic's Mul(x's scale, the
weight's constant scale) is taken as its two factors (a_scale, b_scale), any other as
(1.0, scale); bias a float32 constant per column. Exact: the kernel rounds the int32 sum
to float32, multiplies it by a_scale * b_scale (the Mul's product) and rounds, then adds
the bias and rounds, as the Cast, the Mul and the Add do. The integer product then runs
on ember's integer GEMM once, its result stored as float32, instead of an int32 tensor
read back by a Cast, a Mul and an Add (onnxruntime's optimizer fuses the same pattern).
"""

from __future__ import annotations

import numpy as np

from ..ir.dtypes import DType
from ..ir.ops.contrib_microsoft import type_dtype, type_shape
from .fuse_qkv import projections_fit
from .registry import register_pass
from .rewriter import Match, Rewrite, RewritePass

FLOAT = 1  # onnx.TensorProto.FLOAT
ITF = "com.microsoft.MatMulIntegerToFloat"


def _columns(m: Match) -> int | None:
    shape = type_shape(m["acc"])
    return shape[-1] if shape else None


def _per_column(value, n) -> bool:
    """Whether `value` is a float32 of one value or one per column (n)."""
    shape = type_shape(value)
    if shape is None or type_dtype(value) != DType.float32:
        return False
    return (len(shape) <= 1 and all(d == 1 for d in shape)) or shape == (n,)


def _check(m: Match) -> str | None:
    if m["to"] != FLOAT:
        return "the integer product is not cast to float"
    if not _per_column(m["scale"], _columns(m)):
        return "the rescale is not a float32 of one value or one per column"
    return None


def _factors(scale):
    """(a_scale, b_scale) of a rescale: quantize_dynamic's Mul(x's scale, the weight's
    constant scale) as its two factors (their float32 product is the Mul's, in either
    order), so the weight's stays a constant (fuse_integer_qkv concatenates them); any
    other scale as (None, scale): 1.0 times it."""
    producer = scale.producer
    if producer is not None and producer.op == "Mul" and len(producer.inputs) == 2:
        for x, w in (producer.inputs, producer.inputs[::-1]):
            if (x is not None and w is not None and x.const is None and w.const is not None
                    and _per_column(x, 1) and w.const.dtype == np.float32):
                return x, w
    return None, scale


def _rewrite(inputs: int) -> Rewrite:
    names = ["a", "b", "a_zero", "b_zero"][:inputs]

    def pattern(op, a, b, a_zero, b_zero, scale, to):
        acc = op.MatMulInteger(*[{"a": a, "b": b, "a_zero": a_zero, "b_zero": b_zero}[k] for k in names], _as="acc")
        return op.Mul(op.Cast(acc, to=to), scale)

    def replacement(op, a, b, a_zero, b_zero, scale, to):
        a_scale, b_scale = _factors(scale)
        if a_scale is None:
            a_scale = op.constant(np.ones((), np.float32))
        return op(ITF, a, b, a_scale, b_scale, a_zero, b_zero)

    return Rewrite(f"integer_matmul{inputs}", pattern, replacement, _check, commute=True)


def _bias(inputs: int) -> Rewrite:
    """Add(MatMulIntegerToFloat without a bias, c) -> the same with bias c (c a float32
    constant per column): the kernel adds it to the rounded product, as the Add does."""
    def pattern(op, a, b, a_scale, b_scale, a_zero, b_zero, c):
        return op.Add(op(ITF, *[a, b, a_scale, b_scale, a_zero, b_zero][:inputs], _as="product"), c)

    def check(m: Match) -> str | None:
        t, bias = m["product"].type, m.constant("c")
        n = None if t is None or not t.shape else t.shape[-1]
        if bias is None or bias.dtype != np.float32 or bias.shape != (n,):
            return "the bias is not a float32 constant per column"
        return None

    def replacement(op, a, b, a_scale, b_scale, a_zero, b_zero, c):
        return op(ITF, a, b, a_scale, b_scale, a_zero, b_zero, c)

    return Rewrite(f"integer_matmul_bias{inputs}", pattern, replacement, check, commute=True)


def _qkv() -> Rewrite:
    """ember.Attention of three MatMulIntegerToFloats of one quantized x (quantize_dynamic's
    BERT: one DynamicQuantizeLinear feeds the query, key and value projections) -> one
    over the weights concatenated along the columns, its output the attention's packed
    q, k, v (fuse_qkv does the same for float projections). One [K, 3N] GEMM instead of
    three [K, N]: one pass preparing x, and a wider N to split between threads."""
    def pattern(op, x, a_scale, a_zero, bq, bk, bv, sq, sk, sv, zq, zk, zv, cq, ck, cv, mask, num_heads,
                kv_num_heads, scale, causal):
        def projection(b, s, z, c):
            return op(ITF, x, b, a_scale, s, a_zero, z, c)
        return op("ember.Attention", projection(bq, sq, zq, cq), projection(bk, sk, zk, ck),
                  projection(bv, sv, zv, cv), mask, num_heads=num_heads, kv_num_heads=kv_num_heads, scale=scale,
                  causal=causal)

    def check(m: Match) -> str | None:
        reason = projections_fit(m, ("bq", "bk", "bv"))
        if reason:
            return reason
        weights = [m.constant(b) for b in ("bq", "bk", "bv")]
        n = [w.shape[1] for w in weights]
        for names, dtype in ((("sq", "sk", "sv"), np.float32), (("zq", "zk", "zv"), weights[0].dtype),
                             (("cq", "ck", "cv"), np.float32)):
            values = [m.constant(v) for v in names]
            if any(v is None or v.dtype != dtype or v.size not in (1, width) for v, width in zip(values, n)):
                return "a projection's scale, zero point or bias is not a constant of one value or one per column"
        return None

    def replacement(op, x, a_scale, a_zero, bq, bk, bv, sq, sk, sv, zq, zk, zv, cq, ck, cv, mask, num_heads,
                    kv_num_heads, scale, causal):
        def columns(values, widths):
            return op.constant(np.concatenate([np.broadcast_to(v.const.reshape(-1), (w,)) for v, w in
                                               zip(values, widths)]))
        widths = [b.const.shape[1] for b in (bq, bk, bv)]
        b = op.constant(np.concatenate([bq.const, bk.const, bv.const], axis=1))
        qkv = op(ITF, x, b, a_scale, columns((sq, sk, sv), widths), a_zero, columns((zq, zk, zv), widths),
                 columns((cq, ck, cv), widths))
        return op("ember.Attention", qkv, None, None, mask, num_heads=num_heads, kv_num_heads=kv_num_heads,
                  scale=scale, causal=causal)

    return Rewrite("integer_qkv", pattern, replacement, check)


REWRITES = [*(_rewrite(inputs) for inputs in (4, 3, 2)), *(_bias(inputs) for inputs in (6, 5, 4)), _qkv()]


@register_pass
class FuseIntegerMatMul(RewritePass):
    name = "fuse_integer_matmul"
    rewrites = REWRITES
