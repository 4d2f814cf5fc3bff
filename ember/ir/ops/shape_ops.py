"""Shape and data-movement ops: the type functions follow symbolic dims through the
shape subgraphs exporters emit (Shape -> Gather -> Unsqueeze -> Concat -> Reshape,
Expand, Range, ConstantOfShape, Slice ...), computing the shape tensors' contents."""

from __future__ import annotations

import math

import numpy as np
import sympy

from ..dtypes import DType
from ..graph import Node
from ..types import fresh_symbol
from ._lowering import NotLowerable, V, attrs, out_type, register_lowering, wrapped_index
from ._symbolic import (
    BIG,
    broadcast,
    contents,
    decide,
    dim,
    dtype_of,
    normalize_axis,
    product,
    shape_of,
    tensor,
    track,
)
from .onnx_standard import standard_op


def _shape(node: Node, ins):
    dims = shape_of(ins[0])
    if dims is None:
        return [None]
    rank = len(dims)
    start = normalize_axis(node.attrs.get("start", 0), rank)
    end = normalize_axis(node.attrs.get("end", rank), rank)
    picked = dims[max(start, 0):min(end, rank)]
    return [tensor(DType.int64, (len(picked),), list(picked))]


def _size(node: Node, ins):
    dims = shape_of(ins[0])
    return [tensor(DType.int64, (), None if dims is None else [product(dims)])]


def _constant(node: Node, ins):
    attrs = node.attrs
    if "value" in attrs:
        data = np.asarray(attrs["value"])
    elif "value_int" in attrs:
        data = np.array(attrs["value_int"], np.int64)
    elif "value_ints" in attrs:
        data = np.array(attrs["value_ints"], np.int64)
    elif "value_float" in attrs:
        data = np.array(attrs["value_float"], np.float32)
    elif "value_floats" in attrs:
        data = np.array(attrs["value_floats"], np.float32)
    else:
        return [None]
    dtype = DType.from_numpy(data.dtype)
    return [tensor(dtype, data.shape, data.reshape(-1).tolist() if track(dtype, data.shape) else None)]


def _gather(node: Node, ins):
    data, indices = shape_of(ins[0]), shape_of(ins[1])
    dtype = dtype_of(ins[0])
    if data is None or indices is None or dtype is None:
        return [None]
    axis = normalize_axis(node.attrs.get("axis", 0), len(data))
    shape = (*data[:axis], *indices, *data[axis + 1:])
    value = None
    if contents(ins[0]) is not None and contents(ins[1]) is not None and track(dtype, shape):
        arr = np.array(contents(ins[0]), dtype=object).reshape(data)
        idx = np.array([int(i) for i in contents(ins[1])], dtype=np.int64).reshape(indices)
        value = np.asarray(np.take(arr, idx, axis=axis), dtype=object).reshape(-1).tolist()
    return [tensor(dtype, shape, value)]


def _axes(ins, index: int, node: Node) -> list[int] | None:
    if len(ins) > index and ins[index] is not None:
        values = contents(ins[index])
        return None if values is None or not all(isinstance(a, int) for a in values) else values
    return node.attrs.get("axes")


def _fed_axes(ins) -> int | None:
    """How many axes an axes input fed at run time holds, when its type tells."""
    n = shape_of(ins[1]) if len(ins) > 1 else None
    return n[0] if n is not None and len(n) == 1 and isinstance(n[0], int) else None


def _unsqueeze(node: Node, ins):
    dims, axes = shape_of(ins[0]), _axes(ins, 1, node)
    if dims is not None and axes is None and _fed_axes(ins) is not None:  # the rank, not where the 1s go
        return [tensor(dtype_of(ins[0]), [fresh_symbol() for _ in range(len(dims) + _fed_axes(ins))])]
    if dims is None or axes is None:
        return [None]
    rank = len(dims) + len(axes)
    axes = sorted(normalize_axis(a, rank) for a in axes)
    out = list(dims)
    for a in axes:
        out.insert(a, 1)
    return [tensor(dtype_of(ins[0]), out, contents(ins[0]))]


def _squeeze(node: Node, ins):
    dims = shape_of(ins[0])
    if dims is None:
        return [None]
    axes = _axes(ins, 1, node)
    if axes is None and len(ins) > 1 and ins[1] is not None:
        count = _fed_axes(ins)
        if count is None or count == 0 or count > len(dims):
            return [None]
        return [tensor(dtype_of(ins[0]), [fresh_symbol() for _ in range(len(dims) - count)])]
    drop = {normalize_axis(a, len(dims)) for a in axes} if axes else {i for i, d in enumerate(dims) if d == 1}
    out = [d for i, d in enumerate(dims) if i not in drop]
    return [tensor(dtype_of(ins[0]), out, contents(ins[0]))]


def _concat(node: Node, ins):
    shapes = [shape_of(k) for k in ins]
    dtype = dtype_of(ins[0])
    if any(s is None for s in shapes) or dtype is None:
        return [None]
    axis = normalize_axis(node.attrs["axis"], len(shapes[0]))
    out = list(shapes[0])
    out[axis] = dim(sympy.Add(*(s[axis] for s in shapes)))
    value = None
    if track(dtype, out) and all(contents(k) is not None for k in ins):
        value = np.concatenate([np.array(contents(k), dtype=object).reshape(s) for k, s in zip(ins, shapes)],
                               axis=axis).reshape(-1).tolist()
    return [tensor(dtype, out, value)]


def _reshape(node: Node, ins):
    dims, target = shape_of(ins[0]), contents(ins[1])
    dtype = dtype_of(ins[0])
    if dtype is None:
        return [None]
    if target is None:
        n = shape_of(ins[1])
        return [tensor(dtype, None if n is None or not isinstance(n[0], int) else [fresh_symbol() for _ in range(n[0])])]
    out = []
    for i, d in enumerate(target):
        if d == 0 and not node.attrs.get("allowzero", 0) and dims is not None:
            d = dims[i]
        out.append(d)
    if -1 in out:
        known = product([d for d in out if d != -1])
        out[out.index(-1)] = dim(sympy.Integer(1) * product(dims) / known) if dims is not None else fresh_symbol()
    return [tensor(dtype, out, contents(ins[0]))]


def _expand(node: Node, ins):
    target = contents(ins[1])
    dims, n = shape_of(ins[0]), shape_of(ins[1])
    if target is None and dims is not None and n is not None and len(n) == 1 and isinstance(n[0], int):
        # a shape fed at run time, of a known length: where x's dim is not 1, the output's is x's
        rank = max(len(dims), n[0])
        padded = (1,) * (rank - len(dims)) + tuple(dims)
        return [tensor(dtype_of(ins[0]), [fresh_symbol() if d == 1 else d for d in padded])]
    if target is None or dims is None:
        return [tensor(dtype_of(ins[0]), None)] if dtype_of(ins[0]) else [None]
    return [tensor(dtype_of(ins[0]), broadcast(dims, tuple(target)))]


def _range(node: Node, ins):
    dtype = dtype_of(ins[0])
    parts = [contents(k) for k in ins]
    if any(p is None for p in parts):
        return [tensor(dtype, (fresh_symbol(),))] if dtype else [None]
    start, limit, delta = (p[0] for p in parts)
    length = dim(sympy.Max(sympy.ceiling((limit - start) / delta), 0))
    value = list(range(start, limit, delta)) if all(isinstance(x, int) for x in (start, limit, delta)) \
        and track(dtype, (length,)) else None
    return [tensor(dtype, (length,), value)]


def _constant_of_shape(node: Node, ins):
    target = contents(ins[0])
    fill = node.attrs.get("value")
    dtype = DType.from_numpy(fill.dtype) if fill is not None else DType.float32
    if target is None:
        n = shape_of(ins[0])
        return [tensor(dtype, None if n is None or not isinstance(n[0], int) else [fresh_symbol() for _ in range(n[0])])]
    value = None
    if track(dtype, target):
        value = [fill.reshape(-1)[0].item() if fill is not None else 0] * math.prod(target)
    return [tensor(dtype, target, value)]


def _clamp(x, lo, hi):
    """min(max(x, lo), hi): where sympy cannot decide, a constant bound is clamped to a
    symbolic size as Min (slicing [8:2**30] of a length n is n - 8 long, not 2**30 - 8: a
    kernel sized so read far past the input), and a symbolic bound is taken as in range."""
    if decide(sympy.Lt(x, lo)):
        return lo
    if decide(sympy.Gt(x, hi)):
        return hi
    if isinstance(x, int) and not isinstance(hi, int) and decide(sympy.Le(x, hi)) is None:
        return sympy.Min(x, hi)
    return x


def _slice(node: Node, ins):
    dims, dtype = shape_of(ins[0]), dtype_of(ins[0])
    starts, ends = contents(ins[1]), contents(ins[2])
    if dims is None or dtype is None or starts is None or ends is None:
        return [tensor(dtype, None if dims is None else [fresh_symbol() for _ in dims])] if dtype else [None]
    axes = contents(ins[3]) if len(ins) > 3 and ins[3] is not None else list(range(len(starts)))
    steps = contents(ins[4]) if len(ins) > 4 and ins[4] is not None else [1] * len(starts)
    if axes is None or steps is None:
        return [tensor(dtype, [fresh_symbol() for _ in dims])]
    out = list(dims)
    for start, end, axis, step in zip(starts, ends, axes, steps):
        axis = normalize_axis(axis, len(dims))
        size = dims[axis]
        if not isinstance(step, int) or step == 0:
            out[axis] = fresh_symbol()
            continue
        if step > 0:
            start = _clamp(start + size if decide(sympy.Lt(start, 0)) else start, 0, size)
            end = size if isinstance(end, int) and end >= BIG else _clamp(end + size if decide(sympy.Lt(end, 0)) else end, 0, size)
            out[axis] = dim(sympy.Max(sympy.ceiling((end - start) / step), 0))
        else:
            start = size - 1 if isinstance(start, int) and start >= BIG else _clamp(start + size if decide(sympy.Lt(start, 0)) else start, 0, size - 1)
            end = -1 if isinstance(end, int) and end <= -BIG else _clamp(end + size if decide(sympy.Lt(end, 0)) else end, -1, size)
            out[axis] = dim(sympy.Max(sympy.ceiling((start - end) / -step), 0))
    value = None
    if contents(ins[0]) is not None and len(dims) == 1 and all(isinstance(x, int) for x in (*starts, *ends, *steps)):
        value = contents(ins[0])[slice(starts[0], ends[0], steps[0])]
    return [tensor(dtype, out, value)]


def _transpose(node: Node, ins):
    dims = shape_of(ins[0])
    if dims is None or dtype_of(ins[0]) is None:
        return [None]
    perm = node.attrs.get("perm") or list(range(len(dims)))[::-1]
    return [tensor(dtype_of(ins[0]), [dims[p] for p in perm])]


def _flatten(node: Node, ins):
    dims = shape_of(ins[0])
    if dims is None or dtype_of(ins[0]) is None:
        return [None]
    axis = normalize_axis(node.attrs.get("axis", 1), len(dims))
    return [tensor(dtype_of(ins[0]), (product(dims[:axis]), product(dims[axis:])))]


standard_op("Shape", infer=_shape)
standard_op("Size", infer=_size)
standard_op("Constant", infer=_constant)
standard_op("Gather", infer=_gather)
standard_op("Unsqueeze", infer=_unsqueeze)
standard_op("Squeeze", infer=_squeeze)
standard_op("Concat", infer=_concat)
standard_op("Reshape", infer=_reshape)
standard_op("Expand", infer=_expand)
standard_op("Range", infer=_range)
standard_op("ConstantOfShape", infer=_constant_of_shape)
standard_op("Slice", infer=_slice)
standard_op("Transpose", infer=_transpose)
standard_op("Flatten", infer=_flatten)


# -- Kernel IR lowerings ----------------------------------------------------------------
def _lower_view(ctx, node, ins):
    """Reshape, Flatten: the same elements in the same order under another shape."""
    dtype, shape = out_type(node)
    x = ins[0]
    if not ctx.knows(shape):  # a shape fed at run time
        return ctx.extern("reshape", ins[:2], [(dtype, shape)], where=node.describe(),
                          allowzero=attrs(node)["allowzero"])
    if x.lazy and [d for d in shape if d != 1] == [d for d in x.shape if d != 1]:
        return _lower_unit_dims(ctx, node, ins)
    return [ctx.alias(x, shape)]


def _lower_unit_dims(ctx, node, ins):
    """Squeeze, Unsqueeze (and reshapes that only add or drop 1s): an index remap."""
    dtype, shape = out_type(node)
    x = ins[0]
    if not ctx.knows(shape) and node.op in ("Squeeze", "Unsqueeze"):  # axes fed at run time
        return ctx.extern(node.op.lower(), ins[:2], [(dtype, shape)], where=node.describe())
    keep_out = [i for i, d in enumerate(shape) if d != 1]
    keep_in = [i for i, d in enumerate(x.shape) if d != 1]
    if not x.lazy or len(keep_in) != len(keep_out):
        # realized, or a size symbol that is 1 only when it runs hides which dims go: the
        # elements keep their order, so the output is the input's buffer under its shape
        return [ctx.alias(x, shape)]

    def load(b, index):
        src = [0] * len(x.shape)
        for i, o in zip(keep_in, keep_out):
            src[i] = index[o]
        return x.load(b, tuple(src))
    return [ctx.pointwise(shape, dtype, load, cost=x.cost)]


def _lower_transpose(ctx, node, ins):
    dtype, shape = out_type(node)
    x = ins[0]
    perm = attrs(node)["perm"] or list(range(len(x.shape)))[::-1]

    def load(b, index):
        src = [None] * len(perm)
        for o, p in enumerate(perm):
            src[p] = index[o]
        return x.load(b, tuple(src))
    return [ctx.pointwise(shape, dtype, load, cost=x.cost)]


def _lower_expand(ctx, node, ins):
    dtype, shape = out_type(node)
    x = ins[0]
    if not ctx.knows(shape):  # a shape fed at run time
        return ctx.extern("expand", ins[:2], [(dtype, shape)], where=node.describe())
    return [ctx.pointwise(shape, dtype, lambda b, i: x.load(b, ctx.broadcast(x, i, shape)), cost=x.cost)]


def _lower_gather(ctx, node, ins):

    data, indices = ins
    dtype, shape = out_type(node)
    axis = normalize_axis(attrs(node)["axis"], len(data.shape))
    k = len(indices.shape)
    ctx.index_input(indices, data.shape[axis], node.describe())

    def load(b, index):
        index = tuple(index)
        src = (*index[:axis], wrapped_index(b, indices, index[axis:axis + k], data.shape[axis]), *index[axis + k:])
        return data.load(b, src)
    return [ctx.pointwise(shape, dtype, load, cost=4 + data.cost + indices.cost)]


def _lower_slice(ctx, node, ins):
    data = ins[0]
    dtype, shape = out_type(node)
    rank = len(data.shape)
    consts = [None if v is None else v.const if v.const is not None else ctx.known_contents(v)
              for v in node.inputs[1:]]
    consts = [None if c is None else np.asarray(c, dtype=object) for c in consts]
    if not ctx.knows(shape) or any(
            v is not None and (c is None or not all(isinstance(x, (int, np.integer)) for x in c.reshape(-1)))
            for i, (v, c) in enumerate(zip(node.inputs[1:], consts)) if i != 1):
        # starts, axes or steps fed at run time: torch slices
        return ctx.extern("slice", [*ins, *[None] * (5 - len(ins))], [(dtype, shape)], where=node.describe())
    starts = [int(s) for s in consts[0].reshape(-1)]
    axes = [normalize_axis(int(a), rank) for a in consts[2].reshape(-1)] if len(consts) > 2 and consts[2] is not None \
        else list(range(len(starts)))
    steps = [int(s) for s in consts[3].reshape(-1)] if len(consts) > 3 and consts[3] is not None else [1] * len(starts)
    begin = [sympy.Integer(0)] * rank
    stride = [1] * rank
    for axis, start, step in zip(axes, starts, steps):
        d = sympy.sympify(data.shape[axis])
        s = start + d if start < 0 else sympy.Integer(start)
        s = sympy.Min(sympy.Max(s, 0), d) if step > 0 else sympy.Min(sympy.Max(s, -1), d - 1)
        begin[axis], stride[axis] = s, step
    return [ctx.pointwise(shape, dtype, lambda b, i: data.load(b, tuple(bg + st * x for bg, st, x in zip(begin, stride, i))),
                          cost=data.cost)]


def _lower_range(ctx, node, ins):
    dtype, shape = out_type(node)
    if not ctx.knows(shape):  # a length known only when it runs
        return ctx.extern("range", ins, [(dtype, shape)], where=node.describe())
    start, _, delta = ins
    return [ctx.pointwise(shape, dtype, lambda b, i: (V(b, start.load(b, ()), dtype) + V(b, b.index(i[0], dtype), dtype)
                                                      * V(b, delta.load(b, ()), dtype)).name, cost=3)]


def _lower_concat(ctx, node, ins):
    dtype, shape = out_type(node)
    axis = normalize_axis(attrs(node)["axis"], len(shape))
    parts = [r for r in ins if r is not None and sympy.sympify(r.shape[axis]) != 0]  # empty parts add nothing
    if not parts:
        raise NotLowerable("every part is empty")

    def load(b, index):
        offsets, at = [], sympy.Integer(0)
        for r in parts:
            offsets.append(at)
            at = at + r.shape[axis]
        pos = V(b, b.index(index[axis]), DType.int64)
        value = None
        for r, off in reversed(list(zip(parts, offsets))):
            local = sympy.Min(sympy.Max(index[axis] - off, 0), r.shape[axis] - 1)
            v = V(b, r.load(b, (*index[:axis], local, *index[axis + 1:])), dtype)
            if value is None:
                value = v
            else:
                value = (pos < V(b, b.index(off + r.shape[axis]), DType.int64)).where(v, value)
        return value.name
    return [ctx.pointwise(shape, dtype, load, cost=2 * len(parts) + sum(r.cost for r in parts))]


def _lower_constant_of_shape(ctx, node, ins):
    dtype, shape = out_type(node)
    value = attrs(node)["value"]
    scalar = 0 if value is None else np.asarray(value).reshape(-1)[0].item()
    if not ctx.knows(shape):  # a shape fed at run time
        return ctx.extern("constant_of_shape", ins, [(dtype, shape)], where=node.describe(), value=scalar,
                          dtype=dtype.name)
    return [ctx.pointwise(shape, dtype, lambda b, i: b.const(scalar, dtype), cost=0)]


register_lowering("Reshape", "Flatten", sizes_outputs=True)(_lower_view)
register_lowering("Squeeze", "Unsqueeze", sizes_outputs=True)(_lower_unit_dims)
register_lowering("Transpose")(_lower_transpose)
register_lowering("Expand", sizes_outputs=True)(_lower_expand)
register_lowering("Gather")(_lower_gather)
register_lowering("Slice", sizes_outputs=True)(_lower_slice)
register_lowering("Range", sizes_outputs=True)(_lower_range)
register_lowering("Concat")(_lower_concat)
register_lowering("ConstantOfShape", sizes_outputs=True)(_lower_constant_of_shape)
