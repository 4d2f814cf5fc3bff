"""ember's direct channels-last convolution (cpu_gemm.cpp's `ember_conv`, runtime/native/gemm.py's
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
from ember.codegen import cpu
from ember.runtime.native import gemm
from tests.native import install

pytestmark = pytest.mark.skipif(cpu.compiler() is None, reason="no C++ compiler on this machine")

_ACTIVATIONS = {"": lambda t: t, "relu": torch.relu, "gelu": F.gelu, "silu": F.silu,
                "gelu_tanh": lambda t: F.gelu(t, approximate="tanh")}

@pytest.fixture(autouse=True, scope="module")
def _kernel():
    install("gemm")  # the tests here call it directly, not only through programs that name it



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
    xp = np.pad(x, ((0, 0), (top, bottom), (left, right), (0, 0)))
    want = F.conv2d(torch.from_numpy(xp).permute(0, 3, 1, 2), torch.from_numpy(weight), torch.from_numpy(bias),
                    stride=case["strides"], dilation=case["dilations"]).permute(0, 2, 3, 1)
    total = rng.standard_normal(tuple(want.shape)).astype(np.float32) if case["residual"] else None
    if total is not None:
        want = want + torch.from_numpy(total)
    want = _ACTIVATIONS[case["activation"]](want).numpy()
    y = np.full(want.shape, np.nan, np.float32)
    before = gemm.CONV_RUNS[0]
    gemm.conv(x, gemm.conv_pack(weight), bias, total, y, x.shape, o, case["kernel"], case["strides"],
              case["dilations"], (top, left), want.shape[1:3], case["activation"], 2)
    assert gemm.CONV_RUNS[0] == before + 1
    np.testing.assert_allclose(y, want, rtol=1e-4, atol=1e-4)
    event(f"activation {case['activation'] or 'none'}, residual {case['residual']}")
    event("window rows merged (no dilation along W)" if case["dilations"][1] == 1 else "tap by tap")
    event("zero pads (blocks at the border read zeros)" if any(case["pads"]) else "no pads")
    # the kernel's blocks: MR consecutive positions of the N x OH x OW output, as even as they come
    positions, ow, mr = n * want.shape[1] * want.shape[2], want.shape[2], gemm.block_rows()
    tiles = -(-positions // mr)
    spans = any((positions * i // tiles) // ow != (positions * (i + 1) // tiles - 1) // ow for i in range(tiles))
    event("a block spans output rows" if spans else "every block within one output row")
    event(f"{-(-o // gemm.panel_width())} panel(s) of output channels")
    if o % gemm.panel_width() and o % gemm.panel_width() <= gemm.panel_width() // 2:
        event("a last panel of at most half its columns (one vector of them)")


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


def test_every_size_runs_on_the_direct_kernel_and_its_filter_is_packed_once():
    """oneDNN packs a filter for one input size (a stand-in where sizes are symbolic); the
    direct kernel runs every size, that one too, and a static input's, at oneDNN's speed or
    better: its filter is packed for it alone (no oneDNN copy beside it). As onnxruntime
    computes them."""
    for static in (False, True):
        model = _model((3, 3), [1, 1, 1, 1], [1, 1], [1, 1], True, False)
        if static:
            dims = model.graph.input[0].type.tensor_type.shape.dim
            for d, size in zip(dims, (1, 24, 20, 30)):
                d.dim_value = size
        compiled = ember.compile(model)
        (step,) = [s for kind, _, s in compiled._executor._steps if kind == "extern" and s.name == "conv"]
        assert "direct" in step.params and "packed" not in step.params
        n, c, h, w = step.params["input_shape"]
        session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
        rng = np.random.default_rng(8)
        for size in ((n, c, h, w),) if static else ((n, c, h, w), (n, c, h + 3, w)):
            feeds = {"x": rng.standard_normal(size).astype(np.float32)}
            before = gemm.CONV_RUNS[0]
            got = compiled.run(feeds)["y"]
            assert gemm.CONV_RUNS[0] == before + 1
            np.testing.assert_allclose(got, session.run(None, feeds)[0], rtol=1e-4, atol=1e-4)


def test_a_strided_pointwise_convolution_runs_on_the_direct_kernel():
    """A 1x1 filter of stride 2 (ResNet's downsampling shortcut; of more work than the
    generated small path takes) is no GEMM over the rows as they lie: it runs on the direct
    kernel, a position every second input along W."""
    rng = np.random.default_rng(9)
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["y"], strides=[2, 2])], "pw",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64, 56, 56])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array((rng.standard_normal((128, 64, 1, 1)) * 0.1).astype(np.float32), "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    compiled = ember.compile(model)
    feeds = {"x": rng.standard_normal((1, 64, 56, 56)).astype(np.float32)}
    before = gemm.CONV_RUNS[0]
    got = compiled.run(feeds)["y"]
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(got, session.run(None, feeds)[0], rtol=1e-4, atol=1e-4)
    assert gemm.CONV_RUNS[0] == before + 1


def test_both_loop_orders_of_the_kernel():
    """A thread runs each block of positions across all its panels of weights where they
    fit PANELS_BYTES (256 KiB) together, else one panel at a time across its blocks: filters
    on both sides of that, against torch."""
    rng = np.random.default_rng(10)
    nr = gemm.panel_width()
    for c, o in ((32, 32), (96, 256)):  # 3x3: 32 x 9 x NR floats a panel, one or two; 96 x 9 x NR, 16 or 8
        x = rng.standard_normal((2, 9, 11, c)).astype(np.float32)
        weight = (rng.standard_normal((o, c, 3, 3)) * 0.1).astype(np.float32)
        want = F.conv2d(torch.from_numpy(x).permute(0, 3, 1, 2), torch.from_numpy(weight), padding=1)
        want = want.permute(0, 2, 3, 1).numpy()
        y = np.empty(want.shape, np.float32)
        gemm.conv(x, gemm.conv_pack(weight), None, None, y, x.shape, o, (3, 3), (1, 1), (1, 1), (1, 1),
                  want.shape[1:3], "", 2)
        np.testing.assert_allclose(y, want, rtol=1e-4, atol=1e-4)
        per_thread = -(-o // nr) * 9 * c * nr * 4  # bytes of a thread's panels (the blocks split: all of them)
        assert (per_thread > 2 ** 18) == (c == 96), per_thread
