"""Winograd F(2x2, 3x3) convolution (cpu_gemm.cpp's `ember_winograd_conv`, runtime/native/gemm.py's
`winograd_conv`): a channels-last 3x3 filter of stride 1 as 16 GEMMs of transformed tiles.
The kernel against torch in float64 on random shapes (odd outputs, whose last tiles stick out
of y; pads; the residual and ReLU; several chunks of tiles; 1-3 threads), and the `conv`
extern's choice in compiled models against onnxruntime."""

import numpy as np
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F
from hypothesis import event, given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

import ember
from ember.runtime import externs
from ember.runtime.native import gemm
from tests.native import install


@pytest.fixture(autouse=True, scope="module")
def _kernel():
    install("gemm")  # the tests here call it directly, not only through programs that name it


def _reference(x, weight, bias, total, pads, relu):
    """The convolution in float64: x [N, H, W, C] channels-last, pads (top, left, bottom, right)."""
    top, left, bottom, right = pads
    xp = np.pad(x.astype(np.float64), ((0, 0), (top, bottom), (left, right), (0, 0)))
    want = F.conv2d(torch.from_numpy(xp).permute(0, 3, 1, 2), torch.from_numpy(weight.astype(np.float64)),
                    torch.from_numpy(bias.astype(np.float64))).permute(0, 2, 3, 1).numpy()
    if total is not None:
        want = want + total
    return np.maximum(want, 0) if relu else want


@st.composite
def convolutions(draw):
    pads = [draw(st.integers(0, 2)) for _ in range(4)]  # top, left, bottom, right
    big = draw(st.booleans())  # more tiles than one chunk holds (512: 2-3 x 40-48 x 40-48), few channels
    h = draw(st.integers(40, 48) if big else st.integers(max(1, 3 - pads[0] - pads[2]), 14))
    w = draw(st.integers(40, 48) if big else st.integers(max(1, 3 - pads[1] - pads[3]), 14))
    channels = st.integers(1, 12) if big else st.one_of(st.sampled_from([8, 16, 64]), st.integers(1, 80))
    return dict(n=draw(st.integers(2, 3) if big else st.integers(1, 2)), h=h, w=w, c=draw(channels), o=draw(channels), pads=pads,
                relu=draw(st.booleans()), residual=draw(st.booleans()), threads=draw(st.sampled_from([1, 2, 3])),
                seed=draw(st.integers(0, 2 ** 32 - 1)))


@settings(max_examples=60, deadline=None)
@given(convolutions())
def test_the_kernel_equals_torch(case):
    rng = np.random.default_rng(case["seed"])
    n, h, w, c, o, pads = (case[k] for k in ("n", "h", "w", "c", "o", "pads"))
    x = rng.standard_normal((n, h, w, c)).astype(np.float32)
    weight = (rng.standard_normal((o, c, 3, 3)) / np.sqrt(9 * c)).astype(np.float32)
    bias = rng.standard_normal(o).astype(np.float32)
    oh, ow = h + pads[0] + pads[2] - 2, w + pads[1] + pads[3] - 2
    total = rng.standard_normal((n, oh, ow, o)).astype(np.float32) if case["residual"] else None
    want = _reference(x, weight, bias, total, pads, case["relu"])
    y = np.full(want.shape, np.nan, np.float32)
    before = gemm.WINOGRAD_RUNS[0]
    gemm.winograd_conv(x, gemm.winograd_pack(weight), bias, total, y, x.shape, o, (pads[0], pads[1]), (oh, ow),
                       "relu" if case["relu"] else "", case["threads"])
    assert gemm.WINOGRAD_RUNS[0] == before + 1
    np.testing.assert_allclose(y, want, rtol=1e-4, atol=1e-4)
    tiles = n * -(-oh // 2) * -(-ow // 2)
    event("odd output: its last tiles stick out of y" if oh % 2 or ow % 2 else "even output")
    event("more than one chunk of tiles" if tiles > 512 else "one chunk of tiles")
    event(f"relu {case['relu']}, residual {case['residual']}")
    event("zero pads" if any(pads) else "no pads")
    event("channels past the last vector" if o % (gemm.panel_width() // 2) else "channels in whole vectors")


def test_the_kernel_without_a_bias_and_in_place():
    """No bias (the kernel adds zeros), and y the residual's own buffer (the ResNet block's
    sum accumulated in place): each output read, then written, once."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((1, 9, 7, 64)).astype(np.float32)
    weight = (rng.standard_normal((72, 64, 3, 3)) / 24).astype(np.float32)
    total = rng.standard_normal((1, 9, 7, 72)).astype(np.float32)
    want = _reference(x, weight, np.zeros(72, np.float32), total, (1, 1, 1, 1), True)
    gemm.winograd_conv(x, gemm.winograd_pack(weight), None, total, total, x.shape, 72, (1, 1), (9, 7), "relu", 2)
    np.testing.assert_allclose(total, want, rtol=1e-4, atol=1e-4)


def _model(c: int, o: int, shape: list, relu: bool, residual: bool):
    """Conv 3x3 (pads 1) (+ a residual Add) (+ Relu) over input `shape` (NCHW; names for symbolic dims)."""
    rng = np.random.default_rng(5)
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1])]
    last, inputs = "c", [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)]
    if residual:
        nodes.append(helper.make_node("Add", ["c", "r"], ["s"]))
        inputs.append(helper.make_tensor_value_info("r", TensorProto.FLOAT, [shape[0], o, *shape[2:]]))
        last = "s"
    nodes.append(helper.make_node("Relu" if relu else "Identity", [last], ["y"]))
    graph = helper.make_graph(
        nodes, "conv", inputs, [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array((rng.standard_normal((o, c, 3, 3)) / np.sqrt(9 * c)).astype(np.float32), "w"),
         numpy_helper.from_array(rng.standard_normal(o).astype(np.float32), "b")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def _check(model, sizes, winograd: bool, residual: bool, o: int):
    compiled = ember.compile(model)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(6)
    c = model.graph.initializer[0].dims[1]
    for n, h, w in sizes:
        feeds = {"x": rng.standard_normal((n, c, h, w)).astype(np.float32)}
        if residual:
            feeds["r"] = rng.standard_normal((n, o, h, w)).astype(np.float32)
        wino, direct = gemm.WINOGRAD_RUNS[0], gemm.CONV_RUNS[0]
        got = compiled.run(feeds)["y"]
        assert (gemm.WINOGRAD_RUNS[0] - wino, gemm.CONV_RUNS[0] - direct) == ((1, 0) if winograd else (0, 1))
        np.testing.assert_allclose(got, session.run(None, feeds)[0], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("relu, residual", [(True, True), (False, False)])
def test_a_resnet_block_convolution_runs_as_winograd(relu, residual):
    """A static 64 -> 96 channel 3x3 convolution over 20 x 18 (90 tiles), the ReLU and the
    residual in its epilogue, as onnxruntime computes it."""
    _check(_model(64, 96, [1, 64, 20, 18], relu, residual), [(1, 20, 18)], True, residual, 96)


def test_symbolic_sizes_run_as_winograd():
    _check(_model(64, 64, ["n", 64, "h", "w"], True, True), [(1, 24, 40), (2, 33, 20), (1, 5, 3)], True, True, 64)


@pytest.mark.parametrize("c, o, shape", [(32, 64, [1, 32, 16, 16]),   # too few input channels
                                         (64, 64, [1, 64, 4, 4])])    # too few tiles (4)
def test_what_stays_on_the_direct_kernel(c, o, shape):
    assert externs.WINOGRAD_MIN_CHANNELS > 32 and externs.WINOGRAD_MIN_TILES > 4
    _check(_model(c, o, shape, True, False), [tuple(shape[:1] + shape[2:])], False, False, o)


def test_an_artifact_runs_it(tmp_path):
    """A saved and loaded model runs the same kernel and gives the same outputs."""
    model = _model(64, 64, ["n", 64, "h", "w"], True, False)
    compiled = ember.compile(model)
    feeds = {"x": np.random.default_rng(8).standard_normal((1, 64, 20, 18)).astype(np.float32)}
    want = compiled.run(feeds)["y"]
    compiled.save(tmp_path / "conv.ember")
    loaded = ember.load(tmp_path / "conv.ember")
    before = gemm.WINOGRAD_RUNS[0]
    np.testing.assert_array_equal(loaded.run(feeds)["y"], want)
    assert gemm.WINOGRAD_RUNS[0] == before + 1
