"""ember.PagedAttention: causal attention of a flattened batch of sequences over a
block-paged KV cache, the one stateful op of an LLM's forward graph.

    ember.PagedAttention(q, k, v, k_cache, v_cache, slot_mapping, block_tables,
                         query_start_loc, seq_lens) -> y

    q: [T, H*D]   k: [T, Hkv*D]   v: [T, Hkv*Dv]       the new tokens of every sequence, flattened
    k_cache: [num_blocks, block_size, Hkv, D]          v_cache: [num_blocks, block_size, Hkv, Dv]
                                                       (float, of q's type or another: rounded into it;
                                                       or int8 rows with their scale: [..., D + 4])
    slot_mapping: [T] int64        cache slot of each new token (block * block_size + offset); < 0: none
    block_tables: [B, max_blocks]  int64, the cache blocks of each sequence, in order
    query_start_loc: [B+1] int64   sequence b's new tokens are q[query_start_loc[b]:query_start_loc[b+1]]
    seq_lens: [B] int64            sequence b's length, its new tokens included (they are its last)
    y: [T, H*Dv]

First every new token's k and v are written into the caches at its slot (in place: the
caches are state the caller keeps between steps, passed in as the same arrays every
step). Then query i of sequence b, at position p = seq_lens[b] - n_b + i (n_b its new
tokens), attends over the sequence's keys j <= p (and p - j < sliding_window when that is
set), read from the cache through block_tables[b]: key j lives in block
block_tables[b, j // block_size], row j % block_size. Query heads share kv heads in groups
of H / Hkv; `scale` 0 means 1/sqrt(D). Tokens past query_start_loc[B] get 0.

An int8 cache quantizes each new row (one token's k or v of one kv head) on its own,
symmetrically: its D int8 codes are round-half-even(x * 127 / amax) (amax the row's largest
|x|; codes clipped to +-127), followed by the 4 bytes of its float32 scale amax / 127, so a
row is read back as codes * scale. A row of zeros has scale 0; a row holding NaN or an
infinity reads back as NaN throughout. (A scale per token and head follows each token's own
range, which varies far more across tokens than within a row: llama.cpp's q8_0 KV cache and
LMDeploy's int8 one scale at that grain or finer.)

Writing the caches is a side effect, so the op is not deterministic as far as passes go:
it is never folded or deduplicated.
"""

from __future__ import annotations

import numpy as np

from ..dtypes import DType
from ..graph import Node
from ..quant_formats import KV_ROW_EXTRA, dequantize_kv_rows, quantize_kv_rows
from ..registry import AttrSpec, Known, OpDef, ParamSpec, get_op, register_op
from ._lowering import NotLowerable, out_type, register_lowering
from ._symbolic import dtype_of, shape_of, tensor
from .ember_nn import HEAD_ATTRS

HALF_FLOATS = {DType.float16, DType.bfloat16}
INPUTS = ("q", "k", "v", "k_cache", "v_cache", "slot_mapping", "block_tables", "query_start_loc", "seq_lens")


def _attrs(node: Node) -> dict:
    opdef = get_op(node.op)
    heads = opdef.attr(node, "num_heads")
    return {"num_heads": heads, "kv_num_heads": opdef.attr(node, "kv_num_heads") or heads,
            "scale": opdef.attr(node, "scale"), "sliding_window": opdef.attr(node, "sliding_window")}


def row_extra(dtype) -> int:
    """Elements a cache row of `dtype` (a DType or numpy dtype) holds past its D values."""
    return KV_ROW_EXTRA.get((dtype if isinstance(dtype, DType) else DType.from_numpy(dtype)).name, 0)


def head_dim_of(cache_last_dim, dtype):
    """A head's D from its cache rows' length (the cache shape's last dim)."""
    return cache_last_dim - row_extra(dtype)


def write_cache(k, v, k_cache, v_cache, slot_mapping) -> None:
    """Store each token's k and v ([T, Hkv*D]) at its slot of the caches, in place."""
    num_blocks, block_size, kv_heads, _ = k_cache.shape
    valid = slot_mapping >= 0
    slots = slot_mapping[valid]
    for x, cache in ((k, k_cache), (v, v_cache)):
        rows = x[valid].reshape(len(slots), kv_heads, head_dim_of(cache.shape[3], cache.dtype))  # explicit dims: no slot may be valid
        cache.reshape(num_blocks * block_size, kv_heads, -1)[slots] = _into(cache, rows)


def read_cache(rows: np.ndarray, compute) -> np.ndarray:
    """Cache rows as `compute` floats (an int8 cache's dequantized)."""
    return dequantize_kv_rows(rows).astype(compute) if rows.dtype == np.int8 else rows.astype(compute)


FLOAT8_MAX = 448.0  # float8e4m3fn's largest finite value


def _into(cache, x):
    """x as the cache stores it: rounded to the cache's type on assignment, and into a
    float8e4m3fn cache first saturated to its finite range (as ONNX's Cast with saturate=1
    and torch's conversion do; ml_dtypes' cast alone makes NaN of what lies past it)."""
    if cache.dtype == DType.float8e4m3fn.numpy:
        return np.clip(x.astype(np.float32), -FLOAT8_MAX, FLOAT8_MAX)
    if cache.dtype == np.int8:
        return quantize_kv_rows(x)
    return x


def paged_attention(q, k, v, k_cache, v_cache, slot_mapping, block_tables, query_start_loc, seq_lens, *,
                    num_heads: int, kv_num_heads: int = 0, scale: float = 0.0,
                    sliding_window: int = 0) -> np.ndarray:
    """The meaning of ember.PagedAttention, in numpy (float32 accumulation for <32-bit
    floats). Writes k and v into the caches (views of them stay views: no copy)."""
    kv_num_heads = kv_num_heads or num_heads
    if not all(c.flags.c_contiguous and c.flags.writeable for c in (k_cache, v_cache)):
        raise ValueError("the KV caches must be writeable C-contiguous arrays (they are written in place)")
    write_cache(k, v, k_cache, v_cache, slot_mapping)
    block_size, head_dim = k_cache.shape[1], head_dim_of(k_cache.shape[3], k_cache.dtype)
    group = num_heads // kv_num_heads
    compute = np.float32 if q.dtype.itemsize < 4 else q.dtype.type
    scale = compute(scale or 1 / np.sqrt(head_dim))
    y = np.zeros((q.shape[0], num_heads * head_dim_of(v_cache.shape[3], v_cache.dtype)), dtype=compute)
    for b in range(len(seq_lens)):
        start, end, length = int(query_start_loc[b]), int(query_start_loc[b + 1]), int(seq_lens[b])
        if end <= start:
            continue
        positions = np.arange(length)
        blocks = block_tables[b][positions // block_size]
        keys = read_cache(k_cache[blocks, positions % block_size], compute)      # [L, Hkv, D]
        values = read_cache(v_cache[blocks, positions % block_size], compute)    # [L, Hkv, Dv]
        queries = q[start:end].reshape(end - start, num_heads, head_dim).astype(compute)
        keys, values = np.repeat(keys, group, axis=1), np.repeat(values, group, axis=1)
        scores = np.einsum("qhd,khd->hqk", queries, keys) * scale           # [H, n, L]
        query_pos = length - (end - start) + np.arange(end - start)
        visible = positions[None, :] <= query_pos[:, None]
        if sliding_window:
            visible &= query_pos[:, None] - positions[None, :] < sliding_window
        scores = np.where(visible, scores, -np.inf)
        scores = scores - scores.max(axis=-1, keepdims=True)
        probs = np.exp(scores)
        probs /= probs.sum(axis=-1, keepdims=True)
        y[start:end] = np.einsum("hqk,khd->qhd", probs, values).reshape(end - start, -1)
    return y.astype(q.dtype, copy=False)


def _reference(node: Node):
    attrs = _attrs(node)

    def run(*args):
        return (paged_attention(*args, **attrs),)

    return run


def _infer(node: Node, ins: list[Known | None]) -> list[Known | None]:
    attrs = _attrs(node)
    dtype, q, v_cache = dtype_of(ins[0]), shape_of(ins[0]), shape_of(ins[4])
    if dtype is None:
        return [None]
    cache_dtype = dtype_of(ins[4])
    if q is None or v_cache is None or len(q) != 2 or len(v_cache) != 4 or cache_dtype is None:
        return [tensor(dtype, None)]
    return [tensor(dtype, (q[0], attrs["num_heads"] * head_dim_of(v_cache[3], cache_dtype)))]


register_op(OpDef(
    "ember.PagedAttention",
    inputs=tuple(ParamSpec(name) for name in INPUTS),
    outputs=(ParamSpec("y"),),
    attrs={**HEAD_ATTRS, "sliding_window": AttrSpec("sliding_window", "int", 0)},
    reference=_reference, infer=_infer,
    deterministic=False, writes_inputs=(3, 4),  # writes the caches
    doc="causal attention of flattened sequences over a block-paged KV cache it writes the new k, v into "
        "(slot_mapping; block_tables, query_start_loc, seq_lens describe the sequences)",
))


def _lower(ctx, node, ins):
    # (on the cpu target too, float16 and bfloat16: its paged-attention kernel takes them;
    # caches also of int8 or float8e4m3fn, on both targets)
    floats = ctx.extern_floats | HALF_FLOATS
    caches = floats | {DType.int8, DType.float8e4m3fn}
    if (ins[0].dtype not in floats or any(r.dtype is not ins[0].dtype for r in ins[1:3])
            or ins[3].dtype not in caches or ins[4].dtype is not ins[3].dtype
            or any(r.dtype is not DType.int64 for r in ins[5:])):
        raise NotLowerable("q, k, v or the caches not float (the caches: or int8, float8e4m3fn), k or v not q's type, "
                           "the caches not of one type, or index inputs not int64")
    # the caches must be the caller's arrays themselves: written in place, they are state
    for value, name in zip(node.inputs[3:5], ("k_cache", "v_cache")):
        if value not in ctx.graph.inputs:
            raise NotLowerable(f"{name} is not a graph input (the cache it writes would be a copy)")
    return ctx.extern("paged_attention", ins, [out_type(node)], **_attrs(node))


register_lowering("ember.PagedAttention", extern_only=True)(_lower)
