"""fuse_norms: LayerNorm and RMSNorm from their primitive forms to the ONNX ops.

    d = x - ReduceMean(x, [-1])
    d / Sqrt(ReduceMean(d^2, [-1]) + eps)          -> LayerNormalization(x, 1, axis=-1, epsilon=eps)
    x / Sqrt(ReduceMean(x^2, [-1]) + eps)          -> RMSNormalization(x, 1, axis=-1, epsilon=eps)
    Norm(x, 1) * scale                scale: [D]   -> Norm(x, scale)
    LayerNormalization(x, s) + bias   bias: [D]    -> LayerNormalization(x, s, bias)

d^2 is Pow(d, 2) or Mul(d, d); dividing by the root r is Div(d, r), Mul(d, Reciprocal(r))
or Mul(d, Div(1, r)) (torch.rsqrt). torch.onnx.export writes these for nn.LayerNorm below
opset 17 and for transformers' LlamaRMSNorm, whose Casts to float32 canonicalize removes
from a float32 model (for float16 the norm fuses inside the Casts and the weight stays a
Mul). The affine scale and bias fold in one rewrite at a time."""

from __future__ import annotations

import numpy as np

from ..ir.types import TensorType
from .registry import register_pass
from .rewriter import Match, Rewrite, RewritePass

NORMS = ("LayerNormalization", "RMSNormalization")
SQUARES = {"pow": lambda op, d, two: op.Pow(d, two), "mul": lambda op, d, two: op.Mul(d, d)}
DIVIDES = {
    "div": lambda op, d, r, one: op.Div(d, r),
    "reciprocal": lambda op, d, r, one: op.Mul(d, op.Reciprocal(r)),
    "rsqrt": lambda op, d, r, one: op.Mul(d, op.Div(one, r)),
}


def _last_dim(value) -> int | None:
    t = value.type
    if isinstance(t, TensorType) and t.shape and isinstance(t.shape[-1], int) and t.dtype.numpy.kind == "f":
        return t.shape[-1]
    return None


def _check_core(m: Match) -> str | None:
    if _last_dim(m["x"]) is None:
        return "x is not a float tensor with a static last dim"
    last = len(m["x"].type.shape) - 1
    for name in ("mean_axes", "var_axes") if "mean_axes" in m.bindings else ("var_axes",):
        axes = m.constant(name)
        if axes is None:
            return f"{name} is not a constant"
        if axes.reshape(-1).tolist() not in ([-1], [last]):
            return f"{name} is {axes.tolist()}, not the last axis"
    for name, number in (("two", 2.0), ("one", 1.0)):
        if name in m.bindings and not m.is_scalar(name, number):
            data = m.constant(name)
            return f"{name} is {data.tolist() if data is not None else 'not a constant'}, not {number:g}"
    eps = m.constant("eps")
    if eps is None or eps.size != 1:
        return "epsilon is not a constant scalar"
    return None


def _core(norm: str, square, divide) -> Rewrite:
    def pattern(op, x, mean_axes, var_axes, two, eps, one):
        d = op.Sub(x, op.ReduceMean(x, mean_axes, keepdims=1)) if norm == "LayerNormalization" else x
        variance = op.ReduceMean(SQUARES[square](op, d, two), var_axes, keepdims=1)
        return DIVIDES[divide](op, d, op.Sqrt(op.Add(variance, eps)), one)

    def replacement(op, x, eps):
        ones = op.constant(np.ones(x.type.shape[-1], x.type.dtype.numpy))
        return op(norm, x, ones, axis=-1, epsilon=float(eps.const.reshape(-1)[0]))

    return Rewrite(f"{norm}_{square}_{divide}", pattern, replacement, _check_core, commute=True)


def _affine(norm: str, name: str) -> Rewrite:
    """Norm(x, 1) * scale -> Norm(x, scale);  LayerNormalization(x, s) + bias -> (x, s, bias)."""
    def pattern(op, x, s, eps, operand):
        normalized = op(norm, x, s, axis=-1, epsilon=eps, stash_type=1)
        return op.Mul(normalized, operand) if name == "scale" else op.Add(normalized, operand)

    def replacement(op, x, s, eps, operand):
        inputs = (x, operand) if name == "scale" else (x, s, operand)
        return op(norm, *inputs, axis=-1, epsilon=eps)

    def check(m: Match) -> str | None:
        s = m.constant("s")
        if name == "scale" and (s is None or not np.all(s == 1)):
            return "the norm already has a scale"
        t, d = m["operand"].type, _last_dim(m["x"])
        if not isinstance(t, TensorType) or t.shape != (d,) or t.dtype != m["x"].type.dtype:
            return f"the {name} is {t}, not a vector of {d} {m['x'].type.dtype}"
        return None

    return Rewrite(f"{norm}_{name}", pattern, replacement, check, commute=True)


REWRITES = [
    *(_core(norm, square, divide) for norm in NORMS for square in SQUARES for divide in DIVIDES),
    *(_affine(norm, "scale") for norm in NORMS),
    _affine("LayerNormalization", "bias"),
]


@register_pass
class FuseNorms(RewritePass):
    name = "fuse_norms"
    rewrites = REWRITES
