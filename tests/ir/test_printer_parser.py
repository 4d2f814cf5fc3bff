import warnings

import numpy as np
import pytest

import ember
from ember.errors import IRError
from ember.ir import DType, Graph, TensorType, Value, evaluate, parse_graph, print_graph, resources, symbol, verify
from ember.testing.conformance import case_feeds, node_cases

GOLDEN = '''\
graph main(%x: f32[batch, 4], %"gpu_0/mask": bool[batch, 4]) opsets {"": 28} {
  const %w = tensor<f32[4, 2]>[1.0, 0.5, -2.0, 0.0, 3.25, 1e-07, inf, -inf]
  const %big = tensor<f32[5, 5]> resource<__DIGEST__>
  %h: f32[batch, 2] = MatMul(%x, %w) @MatMul_0
  %a: f32[batch, 1], %b: f32[batch, 1] = Split(%h) {axis = 1, num_outputs = 2} @"split/0"
  %y: f32[*] = Where(%"gpu_0/mask", %x, %x) @Where_2
  return %a, %b, %y
}
'''


def _golden_graph() -> Graph:
    batch = symbol("batch")
    x = Value("x", TensorType(DType.float32, (batch, 4)))
    mask = Value("gpu_0/mask", TensorType(DType.bool, (batch, 4)))
    g = Graph("main", inputs=[x, mask], opsets={"": 28})
    w = g.add_constant("w", np.array([[1, 0.5], [-2, 0], [3.25, 1e-7], [np.inf, -np.inf]], np.float32))
    g.add_constant("big", np.arange(25, dtype=np.float32).reshape(5, 5))
    h = g.add_node("MatMul", [x, w], [Value("h", TensorType(DType.float32, (batch, 2)))], name="MatMul_0")
    split = g.add_node("Split", [h.outputs[0]], [Value("a", TensorType(DType.float32, (batch, 1))),
                                                 Value("b", TensorType(DType.float32, (batch, 1)))],
                       {"axis": 1, "num_outputs": 2}, name="split/0")
    where = g.add_node("Where", [mask, x, x], [Value("y", TensorType(DType.float32, None))], name="Where_2")
    g.outputs = [*split.outputs, where.outputs[0]]
    verify(g)
    return g


def test_golden_printed_form():
    g = _golden_graph()
    (digest,) = resources(g)
    assert print_graph(g) == GOLDEN.replace("__DIGEST__", digest)


def test_parse_golden_round_trips_and_runs():
    g = _golden_graph()
    text = print_graph(g)
    g2 = parse_graph(text, resources(g))
    verify(g2)
    assert print_graph(g2) == text
    feeds = {"x": np.ones((3, 4), np.float32), "gpu_0/mask": np.eye(3, 4, dtype=bool)}
    for a, b in zip(evaluate(g, feeds).values(), evaluate(g2, feeds).values()):
        np.testing.assert_array_equal(a, b)


def test_missing_resource_is_a_clear_error():
    with pytest.raises(IRError, match="resource .* was not supplied"):
        parse_graph(print_graph(_golden_graph()))


@pytest.mark.parametrize("text, message", [
    ("graph g(%x: f32[2]) {\n  %y: f32[2] = Relu(%z) @r\n  return %y\n}", "line 2, column .*%z is not defined"),
    ("graph g(%x: q7[2]) {\n  return %x\n}", "unknown dtype name 'q7'"),
    ("graph g(%x: f32[2]) {\n  return %x\n", "expected '}'"),
])
def test_parse_errors_name_the_place(text, message):
    with pytest.raises(IRError, match=message):
        parse_graph(text)


def test_every_conformance_graph_round_trips():
    """Print -> parse -> print is the identity on every graph the ONNX node suite builds
    (control flow, sequences, optionals, every dtype), and a sample runs identically."""
    checked = 0
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        for i, (name, case) in enumerate(sorted(node_cases().items())):
            try:
                g = ember.compile(case.model).graph
            except ember.ModelError:
                continue
            text = print_graph(g)
            g2 = parse_graph(text, resources(g))
            verify(g2)
            assert print_graph(g2) == text, name
            if i % 10 == 0:
                feeds = case_feeds(case, case.data_sets[0][0])
                expect = ember.compile(g).run(feeds)
                got = ember.compile(g2).run(feeds)
                for a, b in zip(expect.values(), got.values()):
                    if isinstance(a, np.ndarray) and "bernoulli" not in name and "dropout" not in name:
                        assert (a.dtype, a.shape) == (b.dtype, b.shape), name
                        assert a.tobytes() == b.tobytes() or a.dtype == object and a.tolist() == b.tolist(), name
            checked += 1
    assert checked > 1800


def test_printed_dims_round_trip_without_eval():
    """Dims print as sympy's str and read back through ember's own expression parser
    (no sympify of text): floor, ceiling, Mod, Max, Min, powers and quotients."""
    import sympy

    from ember.ir.types import parse_dim

    seq, batch = symbol("seq"), symbol("batch")
    for dim in (2 * seq + 1, sympy.floor(seq / 2), sympy.Mod(seq, 3), seq**2, (seq + 1) / 2, 5 - seq,
                4 * sympy.ceiling(seq / 4), sympy.Min(seq, batch) + sympy.Abs(seq - batch), batch * seq - 1):
        assert parse_dim(str(dim), printed=True) == dim
    g = Graph("main", inputs=[Value("x", TensorType(DType.float32, (sympy.floor(seq / 2), sympy.Max(seq, batch))))])
    g.outputs = list(g.inputs)
    assert print_graph(parse_graph(print_graph(g))) == print_graph(g)


@pytest.mark.parametrize("text", ["9**9**9**9", "exit()", "__import__(1)", "x**(1/2)", "a.b", "(" * 100 + "x" + ")" * 100])
def test_dims_that_are_not_expressions_become_symbols(text):
    """Text that is not a dim expression (or would take sympy forever) is a symbol of its own."""
    from ember.ir.types import parse_dim

    for printed in (False, True):
        dim = parse_dim(text, printed=printed)
        assert dim.is_Symbol
