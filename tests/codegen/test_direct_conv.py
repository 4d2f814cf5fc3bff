"""ember's direct channels-last convolution (cpu_gemm.cpp's `ember_conv`, codegen/gemm.py's
`conv`): MR output positions x NR output channels a block, its accumulators in registers
across every tap and channel, the bias, residual and activation in the epilogue. The
`conv` extern runs it for a filter whose input size is symbolic (runtime/externs.py,
`_direct_weight`) at sizes other than oneDNN's stand-in: against torch on random shapes,
and in compiled models against onnxruntime at sizes the compile did not see."""

import numpy as np
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F
from hypothesis import event, given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

import ember
from ember.codegen import cpu, gemm

pytestmark = pytest.mark.skipif(cpu.compiler() is None, reason="no C++ compiler on this machine")

_ACTIVATIONS = {"": lambda t: t, "relu": torch.relu, "gelu": F.gelu, "silu": F.silu,
                "gelu_tanh": lambda t: F.gelu(t, approximate="tanh")}


@st.composite
def convolutions(draw):
    kh, kw = draw(st.integers(1, 4)), draw(st.integers(1, 5))
    sh, sw, dh, dw = (draw(st.integers(1, 2)) for _ in range(4))
    pads = [draw(st.integers(0, 2)) for _ in range(4)]  # top, left, bottom, right
    h = draw(st.integers((kh - 1) * dh + 1, 12))
    w = draw(st.integers((kw - 1) * dw + 1, 20))
    return dict(n=draw(st.integers(1, 3)), h=h, w=w, c=draw(st.integers(1, 40)), o=draw(st.integers(1, 70)),
                kernel=(kh, kw), strides=(sh, sw), dilations=(dh, dw), pads=pads,
                activation=draw(st.sampled_from(sorted(_ACTIVATIONS))), residual=draw(st.booleans()),
                seed=draw(st.integers(0, 2 ** 32 - 1)))


@settings(max_examples=80, deadline=None)
@given(convolutions())
def test_the_kernel_equals_torch(case):
    rng = np.random.default_rng(case["seed"])
    n, h, w, c, o = (case[k] for k in "nhwco")
    (kh, kw), (top, left, bottom, right) = case["kernel"], case["pads"]
    x = rng.standard_normal((n, h, w, c)).astype(np.float32)
    weight = (rng.standard_normal((o, c, kh, kw)) * 0.2).astype(np.float32)
    bias = rng.standard_normal(o).astype(np.float32)
    xp = np.ascontiguousarray(np.pad(x, ((0, 0), (top, bottom), (left, right), (0, 0))))
    want = F.conv2d(torch.from_numpy(xp).permute(0, 3, 1, 2), torch.from_numpy(weight), torch.from_numpy(bias),
                    stride=case["strides"], dilation=case["dilations"]).permute(0, 2, 3, 1)
    total = rng.standard_normal(tuple(want.shape)).astype(np.float32) if case["residual"] else None
    if total is not None:
        want = want + torch.from_numpy(total)
    want = _ACTIVATIONS[case["activation"]](want).numpy()
    y = np.full(want.shape, np.nan, np.float32)
    before = gemm.CONV_RUNS[0]
    gemm.conv(xp, gemm.conv_pack(weight), bias, total, y, xp.shape, o, case["kernel"], case["strides"],
              case["dilations"], want.shape[1:3], case["activation"], 2)
    assert gemm.CONV_RUNS[0] == before + 1
    np.testing.assert_allclose(y, want, rtol=1e-4, atol=1e-4)
    event(f"activation {case['activation'] or 'none'}, residual {case['residual']}")
    event("window rows merged (no dilation along W)" if case["dilations"][1] == 1 else "tap by tap")
    event(f"{-(-o // gemm.panel_width())} panel(s) of output channels")


def _model(kernel, pads, strides, dilations, relu: bool, residual: bool):
    """Conv (+ a residual Add) (+ Relu) over an input whose height and width are symbolic."""
    rng = np.random.default_rng(5)
    c, o = 24, 40
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=pads, strides=strides, dilations=dilations)]
    last, inputs = "c", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", c, "h", "w"])]
    if residual:
        nodes.append(helper.make_node("Add", ["c", "r"], ["s"]))
        inputs.append(helper.make_tensor_value_info("r", TensorProto.FLOAT, ["n", o, "oh", "ow"]))
        last = "s"
    nodes.append(helper.make_node("Relu" if relu else "Identity", [last], ["y"]))
    graph = helper.make_graph(
        nodes, "conv", inputs, [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array((rng.standard_normal((o, c, *kernel)) * 0.1).astype(np.float32), "w"),
         numpy_helper.from_array(rng.standard_normal(o).astype(np.float32), "b")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


@pytest.mark.parametrize("kernel, pads, strides, dilations, relu, residual", [
    ((3, 3), [1, 1, 1, 1], [1, 1], [1, 1], True, False),
    ((1, 7), [0, 3, 0, 3], [1, 1], [1, 1], False, True),
    ((3, 1), [1, 0, 1, 0], [2, 1], [1, 1], True, True),
    ((3, 3), [2, 2, 2, 2], [1, 2], [2, 2], False, False),
])
def test_a_convolution_of_symbolic_size_runs_on_the_direct_kernel(kernel, pads, strides, dilations, relu, residual):
    """Its filter is packed once; every image size the model sees (of more work than the
    generated small path takes) runs on the direct kernel, not on oneDNN's kernel packed for
    a stand-in size, as onnxruntime computes it."""
    model = _model(kernel, pads, strides, dilations, relu, residual)
    compiled = ember.compile(model)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(6)
    for n, h, w in ((1, 24, 40), (2, 33, 20), (1, 48, 57)):  # past the generated small path's 2^20 MACs
        feeds = {"x": rng.standard_normal((n, 24, h, w)).astype(np.float32)}
        if residual:
            oh = (h + pads[0] + pads[2] - dilations[0] * (kernel[0] - 1) - 1) // strides[0] + 1
            ow = (w + pads[1] + pads[3] - dilations[1] * (kernel[1] - 1) - 1) // strides[1] + 1
            feeds["r"] = rng.standard_normal((n, 40, oh, ow)).astype(np.float32)
        before = gemm.CONV_RUNS[0]
        got = compiled.run(feeds)["y"]
        assert gemm.CONV_RUNS[0] == before + 1, "the convolution did not run on the direct kernel"
        np.testing.assert_allclose(got, session.run(None, feeds)[0], rtol=1e-4, atol=1e-4)


def test_a_call_at_onednns_stand_in_size_stays_on_onednn():
    """oneDNN's filter is packed for a stand-in size (batch 1, a typical image size where
    they are symbolic): a call of that very size runs on it, packed for it; others on the
    direct kernel. Both as onnxruntime computes them."""
    from ember.runtime import externs

    model = _model((3, 3), [1, 1, 1, 1], [1, 1], [1, 1], True, False)
    compiled = ember.compile(model)
    (step,) = [s for kind, _, s in compiled._executor._steps if kind == "extern" and s.name == "conv"]
    assert "direct" in step.params and ("packed" in step.params) == externs._onednn()
    n, c, h, w = step.params["input_shape"]
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(8)
    for size, direct in (((n, c, h, w), not externs._onednn()), ((n, c, h + 3, w), True)):
        feeds = {"x": rng.standard_normal(size).astype(np.float32)}
        before = gemm.CONV_RUNS[0]
        got = compiled.run(feeds)["y"]
        assert gemm.CONV_RUNS[0] == before + direct
        np.testing.assert_allclose(got, session.run(None, feeds)[0], rtol=1e-4, atol=1e-4)
