"""Indexing and data-movement ops whose schemas, type functions and references are
ONNX's: GatherElements, ScatterElements, ScatterND, OneHot, Trilu, Pad, Split. Here are
their Kernel IR lowerings: each is an index remap (pointwise, maybe with an indirect
load), except the scatters, which copy their data and then store each update in order
(one thread, so repeated indices reduce as the reference does)."""

from __future__ import annotations

import sympy

from ..dtypes import DType
from ..kernel import Kernel, TensorRef, loop_vars
from ._lowering import (
    FLOATS,
    NotLowerable,
    V,
    attrs,
    constant_ints,
    out_type,
    register_lowering,
    wrapped_index,
)
from ..types import fresh_symbol
from ._symbolic import contents, dim, dtype_of, normalize_axis, shape_of, tensor
from .onnx_standard import standard_op

for _op in ("GatherElements", "ScatterElements", "ScatterND", "OneHot", "Split", "TopK"):  # Trilu: elementwise.py
    standard_op(_op)


def _pad_infer(node, ins):
    """Each padded dim grows by its two pads, symbolic or not (onnx's inference gives a
    symbolic dim an unknown size: silero VAD's reflect pad then sized everything after it
    at run time, through the executor's slow late path)."""
    dims, dtype = shape_of(ins[0]), dtype_of(ins[0])
    if dims is None or dtype is None:
        return [tensor(dtype, None) if dtype else None]
    pads = contents(ins[1]) if len(ins) > 1 and ins[1] is not None else None
    axes = contents(ins[3]) if len(ins) > 3 and ins[3] is not None else list(range(len(dims)))
    if pads is None or axes is None or len(pads) != 2 * len(axes) or not all(isinstance(p, int) for p in pads):
        return [tensor(dtype, [fresh_symbol() for _ in dims])]
    out = list(dims)
    for j, axis in enumerate(axes):
        a = normalize_axis(axis, len(dims))
        out[a] = dim(dims[a] + pads[j] + pads[j + len(axes)])
    return [tensor(dtype, out)]


standard_op("Pad", infer=_pad_infer)




def _lower_gather_elements(ctx, node, ins):
    data, indices = ins
    dtype, shape = out_type(node)
    axis = normalize_axis(attrs(node)["axis"], len(data.shape))
    ctx.index_input(indices, data.shape[axis], node.describe())

    def load(b, index):
        at = wrapped_index(b, indices, index, data.shape[axis])
        return data.load(b, (*index[:axis], at, *index[axis + 1:]))
    return [ctx.pointwise(shape, dtype, load, cost=5 + data.cost + indices.cost)]


_COMBINE = {"none": lambda old, new: new, "add": lambda old, new: old + new, "mul": lambda old, new: old * new,
            "max": lambda old, new: old.max(new), "min": lambda old, new: old.min(new)}


def _scatter(ctx, node, data, updates, target):
    """Copy `data` to a new buffer, then for each element of `updates` (in order, one
    thread) combine it into the element `target(body, index)` names."""
    dtype, shape = out_type(node)
    combine = _COMBINE[attrs(node).get("reduction", "none")]
    out = ctx.new_buffer("scatter", dtype, shape)
    copy = ctx.body()
    index = loop_vars(len(shape))
    copy.store(out, index, data.load(copy, index))
    ctx.add_kernel(Kernel("copy", "pointwise", ranges=tuple(shape), body=copy))
    b = ctx.body()
    index = loop_vars(len(updates.shape))
    where = target(b, index)
    new = V(b, updates.load(b, index), dtype)
    old = V(b, b.load(out, where), dtype)
    b.store(out, where, combine(old, new).name)
    ctx.add_kernel(Kernel("scatter", "pointwise", ranges=tuple(updates.shape), body=b, serial=True))

    return [TensorRef(dtype, shape, buffer=out)]


def _lower_scatter_elements(ctx, node, ins):
    data, indices, updates = ins
    axis = normalize_axis(attrs(node)["axis"], len(data.shape))
    ctx.index_input(indices, data.shape[axis], node.describe())

    def target(b, index):
        return (*index[:axis], wrapped_index(b, indices, index, data.shape[axis]), *index[axis + 1:])
    return _scatter(ctx, node, data, updates, target)


def _lower_scatter_nd(ctx, node, ins):
    data, indices, updates = ins
    k = indices.shape[-1]
    if not isinstance(k, int):
        raise NotLowerable("index depth not static")
    batch = len(indices.shape) - 1

    def target(b, index):
        coords = tuple(wrapped_index(b, indices, (*index[:batch], j), data.shape[j]) for j in range(k))
        return (*coords, *index[batch:])
    return _scatter(ctx, node, data, updates, target)


def _lower_one_hot(ctx, node, ins):
    indices, _, values = ins
    dtype, shape = out_type(node)
    axis = normalize_axis(attrs(node)["axis"], len(shape))
    depth = shape[axis]

    def load(b, index):
        # as the reference: compare in the indices' type, then hit * (on - off) + off
        raw = V(b, indices.load(b, (*index[:axis], *index[axis + 1:])), indices.dtype)
        at = (raw < 0).where(raw + V(b, b.index(depth, raw.dtype), raw.dtype), raw)
        hit = at.eq(V(b, b.index(index[axis], raw.dtype), raw.dtype), dtype=DType.bool)
        on, off = (V(b, values.load(b, (i,)), values.dtype) for i in (1, 0))
        return (hit.cast(off.dtype) * (on - off) + off).cast(dtype).name
    return [ctx.pointwise(shape, dtype, load, cost=8 + indices.cost)]


def _lower_trilu(ctx, node, ins):
    x = ins[0]
    k = ins[1] if len(ins) > 1 else None
    dtype, shape = out_type(node)
    upper = attrs(node)["upper"]

    def load(b, index):
        diagonal = V(b, b.index(index[-1] - index[-2]), DType.int64)
        shift = V(b, k.load(b, (0,) * len(k.shape)), k.dtype).cast(DType.int64) if k is not None else 0
        keep = diagonal >= shift if upper else diagonal <= shift
        return keep.where(V(b, x.load(b, index), dtype), 0).name
    return [ctx.pointwise(shape, dtype, load, cost=4 + x.cost)]


def _pad_source(mode: str, i, begin, n):
    """Where output position `i` reads along a padded axis of `n` elements."""
    src = i - begin
    if mode == "edge":
        return sympy.Min(sympy.Max(src, 0), n - 1)
    if mode == "reflect":
        return (n - 1) - sympy.Abs((n - 1) - sympy.Abs(src))
    if mode == "wrap":
        return sympy.Mod(src, n)
    return sympy.Min(sympy.Max(src, 0), n - 1)  # constant: clamped, and masked


def _lower_pad(ctx, node, ins):
    x = ins[0]
    dtype, shape = out_type(node)
    rank = len(shape)
    mode = attrs(node)["mode"]
    pads = constant_ints(ctx, node.inputs[1])
    axes = constant_ints(ctx, node.inputs[3]) if len(node.inputs) > 3 and node.inputs[3] is not None \
        else list(range(rank))
    if pads is None or axes is None or not ctx.knows(shape):  # fed at run time: torch pads
        return ctx.extern("pad", [*ins, *[None] * (4 - len(ins))], [(dtype, shape)], where=node.describe(),
                          mode=mode)
    axes = [normalize_axis(a, rank) for a in axes]
    begin = [0] * rank
    for j, a in enumerate(axes):
        begin[a] = pads[j]
    if any(sympy.sympify(d) == 0 for d in x.shape):
        raise NotLowerable("an empty input")
    fill = ins[2] if len(ins) > 2 else None

    def load(b, index):
        src = tuple(i if p == 0 and sympy.sympify(n) == sympy.sympify(m) else _pad_source(mode, i, p, n)
                    for i, p, n, m in zip(index, begin, x.shape, shape))
        value = V(b, x.load(b, src), dtype)
        if mode != "constant":
            return value.name
        inside = None
        for i, p, n, m in zip(index, begin, x.shape, shape):
            if p == 0 and sympy.sympify(n) == sympy.sympify(m):
                continue
            at = V(b, b.index(i - p), DType.int64)
            ok = (at >= 0).op("and", at < V(b, b.index(n), DType.int64), dtype=DType.bool)
            inside = ok if inside is None else inside.op("and", ok, dtype=DType.bool)
        if inside is None:
            return value.name
        pad = V(b, fill.load(b, (0,) * len(fill.shape)), dtype) if fill is not None else V(b, b.const(0, dtype), dtype)
        return inside.where(value, pad).name
    return [ctx.pointwise(shape, dtype, load, cost=2 + 4 * rank + x.cost)]


def _lower_split(ctx, node, ins):
    x = ins[0]
    axis = normalize_axis(attrs(node)["axis"], len(x.shape))
    outs, offset = [], sympy.Integer(0)
    for value in node.outputs:
        dtype, shape = value.type.dtype, tuple(value.type.shape)

        def load(b, index, at=offset):
            return x.load(b, (*index[:axis], index[axis] + at, *index[axis + 1:]))
        outs.append(ctx.pointwise(shape, dtype, load, cost=x.cost))
        offset = offset + shape[axis]
    if sympy.simplify(offset - x.shape[axis]) != 0:
        raise NotLowerable("the parts do not add up to the input")
    return outs


register_lowering("GatherElements")(_lower_gather_elements)
register_lowering("ScatterElements")(_lower_scatter_elements)
register_lowering("ScatterND")(_lower_scatter_nd)
register_lowering("OneHot")(_lower_one_hot)
register_lowering("Trilu")(_lower_trilu)
register_lowering("Pad", sizes_outputs=True)(_lower_pad)
register_lowering("Split")(_lower_split)


@register_lowering("TopK")
def _lower_topk(ctx, node, ins):
    x, k = ins
    a = attrs(node)
    if x.dtype not in FLOATS | {DType.int32, DType.int64}:
        raise NotLowerable("a dtype torch sorts its own way")
    axis = normalize_axis(a["axis"], len(x.shape))
    if constant_ints(ctx, node.inputs[1]) is None and not isinstance(out_type(node)[1][axis], int):
        raise NotLowerable("k known only when it runs, and the output's type does not tell it")
    # sorted or not, the reference sorts; a k fed at run time is checked against the type
    return ctx.extern("topk", [x, k], [out_type(node, 0), out_type(node, 1)], where=node.describe(),
                      axis=axis, largest=bool(a["largest"]))
