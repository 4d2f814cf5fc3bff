"""The paged-attention extern: ember.PagedAttention on ember's fused CPU kernel
(runtime/native/paged_attention.py: the cache written and read in place, one online-softmax pass
over each sequence's blocks). Where that kernel cannot run — an element type it lacks, no
C++ compiler, strided arrays, indices it rejects — torch's kernels do it instead: one
scaled-dot-product attention per sequence over the keys its block table gathers. The
caches may be of another float type than q, k, v and y (a float16 or float8e4m3fn KV cache
of a float32 model): new rows are rounded into the cache's type, and read back as q's; or
int8 rows with their scale (ember.PagedAttention's docstring), quantized and dequantized."""

from __future__ import annotations

from ._torch import F, torch

from ..ir.quant_formats import KV_INT8_MAX, KV_ROW_EXTRA
from .native import paged_attention as kernel
from .externs import extern, native

_DTYPES = {"torch.float32": "float32", "torch.float16": "float16", "torch.bfloat16": "bfloat16",
           "torch.float8_e4m3fn": "float8e4m3fn", "torch.int8": "int8"}  # by str(dtype): the kernel's element types (float8, int8: caches')


@extern("paged_attention")
def paged_attention(params, q, k, v, k_cache, v_cache, slot_mapping, block_tables, query_start_loc, seq_lens, y):
    if not _fused(params, q, k, v, k_cache, v_cache, slot_mapping, block_tables, query_start_loc, seq_lens, y):
        gathered(params, q, k, v, k_cache, v_cache, slot_mapping, block_tables, query_start_loc, seq_lens, y)


NAMES = ("q", "k", "v", "k_cache", "v_cache", "slot_mapping", "block_tables", "query_start_loc", "seq_lens", "y")


def _sizes(params, shapes: dict, strides: dict, threads: int, cache_dtype: str) -> dict | None:
    """The kernel's sizes (native.paged_attention.SIZES) for arrays of these `shapes` (by
    name, NAMES) with rows `strides` elements apart (q, k, v, y) and caches of `cache_dtype`
    (the kernel's name for it), or None where the shapes
    do not describe a step it takes. The kernel trusts them: a mismatch is the other
    path's (torch's) to report."""
    heads, kv_heads = params["num_heads"], params["kv_num_heads"]
    q, k, v, k_cache, v_cache, slot_mapping, block_tables, query_start_loc, seq_lens, y = (shapes[n] for n in NAMES)
    if (any(len(a) != 2 for a in (q, k, v, y, block_tables)) or len(k_cache) != 4 or len(v_cache) != 4
            or len(seq_lens) != 1 or heads % kv_heads or params["sliding_window"] < 0):
        return None
    extra = KV_ROW_EXTRA.get(cache_dtype, 0)
    num_blocks, block_size, _, head_dim = k_cache
    head_dim -= extra
    tokens, v_head_dim, seqs = q[0], v_cache[3] - extra, seq_lens[0]
    if (tuple(k_cache[:3]) != (num_blocks, block_size, kv_heads) or tuple(v_cache[:3]) != tuple(k_cache[:3])
            or min(head_dim, v_head_dim, block_size) < 1 or q[1] != heads * head_dim
            or tuple(k) != (tokens, kv_heads * head_dim) or tuple(v) != (tokens, kv_heads * v_head_dim)
            or tuple(y) != (tokens, heads * v_head_dim) or tuple(slot_mapping) != (tokens,)
            or block_tables[0] < seqs or tuple(query_start_loc) != (seqs + 1,)):
        return None
    return {"num_tokens": tokens, "num_seqs": seqs, "max_blocks": block_tables[1], "num_blocks": num_blocks,
            "block_size": block_size, "num_heads": heads, "kv_num_heads": kv_heads, "head_dim": head_dim,
            "v_head_dim": v_head_dim, "q_stride": strides["q"], "k_stride": strides["k"], "v_stride": strides["v"],
            "y_stride": strides["y"], "sliding_window": params["sliding_window"], "threads": threads, "causal": 1,
            "k_slot_stride": kv_heads * (head_dim + extra), "v_slot_stride": kv_heads * (v_head_dim + extra),
            "bias_seq_stride": 0, "bias_head_stride": 0, "bias_query_stride": 0}


def _fused(params, *arrays) -> bool:
    """Run the fused kernel if it takes these arrays (NAMES' tensors); False if it did nothing."""
    q, k, v, k_cache, v_cache, slot_mapping, block_tables, query_start_loc, seq_lens, y = arrays
    if q.dim() == 2 and q.shape[0] == 0 and y.numel() == 0:  # no new token: nothing to write or attend
        return True
    dtype, cache = _DTYPES.get(str(q.dtype)), _DTYPES.get(str(k_cache.dtype))
    if dtype not in _NUMPY or cache is None:
        return False
    key = kernel.key(dtype, cache)
    if (q.device.type != "cpu" or not kernel.available(key)
            or any(t.dtype != q.dtype for t in (k, v, y)) or v_cache.dtype != k_cache.dtype
            or any(t.dtype != torch.int64 or not t.is_contiguous()
                   for t in (slot_mapping, block_tables, query_start_loc, seq_lens))
            or any(t.dim() != 2 or t.stride(1) != 1 for t in (q, k, v, y))
            or not (k_cache.is_contiguous() and v_cache.is_contiguous())):
        return False
    sizes = _sizes(params, {name: tuple(t.shape) for name, t in zip(NAMES, arrays)},
                   {"q": q.stride(0), "k": k.stride(0), "v": v.stride(0), "y": y.stride(0)}, torch.get_num_threads(),
                   cache)
    if sizes is None:
        return False
    return kernel.paged_attention(key, {name: t.data_ptr() for name, t in zip(NAMES, arrays)}, sizes,
                                  params["scale"])


_NUMPY = {"float32": "float32", "float16": "float16", "bfloat16": "bfloat16"}  # by numpy dtype name
_NUMPY_CACHES = {**_NUMPY, "float8_e4m3fn": "float8e4m3fn", "int8": "int8"}


@native("paged_attention")
def paged_attention_step(params, args):
    """The fused kernel's step form at these shapes (for a chained run), checked as `_fused`
    checks the arrays: contiguous rows and caches (every buffer a slot points at is), int64
    indices (the kernel checks their values when it runs); a step with no new token is the
    extern's."""
    from ._torch import threads

    if any(a is None for a in args[:len(NAMES)]):
        return None
    dtype, cache = _NUMPY.get(args[0][2].name), _NUMPY_CACHES.get(args[3][2].name)
    if (dtype is None or cache is None or any(a[2] != args[0][2] for a in (args[1], args[2], args[9]))
            or args[4][2] != args[3][2] or any(a[2].name != "int64" for a in args[5:9])):
        return None
    shapes = {name: tuple(a[1]) for name, a in zip(NAMES, args)}
    if not shapes["q"] or shapes["q"][0] == 0:
        return None
    strides = {name: shapes[name][-1] for name in ("q", "k", "v", "y")}  # (contiguous rows)
    sizes = _sizes(params, shapes, strides, threads(), cache)
    if sizes is None:
        return None
    return kernel.step(kernel.key(dtype, cache), {name: a[0] for name, a in zip(NAMES, args)}, sizes,
                       params["scale"])


def gathered(params, q, k, v, k_cache, v_cache, slot_mapping, block_tables, query_start_loc, seq_lens, y):
    """The same on torch: the caches written by index, then each sequence's keys and values
    gathered out of them for one scaled-dot-product attention."""
    heads, kv_heads = params["num_heads"], params["kv_num_heads"]
    scale, window = params["scale"] or None, params["sliding_window"]
    num_blocks, block_size = k_cache.shape[:2]
    head_dim = k_cache.shape[3] - KV_ROW_EXTRA.get(_DTYPES.get(str(k_cache.dtype)), 0)
    valid = slot_mapping >= 0
    slots = slot_mapping[valid]
    k_cache.view(num_blocks * block_size, kv_heads, -1)[slots] = _stored(k[valid].view(len(slots), kv_heads, -1), k_cache)
    v_cache.view(num_blocks * block_size, kv_heads, -1)[slots] = _stored(v[valid].view(len(slots), kv_heads, -1), v_cache)
    y.zero_()
    starts, lengths = query_start_loc.tolist(), seq_lens.tolist()
    for b, length in enumerate(lengths):
        start, end = starts[b], starts[b + 1]
        n = end - start
        if n <= 0:
            continue
        positions = torch.arange(length, device=q.device)
        blocks = block_tables[b][positions // block_size]
        keys = _read(k_cache[blocks, positions % block_size], q.dtype).transpose(0, 1)      # [Hkv, L, D]
        values = _read(v_cache[blocks, positions % block_size], q.dtype).transpose(0, 1)
        queries = q[start:end].view(n, heads, head_dim).transpose(0, 1)       # [H, n, D]
        query_pos = torch.arange(length - n, length, device=q.device)
        visible = positions[None, :] <= query_pos[:, None]
        if window:
            visible &= query_pos[:, None] - positions[None, :] < window
        out = F.scaled_dot_product_attention(queries, keys, values, attn_mask=visible, scale=scale,
                                             enable_gqa=kv_heads != heads)
        y[start:end] = out.transpose(0, 1).reshape(n, -1)


def _stored(rows, cache):
    """Rows [n, Hkv, D] as `cache` stores them: in its float type (torch's conversion to float8
    saturates, as the reference's does), or quantized into an int8 cache's codes and scale
    (ember.PagedAttention's rule, as its reference computes it)."""
    if cache.dtype != torch.int8:
        return rows.to(cache.dtype)
    x = rows.float()
    amax = x.abs().amax(-1, keepdim=True)  # (NaN propagates)
    inv = torch.where(amax == 0, torch.zeros_like(amax), torch.tensor(float(KV_INT8_MAX)) / amax)
    codes = torch.round(x * inv)  # (half to even)
    codes = torch.where(codes.isnan(), torch.zeros_like(codes), codes.clamp(-KV_INT8_MAX, KV_INT8_MAX)).to(torch.int8)
    return torch.cat([codes, (amax / KV_INT8_MAX).view(torch.int8)], dim=-1)


def _read(rows, dtype):
    """Cache rows as `dtype` (an int8 cache's dequantized: codes times their row's scale)."""
    if rows.dtype != torch.int8:
        return rows.to(dtype)
    d = rows.shape[-1] - KV_ROW_EXTRA["int8"]
    return (rows[..., :d].float() * rows[..., d:].contiguous().view(torch.float32)).to(dtype)
