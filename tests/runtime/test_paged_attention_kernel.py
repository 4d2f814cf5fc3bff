"""ember's fused paged-attention kernel (runtime/native/paged_attention.py, through the extern in
runtime/externs_paged.py) against ember.PagedAttention's numpy reference, on random
batches: sequences with no new tokens, one (decode) or many (prefill, and prefill chunks
after cached context), cache blocks handed out shuffled, block sizes 1/4/16, GQA groups,
head dims 8/64 (and the other code paths: 24, 128, a value head dim of its own), sliding
windows, padding tokens past the last sequence; the caches after the write equal the
reference's. The torch path is made to fail in these tests, so they pass only on the kernel."""

import ctypes

import ml_dtypes
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import ember
from ember.codegen import cpu
from ember.codegen import handwritten
from ember.ir import DType, Graph, TensorType, Value, symbol
from ember.ir.ops.paged_attention import INPUTS, head_dim_of, paged_attention
from ember.ir.quant_formats import dequantize_kv_rows, quantize_kv_rows
from ember.runtime import externs_paged, native
from ember.runtime.native import paged_attention as kernel
from ember.runtime.executor import _tensor
from tests.native import install

pytestmark = pytest.mark.skipif(cpu.compiler() is None, reason="no C++ compiler on this machine")


@pytest.fixture(autouse=True, scope="module")
def _kernels():
    """The extern is called here directly, not through a program that names its libraries."""
    install(*(f"paged_attention-{handwritten.paged_key(dtype, cache)}" for dtype in handwritten.PAGED_DTYPES
              for cache in handwritten.CACHE_DTYPES))


@pytest.fixture
def no_torch_path(monkeypatch):
    def fail(*args):
        raise AssertionError("the extern fell back to the torch path")

    monkeypatch.setattr(externs_paged, "gathered", fail)


def _batch(rng, seqs, heads, kv_heads, d, block_size, *, dv=None, padding=0, dtype=np.float32, cache_dtype=None):
    """Feeds for one step: sequence i has seqs[i] = (cached tokens, new tokens), its blocks
    drawn from a shuffled free list (the cache's other rows hold noise); `padding` tokens of
    no sequence (slot -1) at the end. The caches of `cache_dtype` (default: `dtype`)."""
    dv = dv or d
    need = sum(-(-(c + n) // block_size) for c, n in seqs)
    num_blocks = need + 3
    if cache_dtype is np.int8:  # rows quantized with their scales, as the kernel writes them
        k_cache = quantize_kv_rows(rng.standard_normal((num_blocks, block_size, kv_heads, d)))
        v_cache = quantize_kv_rows(rng.standard_normal((num_blocks, block_size, kv_heads, dv)))
    else:
        k_cache = rng.standard_normal((num_blocks, block_size, kv_heads, d)).astype(cache_dtype or dtype)
        v_cache = rng.standard_normal((num_blocks, block_size, kv_heads, dv)).astype(cache_dtype or dtype)
    free = list(rng.permutation(num_blocks))
    max_blocks = max([-(-(c + n) // block_size) for c, n in seqs] + [1])
    tables = np.full((len(seqs), max_blocks), -7, np.int64)  # unused entries: never read
    slots, starts, lens = [], [0], []
    for b, (cached, new) in enumerate(seqs):
        blocks = [free.pop() for _ in range(-(-(cached + new) // block_size))]
        tables[b, :len(blocks)] = blocks
        slots += [blocks[p // block_size] * block_size + p % block_size for p in range(cached, cached + new)]
        starts.append(starts[-1] + new)
        lens.append(cached + new)
    tokens = starts[-1] + padding
    return {"q": rng.standard_normal((tokens, heads * d)).astype(dtype),
            "k": rng.standard_normal((tokens, kv_heads * d)).astype(dtype),
            "v": rng.standard_normal((tokens, kv_heads * dv)).astype(dtype),
            "k_cache": k_cache, "v_cache": v_cache, "slot_mapping": np.array(slots + [-1] * padding, np.int64),
            "block_tables": tables, "query_start_loc": np.array(starts, np.int64),
            "seq_lens": np.array(lens, np.int64)}


def _run_extern(feeds, heads, kv_heads, window=0, scale=0.0):
    """The extern on torch views of `feeds` (its caches written in place); returns y."""
    q = feeds["q"]
    dv = head_dim_of(feeds["v_cache"].shape[3], feeds["v_cache"].dtype)
    y = np.full((q.shape[0], heads * dv), 7, q.dtype)  # every row must be written
    params = {"num_heads": heads, "kv_num_heads": kv_heads, "scale": scale, "sliding_window": window}
    externs_paged.paged_attention(params, *(_tensor(feeds[n]) for n in INPUTS), _tensor(y))
    return y


def _check(feeds, heads, kv_heads, window=0, scale=0.0, rtol=1e-5, atol=1e-5):
    ref = {n: a.copy() for n, a in feeds.items()}
    want = paged_attention(*(ref[n] for n in INPUTS), num_heads=heads, kv_num_heads=kv_heads, scale=scale,
                           sliding_window=window)
    got = _run_extern(feeds, heads, kv_heads, window, scale)
    np.testing.assert_allclose(got.astype(np.float32), want.astype(np.float32), rtol=rtol, atol=atol)
    for name in ("k_cache", "v_cache"):
        np.testing.assert_array_equal(feeds[name], ref[name])


SEQS = st.lists(st.tuples(st.integers(0, 50), st.sampled_from([0, 1, 1, 2, 5, 17, 40])), min_size=1, max_size=4)


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(seqs=SEQS, kv_heads=st.integers(1, 3), group=st.sampled_from([1, 3, 4]), d=st.sampled_from([8, 64]),
       block_size=st.sampled_from([1, 4, 16]), window=st.sampled_from([0, 0, 1, 6, 20]),
       padding=st.sampled_from([0, 0, 3]), seed=st.integers(0, 2**16))
def test_kernel_matches_the_reference(no_torch_path, seqs, kv_heads, group, d, block_size, window, padding, seed):
    rng = np.random.default_rng(seed)
    feeds = _batch(rng, seqs, kv_heads * group, kv_heads, d, block_size, padding=padding)
    _check(feeds, kv_heads * group, kv_heads, window)


@pytest.mark.parametrize("d, dv", [(24, 24), (128, 128), (64, 32), (40, 72)])
@pytest.mark.parametrize("seqs", [[(0, 70)], [(30, 1), (0, 1), (90, 1)], [(33, 9), (5, 0), (20, 3)]])
def test_other_head_dims(no_torch_path, d, dv, seqs):
    rng = np.random.default_rng(d + dv)
    feeds = _batch(rng, seqs, 6, 2, d, 16, dv=dv, padding=2)
    _check(feeds, 6, 2, window=0, scale=0.3)


@pytest.mark.parametrize("group", [8, 16, 80])  # 80 query heads on one kv head: more rows than one item holds
def test_large_groups(no_torch_path, group):
    rng = np.random.default_rng(group)
    feeds = _batch(rng, [(20, 1), (7, 12), (0, 3)], group, 1, 8, 4)
    _check(feeds, group, 1, window=9)


@pytest.mark.parametrize("dtype", [np.float16, ml_dtypes.bfloat16])
def test_half_precision_caches(no_torch_path, dtype):
    """float16 and bfloat16 compute in float32 as the reference does; the output is rounded once."""
    rng = np.random.default_rng(1)
    feeds = _batch(rng, [(40, 1), (0, 30), (17, 5)], 8, 2, 64, 16, padding=1, dtype=dtype)
    _check(feeds, 8, 2, window=0, rtol=1e-2, atol=1e-2)


@pytest.mark.parametrize("width", [4, 8, 16])
def test_every_vector_width_matches_the_reference(no_torch_path, width):
    """The kernel's register blocks follow the host's vector width (16 floats with AVX-512,
    8 with AVX2, 4 without): each width's build, run on this host, against the reference —
    decode (few_kernel's VW-key score sums), prefill tiles (rows_kernel), the head dims with
    compiled-in loops and without — with float32 caches, float8 ones and int8 ones (their
    loads vectorized per width)."""
    for key, cache in [("float32", None), ("float32-float8e4m3fn", FP8), ("float32-int8", np.int8)]:
        source = handwritten.KERNELS[f"paged_attention-{key}"].source()
        path = cpu.build(source.replace("#define EMBER_PAGED_ELEMENT", f"#define EMBER_PAGED_VW {width}\n"
                                        "#define EMBER_PAGED_ELEMENT", 1))
        assert ctypes.CDLL(str(path)).ember_paged_vector_width() == width
        native.install({f"paged_attention-{key}": str(path)})
        try:
            rng = np.random.default_rng(width)
            for d, dv, seqs in [(64, 64, [(40, 1), (0, 37), (17, 5), (90, 1)]), (32, 32, [(0, 70), (21, 2)]),
                                (40, 72, [(30, 1), (33, 9)])]:
                feeds = _batch(rng, seqs, 6, 2, d, 16, dv=dv, padding=1, cache_dtype=cache)
                _check(feeds, 6, 2, window=0, scale=0.3)
        finally:
            install(f"paged_attention-{key}")


FP8 = ml_dtypes.float8_e4m3fn


@pytest.mark.parametrize("dtype, cache_dtype", [(np.float32, np.float16), (np.float32, ml_dtypes.bfloat16),
                                                (ml_dtypes.bfloat16, np.float16), (np.float16, np.float32),
                                                (np.float32, FP8), (np.float16, FP8), (ml_dtypes.bfloat16, FP8),
                                                (np.float32, np.int8), (np.float16, np.int8),
                                                (ml_dtypes.bfloat16, np.int8)])
def test_caches_of_another_type(no_torch_path, dtype, cache_dtype):
    """A KV cache of its own element type (a float16, float8 or int8 cache of a float32 model):
    new rows rounded (int8: quantized with their scales) into it as the reference does it
    (the caches after the write equal bit for bit), keys and values read back and computed in
    float32 — decode, prefill tiles and a chunk after cached context, head dims with
    compiled-in loops and without."""
    rng = np.random.default_rng(5)
    for d, seqs in [(64, [(40, 1), (0, 37), (17, 5), (90, 1)]), (24, [(30, 1), (33, 9)])]:
        feeds = _batch(rng, seqs, 6, 2, d, 16, padding=1, dtype=dtype, cache_dtype=cache_dtype)
        tol = 1e-5 if dtype == np.float32 else 1e-2
        _check(feeds, 6, 2, rtol=tol, atol=tol)


# float8 e4m3fn's edges: zeros, the subnormal steps (2^-9) and their ties, the smallest normal
# (2^-6) and the ties around it, mantissa ties at every exponent, what carries into the next
# exponent, the largest finite value and past it (saturated), NaN
_EDGES = np.array([0.0, -0.0, 2.0 ** -10, 2.0 ** -9, 1.5 * 2 ** -9, 2.5 * 2 ** -9, 7.5 * 2 ** -9, 2.0 ** -6,
                   1.0625 * 2 ** -6, 1.1875 * 2 ** -6, 0.3, 1.0, 1.0625, 1.1875, 1.9375, 1.97, 3.14159, 17.5, 240.0,
                   416.0, 432.0, 440.0, 448.0, 455.0, 463.9, 464.0, 480.0, 1000.0, 1e30, np.inf, np.nan], np.float32)


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_float8_caches_round_and_saturate_as_torch_does(no_torch_path, dtype):
    """A float8 cache's stores at its edges: rounded to nearest even, saturated to +-448 as
    torch's conversion (and ONNX's Cast, saturate=1) does — the kernel's cache bytes equal
    torch's, and the reference's (numpy, saturated first); read back exactly."""
    with np.errstate(over="ignore"):  # (float16 has no 1e30: inf there)
        values = np.concatenate([_EDGES, -_EDGES]).astype(dtype)
    finite = values[np.isfinite(values)]
    rows = len(finite) // 8 * 8
    d, kv_heads = 8, 1
    rng = np.random.default_rng(3)
    feeds = _batch(rng, [(0, rows // d)], 1, kv_heads, d, 4, dtype=dtype, cache_dtype=FP8)
    feeds["k"] = finite[:rows].reshape(rows // d, d).copy()
    feeds["v"] = finite[:rows][::-1].reshape(rows // d, d).copy()
    ref = {n: a.copy() for n, a in feeds.items()}
    paged_attention(*(ref[n] for n in INPUTS), num_heads=1, kv_num_heads=1, scale=0.0, sliding_window=0)
    _run_extern(feeds, 1, kv_heads)
    slots = feeds["slot_mapping"]
    stored = feeds["k_cache"].reshape(-1, d)[slots]
    want = torch.from_numpy(feeds["k"].astype(np.float32)).to(torch.float8_e4m3fn).view(torch.uint8).numpy()
    np.testing.assert_array_equal(stored.view(np.uint8), want)
    for name in ("k_cache", "v_cache"):
        np.testing.assert_array_equal(feeds[name].view(np.uint8), ref[name].view(np.uint8))
    assert {448.0, -448.0} <= set(stored.astype(np.float32).ravel().tolist())  # (the saturated ones)


@pytest.mark.parametrize("width", [8, 16])
def test_float8_nan_reads_back_as_nan(no_torch_path, width):
    """A NaN stored in a float8 cache (0x7f / 0xff) reads back as NaN, not as the 480 its
    bits would make shifted into a float16: the output rows that saw it are NaN, as the
    reference's (scalar and vector loads: a head dim of 16 and of 17)."""
    source = handwritten.KERNELS["paged_attention-float32-float8e4m3fn"].source()
    path = cpu.build(source.replace("#define EMBER_PAGED_ELEMENT", f"#define EMBER_PAGED_VW {width}\n"
                                    "#define EMBER_PAGED_ELEMENT", 1))
    native.install({"paged_attention-float32-float8e4m3fn": str(path)})
    try:
        for d in (16, 17):
            feeds = _batch(np.random.default_rng(d), [(6, 2)], 2, 1, d, 4, cache_dtype=FP8)
            feeds["v"][0, 3] = np.nan
            ref = {n: a.copy() for n, a in feeds.items()}
            want = paged_attention(*(ref[n] for n in INPUTS), num_heads=2, kv_num_heads=1)
            got = _run_extern(feeds, 2, 1)
            assert np.isnan(want).any() and np.array_equal(np.isnan(got), np.isnan(want))
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    finally:
        install("paged_attention-float32-float8e4m3fn")


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_int8_caches_quantize_rows_as_the_reference_and_torch_do(no_torch_path, monkeypatch, dtype):
    """An int8 cache's stores at their edges — rows of zeros, ties of the rounding (x * 127 /
    amax half-way between codes), a row's largest value at +-127 exactly, tiny and huge
    ranges, a NaN or an infinity in a row (which then reads back as NaN) — equal the
    reference's bytes, codes and scales both, and so do the torch path's; read back, a
    finite row is within half a step (its scale / 2) of what was stored."""
    d, kv_heads, rows = 8, 2, 12
    values = np.random.default_rng(4).standard_normal((rows, kv_heads, d)).astype(np.float32)
    values[0] = 0.0
    values[1, 0] = np.array([127, 63.5, -63.5, 0.5, -0.5, 1.5, 2.5, -2.5])  # ties at scale 1
    values[1, 1] = np.array([1e-30, -2e-30, 3e-31, 0, 0, 0, 0, 1e-30])
    values[2, 0] = np.array([3e30, -1e30, 5, 0, 0, 0, 0, 1])
    values[2, 1, 3] = np.nan
    values[3, 0, 5] = np.inf
    values[3, 1, 0] = -np.inf
    with np.errstate(over="ignore"):  # (float16 has no 3e30: inf there)
        values = values.astype(dtype)
    feeds = _batch(np.random.default_rng(3), [(0, rows)], 2, kv_heads, d, 4, dtype=dtype, cache_dtype=np.int8)
    feeds["k"] = values.reshape(rows, kv_heads * d).copy()
    feeds["v"] = values[::-1].reshape(rows, kv_heads * d).copy()
    ref = {n: a.copy() for n, a in feeds.items()}
    paged_attention(*(ref[n] for n in INPUTS), num_heads=2, kv_num_heads=kv_heads, scale=0.0, sliding_window=0)
    torch_feeds = {n: a.copy() for n, a in feeds.items()}
    _run_extern(feeds, 2, kv_heads)
    for name in ("k_cache", "v_cache"):
        np.testing.assert_array_equal(feeds[name], ref[name])
    stored = feeds["k_cache"].reshape(-1, kv_heads, d + 4)[feeds["slot_mapping"]]
    assert stored[1, 0, :d].tolist() == [127, 64, -64, 0, -0, 2, 2, -2]  # half to even at scale 1
    back = dequantize_kv_rows(stored)
    assert np.isnan(back[2, 1]).all() and np.isnan(back[3]).all() and (back[0] == 0).all()
    finite = np.isfinite(values.astype(np.float32)).all(axis=-1)
    scale = np.ascontiguousarray(stored[..., d:]).view(np.float32)
    assert (np.abs(back - values.astype(np.float32))[finite] <= (scale / 2 * 1.0001 + 1e-37)[finite]).all()
    monkeypatch.undo()  # (no_torch_path's) and the torch path's stores:
    monkeypatch.setattr(externs_paged, "_fused", lambda *a: False)
    params = {"num_heads": 2, "kv_num_heads": kv_heads, "scale": 0.0, "sliding_window": 0}
    y = np.zeros((rows, 2 * d), dtype)
    externs_paged.paged_attention(params, *(_tensor(torch_feeds[n]) for n in INPUTS), _tensor(y))
    for name in ("k_cache", "v_cache"):
        np.testing.assert_array_equal(torch_feeds[name], ref[name])


def test_results_do_not_depend_on_the_thread_count(no_torch_path):
    rng = np.random.default_rng(2)
    feeds = _batch(rng, [(100, 1)] * 6 + [(0, 90), (64, 40)], 9, 3, 64, 16)
    threads = torch.get_num_threads()
    try:
        out = []
        for n in (1, 3):
            torch.set_num_threads(n)
            out.append(_run_extern({k: a.copy() for k, a in feeds.items()}, 9, 3))
    finally:
        torch.set_num_threads(threads)
    np.testing.assert_array_equal(out[0], out[1])


def test_strided_rows_are_read_in_place(no_torch_path):
    """q, k and v as column slices of one fused qkv buffer, as a model's projections give them."""
    rng = np.random.default_rng(3)
    feeds = _batch(rng, [(10, 4), (3, 1)], 4, 2, 8, 4)
    qkv = np.concatenate([feeds["q"], feeds["k"], feeds["v"]], axis=1)
    strided = dict(feeds, q=qkv[:, :32], k=qkv[:, 32:48], v=qkv[:, 48:])
    assert not strided["q"].flags.c_contiguous
    _check(strided, 4, 2)


def _paged_graph(heads, kv_heads, d, block_size, between_relus: bool = False) -> Graph:
    """One ember.PagedAttention over graph inputs of symbolic sizes (its q and output
    through a Relu each, `between_relus`: generated kernels around it)."""
    from ember.ir.shape_inference import infer_types

    T, B, M, NB = (symbol(s) for s in ("t", "b", "m", "nb"))
    shapes = {"q": (T, heads * d), "k": (T, kv_heads * d), "v": (T, kv_heads * d),
              "k_cache": (NB, block_size, kv_heads, d), "v_cache": (NB, block_size, kv_heads, d),
              "slot_mapping": (T,), "block_tables": (B, M), "query_start_loc": (B + 1,), "seq_lens": (B,)}
    inputs = [Value(n, TensorType(DType.float32 if i < 5 else DType.int64, shapes[n])) for i, n in enumerate(INPUTS)]
    g = Graph("g", inputs=inputs, opsets={"": 23})
    q = g.add_node("Relu", [inputs[0]], [Value("q_relu")], {}).outputs[0] if between_relus else inputs[0]
    y = g.add_node("ember.PagedAttention", [q, *inputs[1:]], [Value("attn" if between_relus else "y")],
                   {"num_heads": heads, "kv_num_heads": kv_heads}).outputs[0]
    g.outputs = g.add_node("Relu", [y], [Value("y")], {}).outputs if between_relus else [y]
    infer_types(g)
    return g


def test_the_compiled_graph_runs_the_kernel(no_torch_path):
    heads, kv_heads, d, block_size = 4, 2, 8, 4
    compiled = ember.compile(_paged_graph(heads, kv_heads, d, block_size))
    assert compiled.stats.fallback_nodes == []
    feeds = _batch(np.random.default_rng(4), [(6, 3), (0, 5), (9, 1)], heads, kv_heads, d, block_size, padding=2)
    ref = {n: a.copy() for n, a in feeds.items()}
    want = paged_attention(*(ref[n] for n in INPUTS), num_heads=heads, kv_num_heads=kv_heads)
    np.testing.assert_allclose(compiled.run(feeds)["y"], want, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(feeds["k_cache"], ref["k_cache"])


def test_between_generated_kernels_the_step_runs_from_c(monkeypatch):
    """Between generated kernels the attention's step form runs in the chained call (its
    Python extern never runs); where its indices are bad, it stops the chain, the extern
    runs, and the error names the attention node."""
    from ember.errors import ExecutionError

    heads, kv_heads, d, block_size = 4, 2, 8, 4
    compiled = ember.compile(_paged_graph(heads, kv_heads, d, block_size, between_relus=True))
    calls = []
    monkeypatch.setattr(externs_paged, "_fused", lambda *a: calls.append(1))
    feeds = _batch(np.random.default_rng(8), [(6, 3), (0, 5)], heads, kv_heads, d, block_size)
    ref = {n: a.copy() for n, a in feeds.items()}
    want = paged_attention(np.maximum(ref["q"], 0), *(ref[n] for n in INPUTS[1:]), num_heads=heads,
                           kv_num_heads=kv_heads)
    np.testing.assert_allclose(compiled.run(feeds)["y"], np.maximum(want, 0), rtol=1e-5, atol=1e-5)
    assert calls == []
    binding = next(iter(compiled.executor._bindings.values()))
    assert [entry[0] for entry in binding.chained] == [4]
    monkeypatch.undo()
    feeds["slot_mapping"][1] = feeds["k_cache"].shape[0] * block_size  # past the cache
    with pytest.raises(ExecutionError, match="paged_attention.*PagedAttention"):
        compiled.run(feeds)


_GATHERED = externs_paged.gathered


def test_what_the_kernel_lacks_runs_on_torch(monkeypatch):
    ran = []
    monkeypatch.setattr(externs_paged, "gathered", lambda *a: ran.append(1) or _GATHERED(*a))
    feeds = _batch(np.random.default_rng(5), [(5, 2)], 2, 1, 8, 4, dtype=np.float64)
    _check(feeds, 2, 1)
    assert ran == [1]


def test_without_a_compiler_the_extern_runs_on_torch(monkeypatch):
    """Without a C++ compiler codegen names no library for the kernel, and the extern runs
    on torch."""
    ran = []
    monkeypatch.setattr(externs_paged, "gathered", lambda *a: ran.append(1) or _GATHERED(*a))
    monkeypatch.setattr(cpu, "compiler", lambda: None)
    assert handwritten.build("paged_attention-float32") is None
    before = native.installed("paged_attention-float32")
    native.uninstall("paged_attention-float32")
    try:
        assert not kernel.available("float32")
        feeds = _batch(np.random.default_rng(6), [(5, 2), (0, 3)], 4, 2, 8, 4)
        _check(feeds, 4, 2)
    finally:
        native.install({"paged_attention-float32": before})
    assert ran == [1]


@pytest.mark.parametrize("break_it", ["slot past the cache", "block past the cache", "fewer keys than new tokens"])
def test_bad_indices_are_reported_not_read(break_it):
    """The kernel rejects indices that point outside the cache before it writes anything;
    the torch path then raises for them."""
    feeds = _batch(np.random.default_rng(7), [(5, 2), (0, 3)], 4, 2, 8, 4)
    if break_it == "slot past the cache":
        feeds["slot_mapping"][1] = feeds["k_cache"].shape[0] * 4
    elif break_it == "block past the cache":
        feeds["block_tables"][1, 0] = 10**6
    else:
        feeds["seq_lens"][1] = 2
    arrays = {n: _tensor(feeds[n]) for n in INPUTS}
    y = torch.zeros(feeds["q"].shape[0], 32)
    params = {"num_heads": 4, "kv_num_heads": 2, "scale": 0.0, "sliding_window": 0}
    before = feeds["k_cache"].copy()
    assert not externs_paged._fused(params, *arrays.values(), y)
    np.testing.assert_array_equal(feeds["k_cache"], before)
    if break_it != "fewer keys than new tokens":  # the reference's meaning of that one is NaN rows
        with pytest.raises((IndexError, RuntimeError)):
            externs_paged.paged_attention(params, *arrays.values(), y)


def test_dense_attention_declines_tensors_off_the_host():
    # a cuda program's attention extern asks the same function, and the host kernel is loaded
    # as soon as a cpu program with a float32 attention is compiled in the process (the
    # module's fixture installed it): device memory must never reach it (a segfault on a GPU)
    assert kernel.available("float32")
    q, k, v, y = (torch.zeros(2, 8, 64) for _ in range(4))
    assert kernel.dense_attention(q, k, v, None, y, 4, 4, 0.0, True)  # (on the host: it runs)
    for moved in range(4):
        tensors = [t.to("meta") if i == moved else t for i, t in enumerate((q, k, v, y))]
        assert not kernel.dense_attention(*tensors[:3], None, tensors[3], 4, 4, 0.0, True)
    bias = torch.zeros(2, 1, 1, 8, device="meta")
    assert not kernel.dense_attention(q, k, v, bias, y, 4, 4, 0.0, False)
