"""fuse_linear: MatMul by a constant weight plus a constant bias -> `ember.Linear`.

    Add(MatMul(x, W), b)   W: [K, N] constant, b: [N] constant   -> ember.Linear(x, W, b)

One op gives the CPU and GPU backends a single GEMM with a bias epilogue to emit."""

from __future__ import annotations

from .registry import register_pass
from .rewriter import Match, Rewrite, RewritePass


def _check(m: Match) -> str | None:
    w, b = m.constant("w"), m.constant("b")
    if w is None or w.ndim != 2:
        return "the weight is not a constant matrix"
    if b is None or b.ndim != 1 or b.shape[0] != w.shape[1]:
        return f"the bias is not a constant vector of {w.shape[1]}"
    x = m["x"].type
    if x is None or x.shape is None or len(x.shape) < 2 or x.dtype.numpy != w.dtype or b.dtype != w.dtype:
        return "x is not a matrix (or batch of matrices) of the weight's dtype"
    return None


REWRITES = [Rewrite("matmul_add_to_linear", lambda op, x, w, b: op.Add(op.MatMul(x, w), b),
                    lambda op, x, w, b: op("ember.Linear", x, w, b), _check, commute=True)]


@register_pass
class FuseLinear(RewritePass):
    name = "fuse_linear"
    rewrites = REWRITES
