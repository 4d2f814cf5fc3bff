"""fuse_rotary: rotary position embedding (the Hugging Face, non-interleaved form) ->
`ember.RotaryEmbedding`.

    rotated = Concat(Neg(Slice(x, d/2, end)), Slice(x, 0, d/2), axis=-1)   (rotate_half)
    x * cos + rotated * sin                                 -> ember.RotaryEmbedding(x, cos, sin)

The Slices are on the last axis (-1 or rank-1), with or without steps of 1; `end` of the
upper half is d or past it (torch.onnx.export writes INT64_MAX), and d/2 is a constant
once fold_constants has folded the `x.shape[-1] // 2` computation. cos and sin are
broadcast to x and span its whole last dim d."""

from __future__ import annotations

from ..ir.types import TensorType
from .registry import register_pass
from .rewriter import Match, Rewrite, RewritePass


def _pattern(steps: bool):
    def half(op, x, start, end, axes, step):
        return op.Slice(x, start, end, axes, step) if steps else op.Slice(x, start, end, axes)

    def pattern(op, x, cos, sin, axis, hi_start, hi_end, hi_axes, hi_step, lo_start, lo_end, lo_axes, lo_step):
        upper, lower = half(op, x, hi_start, hi_end, hi_axes, hi_step), half(op, x, lo_start, lo_end, lo_axes, lo_step)
        rotated = op.Concat(op.Neg(upper), lower, axis=axis)
        return op.Add(op.Mul(rotated, sin), op.Mul(x, cos))  # rotated first: it binds x

    return pattern


def _scalar(m: Match, name: str) -> int | None:
    data = m.constant(name)
    return int(data.reshape(-1)[0]) if data is not None and data.size == 1 else None


def _check(m: Match) -> str | None:
    t = m["x"].type
    if not (isinstance(t, TensorType) and t.shape and isinstance(t.shape[-1], int) and t.shape[-1] % 2 == 0):
        return "x has no static, even last dim"
    d, last = t.shape[-1], len(t.shape) - 1
    if m["axis"] not in (-1, last):
        return f"the Concat is on axis {m['axis']}, not the last"
    for part in ("hi", "lo"):
        if _scalar(m, f"{part}_axes") not in (-1, last):
            return f"the {part} Slice is not on the last axis"
        if f"{part}_step" in m.bindings and _scalar(m, f"{part}_step") != 1:
            return f"the {part} Slice has a step other than 1"
    bounds = [_scalar(m, name) for name in ("lo_start", "lo_end", "hi_start", "hi_end")]
    if None in bounds:
        return "a Slice bound is not a constant"
    lo_start, lo_end, hi_start, hi_end = (min(b + d if b < 0 else b, d) for b in bounds)
    if (lo_start, lo_end, hi_start, hi_end) != (0, d // 2, d // 2, d):
        return f"the halves are [{lo_start}:{lo_end}] and [{hi_start}:{hi_end}] of {d}, not split at {d // 2}"
    for name in ("cos", "sin"):
        s = m[name].type
        if not isinstance(s, TensorType) or not s.shape or s.shape[-1] != d or len(s.shape) > len(t.shape):
            return f"{name} is {s}, not broadcastable to x with a last dim of {d}"
    return None


REWRITES = [Rewrite(f"rotate_half{'_steps' if steps else ''}", _pattern(steps),
                    lambda op, x, cos, sin: op("ember.RotaryEmbedding", x, cos, sin), _check, commute=True)
            for steps in (True, False)]


@register_pass
class FuseRotary(RewritePass):
    name = "fuse_rotary"
    rewrites = REWRITES
