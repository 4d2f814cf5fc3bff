"""ember.PagedAttention: its reference against dense causal attention (ember.Attention's
reference) over the same keys, and the compiled extern against the reference, on random
batches of sequences with shuffled cache blocks, grouped kv heads, sliding windows and
padding slots; both write the new keys and values into the caches in place."""

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import ember
from ember.codegen import cpu
from ember.ir import DType, Graph, TensorType, Value, symbol
from ember.ir.ops.ember_nn import attention
from ember.ir.ops.paged_attention import INPUTS, paged_attention


def _batch(rng, seqs, heads, kv_heads, d, block_size, num_blocks=96):
    """Feeds for one step: sequence i has seqs[i] = (cached tokens, new tokens); its
    cached keys/values are already in the cache. Returns feeds and each sequence's full k, v."""
    k_cache = rng.standard_normal((num_blocks, block_size, kv_heads, d)).astype(np.float32)
    v_cache = rng.standard_normal((num_blocks, block_size, kv_heads, d)).astype(np.float32)
    free = list(rng.permutation(num_blocks))
    qs, ks, vs, slots, tables, starts, lens, full = [], [], [], [], [], [0], [], []
    max_blocks = max(-(-(c + n) // block_size) for c, n in seqs)
    for cached, new in seqs:
        total = cached + new
        blocks = [free.pop() for _ in range(-(-total // block_size))]
        tables.append(blocks + [0] * (max_blocks - len(blocks)))
        k = rng.standard_normal((total, kv_heads * d)).astype(np.float32)
        v = rng.standard_normal((total, kv_heads * d)).astype(np.float32)
        for p in range(cached):  # already cached
            k_cache[blocks[p // block_size], p % block_size] = k[p].reshape(kv_heads, d)
            v_cache[blocks[p // block_size], p % block_size] = v[p].reshape(kv_heads, d)
        qs.append(rng.standard_normal((new, heads * d)).astype(np.float32))
        ks.append(k[cached:])
        vs.append(v[cached:])
        slots += [blocks[p // block_size] * block_size + p % block_size for p in range(cached, total)]
        starts.append(starts[-1] + new)
        lens.append(total)
        full.append((k, v))
    feeds = {"q": np.concatenate(qs), "k": np.concatenate(ks), "v": np.concatenate(vs),
             "k_cache": k_cache, "v_cache": v_cache, "slot_mapping": np.array(slots, np.int64),
             "block_tables": np.array(tables, np.int64), "query_start_loc": np.array(starts, np.int64),
             "seq_lens": np.array(lens, np.int64)}
    return feeds, full


SEQS = st.lists(st.tuples(st.integers(0, 13), st.integers(1, 6)), min_size=1, max_size=4)


@settings(max_examples=40, deadline=None)
@given(seqs=SEQS, heads=st.sampled_from([2, 4]), group=st.sampled_from([1, 2]), block_size=st.sampled_from([1, 4, 8]),
       window=st.sampled_from([0, 3]), seed=st.integers(0, 2**16))
def test_reference_is_causal_attention_over_each_sequence(seqs, heads, group, block_size, window, seed):
    rng = np.random.default_rng(seed)
    kv_heads, d = heads // group, 4
    feeds, full = _batch(rng, seqs, heads, kv_heads, d, block_size)
    y = paged_attention(*(feeds[n] for n in INPUTS), num_heads=heads, kv_num_heads=kv_heads, sliding_window=window)
    for b, ((cached, new), (k, v)) in enumerate(zip(seqs, full)):
        start = feeds["query_start_loc"][b]
        bias = None
        if window:
            query_pos = np.arange(cached, cached + new)[:, None]
            bias = np.where(query_pos - np.arange(cached + new)[None, :] < window, 0, -np.inf).astype(np.float32)
        want = attention(feeds["q"][None, start:start + new], k[None], v[None], bias, num_heads=heads,
                         kv_num_heads=kv_heads, causal=True)[0]
        np.testing.assert_allclose(y[start:start + new], want, rtol=1e-5, atol=1e-5)
        # the new keys and values are in the cache now, at their slots
        slots = feeds["slot_mapping"][start:start + new]
        cache_k = feeds["k_cache"].reshape(-1, kv_heads * d)[slots]
        np.testing.assert_array_equal(cache_k, k[cached:])


def test_padding_slots_are_not_written_and_their_rows_are_zero():
    rng = np.random.default_rng(0)
    feeds, _ = _batch(rng, [(3, 2)], 2, 2, 4, 4)
    # a third token that belongs to no sequence (past query_start_loc[B]), slot -1
    feeds["q"] = np.concatenate([feeds["q"], np.ones((1, 8), np.float32)])
    feeds["k"] = np.concatenate([feeds["k"], np.ones((1, 8), np.float32)])
    feeds["v"] = np.concatenate([feeds["v"], np.ones((1, 8), np.float32)])
    feeds["slot_mapping"] = np.append(feeds["slot_mapping"], -1)
    before = feeds["k_cache"].copy()
    y = paged_attention(*(feeds[n] for n in INPUTS), num_heads=2)
    assert np.all(y[2] == 0)
    changed = np.argwhere((feeds["k_cache"] != before).any(axis=(2, 3)))
    assert len(changed) <= 2  # only the two real tokens' slots


def _graph(heads, kv_heads, d, block_size, window):
    T, B, M, NB = (symbol(s) for s in ("t", "b", "m", "nb"))
    shapes = {"q": (T, heads * d), "k": (T, kv_heads * d), "v": (T, kv_heads * d),
              "k_cache": (NB, block_size, kv_heads, d), "v_cache": (NB, block_size, kv_heads, d),
              "slot_mapping": (T,), "block_tables": (B, M), "query_start_loc": (B + 1,), "seq_lens": (B,)}
    inputs = [Value(n, TensorType(DType.float32 if n in ("q", "k", "v", "k_cache", "v_cache") else DType.int64,
                                  shapes[n])) for n in INPUTS]
    g = Graph("g", inputs=inputs, opsets={"": 23})
    node = g.add_node("ember.PagedAttention", inputs, [Value("y", TensorType(DType.float32, (T, heads * d)))],
                      {"num_heads": heads, "kv_num_heads": kv_heads, "sliding_window": window})
    g.outputs = list(node.outputs)
    return g


@pytest.mark.skipif(cpu.compiler() is None, reason="no C++ compiler on this machine")
@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seqs=SEQS, heads=st.sampled_from([2, 4]), group=st.sampled_from([1, 2]), block_size=st.sampled_from([1, 4]),
       window=st.sampled_from([0, 5]), seed=st.integers(0, 2**16))
def test_extern_matches_the_reference_and_writes_the_caches(seqs, heads, group, block_size, window, seed):
    kv_heads, d = heads // group, 8
    feeds, _ = _batch(np.random.default_rng(seed), seqs, heads, kv_heads, d, block_size)
    ref_feeds = {n: a.copy() for n, a in feeds.items()}
    want = ember.compile(_graph(heads, kv_heads, d, block_size, window), codegen=False).run(ref_feeds)["y"]
    compiled = ember.compile(_graph(heads, kv_heads, d, block_size, window))
    assert compiled.stats.fallback_nodes == []
    got = compiled.run(feeds)["y"]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(feeds["k_cache"], ref_feeds["k_cache"])
    np.testing.assert_array_equal(feeds["v_cache"], ref_feeds["v_cache"])
