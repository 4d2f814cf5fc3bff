"""ember's fused paged-attention kernel vs the torch path it replaced (each sequence's K/V
gathered out of the cache blocks, then one F.scaled_dot_product_attention per sequence),
in one process: the median of --runs calls each, the two alternating run by run.

Shapes are one layer of SmolLM2-135M (9 query heads, 3 kv heads, head_dim 64), float32,
16-token cache blocks handed out in a shuffled order:

    decode   64 sequences, 1 new token each after 399 cached (context 400)
    prefill  1 sequence of 512 new tokens
    chunk    1 sequence, 256 new tokens after 256 cached (a chunked prefill's second step)

"sdpa" is the peer for the prefill rows: SDPA alone (is_causal, no mask) on K/V already
gathered and laid out, i.e. the attention without any of the paging. "fused f16": the
same kernel over a float16 KV cache (q, k, v and y float32; kv_cache_dtype="float16");
"fused i8" over an int8 one (kv_cache_dtype="int8": rows of 64 codes and a float32 scale).

    python benchmarks/paged_attention_cpu.py [--runs 30] [--threads N]
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch
import torch.nn.functional as F

from ember.codegen import handwritten
from ember.ir.quant_formats import quantize_kv_rows
from ember.runtime import externs_paged, native
from ember.runtime.native import paged_attention as native_paged

HEADS, KV_HEADS, HEAD_DIM, BLOCK_SIZE = 9, 3, 64, 16
CASES = {"decode 64 x ctx 400": [(399, 1)] * 64, "prefill 1 x 512": [(0, 512)], "chunk 256 after 256": [(256, 256)]}


def feeds(seqs, seed=0):
    """Tensors for one step: sequence i has seqs[i] = (cached tokens, new tokens)."""
    rng = np.random.default_rng(seed)
    blocks_per_seq = [-(-(c + n) // BLOCK_SIZE) for c, n in seqs]
    num_blocks = sum(blocks_per_seq) + 8
    free = list(rng.permutation(num_blocks))
    tables = np.zeros((len(seqs), max(blocks_per_seq)), np.int64)
    slots, starts, lens = [], [0], []
    for b, ((cached, new), nb) in enumerate(zip(seqs, blocks_per_seq)):
        tables[b, :nb] = [free.pop() for _ in range(nb)]
        slots += [tables[b, p // BLOCK_SIZE] * BLOCK_SIZE + p % BLOCK_SIZE for p in range(cached, cached + new)]
        starts.append(starts[-1] + new)
        lens.append(cached + new)
    t = starts[-1]
    f = lambda *shape: torch.from_numpy(rng.standard_normal(shape).astype(np.float32))
    return [f(t, HEADS * HEAD_DIM), f(t, KV_HEADS * HEAD_DIM), f(t, KV_HEADS * HEAD_DIM),
            f(num_blocks, BLOCK_SIZE, KV_HEADS, HEAD_DIM), f(num_blocks, BLOCK_SIZE, KV_HEADS, HEAD_DIM),
            torch.tensor(slots), torch.from_numpy(tables), torch.tensor(starts), torch.tensor(lens),
            torch.empty(t, HEADS * HEAD_DIM)]


def sdpa_only(args):
    """Causal SDPA over the one sequence's K/V, gathered before the clock starts."""
    q, k_cache, v_cache, tables, lens = args[0], args[3], args[4], args[6], args[8]
    length, n = int(lens[0]), q.shape[0]
    pos = torch.arange(length)
    keys = k_cache[tables[0][pos // BLOCK_SIZE], pos % BLOCK_SIZE].transpose(0, 1).contiguous()
    values = v_cache[tables[0][pos // BLOCK_SIZE], pos % BLOCK_SIZE].transpose(0, 1).contiguous()
    queries = q.view(n, HEADS, HEAD_DIM).transpose(0, 1)
    if n == length:
        return lambda: F.scaled_dot_product_attention(queries, keys, values, is_causal=True, enable_gqa=True)
    visible = torch.ones(n, length, dtype=torch.bool).tril(length - n)
    return lambda: F.scaled_dot_product_attention(queries, keys, values, attn_mask=visible, enable_gqa=True)


def median_ms(fns, runs):
    times = {name: [] for name in fns}
    for name, fn in fns.items():
        for _ in range(3):
            fn()
    for _ in range(runs):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: 1e3 * statistics.median(t) for name, t in times.items()}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    a = parser.parse_args()
    torch.set_num_threads(a.threads)
    # the fused kernel runs once a Program has named its library: name it here
    native.install({name: str(handwritten.KERNELS[name].library())
                    for name in ("paged_attention-float32", "paged_attention-float32-float16",
                                 "paged_attention-float32-int8")})
    if not native_paged.available("float32"):
        raise SystemExit("the fused paged-attention kernel did not build (no C++ compiler?)")
    params = {"num_heads": HEADS, "kv_num_heads": KV_HEADS, "scale": 0.0, "sliding_window": 0}
    print(f"{a.threads} threads, median of {a.runs}; ms")
    print(f"{'case':<22} {'fused':>8} {'gathered':>9} {'speedup':>8} {'sdpa':>8} {'fused f16':>10} {'fused i8':>9}")
    for name, seqs in CASES.items():
        args = feeds(seqs)
        half = args[:3] + [args[3].half(), args[4].half()] + args[5:]
        quantized = args[:3] + [torch.from_numpy(quantize_kv_rows(c.numpy())) for c in args[3:5]] + args[5:]
        fns = {"fused": lambda: externs_paged.paged_attention(params, *args),
               "gathered": lambda: externs_paged.gathered(params, *args),
               "fused f16": lambda: externs_paged.paged_attention(params, *half),
               "fused i8": lambda: externs_paged.paged_attention(params, *quantized)}
        if len(seqs) == 1:
            fns["sdpa"] = sdpa_only(args)
        t = median_ms(fns, a.runs)
        sdpa = f"{t['sdpa']:8.3f}" if "sdpa" in t else f"{'':>8}"
        print(f"{name:<22} {t['fused']:8.3f} {t['gathered']:9.3f} {t['gathered'] / t['fused']:7.1f}x {sdpa} "
              f"{t['fused f16']:10.3f} {t['fused i8']:9.3f}")


if __name__ == "__main__":
    main()
