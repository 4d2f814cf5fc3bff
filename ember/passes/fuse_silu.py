"""fuse_silu: SiLU to the ONNX `Swish` op, and the SwiGLU gate of LLaMA-style MLPs.

    x * Sigmoid(x)        -> Swish(x, alpha=1)
    Swish(gate) * up      -> ember.SwiGLU(gate, up)

torch.onnx.export writes F.silu as the product (either order); transformers' LlamaMLP
multiplies act_fn(gate_proj(x)) by up_proj(x)."""

from __future__ import annotations

from .registry import register_pass
from .rewriter import Rewrite, RewritePass

REWRITES = [
    Rewrite("silu_to_swish", lambda op, x: op.Mul(x, op.Sigmoid(x)),
            lambda op, x: op.Swish(x, alpha=1.0), commute=True),
    Rewrite("swish_mul_to_swiglu", lambda op, gate, up: op.Mul(op.Swish(gate, alpha=1.0), up),
            lambda op, gate, up: op("ember.SwiGLU", gate, up), commute=True),
]


@register_pass
class FuseSilu(RewritePass):
    name = "fuse_silu"
    rewrites = REWRITES
