import numpy as np
import sympy
from hypothesis import HealthCheck, given, settings
from onnx import TensorProto, helper

import ember
from ember.ir import TensorType, evaluate, symbol
from ember.ir.shape_inference import infer_types, is_unknown
from ember.testing import graphs_and_feeds

BATCH, SEQ = symbol("batch"), symbol("seq")


def _shape_chain_model():
    """The exporter idiom: y = Reshape(x, Concat(Shape(x)[0], Shape(x)[1] * 2, -1)),
    plus Range(0, seq) and Expand to [batch, seq]."""
    nodes = [
        helper.make_node("Shape", ["x"], ["s"]),
        helper.make_node("Gather", ["s", "zero"], ["b"], axis=0),
        helper.make_node("Gather", ["s", "one"], ["t"], axis=0),
        helper.make_node("Mul", ["t", "two"], ["t2"]),
        helper.make_node("Unsqueeze", ["b", "axes0"], ["b1"]),
        helper.make_node("Unsqueeze", ["t2", "axes0"], ["t21"]),
        helper.make_node("Concat", ["b1", "t21", "minus1"], ["shape"], axis=0),
        helper.make_node("Reshape", ["x", "shape"], ["y"]),
        helper.make_node("Range", ["zero", "t", "one"], ["positions"]),
        helper.make_node("Concat", ["b1", "t1"], ["bt"], axis=0),
        helper.make_node("Unsqueeze", ["t", "axes0"], ["t1"]),
        helper.make_node("Expand", ["positions", "bt"], ["grid"]),
    ]
    nodes.insert(9, nodes.pop())  # keep topological order: t1 before bt
    inits = [helper.make_tensor("zero", TensorProto.INT64, [], [0]),
             helper.make_tensor("one", TensorProto.INT64, [], [1]),
             helper.make_tensor("two", TensorProto.INT64, [], [2]),
             helper.make_tensor("axes0", TensorProto.INT64, [1], [0]),
             helper.make_tensor("minus1", TensorProto.INT64, [1], [-1])]
    graph = helper.make_graph(nodes, "chain", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "seq", 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None),
                               helper.make_tensor_value_info("grid", TensorProto.INT64, None)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])


def test_shape_subgraphs_resolve_to_symbolic_dims():
    compiled = ember.compile(_shape_chain_model(), opt_level=0)
    types = {v.name: v.type for n in compiled.graph for v in n.outputs}
    assert types["y"].shape == (BATCH, 2 * SEQ, 4)
    assert types["positions"].shape == (SEQ,)
    assert types["grid"].shape == (BATCH, SEQ)
    out = compiled.run({"x": np.zeros((3, 5, 8), np.float32)})
    assert out["y"].shape == (3, 10, 4) and out["grid"].shape == (3, 5)


def test_minilm_has_no_unknown_dims(minilm_onnx):
    graph = ember.compile(str(minilm_onnx), opt_level=0).graph
    for node in graph.walk():
        for v in node.outputs:
            assert isinstance(v.type, TensorType) and v.type.shape is not None, (node, v.type)
            for d in v.type.shape:
                assert isinstance(d, int) or d.free_symbols <= {BATCH, SEQ}, (node.describe(), v.type)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=graphs_and_feeds())
def test_inferred_shapes_match_the_shapes_that_run(case):
    """Erase every node output's type, infer, and compare with what the reference computes."""
    graph, feeds = case
    for node in graph.nodes:
        for v in node.outputs:
            v.type = None
    infer_types(graph)
    graph.outputs = [v for node in graph.nodes for v in node.outputs]
    actual = evaluate(graph, feeds)
    n = symbol("n")
    sizes = {}
    for v in graph.inputs:
        for d, size in zip(v.type.shape, feeds[v.name].shape):
            if d == n:
                sizes[n] = size
    for v in graph.outputs:
        assert v.type is not None and v.type.shape is not None, v
        assert not any(is_unknown(d) for d in v.type.shape), v
        expected = tuple(int(sympy.sympify(d).subs(sizes)) for d in v.type.shape)
        assert expected == actual[v.name].shape, (v.name, v.type, actual[v.name].shape)
        assert v.type.dtype.numpy == actual[v.name].dtype


def test_axes_and_shapes_fed_at_run_time_keep_a_known_rank():
    """A reduction with keepdims, or with a static number of axes fed at run time, keeps a
    known rank (its dims fresh sizes, or 1 where the input's is); so do Squeeze/Unsqueeze
    with fed axes and Expand to a fed shape (x's dims that are not 1 stay)."""
    from ember.ir import DType, Graph, Value

    x = Value("x", TensorType(DType.float32, (BATCH, 1, 4)))
    axes = Value("axes", TensorType(DType.int64, (2,)))
    shape = Value("shape", TensorType(DType.int64, (4,)))
    g = Graph("g", inputs=[x, axes, shape], opsets={"": 28})
    kept = g.add_node("ReduceSum", [x, axes], [Value("kept")], {"keepdims": 1}).outputs[0]
    dropped = g.add_node("ReduceMax", [x, axes], [Value("dropped")], {"keepdims": 0}).outputs[0]
    squeezed = g.add_node("Squeeze", [x, axes], [Value("squeezed")]).outputs[0]
    unsqueezed = g.add_node("Unsqueeze", [x, axes], [Value("unsqueezed")]).outputs[0]
    expanded = g.add_node("Expand", [x, shape], [Value("expanded")]).outputs[0]
    g.outputs = [kept, dropped, squeezed, unsqueezed, expanded]
    infer_types(g)
    k = kept.type.shape
    assert len(k) == 3 and k[1] == 1 and is_unknown(k[0]) and is_unknown(k[2])
    assert len(dropped.type.shape) == 1 and is_unknown(dropped.type.shape[0])
    assert len(squeezed.type.shape) == 1 and len(unsqueezed.type.shape) == 5
    e = expanded.type.shape
    assert len(e) == 4 and e[1] == BATCH and e[3] == 4 and is_unknown(e[0]) and is_unknown(e[2])


def test_packed_qkv_attention_with_its_absent_inputs_left_out():
    """ember.Attention(qkv) as an ONNX file writes it (trailing absent inputs dropped)
    types like ember.Attention(qkv, None, None)."""
    from ember.ir import DType, Graph, Value

    for inputs in (1, 3):
        qkv = Value("qkv", TensorType(DType.float32, (BATCH, SEQ, 48)))
        g = Graph("g", inputs=[qkv], opsets={"": 28})
        node = g.add_node("ember.Attention", [qkv, None, None][:inputs], [Value("y")], {"num_heads": 4, "kv_num_heads": 2})
        g.outputs = node.outputs
        infer_types(g)
        assert str(node.outputs[0].type) == "f32[batch, seq, 24]"


def test_exported_dim_names_that_are_expressions_are_read_as_expressions():
    from ember.ir.types import parse_dim

    d = parse_dim("floor(DynamicDimension_1/2 - 1/2) + 1")  # torch's dynamo exporter
    assert not isinstance(d, sympy.Symbol) and d.subs({sympy.Symbol("DynamicDimension_1", integer=True,
                                                                     positive=True): 9}) == 5
    assert isinstance(parse_dim("gpu_0/batch"), sympy.Symbol)  # a name with a slash stays a name
    # a fraction sympy cannot prove whole stays a name rather than a non-integer size
    assert isinstance(parse_dim("Max(0, N - Mod(N + 80, 160) - 240)/160"), sympy.Symbol)


def test_broadcasting_two_unrelated_sizes_takes_the_larger_and_runs_either_way():
    """Two symbolic sizes that must be equal or 1 when it runs (an FPN's up-sampled map
    beside the finer one): the output is their Max, on a kernel, right for both cases."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["a", 3])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["b", 3])
    z = helper.make_tensor_value_info("z", TensorProto.FLOAT, None)
    model = helper.make_model(helper.make_graph([helper.make_node("Add", ["x", "y"], ["z"])], "g", [x, y], [z]),
                              opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    compiled = ember.compile(model.SerializeToString())
    assert str(compiled.graph.outputs[0].type.shape[0]) == "Max(a, b)"
    assert compiled.stats.fallback_nodes == []
    for a, b in ((4, 4), (1, 5), (6, 1)):
        xs, ys = np.random.rand(a, 3).astype(np.float32), np.random.rand(b, 3).astype(np.float32)
        np.testing.assert_allclose(compiled.run({"x": xs, "y": ys})["z"], xs + ys, rtol=1e-6)


def test_constant_pads_grow_symbolic_dims_and_run_on_kernels():
    """A Pad with constant pads (any mode; axes given or not) adds them to a symbolic dim:
    the padded size is `s + 192`, not an unknown, so the Pad and all after it run on
    generated kernels sized before the run (silero VAD's reflect pad, left unknown, sent
    the rest of its If body through the executor's late-size path: 1.03 -> 0.52 ms)."""
    import numpy as np
    from onnx import numpy_helper

    nodes = [helper.make_node("Pad", ["x", "pads"], ["p"], mode="reflect"),
             helper.make_node("Pad", ["p", "pads2", "", "axes"], ["q"]),
             helper.make_node("Squeeze", ["q", "ax"], ["y"])]
    inits = [numpy_helper.from_array(np.array([0, 0, 0, 96, 0, 0, 0, 96], np.int64), "pads"),
             numpy_helper.from_array(np.array([2, 1], np.int64), "pads2"),
             numpy_helper.from_array(np.array([-1], np.int64), "axes"),
             numpy_helper.from_array(np.array([1], np.int64), "ax")]
    graph = helper.make_graph(nodes, "pad", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", 1, 1, "s"])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    compiled = ember.compile(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]))
    out = compiled.graph.outputs[0].type.shape
    assert out[2] == symbol("s") + 195 and out[:2] == (symbol("b"), 1), out
    assert [step.kind for step in compiled.program.steps] == ["segment"]
    x = np.random.default_rng(0).standard_normal((2, 1, 1, 300)).astype(np.float32)
    want = np.pad(np.pad(x, [(0, 0), (0, 0), (0, 0), (96, 96)], mode="reflect"), [(0, 0)] * 3 + [(2, 1)])[:, 0]
    np.testing.assert_array_equal(compiled.run({"x": x})["y"], want)


def test_a_constant_slice_bound_is_clamped_to_a_symbolic_size():
    """x[:, 2:5] and x[:, 1:2**30] of a length n: sympy cannot tell 5 <= n, so the bound is
    Min(5, n) (it was taken as 5: three columns typed where n = 3 gives one, and kernels
    sized so read past the input). Both match numpy at lengths under, at and over the bounds."""
    inits = [helper.make_tensor(name, TensorProto.INT64, [1], [v])
             for name, v in (("s0", 2), ("e0", 5), ("s1", 1), ("e1", 2**30), ("ax", 1))]
    graph = helper.make_graph(
        [helper.make_node("Slice", ["x", "s0", "e0", "ax"], ["a"]),
         helper.make_node("Slice", ["x", "s1", "e1", "ax"], ["b"]),
         helper.make_node("Neg", ["a"], ["y"]), helper.make_node("Neg", ["b"], ["z"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, "n"])],
        [helper.make_tensor_value_info(v, TensorProto.FLOAT, None) for v in "yz"], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    compiled = ember.compile(model)
    n = symbol("n")
    assert [sympy.simplify(o.shape[1] - want) for o, want in
            zip(compiled.outputs, (sympy.Max(sympy.Min(5, n) - sympy.Min(2, n), 0),
                                   sympy.Max(sympy.Min(2**30, n) - sympy.Min(1, n), 0)))] == [0, 0]
    for length in (1, 3, 5, 9):
        x = np.arange(2 * length, dtype=np.float32).reshape(2, length)
        out = compiled.run({"x": x})
        np.testing.assert_array_equal(out["y"], -x[:, 2:5])
        np.testing.assert_array_equal(out["z"], -x[:, 1:])
