"""Window pools, ConvTranspose, Col2Im and MaxUnpool externs against their reference
implementations, on random shapes and window geometries."""

import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from ember.codegen import cpu

import ember
from ember.ir import DType, TensorType

from .image_kernel_check import SETTINGS, _graph, check_kernel, reference

pytestmark = pytest.mark.skipif(cpu.compiler() is None, reason="no C++ compiler on this machine")


def _floats(data, shape, dtype=np.float32):
    return data.draw(hnp.arrays(dtype, shape, elements=st.floats(-10, 10, width=32)))


def _geometry(data, dims, with_dilations=True):
    kernel = [data.draw(st.integers(1, 3)) for _ in range(dims)]
    strides = [data.draw(st.integers(1, 3)) for _ in range(dims)]
    dilations = [data.draw(st.integers(1, 2)) if with_dilations else 1 for _ in range(dims)]
    pads = [data.draw(st.integers(0, k - 1)) for k in kernel] * 2
    pads = [data.draw(st.integers(0, kernel[i % dims] - 1)) for i in range(2 * dims)]
    spatial = [data.draw(st.integers((k - 1) * d + 1, 7)) for k, d in zip(kernel, dilations)]
    return kernel, strides, dilations, pads, spatial


def _reference_runs(op, inputs, attrs, num_outputs=1):
    """False where the reference itself cannot run this geometry (its loops index out of
    range for some ceil-mode windows)."""
    try:
        reference(op, inputs, attrs, num_outputs)
    except Exception:  # noqa: BLE001
        return False
    return True


@SETTINGS
@given(data=st.data(), op=st.sampled_from(["AveragePool", "LpPool"]), dims=st.integers(1, 3),
       ceil=st.booleans(), count_include_pad=st.booleans(),
       auto_pad=st.sampled_from(["NOTSET", "NOTSET", "SAME_UPPER", "SAME_LOWER", "VALID"]))
def test_average_and_lp_pools(data, op, dims, ceil, count_include_pad, auto_pad):
    kernel, strides, dilations, pads, spatial = _geometry(data, dims, with_dilations=auto_pad == "NOTSET")
    x = _floats(data, (data.draw(st.integers(1, 2)), data.draw(st.integers(1, 3)), *spatial))
    attrs = {"kernel_shape": kernel, "strides": strides, "dilations": dilations, "auto_pad": auto_pad}
    if auto_pad == "NOTSET":
        attrs.update(pads=pads, ceil_mode=int(ceil))
    if op == "AveragePool":
        attrs["count_include_pad"] = int(count_include_pad)
        # declined: the reference counts these windows its own way (nn._lower_pool)
        assume(count_include_pad or auto_pad not in ("SAME_UPPER", "SAME_LOWER") or set(strides) == {1})
    else:
        attrs["p"] = data.draw(st.integers(1, 3))
    assume(_reference_runs(op, [("x", x)], attrs))
    check_kernel(op, [("x", x)], attrs, rtol=1e-4, atol=1e-4)


@SETTINGS
@given(data=st.data(), dims=st.integers(1, 3), ceil=st.booleans(), special=st.booleans(), clamping=st.booleans())
def test_max_pool_values_pad_by_clamping_or_by_a_copy(data, dims, ceil, special, clamping):
    """MaxPool's one output on its generated kernel, bit for bit against onnxruntime: where
    no pad reaches a window's length and taps are 1 apart (no ceil mode), a tap outside the
    input reads the nearest edge element instead of a -inf padded copy, infinities
    included. (Against onnxruntime, not ember's reference: with ceil mode and pads,
    onnx.reference sizes the output one window shorter than onnxruntime, whom ember
    follows - [1, 1, 2] by a window of 2, pads (0, 1): onnxruntime 2 outputs, it 1.)"""
    import onnxruntime as ort
    from hypothesis import event
    from onnx import TensorProto, helper

    import ember

    kernel, strides, dilations, pads, spatial = _geometry(data, dims, with_dilations=not clamping)
    if clamping:  # half the examples in the geometry that pads by clamping
        ceil = False
        assume(any(pads))
    x = _floats(data, (data.draw(st.integers(1, 2)), data.draw(st.integers(1, 3)), *spatial))
    if special:
        # (not NaN: ember's max propagates it, the reference's comparisons skip it, and the
        # spec says neither)
        x.flat[data.draw(st.integers(0, x.size - 1))] = data.draw(st.sampled_from([np.inf, -np.inf]))
    node = helper.make_node("MaxPool", ["x"], ["y"], kernel_shape=kernel, strides=strides, dilations=dilations,
                            pads=pads, ceil_mode=int(ceil))
    graph = helper.make_graph([node], "pool", [helper.make_tensor_value_info("x", TensorProto.FLOAT, x.shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 22)])
    want = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    clamped = not ceil and set(dilations) == {1} and any(pads)
    event("clamped taps" if clamped else "padded copy" if any(pads) or ceil else "no padding")
    compiled = ember.compile(model)
    assert compiled.stats.fallback_nodes == []
    if clamped:  # the pool's own kernel, no padded copy before it
        assert compiled.stats.num_kernels == 1, compiled.stats.num_kernels
    np.testing.assert_array_equal(compiled.run({"x": x})["y"], want)


@SETTINGS
@given(data=st.data(), dims=st.integers(1, 3), ceil=st.booleans(), storage_order=st.sampled_from([0, 1]))
def test_max_pool_indices(data, dims, ceil, storage_order):
    kernel, strides, dilations, pads, spatial = _geometry(data, dims)
    # the reference's own MaxPool path for unit strides and dilations computes other indices
    assume(any(s != 1 for s in strides) or any(d != 1 for d in dilations))
    x = data.draw(hnp.arrays(np.float32, (1, 2, *spatial), elements=st.integers(-20, 20).map(float)))
    attrs = {"kernel_shape": kernel, "strides": strides, "dilations": dilations, "pads": pads,
             "ceil_mode": int(ceil), "storage_order": storage_order if dims == 2 else 0}
    assume(_reference_runs("MaxPool", [("x", x)], attrs, 2))
    check_kernel("MaxPool", [("x", x)], attrs, num_outputs=2, exact=True)


@SETTINGS
@given(data=st.data(), dims=st.integers(1, 3))
def test_max_pool_of_unsigned_integers(data, dims):
    kernel, strides, dilations, pads, spatial = _geometry(data, dims, with_dilations=False)
    x = data.draw(hnp.arrays(np.uint8, (1, 2, *spatial)))
    attrs = {"kernel_shape": kernel, "strides": strides, "pads": pads}
    check_kernel("MaxPool", [("x", x)], attrs, exact=True)


@SETTINGS
@given(data=st.data(), dims=st.integers(1, 3), group=st.sampled_from([1, 2]), with_bias=st.booleans(),
       how=st.sampled_from(["pads", "output_padding", "output_shape", "SAME_UPPER", "SAME_LOWER"]))
def test_conv_transpose(data, dims, group, with_bias, how):
    kernel, strides, dilations, pads, spatial = _geometry(data, dims)
    c, m = group * data.draw(st.integers(1, 2)), data.draw(st.integers(1, 2))
    x = _floats(data, (data.draw(st.integers(1, 2)), c, *spatial))
    w = _floats(data, (c, m, *kernel))
    attrs = {"strides": strides, "dilations": dilations, "group": group}
    if how == "pads":
        attrs["pads"] = pads
    elif how == "output_padding":
        attrs["output_padding"] = [data.draw(st.integers(0, max(s, d) - 1)) for s, d in zip(strides, dilations)]
    elif how == "output_shape":
        # cropped by one or not at all (an output_shape past the full size stays on the
        # reference: onnx.reference does not zero-pad it as the spec's negative padding would)
        attrs["output_shape"] = [s * (n - 1) + (k - 1) * d + 1 + data.draw(st.integers(-1, 0))
                                 for s, n, k, d in zip(strides, spatial, kernel, dilations)]
    else:  # (where SAME would crop less than nothing, onnx's type inference and reference disagree)
        assume(all((k - 1) * d + 1 >= s for k, d, s in zip(kernel, dilations, strides)))
        attrs["auto_pad"] = how
    # (onnx.reference adds bias[0:m] to every group's channels: no bias with groups)
    inputs = [("x", x), ("w", w)] + ([("b", _floats(data, (m * group,)))] if with_bias and group == 1 else [])
    assume(_reference_runs("ConvTranspose", inputs, attrs))
    check_kernel("ConvTranspose", inputs, attrs, rtol=1e-4, atol=1e-3)


@SETTINGS
@given(data=st.data(), dims=st.integers(2, 3))
def test_col2im(data, dims):
    block, strides, dilations, pads, image = _geometry(data, dims)
    counts = [(n + pads[i] + pads[dims + i] - (b - 1) * d - 1) // s + 1
              for i, (n, b, s, d) in enumerate(zip(image, block, strides, dilations))]
    assume(all(c >= 1 for c in counts))
    c = data.draw(st.integers(1, 2))
    cols = _floats(data, (data.draw(st.integers(1, 2)), c * int(np.prod(block)), int(np.prod(counts))))
    inputs = [("cols", cols), ("image", np.array(image, np.int64)), ("block", np.array(block, np.int64))]
    attrs = {"strides": strides, "dilations": dilations, "pads": pads}
    assume(_reference_runs("Col2Im", inputs, attrs))
    check_kernel("Col2Im", inputs, attrs, rtol=1e-5, atol=1e-4)


@SETTINGS
@given(data=st.data(), dims=st.integers(1, 3), with_shape=st.booleans())
def test_max_unpool(data, dims, with_shape):
    kernel = [data.draw(st.integers(1, 3)) for _ in range(dims)]
    strides = [data.draw(st.integers(1, 3)) for _ in range(dims)]
    spatial = [data.draw(st.integers(1, 4)) for _ in range(dims)]
    n, c = data.draw(st.integers(1, 2)), data.draw(st.integers(1, 2))
    unpooled = [(s_ - 1) * st_ + k for s_, st_, k in zip(spatial, strides, kernel)]
    total = n * c * int(np.prod(unpooled))
    count = n * c * int(np.prod(spatial))
    assume(count <= total)
    order = np.array(data.draw(st.permutations(range(total))))[:count]
    x = _floats(data, (n, c, *spatial))
    inputs = [("x", x), ("i", order.reshape(x.shape).astype(np.int64))]
    if with_shape:
        inputs.append(("shape", np.array([n, c, *[u + data.draw(st.integers(0, 2)) for u in unpooled]], np.int64)))
    check_kernel("MaxUnpool", inputs, {"kernel_shape": kernel, "strides": strides}, exact=True)


@SETTINGS
@given(data=st.data(), group=st.sampled_from([1, 2]), offset_group=st.sampled_from([1, 2]),
       with_bias=st.booleans(), with_mask=st.booleans())
def test_deform_conv(data, group, offset_group, with_bias, with_mask):
    kernel, strides, dilations, pads, spatial = _geometry(data, 2)
    spatial = [max(s, 2) for s in spatial]  # (the reference normalizes coordinates by size - 1)
    c = group * offset_group * data.draw(st.integers(1, 2))
    oc = group * data.draw(st.integers(1, 2))
    n = data.draw(st.integers(1, 2))
    out = [(s + pads[i] + pads[2 + i] - (k - 1) * d - 1) // st_ + 1
           for i, (s, k, d, st_) in enumerate(zip(spatial, kernel, dilations, strides))]
    assume(all(o >= 1 for o in out))
    x = _floats(data, (n, c, *spatial))
    w = _floats(data, (oc, c // group, *kernel))
    taps = offset_group * kernel[0] * kernel[1]
    offset = data.draw(hnp.arrays(np.float32, (n, 2 * taps, *out), elements=st.floats(-2.5, 2.5, width=32)))
    inputs = [("x", x), ("w", w), ("offset", offset),
              ("b", _floats(data, (oc,)) if with_bias else None),
              ("mask", data.draw(hnp.arrays(np.float32, (n, taps, *out), elements=st.floats(0, 1, width=32)))
               if with_mask else None)]
    attrs = {"kernel_shape": kernel, "strides": strides, "dilations": dilations, "pads": pads, "group": group,
             "offset_group": offset_group}
    check_kernel("DeformConv", inputs, attrs, rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("kernel, with_bias, batch", [((2, 2), True, 1), ((2, 3), False, 2), ((1, 1), True, 3)])
def test_a_conv_transpose_of_non_overlapping_windows_is_one_gemm(kernel, with_bias, batch):
    """Kernel = stride, no pads (the 2x upsampling of PP-OCR's DB head): each input pixel's
    channels give its output block through one GEMM (the linear extern, or its generated
    small path), read back into the output's blocks by a generated gather, as the
    reference computes; no conv_transpose extern."""
    rng = np.random.default_rng(sum(kernel) + batch)
    inputs = [("x", rng.standard_normal((batch, 6, 5, 7)).astype(np.float32)),
              ("w", rng.standard_normal((6, 4, *kernel)).astype(np.float32))]
    if with_bias:
        inputs.append(("b", rng.standard_normal(4).astype(np.float32)))
    check_kernel("ConvTranspose", inputs, {"strides": list(kernel)}, consts=(1,), rtol=1e-4, atol=1e-4)
    want = reference("ConvTranspose", inputs, {"strides": list(kernel)}, 1, (1,))
    graph = _graph("ConvTranspose", inputs, {"strides": list(kernel)},
                   [TensorType(DType.float32, want[0].shape)], {1: inputs[1][1]})
    steps = ember.compile(graph, opt_level=0).program.steps
    assert not any(s.kind == "extern" and s.name == "conv_transpose" for s in steps), [s.name for s in steps]
