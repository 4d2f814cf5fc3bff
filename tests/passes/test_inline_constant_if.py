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
