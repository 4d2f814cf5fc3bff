"""channels_last: 2-d convolutions read and write channels-last activations.

    Conv(x, W, b) | ember.Conv(x, W, b, r)              x: [N, C, H, W] float32
        -> Transpose(ember.Conv(Transpose(x, NHWC), W, b, Transpose(r, NHWC),
                                channels_last=1), NCHW)

CPU convolution kernels (oneDNN's) work on [N, H, W, C]; handed [N, C, H, W] they
reorder the input and the output on every call. After this pass the transposes between
two convolutions are inverse pairs: eliminate_common_subexpressions merges the copies
of one transpose and canonicalize cancels the pairs, so a ResNet converts its layout
once at the input and once before the pooling head (onnxruntime's NHWC transformer does
the same). A MaxPool reading channels-last activations becomes ember.MaxPool on them.
Elementwise ops let the transpose back to channels-first move past them
(`sink_transposes`), their other operands permuted alike, even where the transpose has
other readers; a GlobalAveragePool becomes a spatial mean on the way. PP-OCR's and
PicoDet's backbones went from 86-199 transposes to 2-36.

    MaxPool(Transpose(y, NCHW)) -> Transpose(ember.MaxPool(y, channels_last=1), NCHW)
    AveragePool(Transpose(y, NCHW)) over the whole image | GlobalAveragePool(Transpose(y, NCHW))
        -> Transpose(ReduceMean(y, axes=[1, 2], keepdims=1), NCHW)"""

from __future__ import annotations

import numpy as np

from ..ir.graph import Node, Value
from ..ir.types import TensorType
from .base import PassResult
from .fuse_conv import CONV_ATTRS
from .registry import register_pass
from .rewriter import Match, Rewrite, RewritePass

TO_LAST, TO_FIRST = [0, 2, 3, 1], [0, 3, 1, 2]


def _check(m: Match) -> str | None:
    x = m["x"].type
    if x is None or x.shape is None or len(x.shape) != 4 or x.dtype.name != "float32":
        return "not a float32 2-d convolution"
    return None


def _rewrite(source: str, num_inputs: int) -> Rewrite:
    def pattern(op, x, w, b, r, activation, auto_pad, dilations, group, kernel_shape, pads, strides):
        attrs = dict(zip(CONV_ATTRS, (auto_pad, dilations, group, kernel_shape, pads, strides)))
        if source == "ember.Conv":
            attrs.update(activation=activation, channels_last=0)
        return op(source, *[x, w, b, r][:num_inputs], **attrs)

    def replacement(op, x, w, b, r, activation, auto_pad, dilations, group, kernel_shape, pads, strides):
        attrs = dict(zip(CONV_ATTRS, (auto_pad, dilations, group, kernel_shape, pads, strides)))
        inputs = [op.Transpose(x, perm=TO_LAST), w, b if num_inputs > 2 else None,
                  op.Transpose(r, perm=TO_LAST) if r is not None else None]
        while inputs[-1] is None:
            inputs.pop()
        y = op("ember.Conv", *inputs, **attrs, activation=activation or "", channels_last=1)
        return op.Transpose(y, perm=TO_FIRST)

    return Rewrite(f"{source.lower()}{num_inputs}_channels_last", pattern, replacement, _check)


POOL_ATTRS = ("auto_pad", "ceil_mode", "dilations", "kernel_shape", "pads", "storage_order", "strides")


def _max_pool_pattern(op, y, auto_pad, ceil_mode, dilations, kernel_shape, pads, strides):
    return op.MaxPool(op.Transpose(y, perm=TO_FIRST), auto_pad=auto_pad, ceil_mode=ceil_mode, dilations=dilations,
                      kernel_shape=kernel_shape, pads=pads, storage_order=0, strides=strides)


def _max_pool_replacement(op, y, auto_pad, ceil_mode, dilations, kernel_shape, pads, strides):
    pooled = op("ember.MaxPool", y, auto_pad=auto_pad, ceil_mode=ceil_mode, dilations=dilations,
                kernel_shape=kernel_shape, pads=pads, strides=strides, channels_last=1)
    return op.Transpose(pooled, perm=TO_FIRST)


# a max pool of channels-last activations pools them where they are (ResNet's stem)
MAX_POOL = Rewrite("max_pool_channels_last", _max_pool_pattern, _max_pool_replacement)


# an average pool over the whole image of channels-last activations is a mean over their
# spatial axes (ResNet's head): one reduction, no layout change of the activations
def _whole_image_pool_pattern(op, y, kernel_shape, strides, pads, dilations, auto_pad, ceil_mode, count_include_pad):
    return op.AveragePool(op.Transpose(y, perm=TO_FIRST), kernel_shape=kernel_shape, strides=strides, pads=pads,
                          dilations=dilations, auto_pad=auto_pad, ceil_mode=ceil_mode,
                          count_include_pad=count_include_pad)


def _whole_image_check(m: Match) -> str | None:
    y = m["y"].type
    if y is None or y.shape is None or len(y.shape) != 4 or y.dtype.name != "float32":
        return "not a float32 2-d pool"
    spatial = list(y.shape[1:3])
    if not all(isinstance(d, int) for d in spatial) or list(m["kernel_shape"]) != spatial:
        return "the window is not the whole (static) image"
    if any(m["pads"] or []) or any(d != 1 for d in (m["dilations"] or [])) or m["auto_pad"] not in ("", "NOTSET", "VALID"):
        return "padded or dilated"
    return None


def _spatial_mean(op, y):
    """The mean of [N, H, W, C] activations over H and W, as [N, C, 1, 1]."""
    return op.Transpose(op.ReduceMean(y, op.constant(np.array([1, 2], np.int64)), keepdims=1), perm=TO_FIRST)


def _whole_image_replacement(op, y, kernel_shape, strides, pads, dilations, auto_pad, ceil_mode, count_include_pad):
    return _spatial_mean(op, y)


WHOLE_IMAGE_POOL = Rewrite("whole_image_average_pool_channels_last", _whole_image_pool_pattern,
                           _whole_image_replacement, _whole_image_check)


def _global_pool_pattern(op, y):
    return op.GlobalAveragePool(op.Transpose(y, perm=TO_FIRST))


def _global_pool_check(m: Match) -> str | None:
    y = m["y"].type
    return None if y is not None and y.shape is not None and len(y.shape) == 4 else "not a 2-d pool"


GLOBAL_POOL = Rewrite("global_average_pool_channels_last", _global_pool_pattern, _spatial_mean, _global_pool_check)

# elementwise ops do not care about layout: a transpose back to channels-first moves past
# them (`sink_transposes`), so the activations between two convolutions stay channels-last
# (MobileNetV3's HardSwish between every pair, PP-OCR's SE blocks), as onnxruntime's NHWC
# transformer moves its transposes; canonicalize then cancels the pairs this leaves
UNARY = ("Relu", "Sigmoid", "Tanh", "HardSwish", "Abs", "Neg", "Exp", "Sqrt", "Softsign", "Softplus", "Erf",
         "Mish", "Identity", "Reciprocal", "Floor", "Ceil", "Round", "Sign", "Not", "IsNaN")
BINARY = ("Add", "Sub", "Mul", "Div", "Max", "Min", "Pow")

REWRITES = [_rewrite("Conv", 2), _rewrite("Conv", 3),
            _rewrite("ember.Conv", 2), _rewrite("ember.Conv", 3), _rewrite("ember.Conv", 4), MAX_POOL,
            WHOLE_IMAGE_POOL, GLOBAL_POOL]


# ops whose every output element depends only on the elements at the same index of their
# inputs (broadcast): any layout computes them, so a channels-first transpose moves past
# them, even where its output has other readers (the rewriter refuses such a match)
SINKABLE = (set(UNARY) | set(BINARY)
            | {"HardSigmoid", "LeakyRelu", "Clip", "Elu", "Selu", "Celu", "Cast", "ThresholdedRelu", "Gelu",
               "Equal", "Greater", "Less", "GreaterOrEqual", "LessOrEqual", "And", "Or", "Xor", "Where", "Sum", "PRelu",
               "Mean"})


def _rank4(v) -> bool:
    t = v.type
    return isinstance(t, TensorType) and t.shape is not None and len(t.shape) == 4


def _channels_first_source(v):
    """x where `v` is Transpose(x, perm=[0, 3, 1, 2]) of a rank-4 x, else None."""
    p = v.producer
    if p is not None and p.op == "Transpose" and list(p.attrs.get("perm") or []) == TO_FIRST and _rank4(p.inputs[0]):
        return p.inputs[0]
    return None


def sink_transposes(graph) -> int:
    """Each elementwise node with a rank-4 input that comes channels-last through a
    transpose to channels-first computes on the channels-last values instead, one
    transpose after it: u(T(a), b, s) -> T(u(a, b', s)), where b' is another such
    transpose's input, a constant permuted alike (broadcast to rank 4 first), or b
    transposed to channels-last; one-element constants stay. A GlobalAveragePool of
    T(a) becomes T(ReduceMean(a) over the spatial axes), a MaxPool T(ember.MaxPool(a)),
    a Concat of rank-4 values one along the matching channels-last axis (PP-OCRv6's
    stem concatenates a max pool of a shared activation with a convolution's output:
    channels-first, the pool read it back across channels, 0.35 ms a run). Readers of
    T(a) that are none of these keep it. Returns how many nodes moved; canonicalize then cancels the
    pairs of transposes this leaves, eliminate_dead_code the transposes no one reads."""
    moved, i = 0, 0
    while i < len(graph.nodes):
        u = graph.nodes[i]
        if len(u.outputs) != 1 or not _rank4(u.outputs[0]):
            i += 1
            continue
        out = u.outputs[0]
        t = out.type
        last = Value(f"{out.name}/channels_last", TensorType(t.dtype, tuple(t.shape[j] for j in TO_LAST)))
        if u.op == "GlobalAveragePool" and _channels_first_source(u.inputs[0]) is not None:
            axes = graph.add_constant(f"{u.name}/spatial_axes", np.array([1, 2], np.int64))
            new = [Node("ReduceMean", [_channels_first_source(u.inputs[0]), axes], [last], {"keepdims": 1},
                        name=f"{u.name}/channels_last")]
        else:
            new = _sunk(graph, u, last)
            if new is None:
                i += 1
                continue
        back = Value(out.name, t)
        out.name = f"{out.name}.moved"
        new.append(Node("Transpose", [last], [back], {"perm": list(TO_FIRST)}, name=f"{u.name}/to_first"))
        graph.nodes[i:i + 1] = new
        graph.replace_all_uses(out, back)
        moved += 1
        i += len(new)
    return moved


def _sunk(graph, u, last) -> list | None:
    """The nodes computing elementwise `u` channels-last into `last`, or None where it
    does not take a channels-first transpose's output."""
    if u.op == "MaxPool":  # pooled where it is, as MAX_POOL does for an unshared transpose
        source = _channels_first_source(u.inputs[0])
        if source is None:
            return None
        return [Node("ember.MaxPool", [source], [last], {**u.attrs, "channels_last": 1}, name=f"{u.name}/channels_last")]
    concat_axis = None
    if u.op == "Concat":  # joined along the same axis of the channels-last values
        axis = u.attrs.get("axis")
        if axis is None or not all(v is not None and _rank4(v) for v in u.inputs):
            return None
        concat_axis = TO_LAST.index(axis % 4)
    elif u.op not in SINKABLE or u.has_subgraphs:
        return None
    sources = [None if v is None else _channels_first_source(v) for v in u.inputs]
    if all(s is None for s in sources):
        return None
    nodes, inputs = [], []
    for v, src in zip(u.inputs, sources):
        if v is None or src is not None:
            inputs.append(src)
        elif v.const is not None and v.const.size == 1:
            inputs.append(v)
        elif v.const is not None and v.const.ndim <= 4:
            data = v.const.reshape((1,) * (4 - v.const.ndim) + v.const.shape).transpose(TO_LAST)
            inputs.append(graph.add_constant(f"{v.name}/channels_last", np.ascontiguousarray(data)))
        elif _rank4(v):
            t = v.type
            v_last = Value(f"{v.name}/channels_last", TensorType(t.dtype, tuple(t.shape[j] for j in TO_LAST)))
            nodes.append(Node("Transpose", [v], [v_last], {"perm": list(TO_LAST)}, name=f"{u.name}/{v.name}/to_last"))
            inputs.append(v_last)
        else:  # a lower-rank tensor broadcast against rank 4: left as it is
            return None
    attrs = u.attrs if concat_axis is None else {**u.attrs, "axis": concat_axis}
    return [*nodes, Node(u.op, inputs, [last], attrs, name=f"{u.name}/channels_last")]


@register_pass
class ChannelsLast(RewritePass):
    name = "channels_last"
    rewrites = REWRITES

    def run(self, graph):
        result = super().run(graph)
        modified = result.modified
        for _ in range(4):  # moving transposes exposes pools and convolutions to the rewrites
            if not sink_transposes(graph):
                break
            modified = True
            if not super().run(graph).modified:
                break
        return PassResult(graph, modified)
