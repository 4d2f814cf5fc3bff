"""fold_qdq (in O2): the QDQ format of onnxruntime.quantization.quantize_static (MatMul of
DequantizeLinear outputs) runs on ember's exact integer GEMM as
com.microsoft.MatMulIntegerToFloat, within float32 rounding of the reference's float
arithmetic on the same graph (one output element may move by a quantization step where a
later QuantizeLinear rounds a value that sat on a boundary); what does not fit stays."""

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

import ember
from ember.codegen import cpu
from ember.frontends.onnx import load_onnx
from ember.ir.interpreter import evaluate
from ember.passes.fold_qdq import FoldQDQ
from ember.runtime.native import integer_gemm

from .test_fold_dynamic_quantization import _float_model

pytestmark = pytest.mark.skipif(cpu.compiler() is None, reason="no C++ compiler on this machine")
ITF = "com.microsoft.MatMulIntegerToFloat"


class _Reader(CalibrationDataReader):
    def __init__(self, k: int, seed: int):
        rng = np.random.default_rng(seed)
        self.batches = iter([{"x": rng.standard_normal((4, k)).astype(np.float32)} for _ in range(4)])

    def get_next(self):
        return next(self.batches, None)


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                HealthCheck.function_scoped_fixture])
@given(per_channel=st.booleans(), types=st.sampled_from([(QuantType.QUInt8, QuantType.QInt8),
                                                          (QuantType.QUInt8, QuantType.QUInt8),
                                                          (QuantType.QInt8, QuantType.QInt8)]),
       only_matmul=st.booleans(), seed=st.integers(0, 2**16))
def test_quantize_static_runs_on_the_integer_gemm(tmp_path_factory, per_channel, types, only_matmul, seed):
    activation, weight = types
    folder = tmp_path_factory.mktemp("qdq")
    k = 64
    _float_model(folder / "f.onnx", k, 48, 16, seed)
    quantize_static(str(folder / "f.onnx"), str(folder / "q.onnx"), _Reader(k, seed), quant_format=QuantFormat.QDQ,
                    weight_type=weight, activation_type=activation, per_channel=per_channel,
                    op_types_to_quantize=["MatMul"] if only_matmul else None)
    event(f"weights {weight.name}{' per column' if per_channel else ''}, activations {activation.name}"
          f"{', MatMuls only' if only_matmul else ''}")
    model = ember.compile(folder / "q.onnx")
    ops = [n.op for n in model.graph.nodes]
    assert ops.count(ITF) == 2 and "MatMul" not in ops, ops
    x = np.random.default_rng(seed).standard_normal((5, k)).astype(np.float32)
    before = integer_gemm.RUNS[0]
    got = model.run({"x": x})["y"]
    assert integer_gemm.RUNS[0] == before + 2
    want = evaluate(load_onnx(folder / "q.onnx"), {"x": x})["y"]
    # a hidden value on a rounding boundary of the next QuantizeLinear may land a step away (8 bits:
    # ~1% of its range), which moves its row's outputs by a step of the hidden unit times its weights
    scale = np.abs(want).max()
    assert np.abs(got - want).max() <= 0.03 * scale and np.abs(got - want).mean() <= 0.003 * scale


def test_what_does_not_fit_stays(tmp_path):
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.integers(-100, 100, (8, 4)).astype(np.int8), "wq"),
             numpy_helper.from_array(np.full(8, 0.1, np.float32), "ws"),  # one scale per row (axis 0)
             numpy_helper.from_array(np.array(0.05, np.float32), "xs"),
             numpy_helper.from_array(np.array(128, np.uint8), "xz")]
    nodes = [helper.make_node("DequantizeLinear", ["xq", "xs", "xz"], ["x"]),
             helper.make_node("DequantizeLinear", ["wq", "ws"], ["w"], axis=0),
             helper.make_node("MatMul", ["x", "w"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("xq", TensorProto.UINT8, [3, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    (tmp_path / "m.onnx").write_bytes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
                                      .SerializeToString())
    g = load_onnx(tmp_path / "m.onnx")
    fold = FoldQDQ()
    fold.run(g)
    assert fold.report.applied == {}
    assert any("neither one value nor one per column" in r for _, _, r in fold.report.rejected), fold.report.rejected
    xq = rng.integers(0, 256, (3, 8)).astype(np.uint8)
    got = ember.compile(tmp_path / "m.onnx").run({"xq": xq})["y"]
    np.testing.assert_allclose(got, evaluate(load_onnx(tmp_path / "m.onnx"), {"xq": xq})["y"], rtol=1e-5, atol=1e-6)
