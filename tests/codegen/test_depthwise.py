"""The channels-last depthwise convolution (cpu_gemm.cpp's `ember_depthwise`, runtime/native/
gemm.py's `depthwise`) and the HardSwish epilogue it shares with the tiled kernels: the kernel
against torch in float64 on random shapes (channels past the last vector, windows past the
border on every side, strides, dilations, uneven pads, the residual and each activation, 1-3
threads), and compiled models against onnxruntime (PP-LCNet's depthwise + BatchNorm +
HardSwish blocks, HardSwish fused into every convolution path)."""

import numpy as np
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F
from hypothesis import event, given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

import ember
from ember.runtime.native import gemm
from tests.native import activation_reference, install

@pytest.fixture(autouse=True, scope="module")
def _kernel():
    install("gemm")  # the tests here call it directly, not only through programs that name it


@st.composite
def convolutions(draw):
    kh, kw = draw(st.integers(1, 5)), draw(st.integers(1, 5))
    sh, sw, dh, dw = (draw(st.integers(1, 2)) for _ in range(4))
    pads = [draw(st.integers(0, 2)) for _ in range(4)]  # top, left, bottom, right
    h = draw(st.integers(max(1, (kh - 1) * dh + 1 - pads[0] - pads[2]), 14))
    w = draw(st.integers(max(1, (kw - 1) * dw + 1 - pads[1] - pads[3]), 20))
    return dict(n=draw(st.integers(1, 2)), h=h, w=w, c=draw(st.sampled_from([1, 5, 8, 16, 21, 40])), kernel=(kh, kw),
                strides=(sh, sw), dilations=(dh, dw), pads=pads, activation=draw(st.sampled_from(sorted(gemm.ACTIVATIONS))),
                bias=draw(st.booleans()), residual=draw(st.booleans()), threads=draw(st.sampled_from([1, 2, 3])),
                seed=draw(st.integers(0, 2**32 - 1)))


@settings(max_examples=80, deadline=None)
@given(convolutions())
def test_the_kernel_equals_torch(case):
    rng = np.random.default_rng(case["seed"])
    n, h, w, c, (kh, kw), pads = (case[k] for k in ("n", "h", "w", "c", "kernel", "pads"))
    x = rng.standard_normal((n, h, w, c)).astype(np.float32)
    weight = (rng.standard_normal((c, 1, kh, kw)) / np.sqrt(kh * kw)).astype(np.float32)
    bias = rng.standard_normal(c).astype(np.float32) if case["bias"] else None
    top, left, bottom, right = pads
    xp = np.pad(x.astype(np.float64), ((0, 0), (top, bottom), (left, right), (0, 0)))
    want = F.conv2d(torch.from_numpy(xp).permute(0, 3, 1, 2), torch.from_numpy(weight.astype(np.float64)),
                    None if bias is None else torch.from_numpy(bias.astype(np.float64)), stride=case["strides"],
                    dilation=case["dilations"], groups=c).permute(0, 2, 3, 1).numpy()
    oh, ow = want.shape[1:3]
    total = rng.standard_normal(want.shape).astype(np.float32) if case["residual"] else None
    if total is not None:
        want = want + total
    want = activation_reference(case["activation"], want)
    y = np.full(want.shape, np.nan, np.float32)
    before = gemm.DEPTHWISE_RUNS[0]
    gemm.depthwise(x, gemm.depthwise_pack(weight), bias, total, y, x.shape, (kh, kw), case["strides"],
                   case["dilations"], (top, left), (oh, ow), case["activation"], case["threads"])
    assert gemm.DEPTHWISE_RUNS[0] == before + 1
    np.testing.assert_allclose(y, want, rtol=1e-5, atol=1e-5)
    vw = gemm.panel_width() // 2
    event("a block of two vectors" if c >= 2 * vw else "no block of two vectors")
    event("channels past the last vector" if c % vw else "channels in whole vectors")
    # the positions with every tap inside the row along W, 4 at a time (`DW_POSITIONS`)
    sw, dw = case["strides"][1], case["dilations"][1]
    inside = sum(1 for o in range(ow) if o * sw - left >= 0 and o * sw + (kw - 1) * dw - left < w)
    event("a block of 4 positions inside the row" if inside >= 4 else "positions one at a time")
    event(f"activation {case['activation'] or 'none'}")


def _pp_lcnet_block(c: int, o: int, kernel: int, stride: int, seed: int, residual: bool) -> bytes:
    """PP-LCNet's block: depthwise k x k + BatchNorm + HardSwish, then 1x1 + BatchNorm +
    HardSwish (+ the block's input: a residual, where the shapes allow)."""
    rng = np.random.default_rng(seed)
    pad = kernel // 2

    def bn(name, channels):
        return [numpy_helper.from_array(rng.uniform(0.5, 1.5, channels).astype(np.float32), f"{name}_s"),
                numpy_helper.from_array(rng.standard_normal(channels).astype(np.float32) * 0.1, f"{name}_b"),
                numpy_helper.from_array(rng.standard_normal(channels).astype(np.float32) * 0.1, f"{name}_m"),
                numpy_helper.from_array(rng.uniform(0.5, 1.5, channels).astype(np.float32), f"{name}_v")]

    nodes = [helper.make_node("Conv", ["x", "dw"], ["d"], group=c, kernel_shape=[kernel, kernel],
                              strides=[stride, stride], pads=[pad] * 4),
             helper.make_node("BatchNormalization", ["d", "bn1_s", "bn1_b", "bn1_m", "bn1_v"], ["dn"]),
             helper.make_node("HardSwish", ["dn"], ["dh"]),
             helper.make_node("Conv", ["dh", "pw"], ["p"]),
             helper.make_node("BatchNormalization", ["p", "bn2_s", "bn2_b", "bn2_m", "bn2_v"], ["pn"]),
             helper.make_node("HardSwish", ["pn"], ["y" if not residual else "ph"])]
    if residual:
        nodes.append(helper.make_node("Add", ["ph", "x"], ["y"]))
    inits = [numpy_helper.from_array((rng.standard_normal((c, 1, kernel, kernel)) / kernel).astype(np.float32), "dw"),
             numpy_helper.from_array((rng.standard_normal((o, c, 1, 1)) / np.sqrt(c)).astype(np.float32), "pw"),
             *bn("bn1", c), *bn("bn2", o)]
    graph = helper.make_graph(nodes, "block", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", c, "h", "w"])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()


@pytest.mark.parametrize("c, o, kernel, stride", [(16, 32, 3, 1), (32, 32, 3, 2), (24, 48, 5, 1), (64, 64, 5, 2),
                                                  (8, 16, 3, 1)])  # (8 channels: a generated kernel's)
def test_pp_lcnet_blocks_equal_onnxruntime(c, o, kernel, stride):
    from ember.ir.ops.nn import _DEPTHWISE_MIN_CHANNELS

    model = _pp_lcnet_block(c, o, kernel, stride, seed=c + kernel, residual=c == o and stride == 1)
    compiled = ember.compile(model)
    assert compiled.stats.fallback_nodes == []
    convs = [n for n in compiled.graph.nodes if n.op == "ember.Conv"]
    assert [n.attrs.get("activation") for n in convs] == ["hardswish", "hardswish"], compiled.graph
    session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    for shape in [(1, c, 23, 17), (2, c, 9, 30)]:  # sizes of one Program
        x = np.random.default_rng(sum(shape)).standard_normal(shape).astype(np.float32)
        before = gemm.DEPTHWISE_RUNS[0]
        got = compiled.run({"x": x})["y"]
        assert gemm.DEPTHWISE_RUNS[0] == before + (c >= _DEPTHWISE_MIN_CHANNELS)
        np.testing.assert_allclose(got, session.run(None, {"x": x})[0], rtol=1e-4, atol=1e-4)


def _conv_hardswish(c: int, o: int, kernel: int, group: int) -> bytes:
    rng = np.random.default_rng(c * o + kernel)
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], group=group, kernel_shape=[kernel, kernel],
                              pads=[kernel // 2] * 4),
             helper.make_node("HardSwish", ["c"], ["y"])]
    inits = [numpy_helper.from_array(rng.standard_normal((o, c // group, kernel, kernel)).astype(np.float32) * 0.3, "w"),
             numpy_helper.from_array(rng.standard_normal(o).astype(np.float32), "b")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", c, 20, 20])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()


@pytest.mark.parametrize("c, o, kernel, group", [
    (32, 48, 1, 1),  # the tiled GEMM's epilogue
    (24, 40, 3, 1),  # the direct convolution's
    (64, 64, 3, 1),  # Winograd's epilogue has no HardSwish: the direct convolution
    (32, 32, 3, 32),  # the depthwise kernel's
    (32, 48, 3, 4),  # grouped: oneDNN's (its post-op) or torch's
    (3, 8, 3, 1),  # few input channels: a generated kernel's
])
def test_hardswish_fuses_into_every_convolution_path(c, o, kernel, group):
    model = _conv_hardswish(c, o, kernel, group)
    compiled = ember.compile(model)
    assert compiled.stats.fallback_nodes == []
    assert [n.attrs.get("activation") for n in compiled.graph.nodes if n.op == "ember.Conv"] == ["hardswish"]
    assert "HardSwish" not in {n.op for n in compiled.graph.nodes}
    session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    for batch in (1, 3):
        x = np.random.default_rng(batch).standard_normal((batch, c, 20, 20)).astype(np.float32)
        np.testing.assert_allclose(compiled.run({"x": x})["y"], session.run(None, {"x": x})[0], rtol=1e-4, atol=1e-4)
    reference = ember.compile(model, codegen=False)  # ember.Conv's numpy reference, HardSwish and all
    assert [n.attrs.get("activation") for n in reference.graph.nodes if n.op == "ember.Conv"] == ["hardswish"]
    np.testing.assert_allclose(compiled.run({"x": x})["y"], reference.run({"x": x})["y"], rtol=1e-4, atol=1e-4)
