import numpy as np
import pytest
from onnx import TensorProto, helper

import ember
from ember.frontends.onnx import load_onnx
from ember.ir.ops.onnx_standard import latest_opsets


def test_model_local_functions_are_inlined():
    # f(a, b) = Relu(a * b), defined in the model and called twice
    fn = helper.make_function("acme", "MulRelu", ["a", "b"], ["c"],
                              [helper.make_node("Mul", ["a", "b"], ["t"]), helper.make_node("Relu", ["t"], ["c"])],
                              opset_imports=[helper.make_opsetid("", 18)])
    graph = helper.make_graph(
        [helper.make_node("MulRelu", ["x", "y"], ["z"], domain="acme"),
         helper.make_node("MulRelu", ["z", "y"], ["out"], domain="acme")],
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3]),
              helper.make_tensor_value_info("y", TensorProto.FLOAT, [3])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [3])])
    model = helper.make_model(graph, functions=[fn],
                              opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid("acme", 1)])
    compiled = ember.compile(model)
    assert [n.op for n in compiled.graph] == ["Mul", "Relu", "Mul", "Relu"]
    x, y = np.array([-1, 2, 3], np.float32), np.array([2, 2, -1], np.float32)
    np.testing.assert_array_equal(compiled.run({"x": x, "y": y})["out"], np.maximum(np.maximum(x * y, 0) * y, 0))


def test_old_opsets_are_upgraded_to_the_newest_forms():
    # opset 11: ReduceSum takes `axes` as an attribute; the IR holds the newest form (an input)
    graph = helper.make_graph(
        [helper.make_node("ReduceSum", ["x"], ["y"], axes=[1], keepdims=0)], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n"])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 11)])
    g = load_onnx(model)
    assert g.opsets[""] == latest_opsets()[""]
    (node,) = [n for n in g if n.op == "ReduceSum"]
    axes = node.inputs[1].producer
    assert "axes" not in node.attrs and axes.op == "Constant" and axes.attrs["value"].tolist() == [1]
    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    np.testing.assert_array_equal(ember.compile(model).run({"x": x})["y"], x.sum(1))


def test_subgraphs_read_outer_scope_values():
    then = helper.make_graph([helper.make_node("Add", ["x", "x"], ["t"])], "then", [],
                             [helper.make_tensor_value_info("t", TensorProto.FLOAT, [2])])
    other = helper.make_graph([helper.make_node("Neg", ["x"], ["e"])], "else", [],
                              [helper.make_tensor_value_info("e", TensorProto.FLOAT, [2])])
    graph = helper.make_graph(
        [helper.make_node("If", ["c"], ["y"], then_branch=then, else_branch=other)], "g",
        [helper.make_tensor_value_info("c", TensorProto.BOOL, []),
         helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])])
    compiled = ember.compile(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)]))
    (if_node,) = compiled.graph.nodes
    assert if_node.attrs["then_branch"].free_values()[0] is compiled.graph.inputs[1]
    x = np.array([1.5, -2], np.float32)
    np.testing.assert_array_equal(compiled.run({"c": np.array(True), "x": x})["y"], 2 * x)
    np.testing.assert_array_equal(compiled.run({"c": np.array(False), "x": x})["y"], -x)


@pytest.mark.parametrize("dtype", [TensorProto.BFLOAT16, TensorProto.FLOAT8E4M3FN, TensorProto.INT4,
                                   TensorProto.UINT4, TensorProto.FLOAT16])
def test_low_precision_initializers_survive_import(dtype):
    values = np.array([1, 2, 3, 4], np.float32)
    init = helper.make_tensor("w", dtype, [4], values.tolist())
    graph = helper.make_graph([helper.make_node("Cast", ["w"], ["y"], to=TensorProto.FLOAT)], "g", [],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])], [init])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 23)])
    unoptimized = ember.compile(model, opt_level=0)
    assert unoptimized.graph.constants[0].type.dtype.onnx_code == dtype
    np.testing.assert_array_equal(unoptimized.run({})["y"], values)
    folded = ember.compile(model)  # O2 folds the Cast into a float32 constant
    assert len(folded.graph.nodes) == 0
    np.testing.assert_array_equal(folded.run({})["y"], values)
