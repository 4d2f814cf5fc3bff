"""Large initializers are read apart from the model (ember/frontends/_onnx_weights.py):
the values must come out exactly as onnx reads them, from a path, bytes, a ModelProto or
external data, through the opset upgrade, for every dtype; and a cut or corrupt file
is still a ModelError."""

import io

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import ember
from ember.frontends._onnx_weights import MIN_BYTES, split_weights
from ember.frontends.onnx import load_onnx

W = np.random.default_rng(0).standard_normal((64, 32)).astype(np.float32)  # 8 KiB: taken out
B = np.arange(32, dtype=np.float32)  # 128 bytes: stays inline


def linear_model(opset: int = 21) -> onnx.ModelProto:
    """y = Unsqueeze(x @ W + B, 0): at opset 11 Unsqueeze's axes are an attribute."""
    unsqueeze = (helper.make_node("Unsqueeze", ["t"], ["y"], axes=[0]) if opset < 13 else
                 helper.make_node("Unsqueeze", ["t", "axes"], ["y"]))
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["m"]), helper.make_node("Add", ["m", "B"], ["t"]), unsqueeze],
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, "n", 32])],
        [numpy_helper.from_array(W, "W"), numpy_helper.from_array(B, "B")]
        + ([numpy_helper.from_array(np.array([0], np.int64), "axes")] if opset >= 13 else []))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


X = np.random.default_rng(1).standard_normal((3, 64)).astype(np.float32)
EXPECTED = (X @ W + B)[None]


def test_only_large_initializers_are_taken_out():
    data = linear_model().SerializeToString()
    light, weights = split_weights(io.BytesIO(data))
    assert len(light) < len(data) - W.nbytes + 100
    ((index, weight),) = weights
    assert index == 0 and weight.buffer.tobytes() == W.tobytes()
    proto = onnx.ModelProto.FromString(light)
    assert [len(t.raw_data) for t in proto.graph.initializer] == [0, B.nbytes, 8]
    assert proto.graph.initializer[0].dims == [64, 32]


@pytest.mark.parametrize("opset", [21, 11], ids=["newest", "upgraded"])
@pytest.mark.parametrize("source", ["path", "bytes", "proto"])
def test_weights_arrive_exactly(tmp_path, opset, source):
    model = linear_model(opset)
    path = tmp_path / "m.onnx"
    onnx.save(model, str(path))
    arg = {"path": str(path), "bytes": path.read_bytes(), "proto": model}[source]
    graph = load_onnx(arg)
    (w,) = [c.const for c in graph.constants if c.name == "W"]
    np.testing.assert_array_equal(w, W)
    assert not w.flags.writeable  # constants are shared with the program
    np.testing.assert_allclose(ember.compile(arg).run({"x": X})["y"], EXPECTED, rtol=1e-5, atol=1e-5)


def test_large_external_data(tmp_path):
    folder = tmp_path / "model"
    folder.mkdir()
    onnx.save_model(linear_model(), str(folder / "m.onnx"), save_as_external_data=True,
                    all_tensors_to_one_file=True, location="weights.bin", size_threshold=0)
    proto = onnx.load(str(folder / "m.onnx"), load_external_data=False)
    for arg, base in [(str(folder / "m.onnx"), None), (proto, folder), (proto.SerializeToString(), folder)]:
        compiled = ember.compile(arg, base_dir=base)
        np.testing.assert_allclose(compiled.run({"x": X})["y"], EXPECTED, rtol=1e-5, atol=1e-5)
    assert proto.graph.initializer[0].data_location == TensorProto.EXTERNAL  # the caller's proto is untouched


@pytest.mark.parametrize("dtype", [TensorProto.BFLOAT16, TensorProto.FLOAT16, TensorProto.INT4,
                                   TensorProto.UINT4, TensorProto.FLOAT8E4M3FN, TensorProto.INT64])
def test_large_low_precision_initializers(dtype):
    values = (np.arange(4 * MIN_BYTES) % 7 - 3).astype(np.float32)
    if dtype == TensorProto.UINT4:
        values = np.abs(values)
    reference = numpy_helper.to_array(helper.make_tensor("w", dtype, [values.size], values.tolist()))
    init = numpy_helper.from_array(reference, "w")  # as raw_data
    graph = helper.make_graph([helper.make_node("Cast", ["w"], ["y"], to=TensorProto.FLOAT)], "g", [],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [values.size])], [init])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 23)])
    assert split_weights(io.BytesIO(model.SerializeToString()))[1], "the test tensor is not taken out"
    (w,) = load_onnx(model).constants
    assert w.const.dtype == reference.dtype
    np.testing.assert_array_equal(w.const, reference)
    np.testing.assert_array_equal(ember.compile(model, opt_level=0).run({})["y"], values)


def test_large_initializer_inside_a_subgraph():
    big = np.full(1024, 2, np.float32)
    then = helper.make_graph([helper.make_node("Mul", ["x", "k"], ["t"])], "then", [],
                             [helper.make_tensor_value_info("t", TensorProto.FLOAT, [1024])],
                             [numpy_helper.from_array(big, "k")])
    other = helper.make_graph([helper.make_node("Neg", ["x"], ["e"])], "else", [],
                              [helper.make_tensor_value_info("e", TensorProto.FLOAT, [1024])])
    graph = helper.make_graph(
        [helper.make_node("If", ["c"], ["y"], then_branch=then, else_branch=other)], "g",
        [helper.make_tensor_value_info("c", TensorProto.BOOL, []),
         helper.make_tensor_value_info("x", TensorProto.FLOAT, [1024])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1024])],
        [numpy_helper.from_array(np.zeros(1024, np.float32), "k")])  # same name, outer scope
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    x = np.arange(1024, dtype=np.float32)
    np.testing.assert_array_equal(ember.compile(model).run({"c": np.array(True), "x": x})["y"], 2 * x)


@pytest.mark.parametrize("cut", [0.5, 0.99, 0.02])
def test_cut_inside_the_weights(tmp_path, cut):
    data = linear_model().SerializeToString()
    path = tmp_path / "cut.onnx"
    path.write_bytes(data[: int(len(data) * cut)])
    with pytest.raises(ember.ModelError, match="not a valid ONNX model"):
        ember.compile(str(path))


def test_field_longer_than_its_message():
    data = bytearray(linear_model().SerializeToString())
    graph_at = data.index(b"\x3a")  # ModelProto.graph: field 7, length-delimited
    data[graph_at + 1] |= 0x7F  # the graph's length now runs past the end of the file
    with pytest.raises(ember.ModelError, match="<bytes>.*not a valid ONNX model"):
        ember.compile(bytes(data))


def test_raw_data_on_a_string_tensor_is_refused():
    init = TensorProto(name="s", data_type=TensorProto.STRING, dims=[MIN_BYTES // 8])
    init.raw_data = bytes(MIN_BYTES)  # not how strings are stored: never read as pointers
    graph = helper.make_graph([helper.make_node("Identity", ["s"], ["y"])], "g", [],
                              [helper.make_tensor_value_info("y", TensorProto.STRING, [MIN_BYTES // 8])], [init])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    with pytest.raises(ember.ModelError, match="initializer 's' cannot be read"):
        load_onnx(model)
