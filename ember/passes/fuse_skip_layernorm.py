"""fuse_skip_layernorm: a residual add feeding a LayerNormalization -> `ember.SkipLayerNorm`.

    LayerNormalization(Add(x, skip), gamma, beta, axis=-1)  -> ember.SkipLayerNorm(x, skip, gamma, beta)

x and skip must have the same shape (no broadcasting) and the norm must run over the
last axis; one kernel then reads both, adds, normalizes and writes once."""

from __future__ import annotations

from ..ir.types import TensorType
from .registry import register_pass
from .rewriter import Match, Rewrite, RewritePass


def _check(m: Match) -> str | None:
    x, skip = m["x"].type, m["skip"].type
    if not (isinstance(x, TensorType) and isinstance(skip, TensorType)) or x.shape is None \
            or x.shape != skip.shape or x.dtype != skip.dtype:
        return "x and skip are not tensors of one shape and dtype"
    if m["axis"] not in (-1, len(x.shape) - 1):
        return f"the norm runs over axis {m['axis']}, not the last"
    if m["stash_type"] != 1:
        return "stash_type is not float"
    return None


def _rewrite(with_beta: bool) -> Rewrite:
    def pattern(op, x, skip, gamma, beta, axis, epsilon, stash_type):
        total = op.Add(x, skip)
        return (op.LayerNormalization(total, gamma, beta, axis=axis, epsilon=epsilon, stash_type=stash_type)
                if with_beta else
                op.LayerNormalization(total, gamma, axis=axis, epsilon=epsilon, stash_type=stash_type))

    def replacement(op, x, skip, gamma, beta, epsilon):
        return op("ember.SkipLayerNorm", x, skip, gamma, *([beta] if with_beta else []), epsilon=epsilon)

    return Rewrite(f"add_layernorm{'' if with_beta else '_no_beta'}", pattern, replacement, _check)


REWRITES = [_rewrite(True), _rewrite(False)]


@register_pass
class FuseSkipLayerNorm(RewritePass):
    name = "fuse_skip_layernorm"
    rewrites = REWRITES
