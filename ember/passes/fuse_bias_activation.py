"""fuse_bias_activation: an activation applied to a linear layer's output becomes the
linear op's epilogue.

    Relu | Gelu | Gelu(approximate="tanh") | Swish(alpha=1) (ember.Linear(x, w, b))
        -> ember.Linear(x, w, b, activation="relu" | "gelu" | "gelu_tanh" | "silu")

In O3: the kernels apply the activation on the accumulator before the single store."""

from __future__ import annotations

from .registry import register_pass
from .rewriter import Match, Rewrite, RewritePass

# activation name -> (source op, its attribute that must hold, the value)
SOURCES = {"relu": ("Relu", None, None), "gelu": ("Gelu", "approximate", "none"),
           "gelu_tanh": ("Gelu", "approximate", "tanh"), "silu": ("Swish", "alpha", 1.0)}


def _rewrite(activation: str, biased: bool) -> Rewrite:
    source, attr, want = SOURCES[activation]

    def pattern(op, x, w, b, setting):
        y = op("ember.Linear", x, w, *([b] if biased else []), activation="")
        return op(source, y, **({attr: setting} if attr else {}))

    def check(m: Match) -> str | None:
        return None if attr is None or m["setting"] == want else f"{source} {attr}={m['setting']!r}"

    def replacement(op, x, w, b):
        return op("ember.Linear", x, w, *([b] if biased else []), activation=activation)

    return Rewrite(f"linear{'_bias' if biased else ''}_{activation}", pattern, replacement, check)


REWRITES = [_rewrite(activation, biased) for activation in SOURCES for biased in (True, False)]


@register_pass
class FuseBiasActivation(RewritePass):
    name = "fuse_bias_activation"
    rewrites = REWRITES
