"""expand_ops: a node of an op defined as a rewrite (com.microsoft contrib ops) becomes
that rewrite before the fusions, which then fuse across it; a node whose form the
expansion does not cover stays, with the reason in the report."""

import numpy as np
import onnx
from onnx import TensorProto, helper

import ember
from ember.frontends.onnx import load_onnx
from ember.ir.interpreter import evaluate
from ember.passes import get_pass


def _model(nodes, inputs, outputs, initializers):
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializers)
    opsets = [helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)]
    return helper.make_model(graph, opset_imports=opsets)


def _matmul_bias_gelu():
    rng = np.random.default_rng(0)
    w = onnx.numpy_helper.from_array(rng.standard_normal((8, 16)).astype(np.float32), "w")
    b = onnx.numpy_helper.from_array(rng.standard_normal(16).astype(np.float32), "b")
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"]),
             helper.make_node("BiasGelu", ["h", "b"], ["y"], domain="com.microsoft")]
    return _model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 8])],
                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 16])], [w, b])


def test_matmul_then_bias_gelu_becomes_one_linear_with_a_gelu_epilogue():
    model = _matmul_bias_gelu()
    compiled = ember.compile(model)
    assert compiled.stats.op_histogram == {"ember.Linear": 1}
    assert compiled.graph.nodes[0].attrs["activation"] == "gelu"
    x = np.random.default_rng(1).standard_normal((3, 8)).astype(np.float32)
    want = evaluate(load_onnx(model), {"x": x})["y"]
    np.testing.assert_allclose(compiled.run({"x": x})["y"], want, rtol=1e-5, atol=1e-5)


def test_a_form_the_expansion_does_not_cover_stays_with_its_reason():
    node = helper.make_node("RotaryEmbedding", ["x", "pos", "cos", "sin"], ["y"], domain="com.microsoft",
                            interleaved=1, num_heads=2)
    cos = onnx.numpy_helper.from_array(np.ones((16, 4), np.float32), "cos")
    sin = onnx.numpy_helper.from_array(np.zeros((16, 4), np.float32), "sin")
    model = _model([node], [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", "s", 16]),
                            helper.make_tensor_value_info("pos", TensorProto.INT64, ["b", "s"])],
                   [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["b", "s", 16])], [cos, sin])
    graph = load_onnx(model)
    expand = get_pass("expand_ops")
    assert not expand.run(graph).modified
    assert [n.op for n in graph.nodes] == ["com.microsoft.RotaryEmbedding"]
    assert [reason for _, _, reason in expand.report.rejected] == ["interleaved rotary"]
