"""Convolutions, pools, ConvTranspose and Resize whose height and width are runtime sizes
(an input declared [n, c, "h", "w"]) keep their kernels: one compiled model, no fallback
node, onnxruntime's outputs at several image sizes, H != W included."""

import numpy as np
import onnx
import onnxruntime
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

import ember

SETTINGS = settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])
SIZES = [(1, 13, 17), (2, 24, 9)]  # (batch, h, w): odd, even, h != w


def _model(nodes, channels, out_name="y", initializers=(), extra_inputs=()):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", channels, "h", "w"])
    y = helper.make_tensor_value_info(out_name, TensorProto.FLOAT, None)
    graph = helper.make_graph(nodes, "g", [x, *extra_inputs], [y], initializer=list(initializers))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    return model.SerializeToString()


def _check(model: bytes, channels: int, feeds_extra=lambda n, h, w: {}):
    compiled = ember.compile(model)
    assert compiled.stats.fallback_nodes == [], compiled.stats.fallback_nodes
    sess = onnxruntime.InferenceSession(model, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    for n, h, w in SIZES:
        feeds = {"x": rng.standard_normal((n, channels, h, w)).astype(np.float32), **feeds_extra(n, h, w)}
        (expected,) = sess.run(None, feeds)
        got = compiled.run(feeds)["y"]
        assert got.shape == expected.shape, (n, h, w)
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)
    return compiled


def _window(data, spatial_min=9):
    kernel = [data.draw(st.integers(1, 3)) for _ in range(2)]
    strides = [data.draw(st.integers(1, 2)) for _ in range(2)]
    dilations = [data.draw(st.integers(1, 2)) for _ in range(2)]
    pads = [data.draw(st.integers(0, k - 1)) for k in kernel * 2]
    return kernel, strides, dilations, pads


@SETTINGS
@given(data=st.data(), group=st.sampled_from([1, 2, 4]), relu=st.booleans(),
       auto_pad=st.sampled_from(["NOTSET", "NOTSET", "VALID", "SAME_UPPER"]))
def test_conv(data, group, relu, auto_pad):
    kernel, strides, dilations, pads = _window(data)
    if auto_pad == "SAME_UPPER":  # (SAME at stride 2: tested below; onnxruntime has no dilated SAME)
        strides, dilations = [1, 1], [1, 1]
    channels = 4
    w = np.random.default_rng(1).standard_normal((8, channels // group, *kernel)).astype(np.float32)
    attrs = {"kernel_shape": kernel, "strides": strides, "dilations": dilations, "group": group}
    attrs.update({"pads": pads} if auto_pad == "NOTSET" else {"auto_pad": auto_pad})
    nodes = [helper.make_node("Conv", ["x", "w"], ["c" if relu else "y"], **attrs)]
    if relu:  # an epilogue ember fuses into the convolution
        nodes.append(helper.make_node("Relu", ["c"], ["y"]))
    event(f"conv stride {strides}, {auto_pad}")
    _check(_model(nodes, channels, initializers=[numpy_helper.from_array(w, "w")]), channels)


@pytest.mark.parametrize("op", ["Conv", "MaxPool"])
@pytest.mark.parametrize("auto_pad", ["SAME_UPPER", "SAME_LOWER"])
def test_same_padding_at_stride_two_pads_by_the_size_it_runs_at(op, auto_pad):
    """tf2onnx's SAME at stride 2: the total padding depends on the size (odd or even), so
    the kernel computes it each run, asymmetric where the total is odd."""
    attrs = {"kernel_shape": [3, 3], "strides": [2, 2], "auto_pad": auto_pad}
    if op == "Conv":
        w = np.random.default_rng(3).standard_normal((4, 2, 3, 3)).astype(np.float32)
        model = _model([helper.make_node("Conv", ["x", "w"], ["y"], **attrs)], 2,
                       initializers=[numpy_helper.from_array(w, "w")])
    else:
        model = _model([helper.make_node("MaxPool", ["x"], ["y"], **attrs)], 2)
    compiled = _check(model, 2)
    assert [str(d) for d in compiled.graph.outputs[0].type.shape[2:]] == ["ceiling(h/2)", "ceiling(w/2)"]


@SETTINGS
@given(data=st.data(), op=st.sampled_from(["MaxPool", "AveragePool"]), ceil=st.booleans())
def test_pools(data, op, ceil):
    kernel, strides, _, pads = _window(data)
    kernel = [k + 1 for k in kernel]  # 2..4
    pads = [min(p, k // 2) for p, k in zip(pads, kernel * 2)]
    attrs = {"kernel_shape": kernel, "strides": strides, "pads": pads, "ceil_mode": int(ceil)}
    if op == "AveragePool":
        attrs["count_include_pad"] = 1
    event(f"{op} ceil_mode={int(ceil)}")
    _check(_model([helper.make_node(op, ["x"], ["y"], **attrs)], 3), 3)


@SETTINGS
@given(data=st.data(), output_padding=st.integers(0, 1))
def test_conv_transpose(data, output_padding):
    kernel = [data.draw(st.integers(2, 3)) for _ in range(2)]
    strides = [data.draw(st.integers(1, 2)) for _ in range(2)]
    pads = [data.draw(st.integers(0, k - 1)) for k in kernel * 2]
    output_padding = [min(output_padding, s - 1) for s in strides]
    w = np.random.default_rng(2).standard_normal((4, 3, *kernel)).astype(np.float32)
    node = helper.make_node("ConvTranspose", ["x", "w"], ["y"], kernel_shape=kernel, strides=strides, pads=pads,
                            output_padding=output_padding)
    event(f"conv_transpose stride {strides}")
    _check(_model([node], 4, initializers=[numpy_helper.from_array(w, "w")]), 4)


@pytest.mark.parametrize("kernel", [(2, 2), (3, 2)])
def test_a_conv_transpose_of_non_overlapping_windows_at_runtime_sizes(kernel):
    """Kernel = stride (PP-OCRv6's DB head upsampling): the pixels' GEMM runs generated at
    small sizes and on the tiled kernel beyond, at any row count (24 input channels: rows
    of few floats, `TILED_K`), the blocks gathered into y with the bias, at every size."""
    from ember.runtime.native import gemm

    rng = np.random.default_rng(3)
    w = rng.standard_normal((24, 5, *kernel)).astype(np.float32)
    b = rng.standard_normal(5).astype(np.float32)
    node = helper.make_node("ConvTranspose", ["x", "w", "b"], ["y"], kernel_shape=list(kernel), strides=list(kernel))
    model = _model([node], 24, initializers=[numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")])
    compiled = _check(model, 24)  # small images: the GEMM's generated small path
    steps = compiled.program.steps
    assert [s.name for s in steps if s.kind == "extern"] == ["linear"], [s.name for s in steps]
    x = rng.standard_normal((1, 24, 40, 80)).astype(np.float32)  # 3200 rows: the extern's tiled GEMM
    before = gemm.RUNS[0]
    got = compiled.run({"x": x})["y"]
    assert gemm.RUNS[0] == before + 1
    (want,) = onnxruntime.InferenceSession(model, providers=["CPUExecutionProvider"]).run(None, {"x": x})
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("mode,scale", [("nearest", 2.0), ("linear", 2.0), ("linear", 0.5), ("nearest", 3.0)])
def test_resize_by_scales(mode, scale):
    scales = numpy_helper.from_array(np.array([1, 1, scale, scale], np.float32), "scales")
    node = helper.make_node("Resize", ["x", "", "scales"], ["y"], mode=mode)
    compiled = _check(_model([node], 3, initializers=[scales]), 3)
    assert str(compiled.graph.outputs[0].type.shape[2]) in ("floor(h/2)", f"{int(scale)}*h")


def test_resize_to_another_feature_maps_size():
    """An FPN's top-down path: a coarse map resized to the fine map's Shape."""
    fine = helper.make_tensor_value_info("fine", TensorProto.FLOAT, ["n", 3, "H", "W"])
    nodes = [
        helper.make_node("Shape", ["fine"], ["fine_shape"]),
        helper.make_node("Resize", ["x", "", "", "fine_shape"], ["up"], mode="nearest"),
        helper.make_node("Add", ["up", "fine"], ["y"]),
    ]
    model = _model(nodes, 3, extra_inputs=[fine])
    compiled = _check(model, 3, feeds_extra=lambda n, h, w: {
        "fine": np.ones((n, 3, 2 * h, 2 * w), np.float32)})
    assert [str(d) for d in compiled.graph.outputs[0].type.shape] == ["n", "3", "H", "W"]


def test_a_small_detector_keeps_every_kernel():
    """Conv + BatchNorm + ReLU, a depthwise conv with HardSwish, Sigmoid, a pool, a
    nearest upsample and a ConvTranspose, exported by torch with batch, height and width
    dynamic: every node on a kernel (on the reference each was 25-120x slower)."""
    import io

    import torch

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.c1, self.bn = torch.nn.Conv2d(3, 16, 3, padding=1), torch.nn.BatchNorm2d(16)
            self.dw = torch.nn.Conv2d(16, 16, 3, padding=1, groups=16, stride=2)
            self.c2, self.up = torch.nn.Conv2d(16, 8, 1), torch.nn.ConvTranspose2d(8, 8, 2, stride=2)

        def forward(self, x):
            y = torch.relu(self.bn(self.c1(x)))
            y = torch.nn.functional.hardswish(self.dw(y))
            y = torch.sigmoid(self.c2(y))
            y = torch.nn.functional.max_pool2d(y, 3, 2, 1)
            y = torch.nn.functional.interpolate(y, scale_factor=2.0, mode="nearest")
            return self.up(y)

    buffer = io.BytesIO()
    torch.onnx.export(Net().eval(), (torch.randn(1, 3, 32, 24),), buffer, input_names=["x"], output_names=["y"],
                      dynamic_axes={"x": {0: "n", 2: "h", 3: "w"}}, opset_version=17, dynamo=False)
    model = onnx.load_from_string(buffer.getvalue())
    _check(model.SerializeToString(), 3)
