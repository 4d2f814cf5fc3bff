"""Bad input, end to end: malformed model files, unsafe external data, graphs the IR
cannot hold, bad feeds, unknown targets/options and failures at run time.

Every case asserts the exact ember exception type and that the message names the thing
at fault (the file, tensor, node, op, attribute or input), and that nothing is left
broken afterwards: the same compiled model, and `ember.compile` of a good model, still
work."""

from __future__ import annotations

import builtins
import io
import os
import re
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import ember
from ember.ir.ops.onnx_standard import latest_opsets

LATEST = latest_opsets()[""]
# Structural checks must name the culprit whether or not the model needs upgrading to
# the newest opset first (the frontend runs onnx's version converter on older models).
OPSETS = [pytest.param(LATEST, id="latest-opset"), pytest.param(13, id="opset13")]

W = (np.arange(16, dtype=np.float32).reshape(4, 4) - 8) / 4


# -- helpers ------------------------------------------------------------------------
def make_model(nodes, inputs, outputs, initializers=(), opset=LATEST, extra_opsets=()):
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=list(initializers))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset), *extra_opsets])


def tensor(name, elem, shape):
    return helper.make_tensor_value_info(name, elem, shape)


def matmul_model(opset=LATEST) -> onnx.ModelProto:
    """y = x @ W with W an initializer (so the serialized model is not tiny)."""
    return make_model([helper.make_node("MatMul", ["x", "W"], ["y"], name="mm")],
                      [tensor("x", TensorProto.FLOAT, ["n", 4])],
                      [tensor("y", TensorProto.FLOAT, ["n", 4])],
                      [numpy_helper.from_array(W, "W")], opset=opset)


def unary_model(node, opset=LATEST, extra_opsets=()) -> onnx.ModelProto:
    return make_model([node], [tensor("x", TensorProto.FLOAT, [2, 3])],
                      [tensor("y", TensorProto.FLOAT, [2, 3])], opset=opset, extra_opsets=extra_opsets)


def two_input_model() -> onnx.ModelProto:
    """y = a + b with a, b: f32[n, 3] sharing the symbol n."""
    return make_model([helper.make_node("Add", ["a", "b"], ["y"], name="add")],
                      [tensor("a", TensorProto.FLOAT, ["n", 3]), tensor("b", TensorProto.FLOAT, ["n", 3])],
                      [tensor("y", TensorProto.FLOAT, ["n", 3])])


def assert_good_model_works():
    """A fresh compile of a good model still gives the right answer."""
    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    (y,) = ember.compile(matmul_model()).run({"x": x}).values()
    np.testing.assert_allclose(y, x @ W, rtol=1e-6)


def q(text) -> str:
    return re.escape(str(text))


# -- 1. unreadable model files ------------------------------------------------------
def test_truncated_model_file(tmp_path):
    data = matmul_model().SerializeToString()
    assert len(data) > 100  # the initializer makes it big enough to cut in half
    path = tmp_path / "truncated.onnx"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ember.ModelError, match=q(path) + ".*(truncated|corrupt)"):
        ember.compile(str(path))
    with pytest.raises(ember.ModelError, match=q(path)):
        ember.compile(path)  # a pathlib.Path too


def test_truncated_model_bytes():
    data = matmul_model().SerializeToString()
    with pytest.raises(ember.ModelError, match="<bytes>.*not a valid ONNX model"):
        ember.compile(data[: len(data) // 2])


def test_empty_model_file(tmp_path):
    path = tmp_path / "empty.onnx"
    path.write_bytes(b"")
    with pytest.raises(ember.ModelError, match=q(path) + ".*not a valid ONNX model"):
        ember.compile(str(path))


def test_random_bytes_model_file(tmp_path):
    path = tmp_path / "random.onnx"
    path.write_bytes(np.random.default_rng(1234).bytes(4096))
    with pytest.raises(ember.ModelError, match=q(path) + ".*not a valid ONNX model"):
        ember.compile(str(path))


def test_missing_model_file(tmp_path):
    path = tmp_path / "does_not_exist.onnx"
    with pytest.raises(ember.ModelError, match=q(path) + ".*no such model file"):
        ember.compile(str(path))


@pytest.mark.parametrize("obj", [42, None, 3.5, object()], ids=["int", "None", "float", "object"])
def test_model_of_wrong_python_type(obj):
    with pytest.raises(ember.ModelError, match=f"cannot load a model from {type(obj).__name__}"):
        ember.compile(obj)


# -- 2. external data ---------------------------------------------------------------
@pytest.fixture
def external_model(tmp_path):
    """A model folder holding m.onnx with W in weights.bin; a secret file beside the folder."""
    folder = tmp_path / "model"
    folder.mkdir()
    onnx.save_model(matmul_model(), str(folder / "m.onnx"), save_as_external_data=True,
                    all_tensors_to_one_file=True, location="weights.bin", size_threshold=0)
    assert (folder / "weights.bin").is_file()
    secret = tmp_path / "secret.bin"
    secret.write_bytes(W.tobytes())  # the same bytes: reading it would even "work"
    return folder, secret


def with_location(folder: Path, location: str, name="bad.onnx") -> tuple[Path, onnx.ModelProto]:
    proto = onnx.load(str(folder / "m.onnx"), load_external_data=False)
    (init,) = proto.graph.initializer
    for entry in init.external_data:
        if entry.key == "location":
            entry.value = location
    path = folder / name
    path.write_bytes(proto.SerializeToString())
    return path, proto


@pytest.fixture
def watch_opens(monkeypatch):
    """Records every path opened through builtins.open / io.open (pathlib uses io.open)."""
    opened: list[str] = []
    real_open = io.open

    def spy(file, *args, **kwargs):
        if isinstance(file, (str, bytes, os.PathLike)):
            opened.append(os.path.realpath(os.fsdecode(file)))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", spy)
    monkeypatch.setattr(io, "open", spy)
    return opened


def test_external_data_inside_folder_loads_and_runs(external_model, watch_opens):
    folder, _ = external_model
    model = ember.compile(str(folder / "m.onnx"))
    # the spy sees the read (so the "secret never opened" checks below are not vacuous)
    assert os.path.realpath(folder / "weights.bin") in watch_opens
    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    np.testing.assert_allclose(model.run({"x": x})["y"], x @ W, rtol=1e-6)
    # the same model as a ModelProto or bytes, with base_dir
    proto = onnx.load(str(folder / "m.onnx"), load_external_data=False)
    for m in (proto, proto.SerializeToString()):
        np.testing.assert_allclose(ember.compile(m, base_dir=str(folder)).run({"x": x})["y"], x @ W, rtol=1e-6)


@pytest.mark.parametrize("kind", ["dotdot", "absolute", "dotdot-inside-subdir", "symlink"])
def test_external_data_outside_folder_is_refused(external_model, watch_opens, kind):
    folder, secret = external_model
    if kind == "dotdot":
        location = "../secret.bin"
    elif kind == "absolute":
        location = str(secret)
    elif kind == "dotdot-inside-subdir":
        location = "sub/../../secret.bin"
    else:
        os.symlink(secret, folder / "link.bin")
        location = "link.bin"
    path, proto = with_location(folder, location)
    pattern = rf"tensor 'W'.*{q(location)}.*leaves the model's folder"
    with pytest.raises(ember.ModelError, match=pattern):
        ember.compile(str(path))
    with pytest.raises(ember.ModelError, match=pattern):
        ember.compile(proto, base_dir=str(folder))
    assert os.path.realpath(secret) not in watch_opens, "the secret file was opened"
    assert_good_model_works()


def test_external_data_without_base_dir_is_refused(external_model, watch_opens):
    folder, secret = external_model
    _, proto = with_location(folder, "../secret.bin")
    with pytest.raises(ember.ModelError, match=r"tensor 'W'.*base_dir"):
        ember.compile(proto)
    assert os.path.realpath(secret) not in watch_opens


def test_external_data_file_missing(external_model):
    folder, _ = external_model
    path, _ = with_location(folder, "missing.bin")
    with pytest.raises(ember.ModelError, match=r"tensor 'W'.*missing\.bin.*does not exist"):
        ember.compile(str(path))


def test_external_data_file_truncated(external_model):
    folder, _ = external_model
    (folder / "short.bin").write_bytes((folder / "weights.bin").read_bytes()[:10])
    path, _ = with_location(folder, "short.bin")
    with pytest.raises(ember.ModelError, match=r"tensor 'W'.*short\.bin.*truncated"):
        ember.compile(str(path))


def test_compile_does_not_modify_the_callers_proto(external_model):
    """Loading external data must work on a copy: the caller's ModelProto keeps its
    external-data references (and stays small), whether compile succeeds or fails."""
    folder, _ = external_model
    proto = onnx.load(str(folder / "m.onnx"), load_external_data=False)
    before = proto.SerializeToString()
    ember.compile(proto, base_dir=str(folder))
    (init,) = proto.graph.initializer
    assert init.data_location == TensorProto.EXTERNAL and init.external_data and not init.raw_data, (
        "ember.compile(proto, base_dir=...) modified the caller's ModelProto: initializer 'W' now "
        f"holds {len(init.raw_data)} bytes of raw_data and {len(init.external_data)} external_data "
        "entries (ember/frontends/onnx.py _load_external_data writes into the proto it was given)")
    assert proto.SerializeToString() == before


# -- 3. unknown ops -----------------------------------------------------------------
@pytest.mark.parametrize("opset", OPSETS)
def test_unknown_op_default_domain(opset):
    model = unary_model(helper.make_node("FrobnicateX", ["x"], ["y"], name="frob"), opset=opset)
    with pytest.raises(ember.ModelError, match=r"node 'frob'.*FrobnicateX"):
        ember.compile(model)


@pytest.mark.parametrize("opset", OPSETS)
def test_unknown_op_custom_domain(opset):
    node = helper.make_node("Zap", ["x"], ["y"], name="zapper", domain="com.acme")
    model = unary_model(node, opset=opset, extra_opsets=[helper.make_opsetid("com.acme", 1)])
    with pytest.raises(ember.ModelError, match=r"node 'zapper'.*com\.acme\.Zap"):
        ember.compile(model)


# -- 4. cycles ----------------------------------------------------------------------
@pytest.mark.parametrize("opset", OPSETS)
def test_cycle(opset):
    nodes = [helper.make_node("Add", ["x", "b"], ["a"], name="first"),
             helper.make_node("Relu", ["a"], ["b"], name="second"),
             helper.make_node("Identity", ["a"], ["y"], name="out")]
    model = make_model(nodes, [tensor("x", TensorProto.FLOAT, [2])], [tensor("y", TensorProto.FLOAT, [2])],
                       opset=opset)
    with pytest.raises(ember.ModelError, match="cycle") as info:
        ember.compile(model)
    assert "'first'" in str(info.value) and "'second'" in str(info.value), str(info.value)
    assert "'out'" not in str(info.value), str(info.value)


def test_self_loop():
    model = make_model([helper.make_node("Add", ["x", "y"], ["y"], name="loopy")],
                       [tensor("x", TensorProto.FLOAT, [2])], [tensor("y", TensorProto.FLOAT, [2])])
    with pytest.raises(ember.ModelError, match=r"cycle.*'loopy'"):
        ember.compile(model)


# -- 5. dangling and doubly-produced values ------------------------------------------
@pytest.mark.parametrize("opset", OPSETS)
def test_input_nothing_produces(opset):
    model = make_model([helper.make_node("Add", ["x", "ghost"], ["y"], name="adder")],
                       [tensor("x", TensorProto.FLOAT, [2])], [tensor("y", TensorProto.FLOAT, [2])],
                       opset=opset)
    with pytest.raises(ember.ModelError, match=r"node 'adder'.*'ghost'"):
        ember.compile(model)


@pytest.mark.parametrize("opset", OPSETS)
def test_value_produced_twice(opset):
    nodes = [helper.make_node("Relu", ["x"], ["y"], name="r1"), helper.make_node("Neg", ["x"], ["y"], name="r2")]
    model = make_model(nodes, [tensor("x", TensorProto.FLOAT, [2])], [tensor("y", TensorProto.FLOAT, [2])],
                       opset=opset)
    with pytest.raises(ember.ModelError, match=r"node 'r2'.*'y'.*already produced"):
        ember.compile(model)


def test_node_output_shadows_graph_input():
    model = make_model([helper.make_node("Relu", ["x"], ["x"], name="shadow")],
                       [tensor("x", TensorProto.FLOAT, [2])], [tensor("x", TensorProto.FLOAT, [2])])
    with pytest.raises(ember.ModelError, match=r"node 'shadow'.*'x'.*already produced"):
        ember.compile(model)


def test_graph_output_never_produced():
    model = make_model([helper.make_node("Relu", ["x"], ["y"], name="r")],
                       [tensor("x", TensorProto.FLOAT, [2])], [tensor("nowhere", TensorProto.FLOAT, [2])])
    with pytest.raises(ember.ModelError, match=r"output 'nowhere'.*never produced"):
        ember.compile(model)


# -- 6. feeds -----------------------------------------------------------------------
@pytest.fixture(scope="module")
def add_model():
    return ember.compile(two_input_model())


def good_feeds(n=2):
    return {"a": np.ones((n, 3), np.float32), "b": np.full((n, 3), 2, np.float32)}


def test_feed_wrong_dtype(add_model):
    with pytest.raises(ember.InputError, match=r"input 'a': expected f32\[n, 3\], got f64\[2, 3\].*dtype"):
        add_model.run({**good_feeds(), "a": np.ones((2, 3), np.float64)})


def test_feed_wrong_rank(add_model):
    with pytest.raises(ember.InputError, match=r"input 'b': expected f32\[n, 3\], got f32\[2, 3, 1\].*rank"):
        add_model.run({**good_feeds(), "b": np.ones((2, 3, 1), np.float32)})


def test_feed_unknown_input(add_model):
    with pytest.raises(ember.InputError, match=r"unknown input 'c'.*a: f32\[n, 3\].*b: f32\[n, 3\]"):
        add_model.run({**good_feeds(), "c": np.ones((2, 3), np.float32)})


def test_feed_missing_input(add_model):
    with pytest.raises(ember.InputError, match=r"missing input 'b'.*f32\[n, 3\]"):
        add_model.run({"a": np.ones((2, 3), np.float32)})


def test_feed_inconsistent_symbolic_dim(add_model):
    with pytest.raises(ember.InputError,
                       match=re.escape("input 'b': expected f32[n, 3], got f32[4, 3] "
                                       "(dim 0 is n, which input 'a' set to 2)")):
        add_model.run({"a": np.ones((2, 3), np.float32), "b": np.ones((4, 3), np.float32)})


def test_feed_wrong_fixed_dim(add_model):
    with pytest.raises(ember.InputError, match=r"input 'a': expected f32\[n, 3\], got f32\[2, 5\].*dim 1 must be 3"):
        add_model.run({"a": np.ones((2, 5), np.float32), "b": np.ones((2, 3), np.float32)})


@pytest.mark.parametrize("feeds", [[np.ones((2, 3), np.float32)] * 2, (1, 2), "a", None],
                         ids=["list", "tuple", "str", "None"])
def test_feeds_not_a_dict(add_model, feeds):
    with pytest.raises(ember.InputError, match=rf"feeds must be a dict.*got {type(feeds).__name__}"):
        add_model.run(feeds)


@pytest.mark.parametrize("bad", [object(), "text", None, {"x": 1}], ids=["object", "str", "None", "dict"])
def test_feed_not_an_array(add_model, bad):
    with pytest.raises(ember.InputError,
                       match=rf"input 'a': expected a numpy array \(f32\[n, 3\]\), got {type(bad).__name__}"):
        add_model.run({**good_feeds(), "a": bad})


def test_feed_errors_are_value_errors_and_model_still_runs(add_model):
    with pytest.raises(ValueError):
        add_model.run({"a": np.ones((2, 3), np.float64), "b": np.ones((2, 3), np.float32)})
    (y,) = add_model.run(good_feeds(5)).values()
    np.testing.assert_array_equal(y, np.full((5, 3), 3, np.float32))


# -- 7. targets and options ---------------------------------------------------------
def test_unknown_target():
    with pytest.raises(ember.UnsupportedError, match="target 'tpu'"):
        ember.compile(matmul_model(), target="tpu")


def test_unknown_compile_option():
    with pytest.raises(ember.UnsupportedError, match="unknown compile option.*frobnicate"):
        ember.compile(matmul_model(), frobnicate=True)


# -- 8. failures at run time ---------------------------------------------------------
def test_node_failure_at_run_time_names_node_and_model_survives():
    model = ember.compile(make_model(
        [helper.make_node("Reshape", ["x", "shape"], ["y"], name="reshaper")],
        [tensor("x", TensorProto.FLOAT, [2, 3]), tensor("shape", TensorProto.INT64, [2])],
        [tensor("y", TensorProto.FLOAT, None)]))
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    with pytest.raises(ember.ExecutionError, match=r"node 'reshaper' \(op Reshape\)"):
        model.run({"x": x, "shape": np.array([4, 4], np.int64)})
    (y,) = model.run({"x": x, "shape": np.array([3, 2], np.int64)}).values()
    np.testing.assert_array_equal(y, x.reshape(3, 2))
    with pytest.raises(ember.ExecutionError, match="reshaper"):
        model.run({"x": x, "shape": np.array([5, 1], np.int64)})
    (y,) = model.run({"x": x, "shape": np.array([6, 1], np.int64)}).values()
    np.testing.assert_array_equal(y, x.reshape(6, 1))


# -- 9. attributes ------------------------------------------------------------------
@pytest.mark.parametrize("opset", OPSETS)
def test_unknown_attribute(opset):
    model = unary_model(helper.make_node("Relu", ["x"], ["y"], name="relu1", bogus=3), opset=opset)
    with pytest.raises(ember.ModelError, match=r"node 'relu1'.*Relu.*attribute 'bogus'"):
        ember.compile(model)


@pytest.mark.parametrize("opset", OPSETS)
def test_missing_required_attribute(opset):
    model = unary_model(helper.make_node("Cast", ["x"], ["y"], name="caster"), opset=opset)
    with pytest.raises(ember.ModelError, match=r"node 'caster'.*Cast.*missing required attribute 'to'"):
        ember.compile(model)


def test_missing_required_attribute_in_family_file_op():
    model = make_model([helper.make_node("MaxPool", ["x"], ["y"], name="pool")],
                       [tensor("x", TensorProto.FLOAT, [1, 1, 4, 4])], [tensor("y", TensorProto.FLOAT, None)])
    with pytest.raises(ember.ModelError, match=r"node 'pool'.*MaxPool.*'kernel_shape'"):
        ember.compile(model)


@pytest.mark.parametrize("node", [
    helper.make_node("Transpose", ["x"], ["y"], name="tr", perm=1.5),     # FLOAT where INTS is expected
    helper.make_node("Cast", ["x"], ["y"], name="tr", to="float"),        # STRING where INT is expected
], ids=["float-for-ints", "string-for-int"])
def test_attribute_of_wrong_kind(node):
    attr = node.attribute[0].name
    with pytest.raises(Exception) as info:
        ember.compile(unary_model(node))
    err = info.value
    assert type(err) is ember.ModelError, (
        f"an attribute of the wrong kind leaked {type(err).__name__}: {err} (expected ModelError)")
    assert re.search(rf"node 'tr'.*attribute '{attr}'", str(err)), (
        f"the message does not name attribute {attr!r}: {err}")


def test_error_inside_subgraph_names_both_nodes():
    then_g = helper.make_graph([helper.make_node("Frob", ["x"], ["t"], name="deep")], "then", [],
                               [tensor("t", TensorProto.FLOAT, [2])])
    else_g = helper.make_graph([helper.make_node("Identity", ["x"], ["e"], name="shallow")], "else", [],
                               [tensor("e", TensorProto.FLOAT, [2])])
    model = make_model([helper.make_node("If", ["c"], ["y"], name="branch", then_branch=then_g, else_branch=else_g)],
                       [tensor("x", TensorProto.FLOAT, [2]), tensor("c", TensorProto.BOOL, [])],
                       [tensor("y", TensorProto.FLOAT, [2])])
    with pytest.raises(ember.ModelError, match=r"node 'branch' \(op If\).*node 'deep'.*Frob"):
        ember.compile(model)


# -- process state stays intact ------------------------------------------------------
def test_errors_interleaved_with_good_compiles(tmp_path, external_model):
    folder, _ = external_model
    bad_file = tmp_path / "half.onnx"
    data = matmul_model().SerializeToString()
    bad_file.write_bytes(data[: len(data) // 2])
    escaping, _ = with_location(folder, "../secret.bin")
    failures = [
        (ember.ModelError, lambda: ember.compile(str(bad_file))),
        (ember.ModelError, lambda: ember.compile(str(tmp_path / "nope.onnx"))),
        (ember.ModelError, lambda: ember.compile(str(escaping))),
        (ember.ModelError, lambda: ember.compile(unary_model(helper.make_node("FrobnicateX", ["x"], ["y"])))),
        (ember.ModelError, lambda: ember.compile(make_model(
            [helper.make_node("Add", ["x", "b"], ["a"], name="p"), helper.make_node("Relu", ["a"], ["b"], name="q")],
            [tensor("x", TensorProto.FLOAT, [2])], [tensor("a", TensorProto.FLOAT, [2])]))),
        (ember.ModelError, lambda: ember.compile(unary_model(helper.make_node("Cast", ["x"], ["y"])))),
        (ember.UnsupportedError, lambda: ember.compile(matmul_model(), target="tpu")),
        (ember.UnsupportedError, lambda: ember.compile(matmul_model(), nope=1)),
        (ember.InputError, lambda: ember.compile(matmul_model()).run({"x": np.ones((2, 4))})),
    ]
    good = ember.compile(matmul_model())
    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    for error, fail in failures:
        with pytest.raises(error):
            fail()
        assert_good_model_works()
        np.testing.assert_allclose(good.run({"x": x})["y"], x @ W, rtol=1e-6)
    # and the external-data model in the same folder still loads fine
    np.testing.assert_allclose(ember.compile(str(folder / "m.onnx")).run({"x": x})["y"], x @ W, rtol=1e-6)


def test_a_library_failure_while_running_names_its_node():
    """An extern's library error (oneDNN's, torch's) leaves as an ember ExecutionError that
    names the node, not a bare RuntimeError."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    w = numpy_helper.from_array(np.ones((4, 4), np.float32), "w")
    model = helper.make_model(helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")], "g",
                                                [x], [y], [w]), opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    compiled = ember.compile(model.SerializeToString())
    steps = compiled._executor._steps
    (at,) = [i for i, (kind, _, _) in enumerate(steps) if kind == "extern"]

    def broken(params, *args):
        raise RuntimeError("could not construct a memory descriptor using a format tag")

    steps[at] = (steps[at][0], broken, steps[at][2])
    with pytest.raises(ember.ExecutionError, match=r"'mm'.*RuntimeError: could not construct a memory descriptor"):
        compiled.run({"x": np.ones((2, 4), np.float32)})


_OUT_OF_RANGE = r'''
import json, sys
import numpy as np
import ember
from onnx import helper, TensorProto
t = np.arange(12, dtype=np.float32).reshape(4, 3)
results = {}
for op, attrs, shape in (("Gather", {"axis": 0}, [2]), ("GatherElements", {"axis": 0}, [1, 3]), ("GatherND", {}, [1, 1])):
    g = helper.make_graph([helper.make_node(op, ["t", "i"], ["y"], **attrs)], "g",
                          [helper.make_tensor_value_info("i", TensorProto.INT64, shape)],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                          [helper.make_tensor("t", TensorProto.FLOAT, [4, 3], t.ravel())])
    m = ember.compile(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]))
    assert m.stats.fallback_nodes == [], op
    for v in (-1, 4, 10**12, -10**12):
        try:
            results[f"{op} {v}"] = m.run({"i": np.full(shape, v, np.int64)})["y"].tolist()
        except ember.EmberError as e:
            results[f"{op} {v}"] = f"{type(e).__name__}: {e}"
print(json.dumps(results))
'''


def test_indices_outside_their_dim_never_read_outside_the_tensor():
    """A Gather, GatherElements or GatherND fed indices past its dim (4 rows): a Gather's and
    a GatherElements' fed indices are checked before the run (an InputError naming the
    input, the range and the node); GatherND's kernel clamps them (it cannot raise; its
    coordinates index dims of different sizes), and none reads outside the tensor: an index
    of 10^12 crashed the process (run in a child, so a crash fails here)."""
    import json
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", _OUT_OF_RANGE], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    got = json.loads(done.stdout.strip().splitlines()[-1])
    assert got["Gather -1"] == [[9.0, 10.0, 11.0], [9.0, 10.0, 11.0]]
    for op in ("Gather", "GatherElements"):
        for v in (4, 10**12, -10**12):
            assert got[f"{op} {v}"].startswith(f"InputError: input 'i': index {v} is outside [-4, 3]: node '{op}_0'")
    rows = [[float(x) for x in range(3 * r, 3 * r + 3)] for r in range(4)]
    assert got["GatherElements -1"] == [rows[3]] and got["GatherND -1"] == [rows[3]]
    # GatherND: clamped into the tensor, its last row or its first
    assert got["GatherND 4"] == got[f"GatherND {10**12}"] == [rows[3]] and got[f"GatherND {-10**12}"] == [rows[0]]
