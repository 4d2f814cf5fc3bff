"""fold_constants inlines an If whose condition is a constant: the branch taken replaces
it, outputs unchanged (the reference before and after), the graph's output names kept."""

import numpy as np
import pytest
from onnx import TensorProto, helper

from ember.frontends.onnx import load_onnx
from ember.passes import get_pass
from ember.testing import check_pass

F = TensorProto.FLOAT


def _model(cond: bool, else_returns_outer: bool):
    then_branch = helper.make_graph([helper.make_node("Neg", ["a"], ["t"])], "then", [],
                                    [helper.make_tensor_value_info("t", F, [3])])
    if else_returns_outer:  # the branch returns a value of the enclosing graph as it is
        else_branch = helper.make_graph([], "else", [], [helper.make_tensor_value_info("a", F, [3])])
    else:
        else_branch = helper.make_graph([helper.make_node("Add", ["a", "a"], ["e"])], "else", [],
                                        [helper.make_tensor_value_info("e", F, [3])])
    nodes = [helper.make_node("Constant", [], ["c"], value=helper.make_tensor("c", TensorProto.BOOL, [], [cond])),
             helper.make_node("If", ["c"], ["y"], then_branch=then_branch, else_branch=else_branch),
             helper.make_node("Mul", ["y", "a"], ["z"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("a", F, [3])],
                              [helper.make_tensor_value_info("y", F, [3]), helper.make_tensor_value_info("z", F, [3])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize("cond", [True, False])
@pytest.mark.parametrize("else_returns_outer", [True, False])
def test_if_with_a_constant_condition_becomes_its_branch(cond, else_returns_outer):
    graph = load_onnx(_model(cond, else_returns_outer))
    feeds = {"a": np.array([1.0, -2.0, 3.0], np.float32)}
    after = check_pass(get_pass("fold_constants"), graph, feeds)
    assert "If" not in [n.op for n in after]
    assert [v.name for v in after.outputs] == ["y", "z"]


def test_an_if_on_a_known_rank_folds_and_so_does_its_branch():
    """silero VAD's pattern: `if Shape(x)[0] == 1: Squeeze(x, axes) else: x`, the condition
    computed from a static dim (a Cast of a 0-d constant, which the reference returns as a
    numpy scalar), then the branch's own Constant axes: one fold_constants run leaves
    neither If nor Constant, and the Squeeze's axes are a constant."""
    I64 = TensorProto.INT64
    then_branch = helper.make_graph(
        [helper.make_node("Constant", [], ["axes"], value=helper.make_tensor("axes", I64, [1], [0])),
         helper.make_node("Squeeze", ["x", "axes"], ["sq"])], "then", [], [helper.make_tensor_value_info("sq", F, [4])])
    else_branch = helper.make_graph([helper.make_node("Identity", ["x"], ["same"])], "else", [],
                                    [helper.make_tensor_value_info("same", F, [1, 4])])
    nodes = [helper.make_node("Shape", ["x"], ["shape"]),
             helper.make_node("Constant", [], ["zero"], value=helper.make_tensor("zero", I64, [], [0])),
             helper.make_node("Gather", ["shape", "zero"], ["rows"], axis=0),
             helper.make_node("Cast", ["rows"], ["cond"], to=TensorProto.BOOL),
             helper.make_node("If", ["cond"], ["y"], then_branch=then_branch, else_branch=else_branch)]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", F, [1, 4])],
                              [helper.make_tensor_value_info("y", F, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    feeds = {"x": np.arange(4, dtype=np.float32).reshape(1, 4)}
    after = check_pass(get_pass("fold_constants"), load_onnx(model), feeds)
    ops = [n.op for n in after.nodes]
    assert "If" not in ops and "Constant" not in ops and "Cast" not in ops, ops
    (squeeze,) = [n for n in after.nodes if n.op == "Squeeze"]
    assert squeeze.inputs[1].const is not None
