"""fold_dynamic_quantization (asked for by name: it is not in the default pipelines): what
onnxruntime.quantization.quantize_dynamic writes (DynamicQuantizeLinear -> MatMulInteger ->
Cast -> Mul by the scales) runs as one ember.QuantizedLinear on ember's quantized GEMM, per-tensor and per-column weights; its
result is onnxruntime's on the same file within the two quantization schemes' rounding,
and what does not fit the kernel keeps the graph's integer ops."""

import numpy as np
import onnxruntime as ort
import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper
from onnxruntime.quantization import QuantType, quantize_dynamic

import ember
from ember.codegen import cpu
from ember.frontends.onnx import load_onnx
from ember.passes.fold_dynamic_quantization import FoldDynamicQuantization
from ember.runtime.native import quantized_gemm

FOLD = [("fold_dynamic_quantization", "after", "fold_constants")]

pytestmark = pytest.mark.skipif(cpu.compiler() is None, reason="no C++ compiler on this machine")


def _float_model(path, k: int, hidden: int, n: int, seed: int):
    """x [batch, k] -> MatMul -> Add bias -> Relu -> MatMul [hidden, n]."""
    rng = np.random.default_rng(seed)
    inits = [numpy_helper.from_array((rng.standard_normal((k, hidden)) / np.sqrt(k)).astype(np.float32), "w1"),
             numpy_helper.from_array(rng.standard_normal(hidden).astype(np.float32), "b1"),
             numpy_helper.from_array((rng.standard_normal((hidden, n)) / np.sqrt(hidden)).astype(np.float32), "w2")]
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"]), helper.make_node("Add", ["h", "b1"], ["hb"]),
             helper.make_node("Relu", ["hb"], ["r"]), helper.make_node("MatMul", ["r", "w2"], ["y"])]
    graph = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", k])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", n])], inits)
    path.write_bytes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString())


@settings(max_examples=8, deadline=None)
@given(per_channel=st.booleans(), weight=st.sampled_from([QuantType.QInt8, QuantType.QUInt8]),
       rows=st.integers(1, 9), seed=st.integers(0, 2**16))
def test_quantize_dynamic_runs_on_the_quantized_gemm(tmp_path_factory, per_channel, weight, rows, seed):
    folder = tmp_path_factory.mktemp("dyn")
    _float_model(folder / "f.onnx", 256, 512, 128, seed)  # (past MIN_WEIGHTS: 256 x 512 and 512 x 128)
    quantize_dynamic(str(folder / "f.onnx"), str(folder / "q.onnx"), weight_type=weight, per_channel=per_channel)
    event(f"{weight.name}, {'per column' if per_channel else 'per tensor'}")
    # by default the integer ops stay exact (fuse_integer_matmul: the rescale in the integer GEMM's epilogue)
    assert "com.microsoft.MatMulIntegerToFloat" in {n.op for n in ember.compile(folder / "q.onnx").graph.nodes}
    model = ember.compile(folder / "q.onnx", passes=FOLD)
    ops = [n.op for n in model.graph.nodes]
    assert ops.count("ember.QuantizedLinear") == 2 and "MatMulInteger" not in ops and \
        "DynamicQuantizeLinear" not in ops, ops
    x = np.random.default_rng(seed).standard_normal((rows, 256)).astype(np.float32)
    before = quantized_gemm.RUNS[0]
    got = model.run({"x": x})["y"]
    binding = next(iter(model.executor._bindings.values()))
    in_c = sum(e[2].name == "quantized_linear" for entry in binding.chained or [] if entry[0] == 4
               for e in entry[1][4])
    assert quantized_gemm.RUNS[0] - before + in_c == 2  # each ran on the kernel: its extern, or its step form in C
    want = ort.InferenceSession(str(folder / "q.onnx"), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    floats = ember.compile(folder / "f.onnx").run({"x": x})["y"]
    scale = np.abs(floats).max()
    # both round x (ember per block of 32, onnxruntime per tensor) and the weights: each within
    # a few percent of the float model, and of each other
    assert np.abs(got - floats).max() < 0.06 * scale
    assert np.abs(got - want).max() < 0.08 * scale


def test_what_does_not_fit_keeps_the_integer_ops(tmp_path):
    # 200 input features (not whole blocks of 32) x 512, then 512 x 8 (too small to matter)
    _float_model(tmp_path / "f.onnx", 200, 512, 8, 0)
    quantize_dynamic(str(tmp_path / "f.onnx"), str(tmp_path / "q.onnx"), weight_type=QuantType.QInt8)
    graph = load_onnx(tmp_path / "q.onnx")
    fold = FoldDynamicQuantization()
    fold.run(graph)
    assert fold.report.applied == {}
    reasons = [reason for _, _, reason in fold.report.rejected]
    assert any("200 input features" in r for r in reasons) and any("4096 weights, fewer than 65536" in r for r in reasons)
    x = np.random.default_rng(1).standard_normal((3, 200)).astype(np.float32)
    want = ort.InferenceSession(str(tmp_path / "q.onnx"), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    got = ember.compile(tmp_path / "q.onnx", passes=FOLD).run({"x": x})["y"]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)  # the integer ops, exact as onnxruntime's
