"""flush_denormals: subnormal float constants become zeros of their sign, last in O1/O2
(after the fusions that scale weights), subgraphs included; results stay within float
resolution of the unflushed reference."""

import numpy as np
from onnx import TensorProto, helper, numpy_helper

import ember
from ember.passes import flush_denormals
from ember.passes.pipelines import PIPELINES


def _model(w: np.ndarray):
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", w.shape[0]])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [numpy_helper.from_array(w, "w")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_subnormal_weights_are_flushed_and_results_hold():
    rng = np.random.default_rng(0)
    w = rng.standard_normal((64, 32)).astype(np.float32)
    tiny = np.finfo(np.float32).tiny
    w[::3, ::2] = rng.choice([-1, 1], size=w[::3, ::2].shape) * rng.uniform(1e-45, tiny * 0.9, size=w[::3, ::2].shape)
    subnormal = (np.abs(w) < tiny) & (w != 0)
    before = flush_denormals.FLUSHED[0]
    compiled = ember.compile(_model(w))
    assert flush_denormals.FLUSHED[0] - before == int(subnormal.sum()) > 0
    for value in compiled.graph.constants:
        if value.const.dtype == np.float32:
            a = value.const
            assert not ((np.abs(a) < tiny) & (a != 0)).any()
            assert (np.signbit(a[subnormal]) == np.signbit(w[subnormal])).all()  # zeros keep their sign
    x = rng.standard_normal((5, 64)).astype(np.float32)
    np.testing.assert_allclose(compiled.run({"x": x})["y"], x @ w, rtol=1e-5, atol=1e-6)


def test_runs_last_in_the_optimizing_pipelines():
    for level in (1, 2, 3):
        assert PIPELINES[level][-1] == "flush_denormals"
    assert "flush_denormals" not in PIPELINES[0]
