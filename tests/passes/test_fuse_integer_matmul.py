"""fuse_integer_matmul (in O2): what onnxruntime.quantization.quantize_dynamic writes
around each MatMul (MatMulInteger -> Cast -> Mul by the scales -> Add the bias) becomes one
com.microsoft.MatMulIntegerToFloat on ember's exact integer GEMM, its output bit for bit
the reference's on the unfused graph; the op itself matches onnxruntime's contrib kernel."""

import numpy as np
import onnxruntime as ort
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper
from onnxruntime.quantization import QuantType, quantize_dynamic

import ember
from ember.codegen import cpu
from ember.passes.fuse_integer_matmul import FuseIntegerMatMul
from ember.frontends.onnx import load_onnx
from ember.ir.interpreter import evaluate
from ember.runtime.native import integer_gemm

from .test_fold_dynamic_quantization import _float_model

pytestmark = pytest.mark.skipif(cpu.compiler() is None, reason="no C++ compiler on this machine")
ITF = "com.microsoft.MatMulIntegerToFloat"


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                HealthCheck.function_scoped_fixture])
@given(per_channel=st.booleans(), weight=st.sampled_from([QuantType.QInt8, QuantType.QUInt8]),
       rows=st.integers(1, 9), k=st.sampled_from([24, 64, 100]), seed=st.integers(0, 2**16))
def test_quantize_dynamic_fuses_exactly(tmp_path_factory, per_channel, weight, rows, k, seed):
    folder = tmp_path_factory.mktemp("dyn")
    _float_model(folder / "f.onnx", k, 48, 16, seed)
    quantize_dynamic(str(folder / "f.onnx"), str(folder / "q.onnx"), weight_type=weight, per_channel=per_channel)
    graph = load_onnx(folder / "q.onnx")
    fuse = FuseIntegerMatMul()
    fuse.run(graph)
    for name, count in fuse.report.applied.items():
        event(f"{name} x{count}")
    event(f"{weight.name}, {'per column' if per_channel else 'per tensor'}")
    model = ember.compile(folder / "q.onnx")
    ops = [n.op for n in model.graph.nodes]
    assert ops.count(ITF) == 2 and "MatMulInteger" not in ops and "Cast" not in ops, ops
    x = np.random.default_rng(seed).standard_normal((rows, k)).astype(np.float32)
    before, quantized = integer_gemm.RUNS[0], integer_gemm.QUANTIZE_RUNS[0]
    got = model.run({"x": x})["y"]
    assert integer_gemm.RUNS[0] == before + 2 and integer_gemm.QUANTIZE_RUNS[0] == quantized + 2
    reference = evaluate(load_onnx(folder / "q.onnx"), {"x": x})["y"]  # (the unfused graph, op by op)
    np.testing.assert_array_equal(got, reference)
    if weight == QuantType.QUInt8:  # (onnxruntime's uint8 x uint8 kernel is exact; its uint8 x int8
        # one, on CPUs without VNNI, saturates pairs of products past 2^15, by up to 18% here)
        want = ort.InferenceSession(str(folder / "q.onnx"), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_what_does_not_fit_is_left_as_it_is(tmp_path):
    graph = load_onnx(_cast_model(tmp_path, scale=np.full((3, 16), 0.5, np.float32)))
    fuse = FuseIntegerMatMul()
    fuse.run(graph)
    assert fuse.report.applied == {}
    assert any("one value or one per column" in reason for _, _, reason in fuse.report.rejected)


def _cast_model(path, scale):
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.integers(0, 255, (8, 16)).astype(np.uint8), "b"),
             numpy_helper.from_array(scale, "s")]
    nodes = [helper.make_node("MatMulInteger", ["a", "b"], ["acc"]), helper.make_node("Cast", ["acc"], ["f"], to=1),
             helper.make_node("Mul", ["f", "s"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("a", TensorProto.UINT8, [3, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    (path / "m.onnx").write_bytes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
                                  .SerializeToString())
    return path / "m.onnx"


@pytest.mark.parametrize("b_type,per_column,bias", [(np.uint8, False, True), (np.uint8, True, False),
                                                     (np.int8, True, True)])
def test_the_op_matches_onnxruntime(tmp_path, b_type, per_column, bias):
    rng = np.random.default_rng(1)
    k, n = 40, 24
    lo = 0 if b_type == np.uint8 else -64  # (int8 within [-64, 63]: onnxruntime's kernel does not saturate)
    b = rng.integers(lo, lo + 128, (k, n)).astype(b_type)
    cols = n if per_column else 1
    inits = [numpy_helper.from_array(b, "b"),
             numpy_helper.from_array(np.array([0.03], np.float32), "as"),
             numpy_helper.from_array(rng.uniform(0.001, 0.01, cols).astype(np.float32), "bs"),
             numpy_helper.from_array(np.array([17], np.uint8), "az"),
             numpy_helper.from_array(rng.integers(lo, lo + 128, cols).astype(b_type), "bz")]
    inputs = ["a", "b", "as", "bs", "az", "bz"]
    if bias:
        inits.append(numpy_helper.from_array(rng.standard_normal(n).astype(np.float32), "bias"))
        inputs.append("bias")
    node = helper.make_node("MatMulIntegerToFloat", inputs, ["y"], domain="com.microsoft")
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("a", TensorProto.UINT8, ["M", k])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13), helper.make_opsetid("com.microsoft", 1)])
    (tmp_path / "m.onnx").write_bytes(model.SerializeToString())
    a = rng.integers(0, 256, (11, k)).astype(np.uint8)
    before = integer_gemm.RUNS[0]
    got = ember.compile(tmp_path / "m.onnx").run({"a": a})["y"]
    assert integer_gemm.RUNS[0] == before + 1
    want = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"]).run(None, {"a": a})[0]
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-5)


def test_quantize_dynamic_minilm_packs_its_projections(minilm_onnx, tmp_path):
    """A quantize_dynamic MiniLM: each layer's query, key and value projections (one
    DynamicQuantizeLinear feeds them) become one MatMulIntegerToFloat over the concatenated
    weights, read by the attention as packed q, k, v; the hidden states stay those of the
    reference interpreter on the file (up to a quantization step where a float32 value
    computed in another order lands on the other side of a rounding boundary)."""
    path = tmp_path / "dyn.onnx"
    quantize_dynamic(str(minilm_onnx), str(path), weight_type=QuantType.QInt8)
    graph = load_onnx(path)
    fuse = FuseIntegerMatMul()
    fuse.run(graph)
    assert fuse.report.applied == {"integer_matmul4": 36, "integer_matmul_bias6": 36}  # (no ember.Attention yet)
    model = ember.compile(path)  # (O2: fuse_attention first, then the projections packed)
    assert sum(n.op == ITF for n in model.graph.nodes) == 6 * 4  # (QKV, output, two FFN)
    attention = [n for n in model.graph.nodes if n.op == "ember.Attention"]
    assert len(attention) == 6 and all(n.inputs[0].producer.op == ITF and n.inputs[1] is None for n in attention)
    rng = np.random.default_rng(0)
    feeds = {"input_ids": rng.integers(1000, 20000, (2, 16)), "attention_mask": np.ones((2, 16)),
             "token_type_ids": np.zeros((2, 16))}
    feeds = {i.name: feeds[i.name].astype(np.int64) for i in model.inputs}
    got = list(model.run(feeds).values())[0]
    want = list(evaluate(load_onnx(path), feeds).values())[0]
    assert np.abs(got - want).max() <= 0.1 and np.abs(got - want).mean() <= 1e-3
