import numpy as np
import pytest

from ember.errors import IRError
from ember.ir import DType, Graph, TensorType, Value, verify

F32 = TensorType(DType.float32, (2,))


def _graph() -> tuple[Graph, Value]:
    x = Value("x", F32)
    return Graph("g", inputs=[x]), x


def test_valid_graph_passes():
    g, x = _graph()
    g.outputs = g.add_node("Relu", [x], [Value("y", F32)], name="r").outputs
    verify(g)


def test_value_defined_twice():
    g, x = _graph()
    y = Value("y", F32)
    g.add_node("Relu", [x], [y], name="a")
    g.nodes.append(g.nodes[0])
    with pytest.raises(IRError, match="'y' is defined twice"):
        verify(g)


def test_use_before_definition():
    g, x = _graph()
    late = Value("late", F32)
    g.add_node("Relu", [late], [Value("y", F32)], name="first")
    g.add_node("Relu", [x], [late], name="second")
    with pytest.raises(IRError, match="node 'first' .* input 'late' is not defined before"):
        verify(g)


@pytest.mark.parametrize("op, inputs, attrs, message", [
    ("NoSuchOp", 1, {}, "unknown op 'NoSuchOp'"),
    ("Add", 1, {}, "expects 2 inputs, has 1"),
    ("Relu", 1, {"alpha": 0.1}, "unknown attribute 'alpha'"),
    ("Cast", 1, {}, "missing required attribute 'to'"),
])
def test_schema_violations_name_the_node(op, inputs, attrs, message):
    g, x = _graph()
    g.add_node(op, [x] * inputs, [Value("y", F32)], attrs, name="bad")
    with pytest.raises(IRError, match=f"node 'bad' .*{message}"):
        verify(g)


def test_bad_dim_and_missing_output():
    g, x = _graph()
    g.add_node("Relu", [x], [Value("y", TensorType(DType.float32, (-1,)))], name="r")
    with pytest.raises(IRError, match="bad dim -1"):
        verify(g)
    g2, x2 = _graph()
    g2.outputs = [Value("ghost", F32)]
    with pytest.raises(IRError, match="output 'ghost' is never produced"):
        verify(g2)


def test_constant_without_data():
    g, _ = _graph()
    g.constants.append(Value("c", F32))
    with pytest.raises(IRError, match="constant 'c' has no data"):
        verify(g)
    g.constants[-1].const = np.zeros(2, np.float32)
    verify(g)
