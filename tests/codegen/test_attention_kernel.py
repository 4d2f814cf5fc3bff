"""The attention extern against ember.Attention's numpy reference: both layouts, masks
with finite and -inf entries, causal, grouped kv heads, and sizes on both sides of the
small-problem path."""

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

import ember
from ember.codegen import cpu
from ember.ir import DType, Graph, TensorType, Value

pytestmark = pytest.mark.skipif(cpu.compiler() is None, reason="no C++ compiler on this machine")


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(batch=st.integers(1, 3), heads=st.sampled_from([1, 2, 4]), group=st.sampled_from([1, 2]),
       sq=st.integers(1, 40), sk=st.sampled_from([1, 7, 40, 300]), d=st.sampled_from([4, 8, 32, 64]),
       packed=st.booleans(), mask=st.sampled_from([None, "keys", "full", "keys_inf", "shared", "2d"]), causal=st.booleans(),
       seed=st.integers(0, 2**16))
def test_attention_kernel_matches_the_reference(batch, heads, group, sq, sk, d, packed, mask, causal, seed):
    rng = np.random.default_rng(seed)
    kv = max(heads // group, 1)
    if packed:
        shapes = [(batch, sq, heads * d), (batch, sk, kv * d), (batch, sk, kv * d)]
        out = (batch, sq, heads * d)
    else:
        shapes = [(batch, heads, sq, d), (batch, kv, sk, d), (batch, kv, sk, d)]
        out = (batch, heads, sq, d)
    g = Graph("g", opsets={"": 28})
    names = ["q", "k", "v"]
    feeds = {n: rng.standard_normal(s).astype(np.float32) for n, s in zip(names, shapes)}
    if mask is not None:
        names.append("bias")
        shape = {"keys": (batch, 1, 1, sk), "keys_inf": (batch, 1, 1, sk), "full": (batch, heads, sq, sk),
                 "shared": (1, 1, sq, sk), "2d": (sq, sk)}[mask]  # the last two broadcast over batch
        bias = rng.standard_normal(shape).astype(np.float32)
        if mask == "keys_inf":
            bias[..., -1] = -np.inf  # the last key is never visible
        feeds["bias"] = bias
    g.inputs = [Value(n, TensorType(DType.float32, feeds[n].shape)) for n in names]
    node = g.add_node("ember.Attention", list(g.inputs), [Value("y", TensorType(DType.float32, out))],
                      {"num_heads": heads, "kv_num_heads": kv, "causal": int(causal)})
    g.outputs = list(node.outputs)
    want = ember.compile(g, opt_level=0, codegen=False).run(feeds)["y"]
    compiled = ember.compile(g, opt_level=0)
    assert compiled.stats.fallback_nodes == []
    from ember.runtime.native import gemm

    before = gemm.ATTENTION_RUNS[0]
    got = compiled.run(feeds)["y"]
    tiled = gemm.ATTENTION_RUNS[0] > before
    assert tiled == (packed and not causal)  # the encoder kernel takes every packed non-causal call
    event("ember's encoder attention" if tiled else "another path")
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("packed", [False, True])  # packed rows run on ember's fused (paged) kernel
@pytest.mark.parametrize("sk, sq", [(1, 3), (300, 3), (300, 300)])  # 2 x 300 x 300 scores: on SDPA
def test_a_row_with_every_key_masked_is_zero(sk, sq, packed):
    out = (1, sq, 8) if packed else (1, 2, sq, 4)
    feeds = {"q": np.ones(out, np.float32)}
    feeds["k"] = feeds["v"] = np.ones((1, sk, 8) if packed else (1, 2, sk, 4), np.float32)
    feeds["bias"] = np.full((1, 1, 1, sk), -np.inf, np.float32)
    g = Graph("g", opsets={"": 28})
    g.inputs = [Value(n, TensorType(DType.float32, a.shape)) for n, a in feeds.items()]
    node = g.add_node("ember.Attention", list(g.inputs), [Value("y", TensorType(DType.float32, out))],
                      {"num_heads": 2})
    g.outputs = list(node.outputs)
    np.testing.assert_array_equal(ember.compile(g, opt_level=0).run(feeds)["y"], np.zeros(out, np.float32))


def test_packed_float32_attention_runs_on_the_tiled_kernel():
    """BERT's case: q, k and v slices of one packed QKV array, a padding mask stored as
    [B, 1, Sq, Sk] (every query row alike) — ember's encoder attention (runtime/native/gemm.py,
    on the tiled GEMM's tiles) takes it, and it matches the reference with some keys of
    each sequence masked."""
    from ember.runtime.native import gemm

    rng = np.random.default_rng(0)
    batch, seq, heads, d = 3, 20, 4, 32
    padding = np.zeros((batch, 1, 1, seq), np.float32)
    for b in range(batch):
        padding[b, ..., seq - 4 * b:] = np.finfo(np.float32).min
    feeds = {"qkv": rng.standard_normal((batch, seq, 3 * heads * d)).astype(np.float32),
             "bias": np.broadcast_to(padding, (batch, 1, seq, seq)).copy()}
    g = Graph("g", opsets={"": 28})
    g.inputs = [Value(n, TensorType(DType.float32, a.shape)) for n, a in feeds.items()]
    node = g.add_node("ember.Attention", [g.inputs[0], None, None, g.inputs[1]],
                      [Value("y", TensorType(DType.float32, (batch, seq, heads * d)))], {"num_heads": heads})
    g.outputs = list(node.outputs)
    want = ember.compile(g, opt_level=0, codegen=False).run(feeds)["y"]
    before = gemm.ATTENTION_RUNS[0]
    got = ember.compile(g, opt_level=0).run(feeds)["y"]
    assert gemm.ATTENTION_RUNS[0] == before + 1
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_an_encoders_attention_runs_on_the_tiled_kernel_a_causal_one_on_the_paged(monkeypatch):
    """MiniLM's case at its size (12 heads x 128 x 128 scores, a padding mask that masks
    every key of no row, packed rows): ember's encoder attention runs it (torch's SDPA took
    1.2x as long, and allocated its result every call); a causal one keeps the paged
    kernel. Both match the reference."""
    from ember.runtime.native import gemm, paged_attention
    from ember.runtime import externs

    dense, sdpa = [], []
    real_dense, real_sdpa = paged_attention.dense_attention, externs.F.scaled_dot_product_attention
    monkeypatch.setattr(paged_attention, "dense_attention", lambda *a, **k: dense.append(1) or real_dense(*a, **k))
    monkeypatch.setattr(externs.F, "scaled_dot_product_attention", lambda *a, **k: sdpa.append(1) or real_sdpa(*a, **k))
    rng = np.random.default_rng(1)
    batch, seq, heads, d = 2, 128, 12, 32
    for causal in (0, 1):
        padding = np.zeros((batch, 1, 1, seq), np.float32)
        padding[1, ..., 100:] = -np.inf
        feeds = {"qkv": rng.standard_normal((batch, seq, 3 * heads * d)).astype(np.float32), "bias": padding}
        g = Graph("g", opsets={"": 28})
        g.inputs = [Value(n, TensorType(DType.float32, a.shape)) for n, a in feeds.items()]
        node = g.add_node("ember.Attention", [g.inputs[0], None, None, g.inputs[1]],
                          [Value("y", TensorType(DType.float32, (batch, seq, heads * d)))],
                          {"num_heads": heads, "causal": causal})
        g.outputs = list(node.outputs)
        want = ember.compile(g, opt_level=0, codegen=False).run(feeds)["y"]
        dense.clear(), sdpa.clear()
        before = gemm.ATTENTION_RUNS[0]
        got = ember.compile(g, opt_level=0).run(feeds)["y"]
        tiled = gemm.ATTENTION_RUNS[0] - before
        assert (tiled, dense, sdpa) == ((1, [], []) if not causal else (0, [1], [])), (causal, tiled, dense, sdpa)
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_the_fused_kernel_declines_keys_of_another_batch():
    """k with batch 1 against q and v with batch 4 (the reference broadcasts it): the fused
    kernel would read 4 batches of keys from an array of one, so it leaves the call to the
    other path."""
    import torch

    from ember.runtime.native import paged_attention
    from tests.native import install

    install("gemm", "paged_attention-float32")  # (called here directly, not through a program)
    q, v, y = torch.randn(4, 6, 16), torch.randn(4, 6, 16), torch.empty(4, 6, 16)
    k = torch.randn(1, 6, 16)
    assert not paged_attention.dense_attention(q, k, v, None, y, 2, 2, 0.0, False)
    assert paged_attention.dense_attention(q, k.expand(4, 6, 16).contiguous(), v, None, y, 2, 2, 0.0, False)
    from ember.runtime.native import gemm

    q, k, v, y = q.numpy(), k.numpy(), v.numpy(), y.numpy()  # (ember's attention takes numpy arrays)
    assert not gemm.attention(q, k, v, None, y, 2, 2, 0.25, 2)
    assert gemm.attention(q, np.ascontiguousarray(np.broadcast_to(k, (4, 6, 16))), v, None, y, 2, 2, 0.25, 2)


@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("sk", [16, 40])  # whole panels of keys, and a part panel (keys past Sk at -inf)
def test_a_nan_score_makes_its_row_nan_and_only_its_row(sk, masked):
    from tests.native import install

    from ember.runtime.native import gemm

    install("gemm")
    rng = np.random.default_rng(sk)
    batch, sq, heads, d = 2, 30, 2, 32
    q, k, v = (rng.standard_normal((batch, n, heads * d)).astype(np.float32) for n in (sq, sk, sk))
    q[1, 7, 3] = np.nan  # head 0 of query 7 in batch row 1: one row of scores all NaN
    k[0, 5, d + 1] = np.nan  # key 5 of head 1 in batch row 0: one NaN score in every row of that head
    mask = rng.standard_normal((batch, 1, 1, sk)).astype(np.float32) if masked else None
    y = np.empty_like(q)
    runs = gemm.ATTENTION_RUNS[0]
    assert gemm.attention(q, k, v, mask, y, heads, heads, 0.25, 2)
    assert gemm.ATTENTION_RUNS[0] == runs + 1
    nan = np.isnan(y.reshape(batch, sq, heads, d)).all(axis=-1)
    want = np.zeros_like(nan)
    want[1, 7, 0] = True
    want[0, :, 1] = True
    np.testing.assert_array_equal(nan, want)
    assert not np.isnan(y.reshape(batch, sq, heads, d)[~want]).any()
    # the rows without a NaN against float64
    s = np.einsum("bqhd,bkhd->bhqk", q.reshape(batch, sq, heads, d).astype(np.float64),
                  k.reshape(batch, sk, heads, d).astype(np.float64)) * 0.25
    if masked:
        s = s + mask
    p = np.exp(s - s.max(-1, keepdims=True))
    ref = np.einsum("bhqk,bkhd->bqhd", p / p.sum(-1, keepdims=True), v.reshape(batch, sk, heads, d))
    np.testing.assert_allclose(y.reshape(batch, sq, heads, d)[~want], ref[~want], rtol=1e-4, atol=1e-5)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(lengths=st.lists(st.integers(0, 70), min_size=1, max_size=6), heads=st.sampled_from([1, 2, 4]),
       group=st.sampled_from([1, 2]), d=st.sampled_from([4, 8, 32]), packed_qkv=st.booleans(), tail=st.integers(0, 3),
       threads=st.sampled_from([1, 2, 3]), seed=st.integers(0, 2**16))
def test_packed_rows_attend_within_their_sequence(lengths, heads, group, d, packed_qkv, tail, threads, seed):
    """ember.Attention with `starts` (an encoder's rows of mixed length packed one after
    another, no padding): the compiled extern — ember's kernel, its work shared out by
    sequence lengths on 1-3 threads — against the reference, which runs each sequence
    alone; rows past the last sequence (`tail`) are left alone; empty sequences are fine."""
    from ember.runtime.native import gemm

    rng = np.random.default_rng(seed)
    kv = max(heads // group, 1)
    starts = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    rows = int(starts[-1]) + tail
    if rows == 0:
        rows = tail = 1
    widths = [(heads + 2 * kv) * d] if packed_qkv else [heads * d, kv * d, kv * d]
    names = ["qkv"] if packed_qkv else ["q", "k", "v"]
    feeds = {n: rng.standard_normal((1, rows, w)).astype(np.float32) for n, w in zip(names, widths)}
    feeds["starts"] = starts
    g = Graph("g", opsets={"": 28})
    g.inputs = [Value(n, TensorType(DType.int64 if n == "starts" else DType.float32, a.shape)) for n, a in feeds.items()]
    ins = [g.inputs[0], None, None, None, g.inputs[1]] if packed_qkv else [*g.inputs[:3], None, g.inputs[3]]
    node = g.add_node("ember.Attention", ins, [Value("y", TensorType(DType.float32, (1, rows, heads * d)))],
                      {"num_heads": heads, "kv_num_heads": kv})
    g.outputs = list(node.outputs)
    want = ember.compile(g, opt_level=0, codegen=False).run(feeds)["y"]
    compiled = ember.compile(g, opt_level=0, intra_op_threads=threads)
    assert compiled.stats.fallback_nodes == []
    before = gemm.ATTENTION_RUNS[0]
    got = compiled.run(feeds)["y"]
    assert gemm.ATTENTION_RUNS[0] == before + 1  # ember's encoder kernel ran it
    event(f"{len(lengths)} sequences" + (", one empty" if 0 in lengths else ""))
    end = int(starts[-1])
    np.testing.assert_allclose(got[:, :end], want[:, :end], rtol=1e-4, atol=1e-5)
    for first, last in zip(starts[:-1], starts[1:]):  # the reference itself: each sequence alone
        if last > first:
            alone = {n: a[:, first:last] for n, a in feeds.items() if n != "starts"}
            q, k, v = (alone["qkv"][..., :heads * d], alone["qkv"][..., heads * d:(heads + kv) * d],
                       alone["qkv"][..., (heads + kv) * d:]) if packed_qkv else (alone["q"], alone["k"], alone["v"])
            from ember.ir.ops.ember_nn import attention
            np.testing.assert_allclose(want[:, first:last], attention(q, k, v, num_heads=heads, kv_num_heads=kv),
                                       rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("starts", [[1, 3], [0, 4, 2], [0, 9], [], [[0, 1]]])
def test_packed_rows_with_bad_starts_are_named(starts):
    """starts that do not split the rows into sequences: an InputError naming them, from the
    compiled model (the kernel refuses them and the extern names them) and the reference alike."""
    from ember.errors import InputError

    feeds = {"qkv": np.ones((1, 8, 3 * 16), np.float32), "starts": np.array(starts, np.int64)}
    g = Graph("g", opsets={"": 28})
    g.inputs = [Value("qkv", TensorType(DType.float32, (1, 8, 48))),
                Value("starts", TensorType(DType.int64, feeds["starts"].shape))]
    node = g.add_node("ember.Attention", [g.inputs[0], None, None, None, g.inputs[1]],
                      [Value("y", TensorType(DType.float32, (1, 8, 16)))], {"num_heads": 2})
    g.outputs = list(node.outputs)
    for codegen in (True, False):
        with pytest.raises(InputError, match="do not split its 8 rows into sequences"):
            ember.compile(g, opt_level=0, codegen=codegen).run(feeds)


@pytest.mark.parametrize("heads, kv_heads", [(4, 4), (4, 2)])
def test_packed_rows_on_torch_tensors_are_one_padded_sdpa_call(heads, kv_heads, monkeypatch):
    """The torch path of packed rows (the cuda target's tensors): the sequences gathered into
    padded rows for one SDPA call, their padding keys masked, an empty sequence among them,
    rows past the last sequence untouched — equal to the reference."""
    import torch

    from ember.ir.ops.ember_nn import attention
    from ember.runtime import externs

    calls = []
    real = externs.F.scaled_dot_product_attention
    monkeypatch.setattr(externs.F, "scaled_dot_product_attention", lambda *a, **k: calls.append(1) or real(*a, **k))
    rng = np.random.default_rng(3)
    d, starts = 8, np.array([0, 5, 5, 6, 19], np.int64)
    q, k, v = (rng.standard_normal((1, 21, n * d)).astype(np.float32) for n in (heads, kv_heads, kv_heads))
    y = torch.full((1, 21, heads * d), 7.0)
    externs._packed_rows_attention(torch.from_numpy(q), torch.from_numpy(k), torch.from_numpy(v),
                                   torch.from_numpy(starts), y, heads, kv_heads, 0.0)
    assert calls == [1]
    for first, end in zip(starts[:-1], starts[1:]):
        if end > first:
            want = attention(q[:, first:end], k[:, first:end], v[:, first:end], num_heads=heads, kv_num_heads=kv_heads)
            np.testing.assert_allclose(y[:, first:end].numpy(), want, rtol=1e-5, atol=1e-5)
    assert (y[:, 19:] == 7.0).all()
