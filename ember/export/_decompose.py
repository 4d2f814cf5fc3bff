"""ember's ops as standard ONNX ops: one decomposition per op, each computing exactly
what the op's reference implementation (`ir/ops/ember_nn.py`) computes. They undo the
fusion passes (`passes/fuse_*.py`), written as ONNX nodes.

A decomposition is `(builder, node, input names) -> output names`: it builds nodes with
`b.Op(inputs..., attr=...)` (an input may be a numpy array: it becomes an initializer)
and returns, per output of the node, the name that holds it; the writer then gives
those values the node's output names."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from onnx import helper, numpy_helper

from ..errors import UnsupportedError
from ..ir.dtypes import DType
from ..ir.graph import Node
from ..ir.registry import get_op

Name = str


class Builder:
    """Builds the standard nodes that replace one ember node."""

    def __init__(self, names, node: Node):
        self._names = names  # the writer's allocator: fresh names never clash with the model's
        self._prefix = node.name or node.op_type
        self.nodes: list = []
        self.initializers: list = []
        self._renamed: dict[Name, Name] = {}  # built name -> the node output name it became

    def __getattr__(self, op_type: str) -> Callable[..., Name]:
        if not op_type[:1].isupper():
            raise AttributeError(op_type)
        return lambda *inputs, **attrs: self.op(op_type, *inputs, **attrs)

    def op(self, op_type: str, *inputs, _outputs: int = 1, **attrs) -> Name | list[Name]:
        names = [self._input(x) for x in inputs]
        while names and names[-1] == "":
            names.pop()
        outputs = [self._names.fresh(f"{self._prefix}/{op_type}") for _ in range(_outputs)]
        self.nodes.append(helper.make_node(op_type, names, outputs, name=outputs[0],
                                           **{k: v for k, v in attrs.items() if v is not None}))
        return outputs[0] if _outputs == 1 else outputs

    def const(self, data) -> Name:
        name = self._names.fresh(f"{self._prefix}/const")
        self.initializers.append(numpy_helper.from_array(np.asarray(data), name))
        return name

    def _input(self, x) -> Name:
        if x is None:
            return ""
        return x if isinstance(x, str) else self.const(x)

    def rename(self, name: Name, new: Name) -> None:
        """Make the value `name` (built here) be called `new`; through an Identity when it
        is not this builder's own (an input passed through) or already renamed."""
        if name in self._renamed:  # one value for two outputs: the second is a copy of the first
            name = self._renamed[name]
        elif any(name in n.output for n in self.nodes):
            for n in self.nodes:
                n.input[:] = [new if i == name else i for i in n.input]
                n.output[:] = [new if o == name else o for o in n.output]
            self._renamed[name] = new
            return
        self.nodes.append(helper.make_node("Identity", [name], [new], name=f"{new}/Identity"))


def _ints(*values: int) -> np.ndarray:
    return np.array(values, np.int64)


def _input_type(node: Node, i: int):
    value = node.inputs[i]
    if value is None or value.type is None or getattr(value.type, "dtype", None) is None:
        raise UnsupportedError(f"{node.describe()}: the type of input {i} is unknown; "
                               "it cannot be decomposed into standard ops")
    return value.type


def _activation(b: Builder, node: Node, y: Name) -> Name:
    """ember_nn.ACTIVATIONS, as ONNX ops."""
    activation = get_op(node.op).attr(node, "activation") or ""
    if activation == "":
        return y
    if activation == "relu":
        return b.Relu(y)
    if activation == "gelu":
        return b.Gelu(y, approximate="none")
    if activation == "gelu_tanh":
        return b.Gelu(y, approximate="tanh")
    if activation == "silu":
        return b.Mul(y, b.Sigmoid(y))
    if activation == "hardswish":
        return b.HardSwish(y)
    raise UnsupportedError(f"{node.describe()}: activation {activation!r} has no decomposition")


# -- ember.Linear: y = act(x @ w + bias) ------------------------------------------------
def _linear(b: Builder, node: Node, ins: list[Name | None]) -> list[Name]:
    x, w, bias = (ins + [None])[:3]
    y = b.MatMul(x, w)
    if bias is not None:
        y = b.Add(y, bias)
    return [_activation(b, node, y)]


# -- ember.QuantizedLinear: the same with the weight's blocks dequantized -------------------
def _quantized_linear(b: Builder, node: Node, ins: list[Name | None]) -> list[Name]:
    """A constant weight's blocks dequantized into a float32 [K, N] initializer: the
    reference's meaning, in standard ops (the file holds the float weight)."""
    from ..ir.quant_formats import block_format

    blocks = node.inputs[1].const
    if blocks is None:
        raise UnsupportedError(f"{node.describe()}: a quantized weight fed at run time has no standard-ONNX form")
    w = block_format(get_op(node.op).attr(node, "format")).dequantize(np.asarray(blocks)).T
    return _linear(b, node, [ins[0], b.const(np.ascontiguousarray(w)), *ins[2:]])


def _quantized_gather(b: Builder, node: Node, ins: list[Name | None]) -> list[Name]:
    """An embedding's blocks dequantized into a float32 [V, K] initializer, then Gather."""
    from ..ir.quant_formats import block_format

    blocks = node.inputs[0].const
    if blocks is None:
        raise UnsupportedError(f"{node.describe()}: a quantized table fed at run time has no standard-ONNX form")
    table = block_format(get_op(node.op).attr(node, "format")).dequantize(np.asarray(blocks))
    return [b.Gather(b.const(np.ascontiguousarray(table)), ins[1], axis=0)]


# -- ember.Attention: softmax(q k^T * scale + bias) v per head ----------------------------
def _attention(b: Builder, node: Node, ins: list[Name | None]) -> list[Name]:
    opdef = get_op(node.op)
    heads = opdef.attr(node, "num_heads")
    kv_heads = opdef.attr(node, "kv_num_heads") or heads
    scale, causal = opdef.attr(node, "scale"), bool(opdef.attr(node, "causal"))
    q, k, v, bias = (ins + [None] * 4)[:4]
    qt = _input_type(node, 0)
    if qt.rank not in (3, 4):
        raise UnsupportedError(f"{node.describe()}: q of rank {qt.rank}; the layouts are [B, S, H*D] and [B, H, S, D]")
    packed = qt.rank == 3
    # the reference computes in float32 for floats narrower than that
    compute = DType.float32 if qt.dtype.bits < 32 else qt.dtype
    cast = (lambda x: b.Cast(x, to=compute.onnx_code)) if compute is not qt.dtype else (lambda x: x)

    if k is None and v is None:  # q, k, v packed in one [B, S, (H + 2 Hkv) * D]
        split = b.Transpose(b.Reshape(cast(q), _ints(0, 0, heads + 2 * kv_heads, -1)), perm=[0, 2, 1, 3])
        q, k, v = b.Split(split, _ints(heads, kv_heads, kv_heads), axis=1, _outputs=3)
        head_size = qt.shape[-1] // (heads + 2 * kv_heads) if isinstance(qt.shape[-1], int) else None
    else:
        q, k, v = (_heads_first(b, cast(x), n, packed) for x, n in ((q, heads), (k, kv_heads), (v, kv_heads)))
        last = qt.shape[-1]
        head_size = (last // heads if packed else last) if isinstance(last, int) else None
    groups = heads // kv_heads
    k, v = _repeat_heads(b, k, kv_heads, groups), _repeat_heads(b, v, kv_heads, groups)

    # scale 0 means 1/sqrt(head size), in the compute type as the reference rounds it
    if scale:
        factor = np.array(scale, compute.numpy)
    elif head_size is not None:
        factor = np.array(1 / np.sqrt(head_size), compute.numpy)
    else:
        size = b.Cast(b.Shape(q, start=3, end=4), to=compute.onnx_code)
        factor = b.Reciprocal(b.Sqrt(b.Squeeze(size, _ints(0))))
    scores = b.Mul(b.MatMul(q, b.Transpose(k, perm=[0, 1, 3, 2])), factor)
    if bias is not None:
        scores = b.Add(scores, cast(bias))
    if causal:
        scores = _causal_mask(b, scores, compute)
    probs = _softmax_of_masked(b, scores, compute) if bias is not None or causal else b.Softmax(scores, axis=-1)
    y = b.MatMul(probs, v)
    if packed:
        y = b.Reshape(b.Transpose(y, perm=[0, 2, 1, 3]), _ints(0, 0, -1))
    return [b.Cast(y, to=qt.dtype.onnx_code) if compute is not qt.dtype else y]


def _heads_first(b: Builder, x: Name, num_heads: int, packed: bool) -> Name:
    """[B, S, n*D] -> [B, n, S, D]; the heads layout is that already."""
    return b.Transpose(b.Reshape(x, _ints(0, 0, num_heads, -1)), perm=[0, 2, 1, 3]) if packed else x


def _repeat_heads(b: Builder, x: Name, num_heads: int, groups: int) -> Name:
    """[B, n, S, D] -> [B, n*groups, S, D], each head `groups` times in a row (np.repeat on
    axis 1: query heads share kv heads in groups)."""
    if groups == 1:
        return x
    expanded = b.Expand(b.Unsqueeze(x, _ints(2)), _ints(1, 1, groups, 1, 1))
    return b.Reshape(expanded, b.Concat(_ints(0, num_heads * groups), b.Shape(x, start=2), axis=0))


def _causal_mask(b: Builder, scores: Name, compute: DType) -> Name:
    """-inf where key j comes after query i (aligned to the end: visible when j <= i + Sk - Sq)."""
    sq = b.Squeeze(b.Shape(scores, start=-2, end=-1), _ints(0))
    sk = b.Squeeze(b.Shape(scores, start=-1), _ints(0))
    last_visible = b.Unsqueeze(b.Add(b.Range(np.array(0, np.int64), sq, np.array(1, np.int64)), b.Sub(sk, sq)),
                               _ints(1))
    visible = b.LessOrEqual(b.Range(np.array(0, np.int64), sk, np.array(1, np.int64)), last_visible)
    return b.Where(visible, scores, np.array(-np.inf, compute.numpy))


def _softmax_of_masked(b: Builder, scores: Name, compute: DType) -> Name:
    """Softmax over the last axis where a row whose keys are all masked (-inf) gives 0,
    not NaN: the max is taken as 0 when it is infinite, and 0/0 is 0."""
    top = b.ReduceMax(scores, _ints(-1), keepdims=1)
    zero = np.array(0, compute.numpy)
    e = b.Exp(b.Sub(scores, b.Where(b.IsInf(top), zero, top)))
    total = b.ReduceSum(e, _ints(-1), keepdims=1)
    return b.Where(b.Greater(total, zero), b.Div(e, total), zero)


# -- ember.SkipLayerNorm: sum = x + skip, y = LayerNorm(sum) ------------------------------
def _skip_layernorm(b: Builder, node: Node, ins: list[Name | None]) -> list[Name]:
    x, skip, gamma, beta = (ins + [None])[:4]
    total = b.Add(x, skip)
    y = b.LayerNormalization(total, gamma, beta, axis=-1, epsilon=float(get_op(node.op).attr(node, "epsilon")))
    return [y, total]


# -- ember.SwiGLU: y = gate * sigmoid(gate) * up -------------------------------------------
def _swiglu(b: Builder, node: Node, ins: list[Name | None]) -> list[Name]:
    gate, up = ins
    return [b.Mul(b.Mul(gate, b.Sigmoid(gate)), up)]


# -- ember.RotaryEmbedding: y = x * cos + rotate_half(x) * sin ----------------------------
def _rotary(b: Builder, node: Node, ins: list[Name | None]) -> list[Name]:
    x, cos, sin = ins
    dtype = _input_type(node, 0).dtype
    cos, sin = (b.Cast(t, to=dtype.onnx_code) if _input_type(node, i).dtype is not dtype else t
                for i, t in ((1, cos), (2, sin)))
    # rotate_half(x) = concat(-x[..., d//2:], x[..., :d//2])
    half = b.Div(b.Shape(x, start=-1), _ints(2))
    first = b.Slice(x, _ints(0), half, _ints(-1))
    second = b.Slice(x, half, _ints(np.iinfo(np.int64).max), _ints(-1))
    rotated = b.Concat(b.Neg(second), first, axis=-1)
    return [b.Add(b.Mul(x, cos), b.Mul(rotated, sin))]


# -- ember.Conv: y = act(Conv(x, w, bias) + sum); ember.MaxPool ---------------------------
def _layout_perms(rank: int) -> tuple[list[int], list[int]]:
    """(channels-last -> channels-first, channels-first -> channels-last) for `rank` dims."""
    return [0, rank - 1, *range(1, rank - 1)], [0, *range(2, rank), 1]


def _standard_attrs(node: Node, op: str) -> dict:
    return {k: v for k, v in node.attrs.items() if k in get_op(op).attrs and v is not None}


def _conv(b: Builder, node: Node, ins: list[Name | None]) -> list[Name]:
    x, w, bias, total = (ins + [None] * 2)[:4]
    channels_last = bool(get_op(node.op).attr(node, "channels_last"))
    if channels_last:
        to_first, to_last = _layout_perms(_input_type(node, 1).rank)  # w: [M, C/group, *kernel]
        x = b.Transpose(x, perm=to_first)
    y = b.Conv(x, w, bias, **_standard_attrs(node, "Conv"))
    if channels_last:
        y = b.Transpose(y, perm=to_last)
    if total is not None:
        y = b.Add(y, total)
    return [_activation(b, node, y)]


def _max_pool(b: Builder, node: Node, ins: list[Name | None]) -> list[Name]:
    # the reference pools x as channels-last whatever the attribute says
    to_first, to_last = _layout_perms(_input_type(node, 0).rank)
    y = b.MaxPool(b.Transpose(ins[0], perm=to_first), **_standard_attrs(node, "MaxPool"))
    return [b.Transpose(y, perm=to_last)]


# -- Swish: standard since opset 24 (fuse_silu writes it), but onnxruntime 1.32's CPU
# provider has no kernel for it -------------------------------------------------------------
def _swish(b: Builder, node: Node, ins: list[Name | None]) -> list[Name]:
    (x,) = ins
    alpha = float(get_op(node.op).attr(node, "alpha"))
    dtype = _input_type(node, 0).dtype
    return [b.Mul(x, b.Sigmoid(x if alpha == 1.0 else b.Mul(x, np.array(alpha, dtype.numpy))))]


Decomposition = Callable[[Builder, Node, list], list]

DECOMPOSITIONS: dict[str, Decomposition] = {
    "ember.Linear": _linear,
    "ember.QuantizedLinear": _quantized_linear,
    "ember.QuantizedGather": _quantized_gather,
    "ember.Attention": _attention,
    "ember.SkipLayerNorm": _skip_layernorm,
    "ember.SwiGLU": _swiglu,
    "ember.RotaryEmbedding": _rotary,
    "ember.Conv": _conv,
    "ember.MaxPool": _max_pool,
    "Swish": _swish,
}

NOT_DECOMPOSABLE = {
    "ember.PagedAttention": "it reads and writes the paged KV cache in place, state that standard ONNX "
                            "ops cannot express",
    "ember.AllReduce": "a collective between the ranks of a tensor-parallel group, which one standard ONNX graph "
                       "cannot express",
    "ember.AllGather": "a collective between the ranks of a tensor-parallel group, which one standard ONNX graph "
                       "cannot express",
}
