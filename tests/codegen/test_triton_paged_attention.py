"""ember.PagedAttention on the cuda target: the Triton KV-store and attention kernels
(codegen/triton_paged_attention.py, written into the kernel cache by codegen and loaded by
the runtime) against the op's reference, on batches that mix prefill, chunked prefill,
decode and empty sequences, grouped kv heads, sliding windows, value widths other than
the key's, tokens past the last sequence, and float32 / float16 / bfloat16 caches.
Without a GPU, in Triton's interpreter on CPU tensors (TRITON_INTERPRET=1, set here
before triton is imported)."""

from __future__ import annotations

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import ml_dtypes  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from ember.codegen import handwritten  # noqa: E402
from ember.ir.dtypes import DType  # noqa: E402
from ember.ir.ops.paged_attention import INPUTS, paged_attention  # noqa: E402
from ember.runtime._torch import array, tensor  # noqa: E402
from ember.runtime.device import _module  # noqa: E402
from tests.runtime.test_paged_attention_kernel import _batch  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@pytest.fixture(scope="module")
def kernels():
    path = handwritten.build("paged_attention-triton")
    assert path is not None and path.endswith(".py")
    return _module(path)


def _check(kernels, seqs, heads, kv_heads, d, block_size, *, dv=None, window=0, padding=0, dtype=np.float32, seed=0,
           cache_dtype=None):
    feeds = _batch(np.random.default_rng(seed), seqs, heads, kv_heads, d, block_size, dv=dv, padding=padding,
                   dtype=dtype, cache_dtype=cache_dtype)
    want_feeds = {name: a.copy() for name, a in feeds.items()}
    want = paged_attention(*(want_feeds[n] for n in INPUTS), num_heads=heads, kv_num_heads=kv_heads,
                           sliding_window=window)
    t = {name: tensor(a.copy()).to(DEVICE) for name, a in feeds.items()}
    y = torch.full((t["q"].shape[0], heads * (dv or d)), 7, dtype=t["q"].dtype, device=DEVICE)  # every row written
    params = {"num_heads": heads, "kv_num_heads": kv_heads, "scale": 0.0, "sliding_window": window}
    assert kernels.paged_attention(params, *(t[n] for n in INPUTS), y) is True  # the kernels ran
    tol = 1e-5 if dtype == np.float32 else 2e-2
    np.testing.assert_allclose(array(y.cpu()).astype(np.float32), want.astype(np.float32), rtol=tol, atol=tol)
    for cache in ("k_cache", "v_cache"):  # the new tokens stored at their slots, bit for bit
        np.testing.assert_array_equal(array(t[cache].cpu()), want_feeds[cache])


@pytest.mark.parametrize("seqs, heads, kv_heads, d, block_size, window", [
    ([(5, 2)], 2, 1, 8, 4, 0),                                  # one sequence, a head dim below the tile's 16
    ([(40, 1), (0, 30), (17, 5)], 8, 2, 64, 16, 0),              # decode, prefill, chunked prefill
    ([(3, 1), (9, 1), (0, 1), (30, 1)], 9, 3, 64, 16, 0),        # decode only (SmolLM2's 9 heads over 3)
    ([(3, 1), (9, 1), (0, 1)], 9, 3, 64, 16, 4),                 # ... in a sliding window
    ([(30, 20), (0, 70)], 4, 4, 16, 8, 5),                       # long prefill tiles, window across blocks
    ([(0, 0), (6, 3), (0, 0)], 4, 1, 32, 4, 0),                  # sequences with no new token
    ([(2, 1)], 32, 1, 16, 4, 0),                                 # a group wider than a tile's 16 rows
])
def test_the_kernels_match_the_reference(kernels, seqs, heads, kv_heads, d, block_size, window):
    _check(kernels, seqs, heads, kv_heads, d, block_size, window=window, padding=1)


@pytest.mark.parametrize("seqs, heads, kv_heads, window, dtype", [
    ([(300, 1), (150, 1), (0, 1)], 9, 3, 0, np.float32),        # long contexts, a small grid
    ([(300, 1), (150, 1), (0, 1)], 9, 3, 40, np.float32),       # ... in a sliding window: splits with no key
    ([(500, 1)], 8, 1, 0, ml_dtypes.bfloat16),                   # batch-1 decode, one kv head
])
def test_a_small_decode_grid_splits_the_keys(kernels, seqs, heads, kv_heads, window, dtype):
    """Decode of a few long sequences: each sequence's keys split over several programs,
    their partial softmax states merged (STATS counts the split launches)."""
    before = kernels.STATS["split_launches"]
    _check(kernels, seqs, heads, kv_heads, 64, 16, window=window, dtype=dtype)
    assert kernels.STATS["split_launches"] == before + 1


def test_values_of_another_width(kernels):
    _check(kernels, [(7, 3), (0, 9)], 4, 2, 32, 4, dv=16)


@pytest.mark.parametrize("dtype", [np.float16, ml_dtypes.bfloat16])
def test_half_precision_caches(kernels, dtype):
    _check(kernels, [(40, 1), (0, 30), (17, 5)], 8, 2, 64, 16, padding=1, dtype=dtype)


@pytest.mark.parametrize("cache_dtype", [np.float16, pytest.param(ml_dtypes.bfloat16, marks=pytest.mark.xfail(
    DEVICE == "cpu", strict=True, reason="Triton's interpreter casts float32 to bfloat16 by truncating the "
    "significand (triton/runtime/interpreter.py _convert_float ignores the rounding mode); a GPU rounds to nearest "
    "even, as the reference does"))])
def test_caches_of_another_type(kernels, cache_dtype):
    """A 16-bit KV cache of a float32 model: rows rounded into it (bit for bit the
    reference's), read back as float32."""
    _check(kernels, [(40, 1), (0, 30), (17, 5)], 8, 2, 64, 16, padding=1, cache_dtype=cache_dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_int8_caches(kernels, dtype):
    """An int8 KV cache (each row's codes and float32 scale): the new rows quantized bit for
    bit as the reference quantizes them, keys and values read back through their scales —
    prefill, chunked prefill and decode, and a decode grid whose keys are split."""
    _check(kernels, [(40, 1), (0, 30), (17, 5)], 8, 2, 64, 16, padding=1, dtype=dtype, cache_dtype=np.int8)
    before = kernels.STATS["split_launches"]
    _check(kernels, [(300, 1), (150, 1)], 9, 3, 32, 16, dtype=dtype, cache_dtype=np.int8)
    assert kernels.STATS["split_launches"] == before + 1


def test_int8_rows_at_their_edges(kernels):
    """Zeros, rounding ties, +-127, NaN and infinities in a row: the same codes and scales
    as the reference's."""
    feeds = _batch(np.random.default_rng(1), [(0, 4)], 2, 2, 8, 4, cache_dtype=np.int8)
    feeds["k"][0] = 0.0
    feeds["k"][1] = [127, 63.5, -63.5, 0.5, -0.5, 1.5, 2.5, -2.5, 1e-30, -2e-30, 3e-31, 0, 0, 0, 0, 1e-30]
    feeds["k"][2, 3] = np.nan
    feeds["k"][3, 5], feeds["k"][3, 8] = np.inf, -np.inf
    _stores_as_the_reference(kernels, feeds, 2, 2, 8)


def _stores_as_the_reference(kernels, feeds, heads, kv_heads, dv):
    """The kernels on `feeds`: the caches' bytes after the write those of the reference's
    write; returns the device tensors and y."""
    want = {name: a.copy() for name, a in feeds.items()}
    paged_attention(*(want[n] for n in INPUTS), num_heads=heads, kv_num_heads=kv_heads)
    t = {name: tensor(a.copy()).to(DEVICE) for name, a in feeds.items()}
    y = torch.zeros((feeds["q"].shape[0], heads * dv), dtype=torch.float32, device=DEVICE)
    params = {"num_heads": heads, "kv_num_heads": kv_heads, "scale": 0.0, "sliding_window": 0}
    assert kernels.paged_attention(params, *(t[n] for n in INPUTS), y) is True
    for cache in ("k_cache", "v_cache"):
        np.testing.assert_array_equal(array(t[cache].cpu()).view(np.uint8), want[cache].view(np.uint8))
    return t, y


def test_float8_caches(kernels):
    """A float8 (e4m3fn) cache of a float32 model: its stores, edges included (rounding ties,
    subnormals, saturation to +-448, NaN), bit for bit torch's conversion and the
    reference's; read back exactly, NaN as NaN."""
    fp8 = ml_dtypes.float8_e4m3fn
    _check(kernels, [(40, 1), (0, 30), (17, 5)], 8, 2, 64, 16, padding=1, cache_dtype=fp8)
    edges = np.array([0.0, -0.0, 2.0 ** -10, 2.0 ** -9, 1.5 * 2 ** -9, 2.5 * 2 ** -9, 7.5 * 2 ** -9, 2.0 ** -6,
                      1.0625 * 2 ** -6, 1.1875 * 2 ** -6, 0.3, 1.0625, 1.1875, 1.9375, 17.5, 240.0, 416.0, 432.0,
                      440.0, 448.0, 455.0, 464.0, 480.0, 1e30, np.inf, np.nan], np.float32)
    values = np.concatenate([edges, -edges, np.zeros(12, np.float32)]).reshape(8, 8)
    feeds = _batch(np.random.default_rng(2), [(0, 8)], 1, 1, 8, 4, cache_dtype=fp8)
    feeds["k"], feeds["v"] = values.copy(), values[::-1].copy()
    t, y = _stores_as_the_reference(kernels, feeds, 1, 1, 8)
    stored = t["k_cache"].view(-1, 8)[t["slot_mapping"]]
    np.testing.assert_array_equal(stored.view(torch.uint8).cpu().numpy(),
                                  torch.from_numpy(values).to(torch.float8_e4m3fn).view(torch.uint8).numpy())
    assert torch.isnan(y).all(dim=1).any()  # (rows that saw a NaN value)


def test_what_the_kernels_do_not_take_is_left_to_torch(kernels):
    """A dtype the kernels lack (float64): nothing done, False (the runtime's torch path runs)."""
    feeds = _batch(np.random.default_rng(0), [(5, 2)], 2, 1, 8, 4, dtype=np.float64)
    t = {name: tensor(a).to(DEVICE) for name, a in feeds.items()}
    y = torch.zeros((t["q"].shape[0], 16), dtype=torch.float64, device=DEVICE)
    before = t["k_cache"].clone()
    params = {"num_heads": 2, "kv_num_heads": 1, "scale": 0.0, "sliding_window": 0}
    assert kernels.paged_attention(params, *(t[n] for n in INPUTS), y) is False
    assert torch.equal(t["k_cache"], before)


@pytest.mark.parametrize("index_dtype", [DType.int64, DType.int32])
def test_the_cuda_target_writes_the_callers_caches(index_dtype):
    """ember.PagedAttention compiled for the cuda target and run on numpy caches: the
    device's writes come back into them, whether the node ran on the Triton kernels (int64
    indices) or on its reference on the CPU (int32: it falls back, and the inputs its
    reference writes in place, `writes_inputs`, are copied back to the device)."""
    import ember
    from ember.ir import Graph, TensorType, Value, symbol

    heads, kv_heads, d, block_size = 4, 2, 8, 4
    T, B, M, NB = (symbol(s) for s in ("t", "b", "m", "nb"))
    shapes = {"q": (T, heads * d), "k": (T, kv_heads * d), "v": (T, kv_heads * d),
              "k_cache": (NB, block_size, kv_heads, d), "v_cache": (NB, block_size, kv_heads, d),
              "slot_mapping": (T,), "block_tables": (B, M), "query_start_loc": (B + 1,), "seq_lens": (B,)}
    inputs = [Value(n, TensorType(DType.float32 if i < 5 else index_dtype, shapes[n])) for i, n in enumerate(INPUTS)]
    g = Graph("g", inputs=inputs, opsets={"": 23})
    node = g.add_node("ember.PagedAttention", inputs, [Value("y", TensorType(DType.float32, (T, heads * d)))],
                      {"num_heads": heads, "kv_num_heads": kv_heads})
    g.outputs = list(node.outputs)
    compiled = ember.compile(g, target="cuda")
    assert bool(compiled.stats.fallback_nodes) == (index_dtype is DType.int32)
    feeds = _batch(np.random.default_rng(4), [(6, 3), (0, 5), (9, 1)], heads, kv_heads, d, block_size, padding=2)
    feeds = {n: a.astype(index_dtype.numpy) if i >= 5 else a for i, (n, a) in enumerate(feeds.items())}
    ref = {n: a.copy() for n, a in feeds.items()}
    want = paged_attention(*(ref[n] for n in INPUTS), num_heads=heads, kv_num_heads=kv_heads)
    np.testing.assert_allclose(compiled.run(feeds)["y"], want, rtol=1e-5, atol=1e-5)
    for cache in ("k_cache", "v_cache"):
        np.testing.assert_array_equal(feeds[cache], ref[cache])
