"""GatherND, ReverseSequence and TensorScatter: schemas, type functions and references
are ONNX's. Their lowerings are index remaps, pointwise over the output with indirect
loads (a source position computed from an index tensor); TensorScatter's write
positions are checked when it runs where the reference would fail."""

from __future__ import annotations

from ..dtypes import DType
from ..kernel import temp_symbol
from ._lowering import NotLowerable, V, attrs, out_type, register_lowering, wrapped_index
from ._symbolic import normalize_axis
from .onnx_standard import standard_op

for _op in ("GatherND", "ReverseSequence", "TensorScatter"):
    standard_op(_op)


@register_lowering("GatherND")
def _lower_gather_nd(ctx, node, ins):
    """out[i..., rest...] = data[i[:b]..., indices[i...] (k coordinates), rest...]."""
    data, indices = ins
    dtype, shape = out_type(node)
    k, b = indices.shape[-1], attrs(node)["batch_dims"]
    if not isinstance(k, int):
        raise NotLowerable("index depth not static")
    lead = len(indices.shape) - 1  # output dims taken from indices

    def load(body, index):
        coords = tuple(wrapped_index(body, indices, (*index[:lead], j), data.shape[b + j]) for j in range(k))
        return data.load(body, (*index[:b], *coords, *index[lead:]))

    return [ctx.pointwise(shape, dtype, load, cost=5 * k + data.cost + indices.cost)]


@register_lowering("ReverseSequence")
def _lower_reverse_sequence(ctx, node, ins):
    """The first len[b] steps along time_axis reversed, the rest copied (a negative length
    counts from the end, as the reference's slices do)."""
    x, lens = ins
    a = attrs(node)
    dtype, shape = out_type(node)
    batch_axis, time_axis = normalize_axis(a["batch_axis"], len(shape)), normalize_axis(a["time_axis"], len(shape))
    steps = shape[time_axis]

    def load(b, index):
        n = V(b, b.index(steps), DType.int64)
        raw = V(b, lens.load(b, (index[batch_axis],)), lens.dtype).cast(DType.int64)
        length = (raw < 0).where(raw + n, raw).max(0).min(n)
        t = V(b, b.index(index[time_axis]), DType.int64)
        src = (t < length).where(length - 1 - t, t)
        return x.load(b, (*index[:time_axis], temp_symbol(src.name), *index[time_axis + 1:]))

    return [ctx.pointwise(shape, dtype, load, cost=10 + x.cost)]


@register_lowering("TensorScatter")
def _lower_tensor_scatter(ctx, node, ins):
    """present[p..., t, ...] = update[p..., (t - w[p0]) mod T, ...] where that offset is
    below the update's length, else past (T: the cache's length along `axis`)."""
    past, update = ins[0], ins[1]
    writes = ins[2] if len(ins) > 2 else None
    a = attrs(node)
    dtype, shape = out_type(node)
    axis = normalize_axis(a["axis"], len(shape))
    if axis == 0:
        raise NotLowerable("axis 0 (the batch)")
    cache, length = shape[axis], update.shape[axis]
    if isinstance(cache, int) and isinstance(length, int) and length > cache:
        raise NotLowerable("an update longer than the cache (the reference fails)")
    if writes is not None and a["mode"] == "linear":  # the reference fails past the end: so does this
        ctx.extern("check_write_indices", [writes], [], where=node.describe(), cache=cache, length=length,
                   axis=axis, shape=list(shape))

    def load(b, index):
        t = V(b, b.index(index[axis]), DType.int64)
        start = V(b, writes.load(b, (index[0],)), writes.dtype).cast(DType.int64) if writes is not None else 0
        n = V(b, b.index(cache), DType.int64)
        offset = (t - start).mod(n)
        written = offset < V(b, b.index(length), DType.int64)
        at = temp_symbol(written.where(offset, 0).name)
        new = V(b, update.load(b, (*index[:axis], at, *index[axis + 1:])), dtype)
        return written.where(new, V(b, past.load(b, index), dtype)).name

    return [ctx.pointwise(shape, dtype, load, cost=12 + past.cost + update.cost)]
