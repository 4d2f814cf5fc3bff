"""Small paths: an extern (a convolution, a GEMM) whose work is known only when it runs
(a symbolic batch or image size) carries generated kernels that compute it instead
where its output is small; the executor chooses per set of input shapes. Each path
matches the reference, and an artifact keeps the choice."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

import ember


def _mtcnn_like(rng) -> bytes:
    """MTCNN's R-Net in small: NHWC input of a symbolic batch, two dense 3x3 convolutions
    (27 and 72 products an output: the first generated at every size, the second on the
    direct kernel at every size), a max pool, a Gemm head and a MatMul + Add head."""
    inits = [numpy_helper.from_array(rng.standard_normal((8, 3, 3, 3)).astype(np.float32) * 0.5, "w0"),
             numpy_helper.from_array(rng.standard_normal(8).astype(np.float32), "b0"),
             numpy_helper.from_array(rng.standard_normal((12, 8, 3, 3)).astype(np.float32) * 0.3, "w1"),
             numpy_helper.from_array(rng.standard_normal((12 * 3 * 3, 16)).astype(np.float32) * 0.2, "w2"),
             numpy_helper.from_array(rng.standard_normal(16).astype(np.float32), "b2"),
             numpy_helper.from_array(rng.standard_normal((16, 4)).astype(np.float32), "w3"),
             numpy_helper.from_array(rng.standard_normal(4).astype(np.float32), "b3"),
             numpy_helper.from_array(np.array([-1, 12 * 3 * 3], np.int64), "flat")]
    nodes = [helper.make_node("Transpose", ["x"], ["xt"], perm=[0, 3, 1, 2]),
             helper.make_node("Conv", ["xt", "w0", "b0"], ["c0"]),
             helper.make_node("Relu", ["c0"], ["r0"]),
             helper.make_node("MaxPool", ["r0"], ["p0"], kernel_shape=[2, 2], strides=[2, 2]),
             helper.make_node("Conv", ["p0", "w1"], ["c1"]),
             helper.make_node("Reshape", ["c1", "flat"], ["f"]),
             helper.make_node("Gemm", ["f", "w2", "b2"], ["g"]),
             helper.make_node("Relu", ["g"], ["h"]),
             helper.make_node("MatMul", ["h", "w3"], ["m"]),
             helper.make_node("Add", ["m", "b3"], ["y"])]
    graph = helper.make_graph(nodes, "rnet", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 12, 12, 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()


def _small_steps(compiled) -> dict[str, int]:
    """extern name -> the most output elements its small path runs at, for each step with one."""
    return {step.name: step.params["small"]["elements"] for kind, _, step in compiled._executor._steps
            if kind == "extern" and "small" in step.params}


@pytest.mark.parametrize("saved", [False, True])
def test_small_paths_run_at_small_sizes_and_the_library_at_large_ones(saved, tmp_path):
    rng = np.random.default_rng(0)
    model = _mtcnn_like(rng)
    compiled = ember.compile(model)
    if saved:
        compiled.save(tmp_path / "m.ember")
        compiled = ember.load(tmp_path / "m.ember")
    small = _small_steps(compiled)
    assert set(small) == {"gemm", "linear"}, small  # the Gemm, the MatMul + Add
    reference = ember.compile(model, opt_level=0, codegen=False)
    executor = compiled._executor
    chosen, calls = {}, {}
    for batch in (1, 2, 300, 1):
        x = rng.standard_normal((batch, 12, 12, 3)).astype(np.float32)
        np.testing.assert_allclose(compiled.run({"x": x})["y"], reference.run({"x": x})["y"], rtol=1e-4, atol=1e-4)
        binding = executor._bindings[((batch, 12, 12, 3),)]
        chosen[batch] = sorted(executor._steps[i][2].name for i in binding.small)
        # consecutive generated steps (segments, small paths) are one call from Python
        calls[batch] = [(code, getattr(fn, "__name__", None) or (step.name if code != 4 else fn[3]))
                        for code, fn, step, *_ in binding.chained]
    assert chosen[1] == chosen[2] == ["gemm", "linear"]  # every small path
    steps = len(executor._steps)
    assert calls[1] == calls[2] == [(4, steps)], calls
    # the 8->12 convolution (72 products an output) runs on ember's direct kernel even at
    # batch 1, as a step form in the chain: its generated kernel took ~4x its time
    chain = executor._bindings[((1, 12, 12, 3),)].chained[0][1][4]
    assert [(code, step.name) for code, _, step, *_ in chain if code != 0] == [(1, "conv")]
    # at 300 the convolution and the Gemm run their externs' kernels, as step forms called
    # from C with the segments and the head's small path around them: still one call
    assert calls[300] == [(4, steps)], calls[300]
    chain = executor._bindings[((300, 12, 12, 3),)].chained[0][1][4]
    assert [(code, step.name) for code, _, step, *_ in chain if code != 0] == [(1, "conv"), (5, "gemm")]
    # 300 x 3 x 3 x 12 outputs x 72 products and 300 x 108 x 16 are past their limits; the
    # 16 -> 4 head's 300 x 16 x 4 is not
    assert chosen[300] == ["linear"]


def test_a_small_path_reads_the_padded_copy_it_makes():
    """A padded convolution's small path (a 1x1 one of 16 channels: the tiled GEMM's work
    beyond small sizes) copies its input zero-padded first (in its own segment): at batch 1
    that copy runs and the result matches; at a large batch only the extern runs."""
    rng = np.random.default_rng(1)
    inits = [numpy_helper.from_array(rng.standard_normal((16, 16, 1, 1)).astype(np.float32) * 0.3, "w")]
    graph = helper.make_graph([helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 16, 10, 10])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()
    compiled = ember.compile(model)
    assert "conv" in _small_steps(compiled)
    reference = ember.compile(model, opt_level=0, codegen=False)
    for batch in (1, 64):
        x = rng.standard_normal((batch, 16, 10, 10)).astype(np.float32)
        np.testing.assert_allclose(compiled.run({"x": x})["y"], reference.run({"x": x})["y"], rtol=1e-4, atol=1e-4)
        ran_small = bool(compiled._executor._bindings[((batch, 16, 10, 10),)].small)
        assert ran_small == (batch == 1)
