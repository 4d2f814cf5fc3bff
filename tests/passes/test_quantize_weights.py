"""quantize_weights: linear layers' float weights into llama.cpp's blocks (ember.QuantizedLinear),
through `compile(quantization=...)`, `ember.quantize` and `ember.LLM(quantization=...)`; the
rule list of what stays float; and the errors for what it cannot do."""

import numpy as np
import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

import ember
from ember.codegen import cpu
from ember.errors import InputError, UnsupportedError
from ember.frontends.hf._builder import GraphBuilder
from ember.ir.dtypes import DType
from ember.ir.quant_formats import FORMATS
from ember.passes.quantize_weights import SCHEMES, Quantization, QuantizeWeights

pytestmark = pytest.mark.skipif(cpu.compiler() is None, reason="no C++ compiler on this machine")


def _mlp(rng, k=64, hidden=96, n=64, head_name="lm_head.weight"):
    """x -> Linear(relu) -> Linear -> Linear named like an LLM head."""
    g = GraphBuilder("mlp")
    x = g.input("x", DType.float32, (3, k))
    w1 = g.const("layer.0.weight", rng.standard_normal((k, hidden)).astype(np.float32) / 8)
    w2 = g.const("layer.1.weight", rng.standard_normal((hidden, hidden)).astype(np.float32) / 8)
    head = g.const(head_name, rng.standard_normal((hidden, n)).astype(np.float32) / 8)
    h = g("ember.Linear", x, w1, g.const("layer.0.bias", rng.standard_normal(hidden).astype(np.float32)),
          activation="relu")
    h = g("ember.Linear", h, w2)
    return g.finish([g("ember.Linear", h, head)])


def _ops(graph) -> list[str]:
    return [n.op for n in graph.nodes]


@settings(max_examples=12, deadline=None)
@given(scheme=st.sampled_from(sorted(SCHEMES)), seed=st.integers(0, 2**16))
def test_compile_quantizes_every_linear_but_the_head(scheme, seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((3, 64)).astype(np.float32)
    want = list(ember.compile(_mlp(np.random.default_rng(seed))).run({"x": x}).values())[0]
    model = ember.compile(_mlp(np.random.default_rng(seed)), quantization=scheme)
    ops = _ops(model.graph)
    assert ops.count("ember.QuantizedLinear") == 2 and ops.count("ember.Linear") == 1, ops
    fmt = {n.attrs["format"] for n in model.graph.nodes if n.op == "ember.QuantizedLinear"}
    assert fmt == {SCHEMES[scheme]}
    event(f"format {SCHEMES[scheme]}")
    assert model.options["quantization"]["scheme"] == scheme
    got = list(model.run({"x": x}).values())[0]
    error = np.abs(got - want).max() / np.abs(want).max()
    assert error < {8: 0.03, 5: 0.12, 4: 0.25}[FORMATS[SCHEMES[scheme]].bits], error  # (random weights: coarse)


def test_keep_float_and_min_weights_are_the_callers():
    rng = np.random.default_rng(0)
    everything = ember.compile(_mlp(rng), quantization=Quantization("int4", keep_float=()))
    assert _ops(everything.graph).count("ember.QuantizedLinear") == 3
    only_first = ember.compile(_mlp(rng), quantization=Quantization("int8", keep_float=("layer.1.*", "lm_head*")))
    quantized = [n.inputs[1].name for n in only_first.graph.nodes if n.op == "ember.QuantizedLinear"]
    assert quantized == ["layer.0.weight.q8_0"]
    big_only = ember.compile(_mlp(rng), quantization=Quantization("int8", min_weights=64 * 96 + 1))
    assert [n.inputs[1].name for n in big_only.graph.nodes if n.op == "ember.QuantizedLinear"] == \
        ["layer.1.weight.q8_0"]
    qpass = QuantizeWeights("int8")
    qpass.run(_mlp(rng, k=40))  # 40 input features: not whole blocks
    assert any("40 input features are not a multiple of 32" in reason for _, _, reason in qpass.report.rejected)


def test_quantize_returns_the_graph_of_an_onnx_model(tmp_path):
    rng = np.random.default_rng(1)
    w = rng.standard_normal((64, 96)).astype(np.float32)
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "mm",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 64])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 96])],
                              [numpy_helper.from_array(w, "w")])
    path = tmp_path / "mm.onnx"
    path.write_bytes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString())
    quantized = ember.quantize(path, "int8")
    assert _ops(quantized) == ["ember.QuantizedLinear"]
    x = rng.standard_normal((5, 64)).astype(np.float32)
    got = list(ember.compile(quantized).run({"x": x}).values())[0]
    assert np.abs(got - x @ w).max() / np.abs(x @ w).max() < 0.02


def test_bad_schemes_are_named():
    with pytest.raises(UnsupportedError, match="scheme 'int3'.*choose one of int8, int4"):
        ember.compile(_mlp(np.random.default_rng(0)), quantization="int3")
    with pytest.raises(UnsupportedError, match="scheme name"):
        ember.compile(_mlp(np.random.default_rng(0)), quantization=8)


def test_llm_quantization_options(tiny_llm_dir):
    from ember.llm import compile_llm

    compiled = compile_llm(tiny_llm_dir, quantization="int8", max_model_len=64, progress=False)
    ops = _ops(compiled.graph)
    # per layer q, o, gate, up, down; k and v (64 x 32 weights) are below min_weights; the head stays float
    assert ops.count("ember.QuantizedLinear") == 2 * 5 and ops.count("ember.Linear") == 2 * 2 + 1
    llm = ember.LLM(tiny_llm_dir, quantization="int4", max_model_len=64)
    out = llm.generate(["Hello"], ember.SamplingParams(max_tokens=4, temperature=0, ignore_eos=True), use_tqdm=False)
    assert len(out[0].outputs[0].token_ids) == 4
    with pytest.raises(InputError, match="'gguf' keeps a GGUF file's blocks; .* is not a GGUF file"):
        compile_llm(tiny_llm_dir, quantization="gguf", progress=False)
    with pytest.raises(InputError, match="runs on the cpu target in float32"):
        compile_llm(tiny_llm_dir, quantization="int8", dtype="bfloat16", progress=False)
    with pytest.raises(InputError, match="quantization 'int3' is not one ember knows"):
        ember.LLM(tiny_llm_dir, quantization="int3")


@pytest.mark.parametrize("scheme", ["int8", "int4", "int4_asym"])
def test_group_wise_scales(scheme):
    """Quantization(group_size=64 or 128): one scale (and minimum) per group along K, by
    gguf's formulas over the group (at 32 the same bytes as gguf's quantizer); each block of
    32 of a group carries its group's scale, so the same kernel runs them."""
    from ember.ir.quant_formats import _grouped

    fmt = FORMATS[SCHEMES[scheme]]
    rng = np.random.default_rng(len(scheme))
    w = rng.standard_normal((6, 256)).astype(np.float32)
    np.testing.assert_array_equal(_grouped(fmt.name, w, 32).reshape(6, -1), fmt.quantize(w))
    for group in (64, 128):
        blocks = fmt.quantize_groups(w, group).reshape(6, 256 // group, group // 32, fmt.block_bytes)
        scales = 2 if scheme == "int4_asym" else 1  # d (and m), float16, first in each block
        assert (blocks[..., :2 * scales] == blocks[..., :1, :2 * scales]).all()  # shared within a group
        assert not (blocks[:, :1, 0, :2] == blocks[:, 1:2, 0, :2]).all()  # (and not across groups)
        step = abs(w.reshape(6, -1, group)).max(-1) / (127 if scheme == "int8" else 7)
        error = abs(fmt.dequantize(blocks.reshape(6, -1)) - w).reshape(6, -1, group).max(-1)
        assert (error <= step * 1.01 + 1e-3).all()
    x = rng.standard_normal((3, 256)).astype(np.float32)
    g = GraphBuilder("group")
    h = g.input("x", DType.float32, (3, 256))
    graph = g.finish([g("ember.Linear", h, g.const("layer.weight", w.T.copy()))])
    want = x @ w.T
    for group in (32, 128):
        model = ember.compile(graph, quantization=Quantization(scheme, group_size=group, min_weights=0))
        assert _ops(model.graph) == ["ember.QuantizedLinear"]
        got = list(model.run({"x": x}).values())[0]
        assert np.abs(got - want).max() / np.abs(want).max() < (0.03 if scheme == "int8" else 0.3)
    with pytest.raises(UnsupportedError, match="group_size 48"):
        Quantization(scheme, group_size=48)
    with pytest.raises(UnsupportedError, match="group_size 64: q5_0 quantizes in groups of 32"):
        Quantization("q5_0", group_size=64)
