"""Models that onnxruntime.transformers.optimizer rewrote into com.microsoft fused ops
(Attention, MultiHeadAttention, EmbedLayerNormalization, SkipLayerNormalization, BiasGelu,
FastGelu) from tiny random BERT and GPT-2 exports: ember compiles each with no node on
the reference fallback and matches onnxruntime at two input sizes."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest

import ember

from .ort_optimized import bert_feeds, contrib_ops, export_bert, export_gpt2, gpt2_feeds, optimize

# name -> (source model, model_type, optimizer options, the contrib ops it must contain)
CASES = {
    "bert": ("bert", "bert", {}, {"EmbedLayerNormalization": 1, "Attention": 2, "SkipLayerNormalization": 4,
                                  "BiasGelu": 2}),
    "bert_raw_mask_fast_gelu": ("bert", "bert", {"raw_mask": True, "enable_gelu_approximation": True},
                                {"EmbedLayerNormalization": 1, "Attention": 2, "SkipLayerNormalization": 4,
                                 "FastGelu": 2}),
    "bert_multi_head": ("bert", "bert", {"use_multi_head_attention": True},
                        {"EmbedLayerNormalization": 1, "MultiHeadAttention": 2, "SkipLayerNormalization": 4,
                         "BiasGelu": 2}),
    "gpt2": ("gpt2", "gpt2", {}, {"SkipLayerNormalization": 4, "FastGelu": 2}),
}
FEEDS = {"bert": bert_feeds, "gpt2": gpt2_feeds}


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ort_optimized")
    return {"bert": export_bert(folder / "bert.onnx"), "gpt2": export_gpt2(folder / "gpt2.onnx")}


@pytest.fixture(scope="module")
def optimized(exports, tmp_path_factory):
    folder = tmp_path_factory.mktemp("ort_optimized_out")
    return {name: optimize(exports[source], folder / f"{name}.onnx", model_type, **dict(options))
            for name, (source, model_type, options, _) in CASES.items()}


@pytest.mark.parametrize("name", sorted(CASES))
def test_optimizer_output_carries_the_contrib_ops(optimized, name):
    assert dict(contrib_ops(optimized[name])) == CASES[name][3]


@pytest.mark.parametrize("opt_level", [0, 2])
@pytest.mark.parametrize("name", sorted(CASES))
def test_compiles_on_kernels_and_matches_onnxruntime(optimized, name, opt_level):
    path = str(optimized[name])
    compiled = ember.compile(path, opt_level=opt_level)
    assert compiled.stats.fallback_nodes == [], str(compiled.stats)
    if opt_level == 2:  # the expansions fused: no contrib op is left, and attention is one op
        assert not [op for op in compiled.stats.op_histogram if op.startswith("com.microsoft.")]
        if "bert" in name:
            assert compiled.stats.op_histogram["ember.Attention"] == 2
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    for batch, seq in [(2, 7), (3, 13)]:
        feeds = FEEDS[CASES[name][0]](rng, batch, seq)
        want = session.run(None, feeds)
        got = list(compiled.run(feeds).values())
        for ours, theirs in zip(got, want, strict=True):
            assert ours.shape == theirs.shape
            np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-4)


@pytest.mark.slow
def test_optimized_minilm_matches_onnxruntime(minilm_onnx, tmp_path):
    """The pre-trained MiniLM, optimized by onnxruntime (its attention is left unfused there:
    ember's fuse_attention takes it after the contrib ops are expanded)."""
    from ember import _builtin

    path = optimize(minilm_onnx, tmp_path / "minilm.onnx", "bert", num_heads=12, hidden_size=384)
    assert dict(contrib_ops(path)) == {"SkipLayerNormalization": 12, "BiasGelu": 6}
    compiled = ember.compile(str(path))
    assert compiled.stats.fallback_nodes == [] and compiled.stats.op_histogram["ember.Attention"] == 6
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feeds = _builtin.tokenize(_builtin.SAMPLE_SENTENCES)
    (want,) = session.run(None, feeds)
    (got,) = compiled.run(feeds).values()
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


@pytest.fixture(scope="module")
def quantized(optimized, tmp_path_factory):
    """The optimized BERT quantized by onnxruntime's quantize_dynamic (uint8 weights: onnxruntime's
    u8 x u8 kernels are exact, its u8 x s8 ones on AVX2 saturate, so only then is it an
    oracle), and that model as an onnxruntime session optimizes it (optimized_model_filepath)."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    folder = tmp_path_factory.mktemp("ort_quantized")
    quantize_dynamic(str(optimized["bert"]), str(folder / "q.onnx"), weight_type=QuantType.QUInt8,
                     extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    options.optimized_model_filepath = str(folder / "q_ort.onnx")
    ort.InferenceSession(str(folder / "q.onnx"), options, providers=["CPUExecutionProvider"])
    return {"quantize_dynamic": folder / "q.onnx", "onnxruntime_optimized": folder / "q_ort.onnx"}


QUANTIZED_OPS = {
    "quantize_dynamic": {"QEmbedLayerNormalization": 1, "QAttention": 2, "SkipLayerNormalization": 4, "BiasGelu": 2},
    "onnxruntime_optimized": {"QEmbedLayerNormalization": 1, "QAttention": 2, "SkipLayerNormalization": 4,
                              "BiasGelu": 2, "DynamicQuantizeMatMul": 7},
}


@pytest.mark.parametrize("opt_level", [0, 2])
@pytest.mark.parametrize("name", sorted(QUANTIZED_OPS))
def test_quantized_bert_runs_on_the_integer_gemm_and_matches_onnxruntime(quantized, optimized, name, opt_level):
    """quantize_dynamic's QEmbedLayerNormalization and QAttention, and the DynamicQuantizeMatMul
    an onnxruntime session fuses: no node on the reference, every integer product on ember's
    integer GEMM (its RUNS counter), onnxruntime's outputs within the quantization tolerance:
    within float32 rounding until an activation that a layer quantizes at run time lands on
    a rounding boundary and the two engines' float32 roundings before it put it on either
    side; one step of that quantization then spreads through the next attention. So: the
    mean difference from onnxruntime at most half of onnxruntime's own from the float
    model (the quantization error), and exact to float32 rounding on most inputs."""
    from ember.runtime.native import integer_gemm

    path = str(quantized[name])
    assert dict(contrib_ops(quantized[name])) == QUANTIZED_OPS[name]
    compiled = ember.compile(path, opt_level=opt_level)
    assert compiled.stats.fallback_nodes == [], str(compiled.stats)
    if opt_level == 2:
        assert compiled.stats.op_histogram["ember.Attention"] == 2
        assert set(op for op in compiled.stats.op_histogram if op.startswith("com.microsoft.")) == {
            "com.microsoft.MatMulIntegerToFloat"}
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    float_session = ort.InferenceSession(str(optimized["bert"]), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(1)
    exact = 0
    for batch, seq in [(2, 7), (3, 13), (4, 16), (1, 20)]:
        feeds = bert_feeds(rng, batch, seq)
        runs = integer_gemm.RUNS[0]
        got = list(compiled.run(feeds).values())
        assert integer_gemm.RUNS[0] - runs == 9  # 2 attention projections + 7 other linear layers
        ours, theirs = got[0], session.run(None, feeds)[0]  # the last hidden state, [B, S, H]
        assert ours.shape == theirs.shape
        off, error = np.abs(ours - theirs), np.abs(theirs - float_session.run(None, feeds)[0])
        assert off.mean() <= 0.5 * error.mean(), (off.mean(), error.mean())
        exact += bool(off.max() <= 1e-5)
    assert exact >= 2  # (most inputs put no activation on a boundary: float32 rounding apart)
