"""The paged-attention extern: ember.PagedAttention on ember's fused CPU kernel
(runtime/native/paged_attention.py: the cache written and read in place, one online-softmax pass
over each sequence's blocks). Where that kernel cannot run — an element type it lacks, no
C++ compiler, strided arrays, indices it rejects — torch's kernels do it instead: one
scaled-dot-product attention per sequence over the keys its block table gathers."""

from __future__ import annotations

from ._torch import F, torch

from .native import paged_attention as kernel
from .externs import extern, native

_DTYPES = {"torch.float32": "float32", "torch.float16": "float16", "torch.bfloat16": "bfloat16"}  # by str(dtype)


@extern("paged_attention")
def paged_attention(params, q, k, v, k_cache, v_cache, slot_mapping, block_tables, query_start_loc, seq_lens, y):
    if not _fused(params, q, k, v, k_cache, v_cache, slot_mapping, block_tables, query_start_loc, seq_lens, y):
        gathered(params, q, k, v, k_cache, v_cache, slot_mapping, block_tables, query_start_loc, seq_lens, y)


def _fused(params, q, k, v, k_cache, v_cache, slot_mapping, block_tables, query_start_loc, seq_lens, y) -> bool:
    """Run the fused kernel if it takes these arrays; False if it did nothing."""
    if q.dim() == 2 and q.shape[0] == 0 and y.numel() == 0:  # no new token: nothing to write or attend
        return True
    dtype = _DTYPES.get(str(q.dtype))
    heads, kv_heads = params["num_heads"], params["kv_num_heads"]
    if (dtype is None or q.device.type != "cpu" or not kernel.available(dtype)
            or any(t.dtype != q.dtype for t in (k, v, k_cache, v_cache, y))
            or any(t.dtype != torch.int64 or not t.is_contiguous()
                   for t in (slot_mapping, block_tables, query_start_loc, seq_lens))
            or any(t.dim() != 2 or t.stride(1) != 1 for t in (q, k, v, y))
            or not (k_cache.dim() == v_cache.dim() == 4 and k_cache.is_contiguous() and v_cache.is_contiguous())
            or block_tables.dim() != 2 or seq_lens.dim() != 1 or heads % kv_heads
            or params["sliding_window"] < 0):
        return False
    # the kernel trusts the shapes: any mismatch is torch's to report
    num_blocks, block_size, _, head_dim = k_cache.shape
    tokens, v_head_dim = q.shape[0], v_cache.shape[3]
    if (k_cache.shape[:3] != (num_blocks, block_size, kv_heads) or v_cache.shape[:3] != k_cache.shape[:3]
            or min(head_dim, v_head_dim, block_size) < 1
            or q.shape[1] != heads * head_dim or k.shape != (tokens, kv_heads * head_dim)
            or v.shape != (tokens, kv_heads * v_head_dim) or y.shape != (tokens, heads * v_head_dim)
            or slot_mapping.shape != (tokens,) or block_tables.shape[0] < seq_lens.numel()
            or query_start_loc.shape != (seq_lens.numel() + 1,)):
        return False
    arrays = {"q": q, "k": k, "v": v, "k_cache": k_cache, "v_cache": v_cache, "slot_mapping": slot_mapping,
              "block_tables": block_tables, "query_start_loc": query_start_loc, "seq_lens": seq_lens, "y": y}
    sizes = {"num_tokens": tokens, "num_seqs": seq_lens.numel(), "max_blocks": block_tables.shape[1],
             "num_blocks": num_blocks, "block_size": block_size, "num_heads": heads, "kv_num_heads": kv_heads,
             "head_dim": head_dim, "v_head_dim": v_head_dim, "q_stride": q.stride(0),
             "k_stride": k.stride(0), "v_stride": v.stride(0), "y_stride": y.stride(0),
             "sliding_window": params["sliding_window"], "threads": torch.get_num_threads(), "causal": 1,
             "k_slot_stride": kv_heads * head_dim, "v_slot_stride": kv_heads * v_head_dim,
             "bias_seq_stride": 0, "bias_head_stride": 0, "bias_query_stride": 0}
    return kernel.paged_attention(dtype, {name: t.data_ptr() for name, t in arrays.items()}, sizes, params["scale"])


_NUMPY = {"float32": "float32", "float16": "float16", "bfloat16": "bfloat16"}  # by numpy dtype name


@native("paged_attention")
def paged_attention_step(params, args):
    """The fused kernel's step form at these shapes (for a chained run), checked as `_fused`
    checks the arrays: contiguous rows and caches, int64 indices (the kernel checks their
    values when it runs)."""
    from ._torch import threads

    if any(a is None for a in args[:9]) or args[9] is None:
        return None
    (q, k, v, k_cache, v_cache, slot_mapping, block_tables, query_start_loc, seq_lens, y) = args
    dtype = _NUMPY.get(q[2].name)
    heads, kv_heads = params["num_heads"], params["kv_num_heads"]
    if (dtype is None or any(a[2] != q[2] for a in (k, v, k_cache, v_cache, y))
            or any(a[2].name != "int64" for a in (slot_mapping, block_tables, query_start_loc, seq_lens))
            or any(len(a[1]) != 2 for a in (q, k, v, y, block_tables)) or len(k_cache[1]) != 4
            or len(seq_lens[1]) != 1 or heads % kv_heads or params["sliding_window"] < 0):
        return None
    num_blocks, block_size, _, head_dim = k_cache[1]
    tokens, v_head_dim = q[1][0], v_cache[1][3]
    seqs = seq_lens[1][0]
    if (tokens == 0 or tuple(k_cache[1][:3]) != (num_blocks, block_size, kv_heads) or tuple(v_cache[1][:3]) != tuple(k_cache[1][:3])
            or min(head_dim, v_head_dim, block_size) < 1 or q[1][1] != heads * head_dim
            or tuple(k[1]) != (tokens, kv_heads * head_dim) or tuple(v[1]) != (tokens, kv_heads * v_head_dim)
            or tuple(y[1]) != (tokens, heads * v_head_dim) or tuple(slot_mapping[1]) != (tokens,)
            or block_tables[1][0] < seqs or tuple(query_start_loc[1]) != (seqs + 1,)):
        return None
    names = ("q", "k", "v", "k_cache", "v_cache", "slot_mapping", "block_tables", "query_start_loc", "seq_lens", "y")
    sizes = {"num_tokens": tokens, "num_seqs": seqs, "max_blocks": block_tables[1][1],
             "num_blocks": num_blocks, "block_size": block_size, "num_heads": heads, "kv_num_heads": kv_heads,
             "head_dim": head_dim, "v_head_dim": v_head_dim, "q_stride": q[1][1], "k_stride": k[1][1],
             "v_stride": v[1][1], "y_stride": y[1][1], "sliding_window": params["sliding_window"],
             "threads": threads(), "causal": 1, "k_slot_stride": kv_heads * head_dim,
             "v_slot_stride": kv_heads * v_head_dim, "bias_seq_stride": 0, "bias_head_stride": 0,
             "bias_query_stride": 0}
    return kernel.step(dtype, {name: a[0] for name, a in zip(names, args)}, sizes, params["scale"])


def gathered(params, q, k, v, k_cache, v_cache, slot_mapping, block_tables, query_start_loc, seq_lens, y):
    """The same on torch: the caches written by index, then each sequence's keys and values
    gathered out of them for one scaled-dot-product attention."""
    heads, kv_heads = params["num_heads"], params["kv_num_heads"]
    scale, window = params["scale"] or None, params["sliding_window"]
    num_blocks, block_size, _, head_dim = k_cache.shape
    valid = slot_mapping >= 0
    slots = slot_mapping[valid]
    k_cache.view(num_blocks * block_size, kv_heads, -1)[slots] = k[valid].view(len(slots), kv_heads, -1)
    v_cache.view(num_blocks * block_size, kv_heads, -1)[slots] = v[valid].view(len(slots), kv_heads, -1)
    y.zero_()
    starts, lengths = query_start_loc.tolist(), seq_lens.tolist()
    for b, length in enumerate(lengths):
        start, end = starts[b], starts[b + 1]
        n = end - start
        if n <= 0:
            continue
        positions = torch.arange(length, device=q.device)
        blocks = block_tables[b][positions // block_size]
        keys = k_cache[blocks, positions % block_size].transpose(0, 1)      # [Hkv, L, D]
        values = v_cache[blocks, positions % block_size].transpose(0, 1)
        queries = q[start:end].view(n, heads, head_dim).transpose(0, 1)       # [H, n, D]
        query_pos = torch.arange(length - n, length, device=q.device)
        visible = positions[None, :] <= query_pos[:, None]
        if window:
            visible &= query_pos[:, None] - positions[None, :] < window
        out = F.scaled_dot_product_attention(queries, keys, values, attn_mask=visible, scale=scale,
                                             enable_gqa=kv_heads != heads)
        y[start:end] = out.transpose(0, 1).reshape(n, -1)
