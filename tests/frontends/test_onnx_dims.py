"""Anonymous dims: exporters write `?`, `""`, `-1`, `None` or `unk__N` (tf2onnx) for "unknown,
independent", or leave a dim with neither value nor name. Each becomes a symbol of its own;
only a real name (`batch`, `seq`) says two dims are equal."""

import numpy as np
import pytest
from onnx import TensorProto, helper

import ember
from ember.frontends.onnx import load_onnx

ANONYMOUS = {"question mark": "?", "empty": "", "blank": " ", "minus one param": "-1", "minus one value": -1,
             "None": "None", "tf2onnx": "unk__7", "no value or param": None}


def model(inputs, outputs, nodes, value_info=(), opset=21):
    graph = helper.make_graph(nodes, "g", inputs, outputs, value_info=list(value_info))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def tensor(name, dims, elem=TensorProto.FLOAT):
    """A value info whose dims are as given; None is a dim with neither value nor param."""
    info = helper.make_tensor_value_info(name, elem, [0 if d is None else d for d in dims])
    for dim, d in zip(info.type.tensor_type.shape.dim, dims):
        if d is None:
            dim.Clear()
        elif d == "":  # make_tensor_value_info writes "" as no param at all; an exporter writes it
            dim.dim_param = ""
    return info


@pytest.mark.parametrize("spelling", ANONYMOUS.values(), ids=ANONYMOUS.keys())
def test_each_anonymous_dim_is_its_own_symbol(spelling):
    m = model([tensor("x", [spelling, spelling])], [tensor("y", [spelling, spelling])],
              [helper.make_node("Transpose", ["x"], ["y"])])
    (x,) = load_onnx(m).inputs
    rows, cols = x.type.shape
    assert rows != cols and {rows.name, cols.name} == {"_x_dim0", "_x_dim1"}
    data = np.arange(10, dtype=np.float32).reshape(2, 5)
    np.testing.assert_array_equal(ember.compile(m).run({"x": data})["y"], data.T)


def test_anonymous_dims_of_two_inputs_broadcast_independently():
    m = model([tensor("a", ["?", "?"]), tensor("b", ["?", "?"])], [tensor("c", ["?", "?"])],
              [helper.make_node("Add", ["a", "b"], ["c"])])
    a, b = np.arange(3, dtype=np.float32).reshape(3, 1), np.arange(4, dtype=np.float32).reshape(1, 4)
    np.testing.assert_array_equal(ember.compile(m).run({"a": a, "b": b})["c"], a + b)


def image_model():
    """A small CNN as exporters declare it: input [-1, 3, "?", "?"], the output and an
    intermediate value declared with `?` and `unk__N` dims too."""
    rng = np.random.default_rng(0)
    weights = [helper.make_tensor("w", TensorProto.FLOAT, [4, 3, 3, 3], rng.standard_normal(108).tolist()),
               helper.make_tensor("b", TensorProto.FLOAT, [4], rng.standard_normal(4).tolist())]
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["conv"], pads=[1, 0, 1, 0], strides=[1, 2]),
             helper.make_node("Sigmoid", ["conv"], ["act"]),
             helper.make_node("Transpose", ["act"], ["y"], perm=[0, 1, 3, 2])]
    graph = helper.make_graph(nodes, "cnn", [tensor("x", [-1, 3, "?", "?"])], [tensor("y", ["unk__1", 4, "?", "?"])],
                              weights, value_info=[tensor("conv", ["?", 4, "?", "unk__2"])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize("height,width", [(7, 12), (16, 5)])
def test_image_model_runs_with_height_unlike_width(height, width):
    import onnxruntime

    m = image_model()
    compiled = ember.compile(m)
    x = np.random.default_rng(height).standard_normal((2, 3, height, width)).astype(np.float32)
    (expected,) = onnxruntime.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        None, {"x": x})
    got = compiled.run({"x": x})["y"]
    assert got.shape == expected.shape == (2, 4, (width - 3) // 2 + 1, height)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


def test_declared_anonymous_dims_of_outputs_and_value_info_tie_nothing():
    # (how far shape inference resolves the spatial dims is not the point: that no two
    # of the `?`s declared for the same value became one dim is)
    graph = load_onnx(image_model())
    batch, _, height, width = graph.inputs[0].type.shape
    (y,) = graph.outputs
    (conv,) = [n.outputs[0] for n in graph.nodes if n.op == "Conv"]
    for value in (y, conv):
        assert value.type.shape[:2] == (batch, 4)
        assert value.type.shape[2] != value.type.shape[3], value.type


def test_anonymous_dims_in_subgraph_declarations_tie_nothing():
    then = helper.make_graph([helper.make_node("Transpose", ["x"], ["t"])], "then", [], [tensor("t", ["?", "?"])])
    other = helper.make_graph([helper.make_node("Neg", ["x"], ["e"])], "else", [], [tensor("e", ["?", "?"])])
    m = model([tensor("c", [], TensorProto.BOOL), tensor("x", ["?", "?"])], [tensor("y", ["?", "?"])],
              [helper.make_node("If", ["c"], ["y"], then_branch=then, else_branch=other)])
    compiled = ember.compile(m)
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    np.testing.assert_array_equal(compiled.run({"c": np.array(True), "x": x})["y"], x.T)
    np.testing.assert_array_equal(compiled.run({"c": np.array(False), "x": x})["y"], -x)


def test_real_names_still_tie_dims():
    m = model([tensor("a", ["batch", "?"]), tensor("b", ["batch", "?"])], [tensor("c", ["batch", "?"])],
              [helper.make_node("Add", ["a", "b"], ["c"])])
    compiled = ember.compile(m)
    a, b = np.ones((2, 3), np.float32), np.ones((4, 3), np.float32)
    with pytest.raises(ember.InputError, match=r"input 'b'.*dim 0 is batch, which input 'a' set to 2"):
        compiled.run({"a": a, "b": b})
    np.testing.assert_array_equal(compiled.run({"a": a, "b": 2 * a})["c"], 3 * a)


def test_a_real_name_twice_in_one_input_ties_its_dims():
    m = model([tensor("x", ["seq", "seq", "?"])], [tensor("y", ["seq", "seq", "?"])],
              [helper.make_node("Relu", ["x"], ["y"])])
    compiled = ember.compile(m)
    with pytest.raises(ember.InputError, match=r"dim 1 is seq, which input 'x' set to 3"):
        compiled.run({"x": np.ones((3, 4, 5), np.float32)})
    assert compiled.run({"x": np.ones((3, 3, 5), np.float32)})["y"].shape == (3, 3, 5)


def test_errors_name_anonymous_dims_after_their_input_and_axis():
    m = model([tensor("pixel_values", [-1, 3, "?", "?"])], [tensor("y", [-1, 3, "?", "?"])],
              [helper.make_node("Relu", ["pixel_values"], ["y"])])
    compiled = ember.compile(m)
    with pytest.raises(ember.InputError) as error:
        compiled.run({"pixel_values": np.ones((1, 3, 8), np.float32)})
    message = str(error.value)
    assert "f32[_pixel_values_dim0, 3, _pixel_values_dim2, _pixel_values_dim3]" in message, message
    assert "rank 3, not 4" in message


def test_a_model_name_never_collides_with_an_anonymous_dim():
    # the model itself uses the name an anonymous dim of `x` would get: the two stay apart
    m = model([tensor("x", ["?", "_x_dim0"])], [tensor("y", ["?", "_x_dim0"])],
              [helper.make_node("Relu", ["x"], ["y"])])
    rows, cols = load_onnx(m).inputs[0].type.shape
    assert rows != cols and cols.name == "_x_dim0"
    assert ember.compile(m).run({"x": np.ones((2, 5), np.float32)})["y"].shape == (2, 5)


def test_the_callers_model_is_left_as_it_was():
    m = image_model()
    before = m.SerializeToString()
    load_onnx(m)
    assert m.SerializeToString() == before
    assert m.graph.input[0].type.tensor_type.shape.dim[2].dim_param == "?"
