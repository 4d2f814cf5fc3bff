"""fuse_conv and channels_last: convolution blocks (BatchNorm, residual add, ReLU) on
random shapes, differential against the unoptimised reference, and the graph they make."""

import math

import numpy as np
import onnx
import pytest
from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

import ember
from ember.runtime.native import gemm, small_conv
from ember.frontends.onnx import load_onnx
from ember.passes import get_pass
from ember.testing import check_pass


def _block(rng, c, m, hw, k, stride, bias, bn, residual, relu, batch="n", group=1) -> onnx.ModelProto:
    """x -> Conv (of `group` groups) -> [BatchNorm] -> [+ residual] -> [Relu] -> y; the
    residual is a second convolution of x (1x1, same stride) so any shape works."""
    inits = [numpy_helper.from_array(rng.standard_normal((m, c // group, k, k)).astype(np.float32), "w")]
    conv_in = ["x", "w"]
    if bias:
        inits.append(numpy_helper.from_array(rng.standard_normal(m).astype(np.float32), "b"))
        conv_in.append("b")
    pad = k // 2
    nodes = [helper.make_node("Conv", conv_in, ["c"], kernel_shape=[k, k], strides=[stride, stride],
                              pads=[pad] * 4, group=group, name="conv")]
    last = "c"
    if bn:
        for name, data in {"s": rng.uniform(0.5, 2, m), "beta": rng.standard_normal(m),
                           "mean": rng.standard_normal(m), "var": rng.uniform(0.5, 2, m)}.items():
            inits.append(numpy_helper.from_array(data.astype(np.float32), name))
        nodes.append(helper.make_node("BatchNormalization", [last, "s", "beta", "mean", "var"], ["bn"],
                                      epsilon=1e-5, name="bn"))
        last = "bn"
    if residual:
        inits.append(numpy_helper.from_array(rng.standard_normal((m, c, 1, 1)).astype(np.float32), "w2"))
        nodes.append(helper.make_node("Conv", ["x", "w2"], ["r"], strides=[stride, stride], name="shortcut"))
        nodes.append(helper.make_node(residual, ["r", last], ["sum"], name="add"))
        last = "sum"
    if relu:
        nodes.append(helper.make_node("Relu", [last], ["act"], name="relu"))
        last = "act"
    nodes.append(helper.make_node("Identity", [last], ["y"], name="out"))
    graph = helper.make_graph(nodes, "block", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                                            [batch, c, hw, hw])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


BLOCKS = dict(c=st.integers(1, 6), m=st.integers(1, 6), hw=st.integers(3, 9), k=st.sampled_from([1, 3]),
              stride=st.sampled_from([1, 2]), bias=st.booleans(), bn=st.booleans(),
              residual=st.sampled_from([None, "Add", "Sum"]), relu=st.booleans(), seed=st.integers(0, 2**16))


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(**BLOCKS)
def test_blocks_compile_to_one_conv_each_and_match_the_reference(c, m, hw, k, stride, bias, bn, residual, relu,
                                                                seed):
    rng = np.random.default_rng(seed)
    model = _block(rng, c, m, hw, k, stride, bias, bn, residual, relu)
    compiled = ember.compile(model)
    reference = ember.compile(model, opt_level=0, codegen=False)
    hist = compiled.stats.op_histogram
    assert hist.get("ember.Conv") == 1 + bool(residual), hist
    assert not {"BatchNormalization", "Relu", "Add", "Sum", "Conv"} & set(hist), hist
    assert hist.get("Transpose", 0) <= 2 + bool(residual), hist  # in, out (and the shortcut's input)
    assert compiled.stats.fallback_nodes == []
    for batch in (1, 2):  # a new batch size binds again, with the same packed filters
        x = rng.standard_normal((batch, c, hw, hw)).astype(np.float32)
        (got,) = compiled.run({"x": x}).values()
        (want,) = reference.run({"x": x}).values()
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(**BLOCKS)
def test_each_pass_alone_preserves_outputs(c, m, hw, k, stride, bias, bn, residual, relu, seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((2, c, hw, hw)).astype(np.float32)
    for name in ("fuse_conv", "channels_last"):
        check_pass(get_pass(name), load_onnx(_block(rng, c, m, hw, k, stride, bias, bn, residual, relu)), {"x": x})


def test_chained_convolutions_keep_one_layout_change_each_way():
    rng = np.random.default_rng(0)
    inits, nodes, last = [], [], "x"
    for i in range(4):
        inits.append(numpy_helper.from_array(rng.standard_normal((8, 8, 3, 3)).astype(np.float32), f"w{i}"))
        nodes.append(helper.make_node("Conv", [last, f"w{i}"], [f"c{i}"], pads=[1, 1, 1, 1]))
        nodes.append(helper.make_node("Relu", [f"c{i}"], [f"r{i}"]))
        last = f"r{i}"
    graph = helper.make_graph(nodes, "chain", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 6, 6])],
                              [helper.make_tensor_value_info(last, TensorProto.FLOAT, None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    compiled = ember.compile(model)
    assert compiled.stats.op_histogram == {"ember.Conv": 4, "Transpose": 2}
    x = rng.standard_normal((1, 8, 6, 6)).astype(np.float32)
    np.testing.assert_allclose(compiled.run({"x": x})[last],
                               ember.compile(model, opt_level=0, codegen=False).run({"x": x})[last],
                               rtol=1e-4, atol=1e-4)


def _steps_summing_in_place(compiled) -> int:
    return sum(1 for kind, _, step in compiled._executor._steps if kind == "extern" and step.params.get("sum_in_place"))


@pytest.mark.parametrize("residual_read_again", [False, True])
def test_residual_is_summed_into_in_place_only_when_nothing_reads_it_later(residual_read_again, monkeypatch):
    """The convolution accumulates into its residual's tensor when that tensor dies there;
    a residual some later node reads must stay as it was. (Both convolutions on oneDNN,
    whose tensors the executor adopts: a 3x3 of 2 groups, and the 1x1 shortcut kept off the
    tiled GEMM, which writes the planned buffer and adds a residual in its epilogue.)"""
    from ember.runtime import externs

    monkeypatch.setattr(externs, "_tiled_weight", lambda params, w: None)
    rng = np.random.default_rng(2)
    # 640 input channels: a generated kernel takes a 1x1 of at most 512 at a small size
    model = _block(rng, 640, 4, 6, 3, 1, True, False, "Add", True, batch=2, group=2)
    if residual_read_again:  # y2 = r * 2 after the block reads the shortcut's output again
        model.graph.node.append(helper.make_node("Mul", ["r", "two"], ["y2"], name="again"))
        model.graph.initializer.append(numpy_helper.from_array(np.array(2, np.float32), "two"))
        model.graph.output.append(helper.make_tensor_value_info("y2", TensorProto.FLOAT, None))
    compiled = ember.compile(model)
    assert _steps_summing_in_place(compiled) == (0 if residual_read_again else 1)
    reference = ember.compile(model, opt_level=0, codegen=False)
    for _ in range(2):  # a second run sees the buffers the first one left
        x = rng.standard_normal((2, 640, 6, 6)).astype(np.float32)
        got, want = compiled.run({"x": x}), reference.run({"x": x})
        for name in want:
            np.testing.assert_allclose(got[name], want[name], rtol=1e-4, atol=1e-4)


def test_batchnorm_on_a_computed_filter_is_left_alone():
    rng = np.random.default_rng(1)
    model = _block(rng, 2, 3, 5, 3, 1, True, True, None, False)
    model.graph.initializer.pop(0)  # the filter becomes an input
    model.graph.input.append(helper.make_tensor_value_info("w", TensorProto.FLOAT, [3, 2, 3, 3]))
    fuse = get_pass("fuse_conv")
    graph = load_onnx(model)
    fuse.run(graph)
    assert "BatchNormalization" in [n.op for n in graph.nodes]
    assert ("fold_batchnorm_bias", "bn", "the filter is not a float constant") in fuse.report.rejected


def _conv_path(compiled) -> str:
    """Which kernel ran the model's one convolution: ember's generated kernel, oneDNN's
    GEMM (a pointwise one), ember's direct convolution, oneDNN's convolution, or torch's."""
    convs = [step for kind, _, step in compiled._executor._steps if kind == "extern" and step.name == "conv"]
    if not convs:
        return "generated"
    (step,) = convs
    return ("gemm" if "pointwise" in step.params else "direct" if "direct" in step.params
            else "onednn" if "packed" in step.params else "torch")


@pytest.mark.parametrize("form", ["dense", "depthwise", "wide", "pointwise"])
@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(activation=st.sampled_from(["", "relu", "gelu", "gelu_tanh", "silu"]), channels_last=st.booleans(),
       with_sum=st.booleans(), with_bias=st.booleans(), seed=st.integers(0, 2**16), kernel=st.integers(1, 4),
       stride=st.integers(1, 2), dilation=st.integers(1, 2), pads=st.lists(st.integers(0, 2), min_size=4, max_size=4),
       size=st.tuples(st.integers(3, 9), st.integers(3, 9)), symbolic_batch=st.booleans())
def test_ember_conv_kernel_matches_its_reference(form, activation, channels_last, with_sum, with_bias, seed, kernel,
                                                 stride, dilation, pads, size, symbolic_batch):
    """Every epilogue the op allows, in both layouts and any geometry, on each kernel that
    runs it: generated (dense with few input channels, depthwise), the tiled GEMM (a
    channels-last 1x1 convolution of many channels), the direct convolution, oneDNN's or
    torch's convolution."""
    import sympy

    from ember.ir import DType, Graph, TensorType, Value

    rng = np.random.default_rng(seed)
    c, m, group = {"dense": (3, 4, 1), "depthwise": (6, 6, 6), "wide": (8, 5, 1), "pointwise": (640, 8, 1)}[form]
    if form == "pointwise":
        kernel, stride, dilation, pads = 1, 1, 1, [0, 0, 0, 0]
    h, w = size
    out = [(n + p + q - dilation * (kernel - 1) - 1) // stride + 1 for n, p, q in zip(size, pads[:2], pads[2:])]
    assume(min(out) >= 1)
    x_shape, y_shape = ((2, h, w, c), (2, *out, m)) if channels_last else ((2, c, h, w), (2, m, *out))
    n = sympy.Symbol("n") if symbolic_batch else 2
    g = Graph("g", opsets={"": 28})
    x = Value("x", TensorType(DType.float32, (n, *x_shape[1:])))
    g.inputs.append(x)
    inputs = [x, g.add_constant("w", rng.standard_normal((m, c // group, kernel, kernel)).astype(np.float32)),
              g.add_constant("b", rng.standard_normal(m).astype(np.float32)) if with_bias else None]
    feeds = {"x": rng.standard_normal(x_shape).astype(np.float32)}
    if with_sum:
        r = Value("r", TensorType(DType.float32, (n, *y_shape[1:])))
        g.inputs.append(r)
        inputs.append(r)
        feeds["r"] = rng.standard_normal(y_shape).astype(np.float32)
    while inputs[-1] is None:
        inputs.pop()
    node = g.add_node("ember.Conv", inputs, [Value("y", TensorType(DType.float32, (n, *y_shape[1:])))],
                      {"kernel_shape": [kernel, kernel], "pads": pads, "strides": [stride, stride],
                       "dilations": [dilation, dilation], "group": group, "activation": activation,
                       "channels_last": int(channels_last)})
    g.outputs = list(node.outputs)
    want = ember.compile(g, opt_level=0, codegen=False).run(feeds)["y"]
    compiled = ember.compile(g, opt_level=0)
    assert compiled.stats.fallback_nodes == []
    path = _conv_path(compiled)
    before, tiled_before = small_conv.RUNS[0], gemm.RUNS[0]
    got = compiled.run(feeds)["y"]
    if small_conv.RUNS[0] > before:
        path = "the small direct loop"
    elif gemm.RUNS[0] > tiled_before:
        path = "the tiled GEMM"
    elif not channels_last and path != "generated" and activation in ("", "relu"):
        macs = 2 * math.prod(out) * m * (c // group) * kernel * kernel
        assert macs > small_conv.MAX_MACS, "a tiny channels-first convolution skipped the small loop"
    event(f"{form} ran on {path}")
    few_products = kernel * kernel * c <= 49  # (ir/ops/nn.py _DIRECT_MAX_TERMS)
    if channels_last and (form in ("dense", "depthwise") or form == "wide" and few_products):
        assert path == "generated"
    if channels_last and form == "wide" and not few_products:
        # more products an output: ember's direct convolution at every size, small or not
        assert path == "direct"
    if channels_last and form == "pointwise":  # the tiled GEMM runs every activation the op has
        assert path == "the tiled GEMM"
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_a_max_pool_between_convolutions_pools_channels_last():
    rng = np.random.default_rng(2)
    inits = [numpy_helper.from_array(rng.standard_normal((6, 3, 3, 3)).astype(np.float32), "w0"),
             numpy_helper.from_array(rng.standard_normal((4, 6, 1, 1)).astype(np.float32), "w1")]
    nodes = [helper.make_node("Conv", ["x", "w0"], ["c0"], pads=[1, 1, 1, 1], strides=[2, 2]),
             helper.make_node("Relu", ["c0"], ["r0"]),
             helper.make_node("MaxPool", ["r0"], ["p"], kernel_shape=[3, 3], pads=[1, 1, 1, 1], strides=[2, 2]),
             helper.make_node("Conv", ["p", "w1"], ["y"])]
    graph = helper.make_graph(nodes, "stem", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3, 17, 17])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    compiled = ember.compile(model)
    assert compiled.stats.op_histogram == {"ember.Conv": 2, "ember.MaxPool": 1, "Transpose": 2}
    assert compiled.stats.fallback_nodes == []
    _matches_reference(compiled, model, rng, [(batch, 3, 17, 17) for batch in (1, 3)])


@pytest.mark.parametrize("pool", ["AveragePool", "GlobalAveragePool", "AveragePool_padded"])
def test_whole_image_average_pool_of_channels_last_activations_is_a_mean(pool):
    """ResNet's head: the pool reads the last convolution's channels-last output in place
    (a mean over its spatial axes) rather than after a layout change; a padded pool is not
    a whole-image mean and stays as it was."""
    rng = np.random.default_rng(3)
    inits = [numpy_helper.from_array(rng.standard_normal((6, 3, 3, 3)).astype(np.float32), "w")]
    attrs = {"kernel_shape": [5, 5]} if pool == "AveragePool" else \
        {"kernel_shape": [5, 5], "pads": [1, 1, 1, 1]} if pool == "AveragePool_padded" else {}
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node(pool.split("_")[0], ["r"], ["y"], **attrs)]
    graph = helper.make_graph(nodes, "head", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3, 5, 5])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    compiled = ember.compile(model)
    hist = compiled.stats.op_histogram
    assert ("ReduceMean" in hist) == (pool != "AveragePool_padded"), hist
    for batch in (1, 3):
        x = rng.standard_normal((batch, 3, 5, 5)).astype(np.float32)
        np.testing.assert_allclose(compiled.run({"x": x})["y"],
                                   ember.compile(model, opt_level=0, codegen=False).run({"x": x})["y"],
                                   rtol=1e-4, atol=1e-5)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**16), kernel=st.integers(1, 9), stride=st.integers(1, 2), dilation=st.integers(1, 3),
       pad=st.integers(0, 4), group=st.sampled_from([1, 2]), relu=st.booleans(), length=st.integers(9, 40),
       residual=st.booleans(), c=st.sampled_from([6, 64]))
def test_one_d_convolutions_run_as_frames_generated_or_on_onednn(seed, kernel, stride, dilation, pad, group, relu,
                                                                  length, residual, c):
    """A Conv1d with a constant filter of one group and a window of at least 16 products
    (attacut's dilated ones, an STFT's framing one) runs as frames times the filter as a
    GEMM weight; another of at most 49 products an output (silero_vad's depthwise ones)
    as a generated kernel; the rest (grouped, wide) on oneDNN's packed 2-d convolution at
    height 1. Each takes its epilogue and matches the reference."""
    rng = np.random.default_rng(seed)
    m = 8
    assume((length + 2 * pad - dilation * (kernel - 1) - 1) // stride + 1 >= 1)
    inits = [numpy_helper.from_array(rng.standard_normal((m, c // group, kernel)).astype(np.float32), "w"),
             numpy_helper.from_array(rng.standard_normal(m).astype(np.float32), "b")]
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["y0"], kernel_shape=[kernel], strides=[stride],
                              dilations=[dilation], pads=[pad, pad], group=group)]
    last = "y0"
    if residual:
        nodes.append(helper.make_node("Add", [last, last], ["y1"]))
        last = "y1"
    if relu:
        nodes.append(helper.make_node("Relu", [last], ["y2"]))
        last = "y2"
    nodes.append(helper.make_node("Identity", [last], ["y"]))
    graph = helper.make_graph(nodes, "conv1d", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", c, "l"])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    compiled = ember.compile(model)
    convs = [step for kind, _, step in compiled._executor._steps if step.name == "conv"]
    externs = {step.name for _, _, step in compiled._executor._steps if step.kind == "extern"}
    path = ("framed" if group == 1 and c * kernel >= 16 else "generated" if c // group * kernel <= 49 else "oneDNN")
    event(f"path: {path}")
    if path == "framed":
        assert not convs and externs == {"linear"}
    elif path == "generated":
        assert not externs
    else:
        assert convs and all(step.params.get("one_d") for step in convs)
    _matches_reference(compiled, model, rng, [(batch, c, length) for batch in (1, 3)])


def test_elementwise_ops_between_convolutions_stay_channels_last():
    """MobileNetV3's pattern: activations between convolutions (HardSwish, HardSigmoid,
    LeakyRelu, a scalar Mul, two branches added) keep the channels-last layout: the graph
    converts once at the input and once at the output, and matches the reference."""
    rng = np.random.default_rng(4)
    inits = [numpy_helper.from_array(rng.standard_normal((8, 3, 3, 3)).astype(np.float32), "w0"),
             numpy_helper.from_array(rng.standard_normal((8, 8, 3, 3)).astype(np.float32) * 0.3, "w1"),
             numpy_helper.from_array(rng.standard_normal((8, 8, 1, 1)).astype(np.float32) * 0.3, "w2"),
             numpy_helper.from_array(rng.standard_normal((4, 8, 3, 3)).astype(np.float32) * 0.3, "w3"),
             numpy_helper.from_array(np.array(2.0, np.float32), "two")]
    nodes = [helper.make_node("Conv", ["x", "w0"], ["c0"], pads=[1, 1, 1, 1]),
             helper.make_node("HardSwish", ["c0"], ["h0"]),
             helper.make_node("Conv", ["h0", "w1"], ["c1"], pads=[1, 1, 1, 1]),
             helper.make_node("HardSigmoid", ["c1"], ["h1"], alpha=0.25, beta=0.4),
             helper.make_node("Conv", ["h0", "w2"], ["c2"]),
             helper.make_node("LeakyRelu", ["c2"], ["h2"], alpha=0.1),
             helper.make_node("Mul", ["h2", "two"], ["m2"]),
             helper.make_node("Add", ["h1", "m2"], ["s"]),
             helper.make_node("Conv", ["s", "w3"], ["y"], pads=[1, 1, 1, 1])]
    model = _image_model(nodes, inits, "mobile")
    _converts_layout_once_and_matches(model, rng)


def test_prelu_between_convolutions_and_pools_stays_channels_last():
    """MTCNN's pattern (tf2onnx): Conv -> PRelu with a per-channel slope [C, 1, 1] ->
    MaxPool -> Conv. The slope is permuted with the activations, so the graph converts
    once each way (PRelu kept a transpose pair around each block: a pool read across
    channels, 1.6 -> 1.2 ms on MTCNN's P-Net), and matches the reference."""
    rng = np.random.default_rng(5)
    inits = [numpy_helper.from_array(rng.standard_normal((10, 3, 3, 3)).astype(np.float32) * 0.5, "w0"),
             numpy_helper.from_array(rng.uniform(-0.5, 0.5, (10, 1, 1)).astype(np.float32), "slope0"),
             numpy_helper.from_array(rng.standard_normal((16, 10, 2, 2)).astype(np.float32) * 0.3, "w1"),
             numpy_helper.from_array(rng.uniform(-0.5, 0.5, (16, 1, 1)).astype(np.float32), "slope1")]
    nodes = [helper.make_node("Conv", ["x", "w0"], ["c0"]),
             helper.make_node("PRelu", ["c0", "slope0"], ["p0"]),
             helper.make_node("MaxPool", ["p0"], ["m0"], kernel_shape=[2, 2], strides=[2, 2]),
             helper.make_node("Conv", ["m0", "w1"], ["c1"]),
             helper.make_node("PRelu", ["c1", "slope1"], ["y"])]
    model = _image_model(nodes, inits, "mtcnn")
    _converts_layout_once_and_matches(model, rng)


def test_transposes_move_past_elementwise_readers_they_share():
    """PP-LCNet's blocks: a convolution's output read by several elementwise ops at once
    (HardSwish written out as x * clip(x + 3, 0, 6) / 6), a squeeze-excite block
    (GlobalAveragePool -> 1x1 convolutions -> HardSigmoid -> Mul), a per-channel constant
    scale: every transpose moves past them (the rewriter alone refused, as the shared
    transpose is read outside each match), so only the input's and the output's are
    left, and the outputs match the reference."""
    rng = np.random.default_rng(6)
    c = 8
    inits = [numpy_helper.from_array(rng.standard_normal((c, 3, 3, 3)).astype(np.float32) * 0.5, "w0"),
             numpy_helper.from_array(rng.standard_normal((2, c, 1, 1)).astype(np.float32) * 0.5, "wa"),
             numpy_helper.from_array(rng.standard_normal((c, 2, 1, 1)).astype(np.float32) * 0.5, "wb"),
             numpy_helper.from_array(rng.standard_normal((4, c, 3, 3)).astype(np.float32) * 0.3, "w1"),
             numpy_helper.from_array(rng.uniform(0.5, 2, (1, c, 1, 1)).astype(np.float32), "scale"),
             numpy_helper.from_array(np.array(3.0, np.float32), "three"),
             numpy_helper.from_array(np.array(0.0, np.float32), "zero"),
             numpy_helper.from_array(np.array(6.0, np.float32), "six")]
    nodes = [helper.make_node("Conv", ["x", "w0"], ["c0"], pads=[1, 1, 1, 1]),
             helper.make_node("Add", ["c0", "three"], ["p3"]),
             helper.make_node("Clip", ["p3", "zero", "six"], ["r6"]),
             helper.make_node("Mul", ["c0", "r6"], ["m"]),
             helper.make_node("Div", ["m", "six"], ["hs"]),
             helper.make_node("GlobalAveragePool", ["hs"], ["g"]),
             helper.make_node("Conv", ["g", "wa"], ["ga"]),
             helper.make_node("Relu", ["ga"], ["gr"]),
             helper.make_node("Conv", ["gr", "wb"], ["gb"]),
             helper.make_node("HardSigmoid", ["gb"], ["gate"], alpha=0.2, beta=0.5),
             helper.make_node("Mul", ["hs", "gate"], ["se"]),
             helper.make_node("Mul", ["se", "scale"], ["scaled"]),
             helper.make_node("Conv", ["scaled", "w1"], ["y"], pads=[1, 1, 1, 1])]
    model = _image_model(nodes, inits, "lcnet")
    _converts_layout_once_and_matches(model, rng)


@pytest.mark.parametrize("tiled", [True, False])
def test_pointwise_convolution_of_a_symbolic_batch(tiled, monkeypatch):
    """A 1x1 channels-last convolution whose sizes are static but for the batch runs on the
    tiled GEMM, its residual and ReLU in the epilogue. Where that kernel is not there, the
    stand-in batch's rows (batch 1: 12 x 16) run on oneDNN's GEMM unpadded, the residual and
    ReLU fused into it as well, other batches as a GEMM of a row class; a squeeze-excite one
    (1x1 at 1x1, under addmm's range) has no exact rows. All match the reference."""
    from ember.runtime import externs

    if not tiled:
        monkeypatch.setattr(externs, "_tiled_weight", lambda params, w: None)
    rng = np.random.default_rng(8)
    inits = [numpy_helper.from_array(rng.standard_normal((64, 3, 3, 3)).astype(np.float32), "w0"),
             numpy_helper.from_array(rng.standard_normal((256, 64, 1, 1)).astype(np.float32) * 0.2, "w1"),
             numpy_helper.from_array(rng.standard_normal((256, 256, 1, 1)).astype(np.float32) * 0.1, "w3"),
             numpy_helper.from_array(rng.standard_normal((8, 256, 1, 1)).astype(np.float32) * 0.1, "w2")]
    nodes = [helper.make_node("Conv", ["x", "w0"], ["c0"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c0"], ["r0"]),
             helper.make_node("Conv", ["r0", "w1"], ["c1"]),
             helper.make_node("Conv", ["c1", "w3"], ["c2"]),
             helper.make_node("Add", ["c2", "c1"], ["s2"]),
             helper.make_node("Relu", ["s2"], ["r2"]),
             helper.make_node("GlobalAveragePool", ["r2"], ["g"]),
             helper.make_node("Conv", ["g", "w2"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3, 12, 16])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    compiled = ember.compile(model)
    pointwise = [(step, args) for kind, _, step in compiled._executor._steps
                 if kind == "extern" and step.name == "conv" and step.params["kernel"] == [1, 1]
                 for args in [step.args[:step.num_inputs]]]
    if tiled:
        assert all("tiled" in step.params and "pointwise" not in step.params for step, _ in pointwise)
    else:
        assert [step.params["exact_rows"] for step, _ in pointwise] == [192, 192, None]
    assert [step.params["activation"] for step, _ in pointwise] == ["", "relu", ""]
    assert [bool(args[3]) for _, args in pointwise] == [False, True, False], pointwise  # the residual
    before = gemm.RUNS[0]
    _matches_reference(compiled, model, rng, [(batch, 3, 12, 16) for batch in (1, 3, 1)])
    assert (gemm.RUNS[0] > before) == tiled


@pytest.mark.parametrize("size", ["symbolic", "static"])
@pytest.mark.parametrize("channels_last", [True, False])
def test_uneven_pads(size, channels_last, monkeypatch):
    """SAME_UPPER at an even window pads one more at the end. ember's direct convolution
    (a channels-last filter of one group) pads as it reads, unevenly too: no padded copy.
    Elsewhere (here: the channels-last rewrite off, so oneDNN's convolution, which takes
    even pads only) the input is copied zero-padded first and the convolution runs with
    none. Both match the reference (at two sizes where they are symbolic)."""
    if not channels_last:
        from ember.passes import pipelines

        monkeypatch.setitem(pipelines.PIPELINES, 2, [p for p in pipelines.O2 if p != "channels_last"])
    rng = np.random.default_rng(9)
    inits = [numpy_helper.from_array(rng.standard_normal((24, 3, 3, 3)).astype(np.float32), "w0"),
             numpy_helper.from_array(rng.standard_normal((48, 24, 2, 2)).astype(np.float32) * 0.3, "w1")]
    nodes = [helper.make_node("Conv", ["x", "w0"], ["c0"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c0"], ["r0"]),
             helper.make_node("Conv", ["r0", "w1"], ["y"], auto_pad="SAME_UPPER")]
    shapes = ((1, 3, 12, 20), (2, 3, 9, 7)) if size == "symbolic" else ((1, 3, 12, 20),)
    model = _image_model(nodes, inits, input_shape=["n", 3, "h", "w"] if size == "symbolic" else [1, 3, 12, 20])
    compiled = ember.compile(model)
    (conv,) = [step for kind, _, step in compiled._executor._steps
               if kind == "extern" and step.name == "conv" and step.params["kernel"] == [2, 2]]
    if channels_last:
        assert conv.params["pads"] == [0, 0, 1, 1] and "direct" in conv.params
    else:
        assert conv.params["pads"] == [0, 0, 0, 0] and "direct" not in conv.params
    before = gemm.CONV_RUNS[0]
    _matches_reference(compiled, model, rng, shapes)
    if channels_last:  # (2 x 3 x 9 x 7 is work for the generated small path)
        assert gemm.CONV_RUNS[0] >= before + 1


def test_a_shared_activation_pools_and_concatenates_channels_last():
    """PP-OCRv6's stem: one activation read by a convolution and by a MaxPool (SAME_UPPER),
    the pool concatenated with the convolution's output along channels, then convolved.
    The shared transpose kept MAX_POOL's rewrite away; the pool and the Concat now move
    onto the channels-last values (the Concat along their last axis), leaving only the
    input's and the output's transposes, and match the reference."""
    rng = np.random.default_rng(7)
    inits = [numpy_helper.from_array(rng.standard_normal((8, 3, 3, 3)).astype(np.float32) * 0.5, "w0"),
             numpy_helper.from_array(rng.standard_normal((6, 8, 2, 2)).astype(np.float32) * 0.5, "w1"),
             numpy_helper.from_array(rng.standard_normal((4, 14, 3, 3)).astype(np.float32) * 0.3, "w2")]
    nodes = [helper.make_node("Conv", ["x", "w0"], ["c0"], pads=[1, 1, 1, 1], strides=[2, 2]),
             helper.make_node("Relu", ["c0"], ["r0"]),
             helper.make_node("Conv", ["r0", "w1"], ["c1"], auto_pad="SAME_UPPER"),
             helper.make_node("MaxPool", ["r0"], ["p"], kernel_shape=[2, 2], auto_pad="SAME_UPPER"),
             helper.make_node("Concat", ["p", "c1"], ["cat"], axis=1),
             helper.make_node("Conv", ["cat", "w2"], ["y"], pads=[1, 1, 1, 1], strides=[2, 2])]
    model = _image_model(nodes, inits, "stem")
    _converts_layout_once_and_matches(model, rng)


def _image_model(nodes, inits, name: str = "g", input_shape=("n", 3, "h", "w")):
    """A model of `nodes` from input x [n, 3, h, w] (or `input_shape`) to output y, opset 17."""
    graph = helper.make_graph(nodes, name, [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(input_shape))],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _matches_reference(compiled, model, rng, shapes) -> None:
    """`compiled` gives y as the unoptimised reference of `model` does, for x of each shape."""
    reference = ember.compile(model, opt_level=0, codegen=False)
    for shape in shapes:
        x = rng.standard_normal(shape).astype(np.float32)
        np.testing.assert_allclose(compiled.run({"x": x})["y"], reference.run({"x": x})["y"], rtol=1e-4, atol=1e-4)


def _converts_layout_once_and_matches(model, rng) -> None:
    """`model` (input x [n, 3, h, w]) keeps two transposes, the input's and the output's,
    and matches the unoptimised reference at two sizes."""
    compiled = ember.compile(model)
    assert compiled.stats.op_histogram.get("Transpose") == 2, compiled.stats.op_histogram
    _matches_reference(compiled, model, rng, ((1, 3, 9, 7), (2, 3, 6, 10)))
