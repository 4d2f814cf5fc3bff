"""fuse_attention: multi-head attention as exporters write it -> `ember.Attention`.

The subgraph torch.onnx.export writes for a BERT-style self-attention layer, from the
three projections (packed heads, [B, S, H*D]) to the merged heads:

    q = Transpose(Reshape(xq, [B, S, H, D]), perm=[0, 2, 1, 3])        (also k, v)
    k = Transpose(Reshape(xk, [B, S, H, D]), perm=[0, 2, 3, 1])        (k^T directly)
    scores = MatMul(q * sq, k * sk)     or  MatMul(q, k) * s  /  MatMul(q, k) / s
    scores = scores + bias                                              (optional mask)
    p = Softmax(scores, axis=-1);  p = Where(IsNaN(p), 0, p)            (optional guard)
    y = Reshape(Transpose(MatMul(p, v), perm=[0, 2, 1, 3]), [B, S, H*D])
                                           -> ember.Attention(xq, xk, xv, bias, num_heads=H)

Each way of scaling, with and without the mask and the NaN guard, is one rewrite. The
check reads H and D off the inferred types of the reshaped heads, so the shape
computations feeding the Reshapes may be anything. ember.Attention gives 0 for a row
whose keys are all masked: the guard's result, where the unguarded source gives NaN.
"""

from __future__ import annotations

import itertools

import numpy as np

from ..ir.types import TensorType
from .registry import register_pass
from .rewriter import Match, Rewrite, RewritePass

HEADS = [0, 2, 1, 3]
KEYS_T = [0, 2, 3, 1]


def _scaled(kind: str):
    """scores from the split heads, for one way of applying the scale."""
    def scores(op, q, k, sq, sk):
        if kind == "split":
            return op.MatMul(op.Mul(q, sq), op.Mul(k, sk))
        qk = op.MatMul(q, k)
        return {"mul": lambda: op.Mul(qk, sq), "div": lambda: op.Div(qk, sq), "none": lambda: qk}[kind]()
    return scores


def _pattern(scale: str, masked: bool, guarded: bool):
    scores = _scaled(scale)

    def pattern(op, xq, xk, xv, shape_q, shape_k, shape_v, shape_y, sq, sk, bias, zero):
        q = op.Transpose(op.Reshape(xq, shape_q, _as="q_heads"), perm=HEADS)
        k = op.Transpose(op.Reshape(xk, shape_k, _as="k_heads"), perm=KEYS_T)
        v = op.Transpose(op.Reshape(xv, shape_v, _as="v_heads"), perm=HEADS)
        s = scores(op, q, k, sq, sk)
        if masked:
            s = op.Add(s, bias)
        p = op.Softmax(s, axis=-1)
        if guarded:
            p = op.Where(op.IsNaN(p), zero, p)
        return op.Reshape(op.Transpose(op.MatMul(p, v), perm=HEADS), shape_y)

    return pattern


def _scalar(value) -> float | None:
    data = value.const if value is not None else None
    return float(data.reshape(-1)[0]) if data is not None and data.size == 1 else None


def _scale(scale: str, sq, sk) -> float | str:
    """The product the scores are multiplied by (from the bound scale constants), or why
    it is not known."""
    if scale == "none":
        return 1.0
    q = _scalar(sq)
    k = _scalar(sk) if scale == "split" else 1.0
    if q is None or k is None:
        return "the scale is not a scalar constant"
    value = q * k if scale != "div" else 1.0 / q if q else 0.0
    return value if value > 0 and np.isfinite(value) else f"the scale {value!r} is not a positive number"


def _heads(m: Match) -> tuple[int, int, int, int] | str:
    """(H, Hkv, D, Dv) from the types of the reshaped heads, or why not."""
    shapes = []
    for name in ("q_heads", "k_heads", "v_heads"):
        t = m[name].type
        if not isinstance(t, TensorType) or t.shape is None or len(t.shape) != 4 \
                or not all(isinstance(d, int) for d in t.shape[2:]):
            return f"{name} is not [B, S, heads, head_size] with known heads and head size"
        shapes.append(t.shape)
    (_, _, h, d), (_, _, hk, dk), (_, _, hv, dv) = shapes
    if dk != d or hv != hk or h % hk:
        return f"head shapes do not pair up: q {h}x{d}, k {hk}x{dk}, v {hv}x{dv}"
    return h, hk, d, dv


def _check(scale: str):
    def check(m: Match) -> str | None:
        for name in ("xq", "xk", "xv"):
            t = m[name].type
            if not isinstance(t, TensorType) or t.shape is None or len(t.shape) != 3 or not t.dtype.is_float:
                return f"{name} is not a float tensor [batch, seq, hidden]"
        heads = _heads(m)
        if isinstance(heads, str):
            return heads
        value = _scale(scale, m.bindings.get("sq"), m.bindings.get("sk"))
        if isinstance(value, str):
            return value
        if m.constant("zero") is not None and np.any(m.constant("zero") != 0):
            return "the NaN guard does not replace NaN with 0"
        y = m.root.outputs[0].type
        h, _, _, dv = heads
        if not isinstance(y, TensorType) or y.shape is None or len(y.shape) != 3 or y.shape[2] != h * dv:
            return f"the heads are not merged back to [batch, seq, {h * dv}]"
        return None
    return check


def _replacement(scale: str, masked: bool):
    def replace(op, xq, xk, xv, q_heads, k_heads, sq, sk, bias):
        h, hk = q_heads.type.shape[2], k_heads.type.shape[2]
        return op("ember.Attention", xq, xk, xv, *([bias] if masked else []), num_heads=h,
                  kv_num_heads=hk if hk != h else None, scale=_scale(scale, sq, sk))
    return replace


def _rewrites() -> list[Rewrite]:
    rewrites = []
    for scale, masked, guarded in itertools.product(("split", "mul", "div", "none"), (True, False),
                                                    (True, False)):
        name = f"attention_scale_{scale}{'_masked' if masked else ''}{'_guarded' if guarded else ''}"
        rewrites.append(Rewrite(name, _pattern(scale, masked, guarded), _replacement(scale, masked),
                                _check(scale), commute=True))
    return rewrites


REWRITES = _rewrites()


@register_pass
class FuseAttention(RewritePass):
    name = "fuse_attention"
    rewrites = REWRITES
