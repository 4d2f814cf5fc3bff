"""fuse_gelu: GELU from its primitive forms to the ONNX `Gelu` op.

    erf form:   x * 0.5 * (1 + erf(x / sqrt(2)))               -> Gelu(x)
    tanh form:  x * 0.5 * (1 + tanh(sqrt(2/pi) * (x + 0.044715 * x^3)))
                                                              -> Gelu(x, approximate="tanh")

Exporters write the products in either order, and x / sqrt(2) as x * (1/sqrt(2)); each
arrangement is one rewrite (commuted operands are matched by the driver)."""

from __future__ import annotations

import math

from .registry import register_pass
from .rewriter import Match, Rewrite, RewritePass


def _constants_are(**expected: float):
    def check(m: Match) -> str | None:
        for name, number in expected.items():
            if not m.is_scalar(name, number):
                data = m.constant(name)
                return f"{name} is {data.tolist() if data is not None else 'not a constant'}, not {number:g}"
        return None

    return check


def _erf_rewrites() -> list[Rewrite]:
    scaled = {
        "div": (lambda op, x, c: op.Div(x, c), math.sqrt(2)),
        "mul": (lambda op, x, c: op.Mul(x, c), 1 / math.sqrt(2)),
    }
    def arrangements(scale):
        def inner_first(op, x, c, one, half):     # (x * (1 + erf)) * 0.5
            return op.Mul(op.Mul(x, op.Add(op.Erf(scale(op, x, c)), one)), half)

        def half_first(op, x, c, one, half):      # (x * 0.5) * (1 + erf)
            return op.Mul(op.Mul(x, half), op.Add(op.Erf(scale(op, x, c)), one))

        return (("inner_first", inner_first), ("half_first", half_first))

    rewrites = []
    for kind, (scale, c_value) in scaled.items():
        for arrangement, pattern in arrangements(scale):
            rewrites.append(Rewrite(
                f"gelu_erf_{kind}_{arrangement}", pattern,
                lambda op, x, c, one, half: op.Gelu(x),
                _constants_are(c=c_value, one=1.0, half=0.5), commute=True))
    return rewrites


def _tanh_pattern(op, x, three, k, s, one, half):
    cube = op.Mul(op.Pow(x, three), k)
    inner = op.Tanh(op.Mul(op.Add(x, cube), s))
    return op.Mul(op.Mul(x, half), op.Add(inner, one))


def _tanh_pattern_inner_first(op, x, three, k, s, one, half):
    cube = op.Mul(op.Pow(x, three), k)
    inner = op.Tanh(op.Mul(op.Add(x, cube), s))
    return op.Mul(op.Mul(x, op.Add(inner, one)), half)


_TANH_CHECK = _constants_are(three=3.0, k=0.044715, s=math.sqrt(2 / math.pi), one=1.0, half=0.5)

REWRITES = [
    *_erf_rewrites(),
    *(Rewrite(f"gelu_tanh_{name}", pattern,
              lambda op, x, three, k, s, one, half: op.Gelu(x, approximate="tanh"), _TANH_CHECK, commute=True)
      for name, pattern in (("half_first", _tanh_pattern), ("inner_first", _tanh_pattern_inner_first))),
]


@register_pass
class FuseGelu(RewritePass):
    name = "fuse_gelu"
    rewrites = REWRITES
