"""com.microsoft contrib ops, one node at a time: ember's reference and its compiled
kernels (O0 and O2) against onnxruntime, over sizes and contents hypothesis draws (the
models have symbolic batch and sequence dims, so each compiles once)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from ember.errors import EmberError
from ember.ir.interpreter import evaluate

from .contrib_check import _compiled, _graph, _session, check, contrib_model

F32, I32, I64 = np.float32, np.int32, np.int64
SETTINGS = settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
sizes = st.tuples(st.integers(1, 3), st.integers(1, 9))  # batch, sequence
seeds = st.integers(0, 2 ** 16)


def _normal(rng, *shape):
    return rng.standard_normal(shape).astype(F32)


def _lengths(rng, batch: int, seq: int) -> np.ndarray:
    return rng.integers(1, seq + 1, batch).astype(I32)


def _padding_mask(lengths: np.ndarray, seq: int) -> np.ndarray:
    return (np.arange(seq)[None, :] < lengths[:, None]).astype(I32)


# -- activations ------------------------------------------------------------------------
H = 8
X = ("x", F32, ["B", "S", H])
BIAS = ("bias", F32, [H])

ACTIVATIONS = {
    "Gelu": (contrib_model("Gelu", [X], ["y"]), False),
    "BiasGelu": (contrib_model("BiasGelu", [X, BIAS], ["y"]), True),
    "FastGelu": (contrib_model("FastGelu", [X, BIAS], ["y"]), True),
    "FastGelu_no_bias": (contrib_model("FastGelu", [X], ["y"]), False),
    "QuickGelu": (contrib_model("QuickGelu", [X], ["y"], alpha=1.3), False),
    "QuickGelu_default": (contrib_model("QuickGelu", [X], ["y"]), False),
}


@pytest.mark.parametrize("name", sorted(ACTIVATIONS))
@SETTINGS
@given(size=sizes, seed=seeds)
def test_activation(name, size, seed):
    model, biased = ACTIVATIONS[name]
    rng = np.random.default_rng(seed)
    feeds = {"x": 3 * _normal(rng, *size, H)}
    if biased:
        feeds["bias"] = _normal(rng, H)
    event(f"{name} batch {size[0]}")
    check(model, feeds)


BIAS_ADD = contrib_model("BiasAdd", [X, BIAS, ("skip", F32, ["B", "S", H])], ["y"])


@SETTINGS
@given(size=sizes, seed=seeds)
def test_bias_add(size, seed):
    """onnxruntime has BiasAdd on CUDA only: checked against ContribOperators.md's formula."""
    rng = np.random.default_rng(seed)
    feeds = {"x": _normal(rng, *size, H), "bias": _normal(rng, H), "skip": _normal(rng, *size, H)}
    check(BIAS_ADD, feeds, want=[feeds["x"] + feeds["bias"] + feeds["skip"]])


# -- FusedMatMul --------------------------------------------------------------------------
@pytest.mark.parametrize("flags", [(0, 0, 0, 0), (1, 0, 0, 0), (0, 1, 0, 0), (1, 1, 0, 0), (0, 0, 1, 0),
                                   (0, 0, 0, 1), (1, 0, 1, 0), (0, 1, 0, 1), (1, 1, 1, 1)])
@pytest.mark.parametrize("alpha", [1.0, 0.125])
def test_fused_matmul(flags, alpha):
    trans_a, trans_b, batch_a, batch_b = flags
    rng = np.random.default_rng(sum(flags) + int(alpha * 8))
    # logical A [2, 3, 4, 5] @ B [2, 3, 5, 6]; stored as the flags say
    a, b = _normal(rng, 2, 3, 4, 5), _normal(rng, 2, 3, 5, 6)
    if trans_a:
        a = a.swapaxes(-1, -2)
    if batch_a:
        a = np.moveaxis(a, -2, 0)
    if trans_b:
        b = b.swapaxes(-1, -2)
    if batch_b:
        b = np.moveaxis(b, -2, 0)
    a, b = np.ascontiguousarray(a), np.ascontiguousarray(b)
    model = contrib_model("FusedMatMul", [("a", F32, list(a.shape)), ("b", F32, list(b.shape))], ["y"],
                          alpha=alpha, transA=trans_a, transB=trans_b, transBatchA=batch_a, transBatchB=batch_b)
    check(model, {"a": a, "b": b})


# -- layer norms ----------------------------------------------------------------------------
def _skip_ln(beta: bool, bias: bool, outputs: list[str], skip_shape=("B", "S", H)):
    inputs = [X, ("skip", F32, list(skip_shape)), ("gamma", F32, [H]), ("beta", F32, [H]) if beta else None,
              BIAS if bias else None]
    while inputs[-1] is None:
        inputs.pop()
    return contrib_model("SkipLayerNormalization", inputs, outputs, epsilon=1e-5)


SKIP_LN = {
    "plain": (_skip_ln(True, False, ["y"]), True, False),
    "no_beta": (_skip_ln(False, False, ["y"]), False, False),
    "bias": (_skip_ln(True, True, ["y"]), True, True),
    "bias_no_beta_sum": (_skip_ln(False, True, ["y", "", "", "sum"]), False, True),
    "all_outputs": (_skip_ln(True, True, ["y", "mean", "inv_std", "sum"]), True, True),
}


@pytest.mark.parametrize("name", sorted(SKIP_LN))
@SETTINGS
@given(size=sizes, seed=seeds)
def test_skip_layer_norm(name, size, seed):
    model, beta, bias = SKIP_LN[name]
    rng = np.random.default_rng(seed)
    feeds = {"x": _normal(rng, *size, H), "skip": _normal(rng, *size, H), "gamma": _normal(rng, H)}
    feeds.update({"beta": _normal(rng, H)} if beta else {})
    feeds.update({"bias": _normal(rng, H)} if bias else {})
    check(model, feeds)


SKIP_LN_BROADCAST = _skip_ln(True, True, ["y", "", "", "sum"], skip_shape=(1, "S", H))


def test_skip_layer_norm_broadcast_skip():
    rng = np.random.default_rng(1)
    stats = check(SKIP_LN_BROADCAST, {"x": _normal(rng, 3, 5, H), "skip": _normal(rng, 1, 5, H),
                                      "gamma": _normal(rng, H), "beta": _normal(rng, H), "bias": _normal(rng, H)})
    assert "LayerNormalization" in stats[2].op_histogram  # not ember.SkipLayerNorm: skip broadcasts


def _skip_simplified(bias: bool, outputs: list[str]):
    inputs = [X, ("skip", F32, ["B", "S", H]), ("gamma", F32, [H])] + ([BIAS] if bias else [])
    return contrib_model("SkipSimplifiedLayerNormalization", inputs, outputs, epsilon=1e-6)


SKIP_SIMPLIFIED = {
    "plain": (_skip_simplified(False, ["y"]), False),
    "bias_sum": (_skip_simplified(True, ["y", "", "", "sum"]), True),
    "inv_std": (_skip_simplified(True, ["y", "", "inv_std", "sum"]), True),
}


@pytest.mark.parametrize("name", sorted(SKIP_SIMPLIFIED))
@SETTINGS
@given(size=sizes, seed=seeds)
def test_skip_simplified_layer_norm(name, size, seed):
    model, bias = SKIP_SIMPLIFIED[name]
    rng = np.random.default_rng(seed)
    feeds = {"x": _normal(rng, *size, H), "skip": _normal(rng, *size, H), "gamma": _normal(rng, H)}
    feeds.update({"bias": _normal(rng, H)} if bias else {})
    check(model, feeds)


SIMPLIFIED = contrib_model("SimplifiedLayerNormalization", [X, ("scale", F32, [H])], ["y"], domain="",
                           epsilon=1e-6)


@SETTINGS
@given(size=sizes, seed=seeds)
def test_simplified_layer_norm(size, seed):
    rng = np.random.default_rng(seed)
    check(SIMPLIFIED, {"x": _normal(rng, *size, H), "scale": _normal(rng, H)})


def test_simplified_layer_norm_in_the_default_domain_is_moved_on_a_copy():
    """onnxruntime registers SimplifiedLayerNormalization in the default domain; the ONNX
    frontend imports it as com.microsoft's and leaves the caller's model as it was."""
    import onnx

    from ember.frontends.onnx import load_onnx

    proto = onnx.load_from_string(SIMPLIFIED)
    graph = load_onnx(proto)
    assert [n.op for n in graph.nodes] == ["com.microsoft.SimplifiedLayerNormalization"]
    assert proto.graph.node[0].domain == ""


# -- EmbedLayerNormalization ------------------------------------------------------------------
VOCAB, POSITIONS, SEGMENTS = 20, 12, 3


def _embed(segments: bool, mask: bool, position_ids: bool):
    ids = ("input_ids", I32, ["B", "S"])
    inputs = [ids, ("segment_ids", I32, ["B", "S"]) if segments else None, ("word", F32, [VOCAB, H]),
              ("position", F32, [POSITIONS, H]), ("segment", F32, [SEGMENTS, H]) if segments else None,
              ("gamma", F32, [H]), ("beta", F32, [H]), ("mask", I32, ["B", "S"]) if mask else None,
              ("position_ids", I32, ["B", "S"]) if position_ids else None]
    while inputs[-1] is None:
        inputs.pop()
    return contrib_model("EmbedLayerNormalization", inputs, ["y", "mask_index", "sum"], epsilon=1e-5)


EMBED = {(s, m, p): _embed(s, m, p) for s in (False, True) for m in (False, True) for p in (False, True)}


@pytest.mark.parametrize("variant", sorted(EMBED), ids=lambda v: "seg{}_mask{}_pos{}".format(*map(int, v)))
@SETTINGS
@given(size=sizes, seed=seeds)
def test_embed_layer_norm(variant, size, seed):
    segments, mask, position_ids = variant
    batch, seq = size
    rng = np.random.default_rng(seed)
    feeds = {"input_ids": rng.integers(0, VOCAB, size).astype(I32), "word": _normal(rng, VOCAB, H),
             "position": _normal(rng, POSITIONS, H), "gamma": _normal(rng, H), "beta": _normal(rng, H)}
    if segments:
        feeds.update(segment_ids=rng.integers(0, SEGMENTS, size).astype(I32), segment=_normal(rng, SEGMENTS, H))
    if mask:
        feeds["mask"] = _padding_mask(_lengths(rng, batch, seq), seq)
    if position_ids:
        feeds["position_ids"] = rng.integers(0, POSITIONS, size).astype(I32)
    # without a mask onnxruntime's mask_index output is left unspecified: compare it only with one
    check(EMBED[variant], feeds, compare=[0, 1, 2] if mask else [0, 2])


# -- Attention ------------------------------------------------------------------------------------
HEADS, HIDDEN = 2, 8


def _attention(mask: str, unidirectional: int = 0, sizes: list[int] | None = None, attention_bias: bool = False):
    total = sum(sizes) if sizes else 3 * HIDDEN
    mask_shapes = {"none": None, "end": ["B"], "end_start": ["B2"], "raw": ["B", "S"], "3d": ["B", "S", "S"]}
    shape = mask_shapes[mask]
    inputs = [("x", F32, ["B", "S", HIDDEN]), ("w", F32, [HIDDEN, total]), ("b", F32, [total]),
              ("mask", I32, shape) if shape else None,
              None, ("attention_bias", F32, ["B", HEADS, "S", "S"]) if attention_bias else None]
    while inputs[-1] is None:
        inputs.pop()
    attrs = {"qkv_hidden_sizes": sizes} if sizes else {}
    return contrib_model("Attention", inputs, ["y"], num_heads=HEADS, unidirectional=unidirectional, **attrs)


ATTENTION = {
    "no_mask": _attention("none"),
    "end": _attention("end"),
    "raw": _attention("raw"),
    "raw_causal": _attention("raw", unidirectional=1),
    "3d": _attention("3d"),
    "causal": _attention("none", unidirectional=1),
    "qkv_sizes": _attention("raw", sizes=[8, 8, 4]),
    "attention_bias": _attention("raw", attention_bias=True),
}


@pytest.mark.parametrize("name", sorted(ATTENTION))
@SETTINGS
@given(size=sizes, seed=seeds)
def test_attention(name, size, seed):
    batch, seq = size
    rng = np.random.default_rng(seed)
    model = ATTENTION[name]
    total = 20 if name == "qkv_sizes" else 3 * HIDDEN
    lengths = _lengths(rng, batch, seq)
    feeds = {"x": _normal(rng, batch, seq, HIDDEN), "w": _normal(rng, HIDDEN, total) / 2, "b": _normal(rng, total)}
    if name == "end":
        feeds["mask"] = lengths
    elif name.startswith("raw") or name in ("qkv_sizes", "attention_bias"):
        feeds["mask"] = _padding_mask(lengths, seq)
    elif name == "3d":
        feeds["mask"] = (rng.random((batch, seq, seq)) < 0.7).astype(I32)
    if name == "attention_bias":
        feeds["attention_bias"] = _normal(rng, batch, HEADS, seq, seq)
    event(f"{name}: {'padded' if (lengths < seq).any() else 'full'}")
    check(model, feeds, rtol=1e-4, atol=1e-4)


ATTENTION_PAST = {
    mask: contrib_model("Attention", [("x", F32, ["B", "S", HIDDEN]), ("w", F32, [HIDDEN, 3 * HIDDEN]),
                                      ("b", F32, [3 * HIDDEN]), ("mask", I32, ["B", "T"] if mask == "raw" else ["B"]),
                                      ("past", F32, [2, "B", HEADS, "P", HIDDEN // HEADS])],
                        ["y", "present"], num_heads=HEADS, unidirectional=1)
    for mask in ("raw", "end")}


@pytest.mark.parametrize("mask", sorted(ATTENTION_PAST))
@SETTINGS
@given(size=sizes, past=st.integers(0, 5), seed=seeds)
def test_attention_with_past(mask, size, past, seed):
    """GPT-2 style decoding: a past of P keys and values, S new ones, present [2, B, N, P + S, H]."""
    batch, seq = size
    rng = np.random.default_rng(seed)
    lengths = past + _lengths(rng, batch, seq)
    feeds = {"x": _normal(rng, batch, seq, HIDDEN), "w": _normal(rng, HIDDEN, 3 * HIDDEN) / 2,
             "b": _normal(rng, 3 * HIDDEN), "past": _normal(rng, 2, batch, HEADS, past, HIDDEN // HEADS),
             "mask": _padding_mask(lengths, past + seq) if mask == "raw" else lengths.astype(I32)}
    event(f"past {'empty' if past == 0 else 'given'}")
    check(ATTENTION_PAST[mask], feeds, atol=1e-4)


def test_attention_with_rotary_runs_on_its_reference_refusing_clearly():
    model = contrib_model("Attention", [("x", F32, ["B", "S", HIDDEN]), ("w", F32, [HIDDEN, 3 * HIDDEN])], ["y"],
                          num_heads=HEADS, do_rotary=1)
    with pytest.raises(EmberError, match="do_rotary=1 has no reference"):
        list(evaluate(_graph(model), {"x": np.ones((1, 2, HIDDEN), F32), "w": np.ones((HIDDEN, 3 * HIDDEN), F32)}))


# -- MultiHeadAttention -------------------------------------------------------------------------
def _mha(bias: bool, mask: str, unidirectional: int = 0, present: bool = False):
    shape = {"none": None, "raw": ["B", "L"], "end": ["B"]}[mask]
    inputs = [("q", F32, ["B", "S", HIDDEN]), ("k", F32, ["B", "L", HIDDEN]), ("v", F32, ["B", "L", 6]),
              ("bias", F32, [2 * HIDDEN + 6]) if bias else None, ("mask", I32, shape) if shape else None]
    while inputs[-1] is None:
        inputs.pop()
    outputs = ["y", "present_key", "present_value"] if present else ["y"]
    return contrib_model("MultiHeadAttention", inputs, outputs, num_heads=HEADS, unidirectional=unidirectional)


MHA_PAST = contrib_model("MultiHeadAttention", [("q", F32, ["B", "S", HIDDEN]), ("k", F32, ["B", "S", HIDDEN]),
                                                ("v", F32, ["B", "S", HIDDEN]), ("bias", F32, [3 * HIDDEN]),
                                                ("mask", I32, ["B", "T"]), None,
                                                ("past_key", F32, ["B", HEADS, "P", HIDDEN // HEADS]),
                                                ("past_value", F32, ["B", HEADS, "P", HIDDEN // HEADS])],
                         ["y", "present_key", "present_value"], num_heads=HEADS, unidirectional=1)


@SETTINGS
@given(size=sizes, past=st.integers(0, 5), seed=seeds)
def test_multi_head_attention_with_past(size, past, seed):
    batch, seq = size
    rng = np.random.default_rng(seed)
    head = HIDDEN // HEADS
    feeds = {"q": _normal(rng, batch, seq, HIDDEN), "k": _normal(rng, batch, seq, HIDDEN),
             "v": _normal(rng, batch, seq, HIDDEN), "bias": _normal(rng, 3 * HIDDEN),
             "mask": _padding_mask(past + _lengths(rng, batch, seq), past + seq),
             "past_key": _normal(rng, batch, HEADS, past, head), "past_value": _normal(rng, batch, HEADS, past, head)}
    event(f"past {'empty' if past == 0 else 'given'}")
    check(MHA_PAST, feeds, atol=1e-4)


MHA = {
    "plain": _mha(False, "none"),
    "bias_raw_mask": _mha(True, "raw"),
    "end_mask_present": _mha(True, "end", present=True),
}


@pytest.mark.parametrize("name", sorted(MHA))
@SETTINGS
@given(size=sizes, keys=st.integers(1, 9), seed=seeds)
def test_multi_head_attention(name, size, keys, seed):
    batch, seq = size
    rng = np.random.default_rng(seed)
    feeds = {"q": _normal(rng, batch, seq, HIDDEN), "k": _normal(rng, batch, keys, HIDDEN),
             "v": _normal(rng, batch, keys, 6)}
    if name != "plain":
        feeds["bias"] = _normal(rng, 2 * HIDDEN + 6)
    lengths = _lengths(rng, batch, keys)
    if name == "bias_raw_mask":
        feeds["mask"] = _padding_mask(lengths, keys)
    elif name == "end_mask_present":
        feeds["mask"] = lengths
    event(f"{name}: {'cross' if keys != seq else 'self'}")
    check(MHA[name], feeds, atol=1e-4)


MHA_CAUSAL = _mha(True, "none", unidirectional=1)


@SETTINGS
@given(size=sizes, seed=seeds)
def test_multi_head_attention_causal(size, seed):
    batch, seq = size
    rng = np.random.default_rng(seed)
    check(MHA_CAUSAL, {"q": _normal(rng, batch, seq, HIDDEN), "k": _normal(rng, batch, seq, HIDDEN),
                       "v": _normal(rng, batch, seq, 6), "bias": _normal(rng, 2 * HIDDEN + 6)}, atol=1e-4)


# -- RotaryEmbedding ------------------------------------------------------------------------------
ROT_HEADS, HEAD = 2, 8
MAX_POS = 16


def _rotary(layout: str, positions: str, interleaved: int = 0):
    x = ("x", F32, ["B", "S", ROT_HEADS * HEAD] if layout == "3d" else ["B", ROT_HEADS, "S", HEAD])
    pos = ("pos", I64, ["B", "S"] if positions == "ids" else [1])
    caches = [("cos", F32, [MAX_POS, HEAD // 2]), ("sin", F32, [MAX_POS, HEAD // 2])]
    attrs = {"num_heads": ROT_HEADS} if layout == "3d" else {}
    return contrib_model("RotaryEmbedding", [x, pos, *caches], ["y"], interleaved=interleaved, **attrs)


ROTARY = {(layout, positions): _rotary(layout, positions) for layout in ("3d", "4d") for positions in ("ids", "offset")}


def _caches(head: int = HEAD):
    angles = np.arange(MAX_POS)[:, None] / 10000 ** (np.arange(head // 2)[None, :] / (head // 2))
    return np.cos(angles).astype(F32), np.sin(angles).astype(F32)


@pytest.mark.parametrize("variant", sorted(ROTARY), ids="-".join)
@SETTINGS
@given(size=sizes, seed=seeds)
def test_rotary_embedding(variant, size, seed):
    layout, positions = variant
    batch, seq = size
    rng = np.random.default_rng(seed)
    x = _normal(rng, batch, seq, ROT_HEADS * HEAD) if layout == "3d" else _normal(rng, batch, ROT_HEADS, seq, HEAD)
    pos = (rng.integers(0, MAX_POS, size) if positions == "ids" else rng.integers(0, MAX_POS - seq + 1, 1)).astype(I64)
    cos, sin = _caches()
    check(ROTARY[variant], {"x": x, "pos": pos, "cos": cos, "sin": sin})


def test_interleaved_rotary_runs_on_its_reference():
    rng = np.random.default_rng(0)
    cos, sin = _caches()
    feeds = {"x": _normal(rng, 2, 5, ROT_HEADS * HEAD), "pos": rng.integers(0, MAX_POS, (2, 5)).astype(I64),
             "cos": cos, "sin": sin}
    check(_rotary("3d", "ids", interleaved=1), feeds, fallback="interleaved")


# -- GroupQueryAttention ----------------------------------------------------------------------------
GQA_HEADS, KV_HEADS, GQA_HEAD = 4, 2, 16  # onnxruntime's kernel takes head sizes in multiples of 16


def _gqa(rotary: int = 0, past: bool = False):
    inputs = [("q", F32, ["B", "S", GQA_HEADS * GQA_HEAD]), ("k", F32, ["B", "S", KV_HEADS * GQA_HEAD]),
              ("v", F32, ["B", "S", KV_HEADS * GQA_HEAD]),
              ("past_key", F32, ["B", KV_HEADS, "P", GQA_HEAD]) if past else None,
              ("past_value", F32, ["B", KV_HEADS, "P", GQA_HEAD]) if past else None,
              ("seqlens_k", I32, ["B"]), ("total", I32, [])]
    if rotary:
        inputs += [("cos", F32, [MAX_POS, GQA_HEAD // 2]), ("sin", F32, [MAX_POS, GQA_HEAD // 2])]
    return contrib_model("GroupQueryAttention", inputs, ["y", "present_key", "present_value"], num_heads=GQA_HEADS,
                         kv_num_heads=KV_HEADS, do_rotary=rotary)


GQA = {"prompt": _gqa(), "prompt_rotary": _gqa(rotary=1)}


@pytest.mark.parametrize("name", sorted(GQA))
@SETTINGS
@given(size=sizes, seed=seeds)
def test_group_query_attention_prompt(name, size, seed):
    batch, seq = size
    rng = np.random.default_rng(seed)
    lengths = _lengths(rng, batch, seq)
    feeds = {"q": _normal(rng, batch, seq, GQA_HEADS * GQA_HEAD), "k": _normal(rng, batch, seq, KV_HEADS * GQA_HEAD),
             "v": _normal(rng, batch, seq, KV_HEADS * GQA_HEAD), "seqlens_k": lengths - 1,
             "total": np.asarray(seq, I32)}
    if name == "prompt_rotary":
        feeds["cos"], feeds["sin"] = _caches(GQA_HEAD)
    event(f"{name}: {'padded' if (lengths < seq).any() else 'full'}")
    _check_gqa_valid_rows(GQA[name], feeds, lengths)


def _check_gqa_valid_rows(model, feeds, lengths):
    """Each sequence's output rows before its end (onnxruntime leaves those of padding
    unspecified): ember's reference and O0 and O2 kernels against onnxruntime."""
    want = _session(model).run(None, feeds)
    outs = [list(evaluate(_graph(model), feeds).values())]
    for level in (0, 2):
        compiled = _compiled(model, level)
        assert not compiled.stats.fallback_nodes, f"O{level}: {compiled.stats}"
        outs.append(list(compiled.run(feeds).values()))
    for got in outs:
        for b, n in enumerate(lengths):
            np.testing.assert_allclose(got[0][b, :n], want[0][b, :n], rtol=1e-4, atol=1e-4)
            for present in (1, 2):  # [B, Nkv, T, H]
                np.testing.assert_allclose(got[present][b, :, :n], want[present][b, :, :n], rtol=1e-4, atol=1e-4)


def test_group_query_attention_decode_runs_on_its_reference():
    """One new token over a past of 5 (sequence lengths 6 and 4): onnxruntime's layout."""
    model = _gqa(past=True)
    rng = np.random.default_rng(7)
    lengths = np.asarray([6, 4], I32)
    feeds = {"q": _normal(rng, 2, 1, GQA_HEADS * GQA_HEAD), "k": _normal(rng, 2, 1, KV_HEADS * GQA_HEAD),
             "v": _normal(rng, 2, 1, KV_HEADS * GQA_HEAD), "past_key": _normal(rng, 2, KV_HEADS, 6, GQA_HEAD),
             "past_value": _normal(rng, 2, KV_HEADS, 6, GQA_HEAD), "seqlens_k": lengths - 1,
             "total": np.asarray(6, I32)}
    check(model, feeds, compare=[0], atol=1e-4, fallback="past state")


# -- MatMulNBits ----------------------------------------------------------------------------
def _nbits_case(rng, k, n, bits, block_size, zero_kind, bias):
    """A MatMulNBits node over random blocks (B, scales, zero points and bias constants)."""
    blocks = -(-k // block_size)
    q = rng.integers(0, 1 << bits, (n, blocks, block_size)).astype(np.uint8)
    b = (q[..., 0::2] | (q[..., 1::2] << 4)).astype(np.uint8) if bits == 4 else q
    inits = {"B": b, "scales": (rng.random(n * blocks) * 0.1 + 0.01).astype(np.float32)}
    if zero_kind == "uint8":
        zq = rng.integers(0, 1 << bits, (n, blocks + blocks % 2)).astype(np.uint8)
        inits["zero_points"] = ((zq[:, 0::2] | (zq[:, 1::2] << 4)) if bits == 4 else zq[:, :blocks]).reshape(-1)
    elif zero_kind == "float":
        inits["zero_points"] = rng.uniform(0, 1 << bits, n * blocks).astype(np.float32)
    if bias:
        inits["bias"] = _normal(rng, n)
    inputs = [("A", F32, ["M", k]), ("B", np.uint8, list(b.shape)), ("scales", F32, [n * blocks]),
              ("zero_points", inits["zero_points"].dtype, [inits["zero_points"].size]) if zero_kind else None,
              None, ("bias", F32, [n]) if bias else None]
    while inputs[-1] is None:
        inputs.pop()
    return contrib_model("MatMulNBits", inputs, ["y"], initializers=inits, K=k, N=n, bits=bits,
                         block_size=block_size)


# onnxruntime's CPU kernel refuses 8-bit weights with float zero points: that case is not here
NBITS = [(bits, block_size, k, zero) for bits, block_size, k in [(4, 32, 64), (4, 16, 40), (4, 128, 128), (8, 32, 96)]
         for zero in (None, "uint8", "float") if not (bits == 8 and zero == "float")]


@pytest.mark.parametrize("bits, block_size, k, zero_kind", NBITS)
@pytest.mark.parametrize("bias", [False, True])
def test_matmul_nbits(bits, block_size, k, zero_kind, bias):
    """onnxruntime's int4/int8 block-quantized MatMul (Optimum's and onnxruntime's int4
    exports): the reference, and the float GEMM over the dequantized weight it expands to,
    against onnxruntime's kernel."""
    rng = np.random.default_rng(bits + block_size + k + (zero_kind is None) + bias)
    model = _nbits_case(rng, k, 24, bits, block_size, zero_kind, bias)
    for m in (1, 5):
        check(model, {"A": _normal(rng, m, k)}, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("bits, k, zero_kind, format, block_size", [
    (4, 64, None, "q4_0", 32), (4, 64, "uint8", "q4_1", 32), (8, 96, None, "q8_0", 32),
    (4, 256, None, "q4_0", 128), (4, 192, "uint8", "q4_1", 64), (8, 160, None, "q8_0", 64),  # (160: a part block)
    (4, 320, "uint8", "q4_1", 128)])
@pytest.mark.parametrize("bias", [False, True])
def test_matmul_nbits_at_accuracy_level_4_runs_on_the_quantized_gemm(bits, k, zero_kind, format, block_size, bias):
    """accuracy_level 4 (onnxruntime quantizes A to int8 per block and multiplies
    integers): the weights become ember's blocks of 32 (q4_0, q4_1, q8_0; the scales in
    float16; a block of 64 or 128 as 2 or 4 of them sharing its scale and zero point),
    whose dequantized values are the node's to float16 rounding, and the node an
    ember.QuantizedLinear on ember's quantized GEMM (A quantized to int8 per block of 32):
    within the activations' rounding of onnxruntime's level-4 kernel, as that kernel is of
    the float reference."""
    import onnx
    import onnxruntime as ort

    import ember
    from ember.ir.ops.contrib_microsoft import dequantize_nbits, nbits_blocks
    from ember.ir.quant_formats import block_format
    from ember.runtime.native import quantized_gemm

    rng = np.random.default_rng(bits + k + bias)
    n = 24
    model = onnx.load_from_string(_nbits_case(rng, k, n, bits, block_size, zero_kind, bias))
    model.graph.node[0].attribute.append(onnx.helper.make_attribute("accuracy_level", 4))
    inits = {i.name: onnx.numpy_helper.to_array(i) for i in model.graph.initializer}
    got_format, blocks = nbits_blocks(inits["B"], inits["scales"], inits.get("zero_points"), k, n, bits, block_size)
    assert got_format == format
    np.testing.assert_allclose(block_format(format).dequantize(blocks).T,
                               dequantize_nbits(inits["B"], inits["scales"], inits.get("zero_points"), k, n, bits,
                                                block_size),
                               rtol=2e-3, atol=2e-3 * np.abs(inits["scales"]).max() * (1 << bits))
    compiled = ember.compile(model)
    assert [node.op for node in compiled.graph.nodes] == ["ember.QuantizedLinear"]
    a = _normal(rng, 7, k)
    before = quantized_gemm.RUNS[0]
    got = list(compiled.run({"A": a}).values())[0]
    assert quantized_gemm.RUNS[0] == before + 1
    serialized = model.SerializeToString()
    theirs = ort.InferenceSession(serialized, providers=["CPUExecutionProvider"]).run(None, {"A": a})[0]
    reference = list(evaluate(_graph(serialized), {"A": a}).values())[0]
    scale = np.abs(reference).max()
    assert np.abs(theirs - reference).max() <= 0.02 * scale  # (onnxruntime's own int8 rounding)
    assert np.abs(got - reference).max() <= 0.02 * scale
    if block_size == 32:  # both quantize A per block of 32: the same roundings but for the scales' float16
        assert np.abs(got - theirs).max() <= 0.002 * scale
    else:  # onnxruntime quantizes A per block of block_size, ember per 32: each engine's own
        # rounding of A, of the same size (ember's finer blocks, its float16 scales)
        assert np.abs(got - reference).mean() <= 1.5 * np.abs(theirs - reference).mean()


def test_matmul_nbits_with_float_zero_points_stays_float_at_level_4():
    """onnxruntime computes float zero points in float32 at every accuracy level: so does ember."""
    import onnx

    import ember
    from ember.ir.ops.contrib_microsoft import nbits_blocks

    rng = np.random.default_rng(5)
    model = onnx.load_from_string(_nbits_case(rng, 64, 24, 4, 32, "float", False))
    model.graph.node[0].attribute.append(onnx.helper.make_attribute("accuracy_level", 4))
    inits = {i.name: onnx.numpy_helper.to_array(i) for i in model.graph.initializer}
    assert nbits_blocks(inits["B"], inits["scales"], inits["zero_points"], 64, 24, 4, 32) is None
    assert "ember.QuantizedLinear" not in {node.op for node in ember.compile(model).graph.nodes}
    check(model.SerializeToString(), {"A": _normal(rng, 5, 64)}, rtol=1e-4, atol=1e-4)


# -- DynamicQuantizeMatMul -------------------------------------------------------------
def _dqmm_case(rng, k, n, b_dtype, per_column, zero, bias):
    """A DynamicQuantizeMatMul node over a constant 8-bit B (its scales, zero points and
    bias constants too, as onnxruntime's optimizer writes them), and B's constants."""
    low, high = (-127, 128) if b_dtype == np.int8 else (0, 256)
    inits = {"B": rng.integers(low, high, (k, n)).astype(b_dtype),
             "b_scale": (rng.random(n if per_column else 1) * 0.02 + 0.001).astype(F32).reshape(-1 if per_column else ())}
    if zero:
        inits["b_zero_point"] = rng.integers(low // 4, high // 4, n if per_column else 1).astype(b_dtype).reshape(
            -1 if per_column else ())
    if bias:
        inits["bias"] = _normal(rng, n)
    inputs = [("A", F32, ["B", "S", k]), ("B", b_dtype, [k, n]), ("b_scale", F32, list(inits["b_scale"].shape)),
              ("b_zero_point", b_dtype, list(inits["b_zero_point"].shape)) if zero else None,
              ("bias", F32, [n]) if bias else None]
    while inputs[-1] is None:
        inputs.pop()
    return contrib_model("DynamicQuantizeMatMul", inputs, ["y"], initializers=inits), inits


_DQL = contrib_model("DynamicQuantizeLinear", [("x", F32, ["N"])], ["y", "scale", "zero"], domain="")


def _exact_dqmm(inits, a):
    """DynamicQuantizeMatMul computed from onnxruntime's DynamicQuantizeLinear kernel and an
    exact int64 product: onnxruntime's own DynamicQuantizeMatMul is no oracle for int8 B on
    AVX2 without VNNI, where its u8 x s8 kernel (vpmaddubsw) saturates pairs of products at
    2^15 (docs/benchmarks.md, "Quantized ONNX")."""
    aq, a_scale, a_zero = _session(_DQL).run(None, {"x": a.reshape(-1)})
    b = inits["B"].astype(np.int64) - inits.get("b_zero_point", np.zeros((), inits["B"].dtype)).astype(np.int64)
    acc = (aq.astype(np.int64) - int(a_zero)).reshape(a.shape) @ b
    y = acc.astype(np.int32).astype(F32) * (np.float32(a_scale) * inits["b_scale"])
    return [y + inits["bias"] if "bias" in inits else y]


@pytest.mark.parametrize("b_dtype", [np.int8, np.uint8])
@pytest.mark.parametrize("per_column, zero, bias", [(False, False, False), (True, False, True), (False, True, True),
                                                    (True, True, False)])
def test_dynamic_quantize_matmul(b_dtype, per_column, zero, bias):
    """onnxruntime's fusion of quantize_dynamic's DynamicQuantizeLinear -> MatMulInteger ->
    Cast -> Mul (-> Add): A quantized to uint8 over its range at run time, the product on
    ember's exact integer GEMM (its RUNS counter), against onnxruntime's kernel."""
    from ember.runtime.native import integer_gemm

    rng = np.random.default_rng(7 * per_column + 3 * zero + bias + (b_dtype == np.int8))
    model, inits = _dqmm_case(rng, 48, 40, b_dtype, per_column, zero, bias)
    runs = integer_gemm.RUNS[0]
    for batch, seq in [(1, 1), (2, 7), (3, 16)]:
        a = _normal(rng, batch, seq, 48) * rng.uniform(0.1, 4)
        if seq == 7:
            a = np.abs(a)  # all positive: the range's low end is 0, the zero point 0
        check(model, {"A": a}, rtol=1e-5, atol=1e-5, want=_exact_dqmm(inits, a) if b_dtype == np.int8 else None)
    assert integer_gemm.RUNS[0] >= runs + 6  # O0 and O2, three sizes each


# -- QAttention --------------------------------------------------------------------------
def _qattention_case(rng, w_dtype, per_column, mask, unidirectional):
    """A QAttention node: a uint8 input fed (with its scale and zero point, as the
    DynamicQuantizeLinear before it gives them), the 8-bit weight and the rest constants.
    int8 weights within [-63, 63]: onnxruntime's u8 x s8 kernel saturates pairs of products
    at 2^15 on AVX2 (vpmaddubsw), so only there is it an oracle."""
    total = 3 * HIDDEN
    w = (rng.integers(-63, 64, (HIDDEN, total)) if w_dtype == np.int8 else rng.integers(0, 256, (HIDDEN, total)))
    inits = {"weight": w.astype(w_dtype), "bias": _normal(rng, total) * 0.5,
             "weight_scale": (rng.random(total if per_column else 1) * 0.004 + 0.001).astype(F32).reshape(
                 -1 if per_column else ()),
             "weight_zero_point": (rng.integers(-8, 8, total if per_column else 1) if w_dtype == np.int8 else
                                   rng.integers(100, 156, total if per_column else 1)).astype(w_dtype).reshape(
                 -1 if per_column else ())}
    shapes = {"none": None, "end": ["B"], "raw": ["B", "S"]}
    inputs = [("input", np.uint8, ["B", "S", HIDDEN]), ("weight", w_dtype, [HIDDEN, total]), ("bias", F32, [total]),
              ("input_scale", F32, []), ("weight_scale", F32, list(inits["weight_scale"].shape)),
              ("mask_index", I32, shapes[mask]) if shapes[mask] else None, ("input_zero_point", np.uint8, []),
              ("weight_zero_point", w_dtype, list(inits["weight_zero_point"].shape))]
    return contrib_model("QAttention", inputs, ["y"], initializers=inits, num_heads=HEADS,
                         unidirectional=unidirectional)


QATTENTION = {f"{w.__name__}_{'column' if column else 'tensor'}_{mask}{'_causal' if causal else ''}":
              (w, column, mask, causal)
              for w, column, mask, causal in [(np.int8, False, "raw", 0), (np.int8, True, "end", 0),
                                              (np.uint8, False, "none", 1), (np.uint8, True, "raw", 0),
                                              (np.int8, True, "none", 1)]}


@pytest.mark.parametrize("name", sorted(QATTENTION))
@SETTINGS
@given(size=sizes, seed=seeds)
def test_qattention(name, size, seed):
    """quantize_dynamic's Attention: the projection on ember's integer GEMM (MatMulIntegerToFloat),
    then ember.Attention, against onnxruntime's QAttention kernel."""
    batch, seq = size
    w_dtype, per_column, mask, causal = QATTENTION[name]
    model = _qattention_case(np.random.default_rng(len(name)), w_dtype, per_column, mask, causal)
    rng = np.random.default_rng(seed)
    lengths = _lengths(rng, batch, seq)
    feeds = {"input": rng.integers(0, 256, (batch, seq, HIDDEN)).astype(np.uint8),
             "input_scale": np.asarray(rng.uniform(0.005, 0.02), F32), "input_zero_point": np.asarray(
                 rng.integers(100, 156), np.uint8)}
    if mask == "end":
        feeds["mask_index"] = lengths
    elif mask == "raw":
        feeds["mask_index"] = _padding_mask(lengths, seq)
    event(f"{name}: {'padded' if mask != 'none' and (lengths < seq).any() else 'full'}")
    check(model, feeds, rtol=1e-4, atol=1e-4)


# -- QGemm -----------------------------------------------------------------------------
def _qgemm_case(rng, k, n, *, b_dtype, per_column, c, alpha, trans_a, trans_b, y, a_dtype=np.uint8):
    """A QGemm node (quantize_static's Gemm, QOperator format): A fed (`a_dtype`), B constant
    (int8 within [-63, 63] where onnxruntime's u8 x s8 kernel is exact on AVX2), C int32,
    the output float or quantized to `y` (uint8 / int8)."""
    b = rng.integers(-63, 64, (k, n)) if b_dtype == np.int8 else rng.integers(0, 256, (k, n))
    cols = n if per_column else 1
    inits = {"a_scale": np.asarray(0.02, F32), "a_zero_point": np.asarray(118 if a_dtype == np.uint8 else -5, a_dtype),
             "B": (b.T if trans_b else b).astype(b_dtype),
             "b_scale": (rng.random(cols) * 0.01 + 0.002).astype(F32).reshape(-1 if per_column else ()),
             "b_zero_point": (rng.integers(-6, 6, cols) if b_dtype == np.int8 else rng.integers(110, 140, cols)).astype(
                 b_dtype).reshape(-1 if per_column else ())}
    if c:
        inits["C"] = rng.integers(-3000, 3000, n).astype(np.int32)
    if y is not None:
        inits["y_scale"], inits["y_zero_point"] = np.asarray(0.15, F32), np.asarray(3 if y == np.int8 else 128, y)
    inputs = [("A", a_dtype, [k, "M"] if trans_a else ["M", k]), ("a_scale", F32, []), ("a_zero_point", a_dtype, []),
              ("B", b_dtype, list(inits["B"].shape)), ("b_scale", F32, list(inits["b_scale"].shape)),
              ("b_zero_point", b_dtype, list(inits["b_zero_point"].shape)), ("C", I32, [n]) if c else None,
              ("y_scale", F32, []) if y is not None else None, ("y_zero_point", y, []) if y is not None else None]
    while inputs[-1] is None:
        inputs.pop()
    return contrib_model("QGemm", inputs, ["y"], initializers=inits, alpha=alpha, transA=int(trans_a),
                         transB=int(trans_b))


QGEMM = {
    "float": dict(b_dtype=np.int8, per_column=False, c=False, alpha=1.0, trans_a=False, trans_b=False, y=None),
    "float_c_alpha_transB": dict(b_dtype=np.int8, per_column=True, c=True, alpha=0.5, trans_a=False, trans_b=True,
                                 y=None),
    "uint8_out_transA": dict(b_dtype=np.uint8, per_column=False, c=True, alpha=1.0, trans_a=True, trans_b=False,
                             y=np.uint8),
    "int8_out_per_column": dict(b_dtype=np.int8, per_column=True, c=True, alpha=1.0, trans_a=False, trans_b=True,
                                y=np.int8, a_dtype=np.int8),  # (onnxruntime's int8 output: for int8 A only)
}


@pytest.mark.parametrize("name", sorted(QGEMM))
def test_qgemm(name):
    """The integer product on ember's integer GEMM (MatMulIntegerToFloat where nothing else
    is asked for, else MatMulInteger, C, the rescale and the requantization in generated
    kernels), against onnxruntime's QGemm kernel; quantized outputs equal exactly."""
    from ember.runtime.native import integer_gemm

    rng = np.random.default_rng(len(name))
    case = QGEMM[name]
    model = _qgemm_case(rng, 40, 24, **case)
    runs = integer_gemm.RUNS[0]
    for m in (1, 9):
        low, high = (0, 256) if case.get("a_dtype", np.uint8) == np.uint8 else (-128, 128)
        a = rng.integers(low, high, (40, m) if case["trans_a"] else (m, 40)).astype(case.get("a_dtype", np.uint8))
        exact = case["y"] is not None
        check(model, {"A": a}, rtol=0 if exact else 1e-5, atol=0 if exact else 1e-5)
    assert integer_gemm.RUNS[0] >= runs + 4


# -- QEmbedLayerNormalization ------------------------------------------------------------
def _qembed_case(rng, dtype, segments, mask):
    """quantize_dynamic's EmbedLayerNormalization: every table 8-bit with its own scale and
    zero point (constants), ids int32 fed."""
    vocab, positions, hidden = 30, 24, H
    low, high = (-128, 128) if dtype == np.int8 else (0, 256)
    tables = {"word_embedding_quant": (vocab, hidden), "position_embedding_quant": (positions, hidden),
              "segment_embedding": (2, hidden), "gamma_quant": (hidden,), "beta_quant": (hidden,)}
    short = {"word_embedding_quant": "word_embedding", "position_embedding_quant": "position_embedding",
             "segment_embedding": "segment_embedding", "gamma_quant": "gamma", "beta_quant": "beta"}
    inits = {}
    for name, shape in tables.items():
        if name == "segment_embedding" and not segments:
            continue
        inits[name] = rng.integers(low, high, shape).astype(dtype)
        inits[short[name] + "_scale"] = np.asarray(rng.uniform(0.002, 0.02), F32)
        inits[short[name] + "_zero_point"] = np.asarray(rng.integers(low // 2, high // 2), dtype)
    spec = {"input_ids": (I32, ["B", "S"]), "segment_ids": (I32, ["B", "S"]) if segments else None,
            "mask": (I32, ["B", "S"]) if mask else None}
    names = ["input_ids", "segment_ids", "word_embedding_quant", "position_embedding_quant", "segment_embedding",
             "gamma_quant", "beta_quant", "mask", "word_embedding_scale", "position_embedding_scale",
             "segment_embedding_scale", "gamma_scale", "beta_scale", "word_embedding_zero_point",
             "position_embedding_zero_point", "segment_embedding_zero_point", "gamma_zero_point", "beta_zero_point"]
    inputs = [(n, *spec[n]) if spec.get(n) else (n, inits[n].dtype, list(inits[n].shape)) if n in inits else None
              for n in names]
    return contrib_model("QEmbedLayerNormalization", inputs, ["y", "mask_index"], initializers=inits,
                         epsilon=1e-5)


@pytest.mark.parametrize("dtype", [np.uint8, np.int8])
@pytest.mark.parametrize("segments, mask", [(True, True), (False, False), (True, False)])
def test_qembed_layer_norm(dtype, segments, mask):
    """Its tables dequantized ((q - zero) * scale), then EmbedLayerNormalization, against
    onnxruntime's kernel; the mask's row sums as mask_index."""
    rng = np.random.default_rng(segments + 2 * mask + (dtype == np.int8))
    model = _qembed_case(rng, dtype, segments, mask)
    for batch, seq in [(1, 1), (2, 9), (3, 24)]:
        feeds = {"input_ids": rng.integers(0, 30, (batch, seq)).astype(I32)}
        if segments:
            feeds["segment_ids"] = rng.integers(0, 2, (batch, seq)).astype(I32)
        if mask:
            feeds["mask"] = _padding_mask(_lengths(rng, batch, seq), seq)
        check(model, feeds, rtol=1e-4, atol=1e-4, compare=[0, 1] if mask else [0])
