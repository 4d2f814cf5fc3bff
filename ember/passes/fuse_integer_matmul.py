"""fuse_integer_matmul: an integer MatMul and the float rescale after it become one
com.microsoft.MatMulIntegerToFloat, the rescale (and a bias) in the integer GEMM's epilogue.

    Mul(Cast(MatMulInteger(a, b, a_zero?, b_zero?), to=float), scale)  [+ bias]
        -> com.microsoft.MatMulIntegerToFloat(a, b, 1.0, scale, a_zero, b_zero, bias?)

scale float32 of one value or one per column (what onnxruntime's quantize_dynamic writes:
x's scale times the weight's), bias a float32 constant per column. Exact: the kernel
rounds the int32 sum to float32, multiplies by 1.0 * scale (= scale) and rounds, then adds
the bias and rounds, as the Cast, the Mul and the Add do. The integer product then runs
on ember's integer GEMM once, its result stored as float32, instead of an int32 tensor
read back by a Cast, a Mul and an Add (onnxruntime's optimizer fuses the same pattern).
"""

from __future__ import annotations

import numpy as np

from .registry import register_pass
from .rewriter import Match, Rewrite, RewritePass

FLOAT = 1  # onnx.TensorProto.FLOAT
ITF = "com.microsoft.MatMulIntegerToFloat"


def _columns(m: Match) -> int | None:
    t = m["acc"].type
    return None if t is None or not t.shape else t.shape[-1]


def _per_column(value, n) -> bool:
    t = value.type
    if t is None or t.shape is None or t.dtype is None or t.dtype.name != "float32":
        return False
    shape = tuple(t.shape)
    return (len(shape) <= 1 and all(d == 1 for d in shape)) or shape == (n,)


def _check(m: Match) -> str | None:
    if m["to"] != FLOAT:
        return "the integer product is not cast to float"
    n = _columns(m)
    if not _per_column(m["scale"], n):
        return "the rescale is not a float32 of one value or one per column"
    if m.bindings.get("bias") is not None:
        c = m.constant("bias")
        if c is None or c.dtype != np.float32 or c.shape != (n,):
            return "the bias is not a float32 constant per column"
    return None


def _rewrite(inputs: int, biased: bool) -> Rewrite:
    names = ["a", "b", "a_zero", "b_zero"][:inputs]

    def pattern(op, a, b, a_zero, b_zero, scale, to, bias):
        acc = op.MatMulInteger(*[{"a": a, "b": b, "a_zero": a_zero, "b_zero": b_zero}[k] for k in names], _as="acc")
        y = op.Mul(op.Cast(acc, to=to), scale)
        return op.Add(y, bias) if biased else y

    def replacement(op, a, b, a_zero, b_zero, scale, to, bias):
        one = op.constant(np.ones((), np.float32))
        return op(ITF, a, b, one, scale, a_zero, b_zero, bias if biased else None)

    return Rewrite(f"integer_matmul{inputs}{'_bias' if biased else ''}", pattern, replacement, _check, commute=True)


REWRITES = [_rewrite(inputs, biased) for biased in (True, False) for inputs in (4, 3, 2)]


@register_pass
class FuseIntegerMatMul(RewritePass):
    name = "fuse_integer_matmul"
    rewrites = REWRITES
