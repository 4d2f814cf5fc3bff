"""CompiledModel.export_onnx: whole optimised models written back to ONNX. With
standard ops only, onnxruntime runs them to ember's outputs (MiniLM on real tokens, a
ResNet-50); as themselves (ember's ops in the `ember` domain) ember loads them again to
the same outputs; control flow, external data and opsets on small graphs."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx
import pytest
from hypothesis import given, settings
from onnx import TensorProto, helper, numpy_helper

import ember
from ember import _builtin
from ember.errors import UnsupportedError
from ember.export import export_onnx
from ember.testing.strategies import graphs_and_feeds
from tests.export._check import check_round_trip, check_standard_export, run_onnxruntime

pytest.importorskip("onnxruntime")

LIGHT = Path(onnx.__file__).parent / "backend" / "test" / "data" / "light"


def _max_error(got: np.ndarray, want: np.ndarray) -> float:
    assert got.shape == want.shape and got.dtype == want.dtype
    return float(np.max(np.abs(got.astype(np.float64) - want)))


# -- MiniLM -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def minilm(minilm_onnx):
    return ember.compile(str(minilm_onnx))


def test_minilm_standard_export_runs_in_onnxruntime_as_ember_does(minilm, tmp_path):
    path = tmp_path / "minilm.onnx"
    model = minilm.export_onnx(path, standard_ops_only=True)
    onnx.checker.check_model(onnx.load(path), full_check=True)
    assert {o.domain for o in model.opset_import} == {""} and {n.domain for n in model.graph.node} == {""}
    # the optimised graph, not the original: one LayerNormalization per fused SkipLayerNorm, ...
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("LayerNormalization") == 13 and "Gelu" in ops
    assert [str(d.dim_param or d.dim_value) for d in model.graph.input[0].type.tensor_type.shape.dim] == ["batch", "seq"]
    for sentences in (["The quick brown fox jumps over the lazy dog."], _builtin.SAMPLE_SENTENCES):
        feeds = _builtin.tokenize(sentences)
        want = minilm.run(feeds)["last_hidden_state"]
        got = run_onnxruntime(onnx.load(path), feeds)["last_hidden_state"]
        # outputs reach |5|; two fp32 GEMM libraries (oneDNN, MLAS) summing in their own orders
        assert _max_error(got, want) < 1e-4


def test_minilm_exports_as_itself_and_ember_loads_it_back(minilm, tmp_path):
    path = tmp_path / "minilm_ember.onnx"
    model = minilm.export_onnx(path)
    assert {(o.domain, o.version) for o in model.opset_import} == {("", 28), ("ember", 1)}
    kinds = {n.op_type for n in model.graph.node if n.domain == "ember"}
    assert kinds == {"Linear", "Attention", "SkipLayerNorm"}
    again = ember.compile(str(path))
    assert again.stats.op_histogram == minilm.stats.op_histogram  # nothing left to fuse, nothing lost
    feeds = _builtin.tokenize(_builtin.SAMPLE_SENTENCES)
    np.testing.assert_array_equal(again.run(feeds)["last_hidden_state"], minilm.run(feeds)["last_hidden_state"])


def test_weights_as_external_data(minilm, tmp_path):
    path = tmp_path / "minilm.onnx"
    minilm.export_onnx(path, external_data=True)
    assert (tmp_path / "minilm.onnx.data").stat().st_size > 80_000_000 > path.stat().st_size
    again = ember.compile(str(path))
    feeds = _builtin.tokenize(["external data"])
    np.testing.assert_array_equal(again.run(feeds)["last_hidden_state"], minilm.run(feeds)["last_hidden_state"])
    with pytest.raises(UnsupportedError, match="needs a path"):
        export_onnx(minilm.graph, external_data=True)


# -- ResNet-50 --------------------------------------------------------------------------
def random_resnet50(seed: int = 0) -> onnx.ModelProto:
    """The light ResNet-50 with random weights in place of its constant ones (one value
    everywhere, whose output is the same for every class): convolutions He-initialised,
    batch norms that shrink a little; the softmax is dropped, so the logits are compared."""
    rng = np.random.default_rng(seed)
    model = onnx.load(os.fspath(LIGHT / "light_resnet50.onnx"))
    model.ir_version = 7  # initializers need not be graph inputs
    shapes = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    nodes = []
    for node in model.graph.node:
        if node.op_type != "ConstantOfShape":
            nodes.append(node)
            continue
        name, shape = node.output[0], tuple(shapes[node.input[0]])
        kind = name.rsplit("_", 2)[-2]  # gpu_0/res2_0_branch2a_bn_riv_0 -> riv
        if kind == "w":
            data = rng.standard_normal(shape) * np.sqrt(2 / np.prod(shape[1:]))
        elif kind == "s":  # batch norm scale: below 1, so 16 residual blocks keep the logits to a few units
            data = rng.uniform(0.3, 0.6, shape)
        elif kind == "riv":  # running variance
            data = rng.uniform(0.5, 1.5, shape)
        else:  # bias, running mean
            data = rng.standard_normal(shape) * 0.1
        model.graph.initializer.append(numpy_helper.from_array(data.astype(np.float32), name))
    softmax = nodes.pop()
    assert softmax.op_type == "Softmax"
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    del model.graph.output[:]
    model.graph.output.append(helper.make_tensor_value_info(softmax.input[0], TensorProto.FLOAT, [1, 1000]))
    return model


def test_resnet50_standard_export_runs_in_onnxruntime_as_ember_does(tmp_path):
    compiled = ember.compile(random_resnet50())
    assert {"ember.Conv", "ember.MaxPool"} <= set(compiled.stats.op_histogram)
    path = tmp_path / "resnet50.onnx"
    model = compiled.export_onnx(path, standard_ops_only=True)
    onnx.checker.check_model(model, full_check=True)
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("Conv") == 53 and "BatchNormalization" not in ops  # folded into the weights
    x = np.random.default_rng(1).standard_normal((1, 3, 224, 224)).astype(np.float32)
    (want,) = compiled.run({"gpu_0/data_0": x}).values()
    (got,) = run_onnxruntime(onnx.load(path), {"gpu_0/data_0": x}).values()
    assert 1 < np.abs(want).max() < 20 and want.std() > 0.5  # logits that differ from class to class
    assert _max_error(got, want) < 1e-4

    again = ember.compile(compiled.export_onnx(tmp_path / "resnet50_ember.onnx"))
    np.testing.assert_array_equal(list(again.run({"gpu_0/data_0": x}).values())[0], want)


# -- control flow, random graphs ----------------------------------------------------------
def _loop_and_if_model() -> onnx.ModelProto:
    """y = x * 2^n (a Loop whose body reads an outer value and passes its condition
    through), then an If on sum(y) > 0 whose branches are an ember op (passes do not
    fuse inside subgraphs: the model names it) and a constant."""
    f32 = TensorProto.FLOAT
    w = numpy_helper.from_array(np.arange(12, dtype=np.float32).reshape(4, 3) / 10, "W")
    b = numpy_helper.from_array(np.ones(3, np.float32), "b")
    two = numpy_helper.from_array(np.array(2, np.float32), "two")
    body = helper.make_graph(
        [helper.make_node("Mul", ["acc_in", "two"], ["acc_out"])],
        "body", [helper.make_tensor_value_info("i", TensorProto.INT64, []),
                 helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
                 helper.make_tensor_value_info("acc_in", f32, [2, 4])],
        [helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
         helper.make_tensor_value_info("acc_out", f32, [2, 4])])
    then = helper.make_graph(
        [helper.make_node("Linear", ["y", "W", "b"], ["t"], domain="ember", activation="relu")],
        "then", [], [helper.make_tensor_value_info("t", f32, [2, 3])], [w, b])
    other = helper.make_graph(
        [helper.make_node("Constant", [], ["e"], value=numpy_helper.from_array(np.full((2, 3), -1, np.float32)))],
        "else", [], [helper.make_tensor_value_info("e", f32, [2, 3])])
    graph = helper.make_graph(
        [helper.make_node("Loop", ["n", "", "x"], ["y"], body=body),
         helper.make_node("ReduceSum", ["y"], ["total"], keepdims=0),
         helper.make_node("Greater", ["total", "zero"], ["positive"]),
         helper.make_node("If", ["positive"], ["out"], then_branch=then, else_branch=other)],
        "main", [helper.make_tensor_value_info("x", f32, [2, 4]), helper.make_tensor_value_info("n", TensorProto.INT64, [])],
        [helper.make_tensor_value_info("out", f32, [2, 3])],
        [two, numpy_helper.from_array(np.array(0, np.float32), "zero")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 28), helper.make_opsetid("ember", 1)])


@pytest.mark.parametrize("sign", [1, -1])
def test_subgraphs_are_exported_recursively(sign):
    compiled = ember.compile(_loop_and_if_model())
    graph = compiled.graph
    assert "ember.Linear" in graph.op_histogram()
    feeds = {"x": sign * np.arange(8, dtype=np.float32).reshape(2, 4), "n": np.array(3, np.int64)}
    check_round_trip(graph, feeds)
    check_standard_export(graph, feeds, expected=compiled.run(feeds))


@settings(max_examples=30, deadline=None)
@given(graphs_and_feeds())
def test_random_standard_graphs(case):
    """Graphs of standard ops with a symbolic dim: written as they are, loaded by both."""
    graph, feeds = case
    check_round_trip(graph, feeds)
    check_standard_export(graph, feeds, atol=1e-5)


# -- opsets -------------------------------------------------------------------------------
def test_an_older_opset_through_the_version_converter():
    compiled = ember.compile(_loop_and_if_model())
    model = export_onnx(compiled.graph, standard_ops_only=True, opset=21)
    assert [(o.domain, o.version) for o in model.opset_import] == [("", 21)]
    assert model.ir_version == 10  # opset 21's, which older onnxruntimes read, not the newest opset's
    onnx.checker.check_model(model, full_check=True)
    feeds = {"x": np.ones((2, 4), np.float32), "n": np.array(2, np.int64)}
    np.testing.assert_allclose(run_onnxruntime(model, feeds)["out"], compiled.run(feeds)["out"], atol=1e-5)
    with pytest.raises(UnsupportedError, match="opset 29 is newer"):
        export_onnx(compiled.graph, opset=29)
