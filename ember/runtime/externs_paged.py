"""The paged-attention extern: ember.PagedAttention on torch's CPU kernels, one
scaled-dot-product attention per sequence over the keys its block table gathers.
A stop-gap until the fused CPU kernel (one pass over the blocks, no gather)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .externs import extern


@extern("paged_attention")
def paged_attention(params, q, k, v, k_cache, v_cache, slot_mapping, block_tables, query_start_loc, seq_lens, y):
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
        positions = torch.arange(length)
        blocks = block_tables[b][positions // block_size]
        keys = k_cache[blocks, positions % block_size].transpose(0, 1)      # [Hkv, L, D]
        values = v_cache[blocks, positions % block_size].transpose(0, 1)
        queries = q[start:end].view(n, heads, head_dim).transpose(0, 1)       # [H, n, D]
        query_pos = torch.arange(length - n, length)
        visible = positions[None, :] <= query_pos[:, None]
        if window:
            visible &= query_pos[:, None] - positions[None, :] < window
        out = F.scaled_dot_product_attention(queries, keys, values, attn_mask=visible, scale=scale,
                                             enable_gqa=kv_heads != heads)
        y[start:end] = out.transpose(0, 1).reshape(n, -1)
