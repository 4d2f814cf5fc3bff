"""ember's own neural-network ops (namespace `ember.`): the fused forms that passes
produce and kernels implement. Each is defined here once: schema, type function and
reference implementation (the numpy meaning every kernel is tested against).

    ember.Linear(x, w, bias?)  y = act(x @ w + bias)  x: [..., K], w: [K, N], bias: [N]
    ember.SkipLayerNorm(x, skip, gamma, beta?)  y = LayerNorm(x + skip), sum = x + skip
    ember.Attention(q, k, v, bias?)  softmax(q k^T * scale + bias) v, per head
    ember.SwiGLU(gate, up)  y = gate * sigmoid(gate) * up    (broadcasting like Mul)
    ember.RotaryEmbedding(x, cos, sin)  y = x * cos + rotate_half(x) * sin    (halves of the last axis)
    ember.Conv(x, w, bias?, sum?)  y = act(Conv(x, w, bias) + sum)    (ONNX Conv's attributes;
                                   channels_last=1: x, y, sum are [N, *spatial, C])
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import sympy

from ...errors import InputError, ModelError
from ..dtypes import DType
from ..graph import Node, Value
from ..kernel import TensorRef
from ..packed_qkv import split_qkv
from ..registry import AttrSpec, Known, OpDef, ParamSpec, get_op, register_op
from ._lowering import (
    KERNEL_FLOATS,
    NotLowerable,
    V,
    out_type,
    pointwise,
    register_lowering,
    rows_normalize,
    small_matmul,
    small_matmul_path,
)
from ._symbolic import broadcast, dtype_of, shape_of, tensor
from . import nn  # registers Conv and MaxPool, whose attributes ember.Conv and ember.MaxPool share

ACTIVATIONS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "": lambda y: y,
    "relu": lambda y: np.maximum(y, 0),
    "gelu": lambda y: 0.5 * y * (1 + _erf(y / np.sqrt(2))),
    "gelu_tanh": lambda y: 0.5 * y * (1 + np.tanh(np.sqrt(2 / np.pi) * (y + 0.044715 * y ** 3))),
    "silu": lambda y: y / (1 + np.exp(-y)),
    "hardswish": lambda y: y * np.clip(y / 6 + 0.5, 0, 1),  # ONNX HardSwish
}


def _erf(x: np.ndarray) -> np.ndarray:
    return np.vectorize(math.erf, otypes=[np.float64])(x)


def _linear_reference(node: Node):
    activation = ACTIVATIONS[get_op(node.op).attr(node, "activation")]

    def run(x, w, bias=None):
        y = np.matmul(x, w)
        if bias is not None:
            y = y + bias
        return (activation(y).astype(x.dtype, copy=False),)

    return run


def _linear_infer(node: Node, ins: list[Known | None]) -> list[Known | None]:
    x, w, dtype = shape_of(ins[0]), shape_of(ins[1]), dtype_of(ins[0])
    if dtype is None:
        return [None]
    if x is None or w is None:
        return [tensor(dtype, None)]
    return [tensor(dtype, (*x[:-1], w[-1]))]


register_op(OpDef(
    "ember.Linear",
    inputs=(ParamSpec("x"), ParamSpec("w"), ParamSpec("bias", optional=True)),
    outputs=(ParamSpec("y"),),
    attrs={"activation": AttrSpec("activation", "string", "")},
    reference=_linear_reference, infer=_linear_infer,
    doc="y = activation(x @ w + bias) over the last axis of x (w: [K, N], bias: [N]); "
        f"activation one of {sorted(ACTIVATIONS)}",
))


# -- ember.Attention --------------------------------------------------------------
# Scaled dot-product attention over heads, in one of two layouts:
#   packed   q: [B, Sq, H*D]   k: [B, Sk, Hkv*D]   v: [B, Sk, Hkv*Dv]  -> y: [B, Sq, H*Dv]
#   heads    q: [B, H, Sq, D]  k: [B, Hkv, Sk, D]  v: [B, Hkv, Sk, Dv] -> y: [B, H, Sq, Dv]
# scores = q k^T * scale (+ bias, broadcast to [B, H, Sq, Sk]; -inf masks a key), with
# `causal` also masking keys after the query (aligned to the end: key j is visible to
# query i when j <= i + Sk - Sq). Query heads share kv heads in groups of H / Hkv. A row
# with every key masked yields 0 (not NaN). `scale` 0 means 1/sqrt(D).
# Packed q, k and v in one tensor (k and v absent; fuse_qkv makes it from three linear
# layers, so one GEMM computes them): q: [B, S, (H + 2 Hkv) * D], the query heads first,
# then the key heads, then the value heads (split_qkv, in ember/ir/packed_qkv.py, splits it).
# Packed rows (`starts`, int64 [n + 1], with no bias): the packed layout's rows of n
# sequences of any lengths one after another, q, k, v and y [1, T, ...]; sequence b is rows
# starts[b] to starts[b + 1] (starts from 0, non-decreasing, ending at or before T; rows
# past it are left as they are) and attends to its own keys only: an encoder's batch of mixed
# lengths at the cost of its real tokens, with no padding and no mask.


def _attention_attrs(opdef: OpDef, node: Node):
    heads = opdef.attr(node, "num_heads")
    kv_heads = opdef.attr(node, "kv_num_heads") or heads
    return heads, kv_heads, opdef.attr(node, "scale"), bool(opdef.attr(node, "causal"))


def attention(q, k, v, bias=None, *, num_heads: int, kv_num_heads: int = 0,
              scale: float = 0.0, causal: bool = False) -> np.ndarray:
    """The meaning of ember.Attention, in numpy (float32 accumulation for <32-bit floats)."""
    kv_num_heads = kv_num_heads or num_heads
    packed = q.ndim == 3
    dtype = q.dtype
    compute = np.float32 if dtype.itemsize < 4 else dtype.type

    def heads(x, n):
        x = x.astype(compute, copy=False)
        return x.reshape(x.shape[0], x.shape[1], n, -1).transpose(0, 2, 1, 3) if packed else x

    q, k, v = heads(q, num_heads), heads(k, kv_num_heads), heads(v, kv_num_heads)
    if kv_num_heads != num_heads:
        k = np.repeat(k, num_heads // kv_num_heads, axis=1)
        v = np.repeat(v, num_heads // kv_num_heads, axis=1)
    scores = np.matmul(q, k.swapaxes(-1, -2)) * compute(scale or 1 / np.sqrt(q.shape[-1]))
    if bias is not None:
        scores = scores + bias.astype(compute, copy=False)
    if causal:
        sq, sk = scores.shape[-2:]
        visible = np.arange(sk)[None, :] <= np.arange(sq)[:, None] + (sk - sq)
        scores = np.where(visible, scores, -np.inf)
    top = scores.max(axis=-1, keepdims=True)
    top = np.where(np.isfinite(top), top, 0)
    e = np.exp(scores - top)
    total = e.sum(axis=-1, keepdims=True)
    probs = np.divide(e, total, out=np.zeros_like(e), where=total > 0)
    y = np.matmul(probs, v)
    if packed:
        y = y.transpose(0, 2, 1, 3).reshape(y.shape[0], y.shape[2], -1)
    return y.astype(dtype, copy=False)


def check_starts(starts: np.ndarray, rows: int) -> None:
    """Raise InputError unless `starts` splits `rows` packed rows into sequences: a vector
    from 0, non-decreasing, ending at or before `rows`."""
    starts = np.asarray(starts)
    if (starts.ndim != 1 or not len(starts) or starts[0] != 0 or (np.diff(starts) < 0).any()
            or starts[-1] > rows):
        shown = starts.tolist() if starts.size <= 8 else f"{starts[:8].tolist()}..."
        raise InputError(f"ember.Attention's starts {shown} do not split its {rows} rows into sequences "
                         "(they must run from 0, never decrease and end at or before the rows)")


def _attention_reference(node: Node):
    heads, kv_heads, scale, causal = _attention_attrs(get_op(node.op), node)

    def run(q, k=None, v=None, bias=None, starts=None):
        if k is None:
            q, k, v = split_qkv(q, heads, kv_heads)
        if starts is None:
            return (attention(q, k, v, bias, num_heads=heads, kv_num_heads=kv_heads, scale=scale,
                              causal=causal),)
        if bias is not None or q.ndim != 3:
            raise ModelError("ember.Attention takes packed rows (starts) in the packed layout and with no bias")
        check_starts(starts, q.shape[1])
        y = np.zeros(q.shape[:2] + (v.shape[2] * heads // kv_heads,), q.dtype)
        for first, end in zip(starts[:-1].tolist(), starts[1:].tolist()):
            if end > first:
                y[:, first:end] = attention(q[:, first:end], k[:, first:end], v[:, first:end], num_heads=heads,
                                            kv_num_heads=kv_heads, scale=scale, causal=causal)
        return (y,)

    return run


def _attention_infer(node: Node, ins: list[Known | None]) -> list[Known | None]:
    heads, kv_heads, _, _ = _attention_attrs(get_op(node.op), node)
    k, v_known = (list(ins[1:3]) + [None, None])[:2]  # trailing absent inputs may be left out
    dtype, q, v = dtype_of(ins[0]), shape_of(ins[0]), shape_of(v_known)
    if dtype is None:
        return [None]
    if k is None and v_known is None:  # packed q, k, v
        if q is None or len(q) != 3:
            return [tensor(dtype, None)]
        width = sympy.sympify(q[2]) * heads / (heads + 2 * kv_heads)
        return [tensor(dtype, (q[0], q[1], int(width) if width.is_Integer else width))]
    if q is None or v is None or len(q) not in (3, 4) or len(v) != len(q):
        return [tensor(dtype, None)]
    if len(q) == 4:
        return [tensor(dtype, (*q[:3], v[3]))]
    width = sympy.sympify(v[2]) * heads / kv_heads
    return [tensor(dtype, (q[0], q[1], int(width) if width.is_Integer else width))]


# the heads of an attention op (ember.Attention, ember.PagedAttention): kv_num_heads 0
# means num_heads, scale 0 means 1/sqrt(head size)
HEAD_ATTRS = {"num_heads": AttrSpec("num_heads", "int", required=True),
              "kv_num_heads": AttrSpec("kv_num_heads", "int", 0),
              "scale": AttrSpec("scale", "float", 0.0)}

register_op(OpDef(
    "ember.Attention",
    inputs=(ParamSpec("q"), ParamSpec("k", optional=True), ParamSpec("v", optional=True),
            ParamSpec("bias", optional=True), ParamSpec("starts", optional=True)),
    outputs=(ParamSpec("y"),),
    attrs={**HEAD_ATTRS, "causal": AttrSpec("causal", "int", 0)},
    reference=_attention_reference, infer=_attention_infer,
    doc="softmax(q k^T * scale + bias) v over heads; packed [B, S, H*D] or [B, H, S, D] layout; "
        "k and v absent: q packs all three, [B, S, (H + 2 Hkv) * D]; starts (int64 [n + 1], no bias): "
        "[1, T, ...] rows of n sequences, each attending within itself",
))


# -- ember.SkipLayerNorm ----------------------------------------------------------
def _skip_layernorm_reference(node: Node):
    eps = get_op(node.op).attr(node, "epsilon")

    def run(x, skip, gamma, beta=None):
        total = x + skip
        h = total.astype(np.float32) if total.dtype.itemsize < 4 else total
        mean = h.mean(axis=-1, keepdims=True)
        centered = h - mean
        y = centered / np.sqrt((centered * centered).mean(axis=-1, keepdims=True) + eps) * gamma
        if beta is not None:
            y = y + beta
        return y.astype(x.dtype, copy=False), total

    return run


def _skip_layernorm_infer(node: Node, ins: list[Known | None]) -> list[Known | None]:
    dtype, x = dtype_of(ins[0]), shape_of(ins[0])
    if dtype is None:
        return [None, None]
    return [tensor(dtype, x), tensor(dtype, x)]


register_op(OpDef(
    "ember.SkipLayerNorm",
    inputs=(ParamSpec("x"), ParamSpec("skip"), ParamSpec("gamma"), ParamSpec("beta", optional=True)),
    outputs=(ParamSpec("y"), ParamSpec("sum", optional=True)),
    attrs={"epsilon": AttrSpec("epsilon", "float", 1e-5)},
    reference=_skip_layernorm_reference, infer=_skip_layernorm_infer,
    doc="sum = x + skip (same shape); y = LayerNormalization(sum, gamma, beta) over the last axis",
))


# -- ember.SwiGLU, ember.RotaryEmbedding ------------------------------------------
def _broadcast_infer(node: Node, ins: list[Known | None]) -> list[Known | None]:
    dtype = dtype_of(ins[0])
    return [None if dtype is None else tensor(dtype, broadcast(*(shape_of(k) for k in ins)))]


def _swiglu_reference(node: Node):
    def run(gate, up):
        return ((gate * np.exp(-np.logaddexp(0, -gate)) * up).astype(gate.dtype, copy=False),)

    return run


register_op(OpDef(
    "ember.SwiGLU",
    inputs=(ParamSpec("gate"), ParamSpec("up")),
    outputs=(ParamSpec("y"),),
    reference=_swiglu_reference, infer=_broadcast_infer,
    doc="y = gate * sigmoid(gate) * up, elementwise with broadcasting",
))


def rotate_half(x: np.ndarray) -> np.ndarray:
    half = x.shape[-1] // 2
    return np.concatenate([-x[..., half:], x[..., :half]], axis=-1)


def _rotary_reference(node: Node):
    def run(x, cos, sin):
        return ((x * cos + rotate_half(x) * sin).astype(x.dtype, copy=False),)

    return run


register_op(OpDef(
    "ember.RotaryEmbedding",
    inputs=(ParamSpec("x"), ParamSpec("cos"), ParamSpec("sin")),
    outputs=(ParamSpec("y"),),
    reference=_rotary_reference, infer=_broadcast_infer,
    doc="y = x * cos + rotate_half(x) * sin; rotate_half(x) = concat(-x2, x1) of the last axis' halves "
        "(cos, sin: broadcastable to x, last dim that of x)",
))


# -- ember.Conv -------------------------------------------------------------------------
# ONNX Conv with an epilogue: an optional residual `sum` of the output's shape, then an
# activation. What fuse_conv makes of Conv -> Add -> Relu chains (BatchNormalization
# already folded into the weights); one oneDNN call runs it all. With channels_last=1
# the activations (x, sum, y) are stored channels-last, [N, *spatial, C], the layout
# CPU convolution kernels read without reordering (the filter keeps ONNX's layout).
def _to_channels_first(a: np.ndarray) -> np.ndarray:
    return np.moveaxis(a, -1, 1)


def _to_channels_last(a: np.ndarray) -> np.ndarray:
    return np.moveaxis(a, 1, -1)


def _standard_node(node: Node, op: str, num_inputs: int) -> Node:
    """The standard ONNX node `op` this ember op extends: its first inputs, its attributes."""
    attrs = {k: v for k, v in node.attrs.items() if k in get_op(op).attrs}
    inputs = list(node.inputs[:num_inputs])
    while inputs and inputs[-1] is None:
        inputs.pop()
    # fresh output values: a Node takes ownership (producer) of the values it is given
    return Node(op, inputs, [Value(v.name, v.type) for v in node.outputs], attrs, node.name)


def _conv_node(node: Node) -> Node:
    return _standard_node(node, "Conv", 3)


def _channels_last_infer(op: str, num_inputs: int):
    """The type function of an op that is standard `op` on channels-last activations
    (when its channels_last attribute is set)."""
    def infer(node: Node, ins: list[Known | None]) -> list[Known | None]:
        base = _standard_node(node, op, num_inputs)
        if not get_op(node.op).attr(node, "channels_last"):
            return get_op(op).infer(base, ins[:num_inputs])
        x, dtype = shape_of(ins[0]), dtype_of(ins[0])
        if x is None:
            return [tensor(dtype, None) if dtype else None]
        (y,) = get_op(op).infer(base, [tensor(dtype, (x[0], x[-1], *x[1:-1])), *ins[1:num_inputs]])
        if y is None or shape_of(y) is None:
            return [y]
        shape = shape_of(y)
        return [tensor(dtype_of(y), (shape[0], *shape[2:], shape[1]))]
    return infer


def _fused_conv_reference(node: Node):
    conv = get_op("Conv").reference(_conv_node(node))
    activation = ACTIVATIONS[get_op(node.op).attr(node, "activation")]
    last = bool(get_op(node.op).attr(node, "channels_last"))

    def run(x, w, bias=None, total=None):
        (y,) = conv(_to_channels_first(x) if last else x, w, bias)
        y = _to_channels_last(y) if last else y
        if total is not None:
            y = y + total
        return (np.ascontiguousarray(activation(y)).astype(x.dtype, copy=False),)

    return run


register_op(OpDef(
    "ember.Conv",
    inputs=(ParamSpec("x"), ParamSpec("w"), ParamSpec("bias", optional=True), ParamSpec("sum", optional=True)),
    outputs=(ParamSpec("y"),),
    attrs={**{k: v for k, v in get_op("Conv").attrs.items()},
           "activation": AttrSpec("activation", "string", ""),
           "channels_last": AttrSpec("channels_last", "int", 0)},
    reference=_fused_conv_reference, infer=_channels_last_infer("Conv", 3),
    doc="y = activation(Conv(x, w, bias) + sum), Conv with ONNX's attributes; sum (optional) has y's shape; "
        f"activation one of {sorted(ACTIVATIONS)}",
))


# ember.MaxPool: ONNX MaxPool (one output) on channels-last activations, so a CNN's stem
# pools without leaving the layout its convolutions use.
def _max_pool_reference(node: Node):
    pool = get_op("MaxPool").reference(_standard_node(node, "MaxPool", 1))

    def run(x):
        (y,) = pool(_to_channels_first(x))
        return (np.ascontiguousarray(_to_channels_last(y)),)

    return run


register_op(OpDef(
    "ember.MaxPool",
    inputs=(ParamSpec("x"),),
    outputs=(ParamSpec("y"),),
    attrs={**{k: v for k, v in get_op("MaxPool").attrs.items()},
           "channels_last": AttrSpec("channels_last", "int", 1)},
    reference=_max_pool_reference, infer=_channels_last_infer("MaxPool", 1),
    doc="ONNX MaxPool (values only) on x: [N, *spatial, C] -> y: [N, *out_spatial, C]",
))


# -- Kernel IR lowerings ----------------------------------------------------------------


def _lower_linear(ctx, node, ins):
    x, w = ins[0], ins[1]
    bias = ins[2] if len(ins) > 2 else None
    # 16-bit floats on every target, as MatMul's: torch's GEMM accumulates in float32
    if x.dtype not in KERNEL_FLOATS or len(w.shape) != 2:
        raise NotLowerable("not a float matrix weight")
    activation = get_op(node.op).attr(node, "activation")
    weight = node.inputs[1]
    if weight.is_constant:  # [K, N]
        small = small_matmul(ctx, x, np.asarray(weight.const).T, bias, activation, out_type(node)[1])
        if small is not None:
            return [small]
    # the extern applies the activation (oneDNN runs it as a post-op of the GEMM)
    outs = ctx.extern("linear", [x, w, bias], [out_type(node)], activation=activation)
    if weight.is_constant:
        small_matmul_path(ctx, outs[0], x, np.asarray(weight.const).T, bias, activation)
    return outs


def _lower_attention(ctx, node, ins):
    if ins[0].dtype not in ctx.extern_floats:
        raise NotLowerable("not float (of a dtype the target's attention takes)")
    heads, kv_heads, scale, causal = _attention_attrs(get_op(node.op), node)
    q, k, v, bias, starts = (list(ins) + [None] * 5)[:5]  # packed q, k, v without a bias: one input
    if starts is not None and (bias is not None or causal or len(q.shape) != 3):
        raise NotLowerable("packed rows with a bias, a causal mask or not in the packed layout")
    return ctx.extern("attention", [q, k, v, bias, starts], [out_type(node)], num_heads=heads,
                      kv_num_heads=kv_heads, scale=scale, causal=causal)


def _lower_skip_layernorm(ctx, node, ins):
    x, skip, gamma = ins[0], ins[1], ins[2]
    beta = ins[3] if len(ins) > 3 else None
    if x.dtype not in KERNEL_FLOATS:  # (normalized in float32)
        raise NotLowerable("not float")
    eps = get_op(node.op).attr(node, "epsilon")
    total = ctx.pointwise(x.shape, x.dtype, lambda b, i: (V(b, x.load(b, i), x.dtype) + V(b, skip.load(b, i), x.dtype)).name,
                          cost=1 + x.cost + skip.cost)
    want_sum = len(node.outputs) > 1 and node.outputs[1] is not None
    sum_buf = ctx.new_buffer("sum", x.dtype, x.shape) if want_sum else None
    store = (lambda b, i, v: b.store(sum_buf, i, v.name)) if want_sum else None
    y = rows_normalize(ctx, total, len(x.shape) - 1, eps, gamma, beta, also_store=store)
    if not want_sum:
        return [y]

    return [y, TensorRef(x.dtype, x.shape, buffer=sum_buf)]


def _lower_swiglu(ctx, node, ins):
    if ins[0].dtype not in KERNEL_FLOATS:
        raise NotLowerable("not float")
    return [pointwise(ctx, node, ins, lambda g, u: g * g.sigmoid() * u)]


def _lower_rotary(ctx, node, ins):
    """x * cos + rotate_half(x) * sin as one pointwise kernel: element i of the last axis
    reads its partner (i + d/2) mod d, negated in the first half."""
    x, cos, sin = ins
    dtype, shape = out_type(node)
    d = x.shape[-1] if x.shape else None
    if x.dtype not in KERNEL_FLOATS or not isinstance(d, int) or d % 2:
        raise NotLowerable("not float, or a last axis of no static even size")
    half = d // 2

    def load(b, index):
        i = index[-1]
        partner = (*index[:-1], sympy.Mod(i + half, d))
        value = V(b, x.load(b, ctx.broadcast(x, index, shape)), x.dtype)
        other = V(b, x.load(b, ctx.broadcast(x, partner, shape)), x.dtype)
        rotated = (V(b, b.index(i), DType.int64) < half).where(-other, other)
        c = V(b, cos.load(b, ctx.broadcast(cos, index, shape)), cos.dtype).cast(x.dtype)
        s = V(b, sin.load(b, ctx.broadcast(sin, index, shape)), sin.dtype).cast(x.dtype)
        return (value * c + rotated * s).cast(dtype).name

    return [ctx.pointwise(shape, dtype, load, cost=8 + 2 * x.cost + cos.cost + sin.cost)]


def _lower_fused_conv(ctx, node, ins):
    total = ins[3] if len(ins) > 3 else None
    activation = get_op(node.op).attr(node, "activation")
    return nn.lower_conv(ctx, _conv_node(node), ins[:3], total=total, activation=activation,
                         channels_last=bool(get_op(node.op).attr(node, "channels_last")))


register_lowering("ember.Linear")(_lower_linear)
register_lowering("ember.Conv")(_lower_fused_conv)
register_lowering("ember.MaxPool")(lambda ctx, node, ins: nn.lower_max_pool(ctx, _standard_node(node, "MaxPool", 1),
                                                                             ins, channels_last=True))
register_lowering("ember.Attention")(_lower_attention)
register_lowering("ember.RotaryEmbedding")(_lower_rotary)
register_lowering("ember.SkipLayerNorm")(_lower_skip_layernorm)
register_lowering("ember.SwiGLU")(_lower_swiglu)
