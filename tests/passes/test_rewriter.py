import numpy as np

import ember
from ember.ir import DType, Graph, TensorType, Value, evaluate, print_graph, symbol
from ember.passes import Rewrite, apply_rewrites, get_pass

N = symbol("n")


def _t(*shape, dtype=DType.float32):
    return TensorType(dtype, shape)


def test_canonicalize_golden():
    x = Value("x", _t(N, 2, 3))
    g = Graph("g", inputs=[x], opsets={"": 28})
    a = g.add_node("Identity", [x], [Value("a", _t(N, 2, 3))], name="id").outputs[0]
    b = g.add_node("Transpose", [a], [Value("b", _t(3, N, 2))], {"perm": [2, 0, 1]}, name="t1").outputs[0]
    c = g.add_node("Transpose", [b], [Value("c", _t(N, 2, 3))], {"perm": [1, 2, 0]}, name="t2").outputs[0]
    d = g.add_node("Cast", [c], [Value("d", _t(N, 2, 3))], {"to": DType.float32.onnx_code}, name="cast").outputs[0]
    flat = g.add_constant("flat", np.array([-1], np.int64))
    shape = g.add_constant("shape", np.array([-1, 6], np.int64))
    e = g.add_node("Reshape", [d, flat], [Value("e", _t(6 * N))], name="r1").outputs[0]
    f = g.add_node("Reshape", [e, shape], [Value("f", _t(N, 6))], name="r2").outputs[0]
    g.outputs = [g.add_node("Relu", [f], [Value("y", _t(N, 6))], name="relu").outputs[0]]
    feeds = {"x": np.arange(-6, 6, dtype=np.float32).reshape(2, 2, 3)}
    expected = evaluate(g, feeds)["y"]
    get_pass("canonicalize").run(g)
    get_pass("eliminate_dead_code").run(g)
    assert print_graph(g) == '''\
graph g(%x: f32[n, 2, 3]) opsets {"": 28} {
  const %shape = tensor<i64[2]>[-1, 6]
  %"r2/merge_reshapes/Reshape_0_out0": f32[n, 6] = Reshape(%x, %shape) @"r2/merge_reshapes/Reshape_0"
  %y: f32[n, 6] = Relu(%"r2/merge_reshapes/Reshape_0_out0") @relu
  return %y
}
'''
    np.testing.assert_array_equal(evaluate(g, feeds)["y"], expected)


def _swish_rewrite(checked: list):
    def check(m):
        checked.append(m.root.name)
        return None if m["x"].type is not None else "x has no type"

    return Rewrite("fuse_swish", lambda op, x: op.Mul(x, op.Sigmoid(x)),
                   lambda op, x: op.Swish(x), check, commute=True)


def test_commuted_variants_match_and_graph_outputs_keep_their_names():
    x = Value("x", _t(N))
    g = Graph("g", inputs=[x], opsets={"": 28})
    s1 = g.add_node("Sigmoid", [x], [Value("s1", _t(N))], name="sig1").outputs[0]
    y1 = g.add_node("Mul", [x, s1], [Value("y1", _t(N))], name="m1").outputs[0]
    s2 = g.add_node("Sigmoid", [x], [Value("s2", _t(N))], name="sig2").outputs[0]
    y2 = g.add_node("Mul", [s2, x], [Value("y2", _t(N))], name="m2").outputs[0]  # commuted
    g.outputs = [y1, y2]
    checked: list = []
    report = apply_rewrites(g, [_swish_rewrite(checked)])
    assert report.applied == {"fuse_swish": 2} and checked == ["m1", "m2"]
    assert [n.op for n in g.nodes] == ["Swish", "Swish"]
    assert [v.name for v in g.outputs] == ["y1", "y2"]
    xs = np.linspace(-3, 3, 7, dtype=np.float32)
    out = evaluate(g, {"x": xs})
    np.testing.assert_allclose(out["y1"], xs / (1 + np.exp(-xs)), rtol=1e-6)


def test_a_failed_check_leaves_the_graph_and_says_why():
    x = Value("x", None)
    g = Graph("g", inputs=[x], opsets={"": 28})
    s = g.add_node("Sigmoid", [x], [Value("s", None)], name="sig").outputs[0]
    g.outputs = g.add_node("Mul", [x, s], [Value("y", None)], name="m").outputs
    report = apply_rewrites(g, [_swish_rewrite([])])
    assert report.applied == {} and report.rejected == [("fuse_swish", "m", "x has no type")]
    assert [n.op for n in g.nodes] == ["Sigmoid", "Mul"]


def test_minilm_o2_node_count(minilm_onnx):
    assert ember.compile(str(minilm_onnx)).stats.num_nodes <= 310
