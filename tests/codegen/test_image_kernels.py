"""Resize, GridSample and AffineGrid externs against their reference implementations, on
random inputs and attributes (every mode the definition has)."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import ember
from ember.codegen import cpu

from .image_kernel_check import SETTINGS, check_kernel

pytestmark = pytest.mark.skipif(cpu.compiler() is None, reason="no C++ compiler on this machine")


def _floats(shape, dtype=np.float32, lo=-10.0, hi=10.0):
    return hnp.arrays(dtype, shape, elements=st.floats(lo, hi, width=32).map(np.float32))


@SETTINGS
@given(data=st.data(), mode=st.sampled_from(["nearest", "linear", "cubic"]),
       coords=st.sampled_from(["half_pixel", "half_pixel_symmetric", "pytorch_half_pixel", "align_corners",
                               "asymmetric", "tf_crop_and_resize"]),
       nearest_mode=st.sampled_from(["round_prefer_floor", "round_prefer_ceil", "floor", "ceil"]),
       by_sizes=st.booleans(), dtype=st.sampled_from([np.float32, np.float64, np.uint8]))
def test_resize(data, mode, coords, nearest_mode, by_sizes, dtype):
    rank = data.draw(st.integers(1, 4))
    shape = tuple(data.draw(st.lists(st.integers(1, 5), min_size=rank, max_size=rank)))
    axes = sorted(data.draw(st.sets(st.integers(0, rank - 1), min_size=1)))
    if data.draw(st.booleans()):
        axes = data.draw(st.permutations(axes))
    attrs = {"mode": mode, "coordinate_transformation_mode": coords, "nearest_mode": nearest_mode, "axes": axes}
    if mode == "cubic":
        attrs["cubic_coeff_a"] = data.draw(st.sampled_from([-0.75, -0.5]))
        attrs["exclude_outside"] = int(data.draw(st.booleans()))
    if mode != "nearest":
        attrs["antialias"] = int(data.draw(st.booleans()))
    if coords == "tf_crop_and_resize":
        attrs["extrapolation_value"] = data.draw(st.sampled_from([0.0, 10.0]))
    if dtype == np.uint8:
        x = data.draw(hnp.arrays(np.uint8, shape))
    else:
        x = data.draw(_floats(shape, dtype))
    roi = None
    if coords == "tf_crop_and_resize":
        starts = data.draw(st.lists(st.sampled_from([0.0, 0.1, 0.25, -0.2]), min_size=len(axes), max_size=len(axes)))
        ends = data.draw(st.lists(st.sampled_from([1.0, 0.9, 0.6, 1.2]), min_size=len(axes), max_size=len(axes)))
        roi = np.array(starts + ends, np.float32)
    if by_sizes:
        sizes = np.array([data.draw(st.integers(1, 9)) for _ in axes], np.int64)
        attrs["keep_aspect_ratio_policy"] = data.draw(st.sampled_from(["stretch", "not_larger", "not_smaller"]))
        inputs = [("x", x), ("roi", roi), ("scales", None), ("sizes", sizes)]
    else:
        scales = np.array([data.draw(st.sampled_from([0.5, 0.6, 1.0, 1.5, 2.0, 3.0])) for _ in axes], np.float32)
        inputs = [("x", x), ("roi", roi), ("scales", scales)]
    # negative axes count from the end (the reference takes them only as positive)
    negative = {**attrs, "axes": [a - rank if data.draw(st.booleans()) else a for a in axes]}
    check_kernel("Resize", inputs, negative, rtol=1e-5, atol=1e-4, exact=dtype == np.uint8 and mode == "nearest",
                 reference_attrs=attrs)


def test_resize_scales_that_disagree_with_the_output_type_are_an_error():
    x = np.arange(16, dtype=np.float32).reshape(1, 1, 4, 4)
    inputs = [("x", x), ("roi", None), ("scales", np.array([1, 1, 2, 2], np.float32))]
    check_kernel("Resize", inputs, {"mode": "nearest"})
    from .image_kernel_check import _graph
    from ember.ir import DType, TensorType

    graph = _graph("Resize", inputs, {"mode": "nearest"}, [TensorType(DType.float32, (1, 1, 8, 8))], {})
    compiled = ember.compile(graph, opt_level=0)
    with pytest.raises(ember.ExecutionError, match="Resize.*declared output type"):
        compiled.run({"x": x, "scales": np.array([1, 1, 3, 3], np.float32)})


@SETTINGS
@given(data=st.data(), mode=st.sampled_from(["nearest", "linear", "cubic"]),
       padding=st.sampled_from(["zeros", "border", "reflection"]), align=st.booleans(),
       dims=st.integers(1, 3))
def test_grid_sample(data, mode, padding, align, dims):
    if mode == "cubic" and dims == 3:
        dims = 2
    n, c = data.draw(st.integers(1, 2)), data.draw(st.integers(1, 3))
    spatial = tuple(data.draw(st.lists(st.integers(2 if align else 1, 5), min_size=dims, max_size=dims)))
    out = tuple(data.draw(st.lists(st.integers(1, 4), min_size=dims, max_size=dims)))
    x = data.draw(_floats((n, c, *spatial)))
    # coordinates around [-1, 1] and past it, some exactly on pixel centres and borders
    grid = data.draw(hnp.arrays(np.float32, (n, *out, dims),
                                elements=st.one_of(st.floats(-1.75, 1.75, width=32),
                                                   st.sampled_from([-1.0, -0.5, 0.0, 0.5, 1.0, 1.5]))))
    attrs = {"mode": mode, "padding_mode": padding, "align_corners": int(align)}
    check_kernel("GridSample", [("x", x), ("grid", grid)], attrs, rtol=1e-4, atol=1e-4)


@SETTINGS
@given(data=st.data(), dims=st.sampled_from([2, 3]), align=st.booleans())
def test_affine_grid(data, dims, align):
    n = data.draw(st.integers(1, 3))
    theta = data.draw(_floats((n, dims, dims + 1), lo=-2, hi=2))
    size = np.array([n, data.draw(st.integers(1, 3)), *[data.draw(st.integers(1, 5)) for _ in range(dims)]], np.int64)
    check_kernel("AffineGrid", [("theta", theta), ("size", size)], {"align_corners": int(align)})


@SETTINGS
@given(data=st.data(), center=st.booleans(), with_score_threshold=st.booleans())
def test_non_max_suppression(data, center, with_score_threshold):
    batches, classes, count = data.draw(st.integers(1, 2)), data.draw(st.integers(1, 3)), data.draw(st.integers(1, 8))
    # coordinates on a coarse grid: identical boxes, touching boxes, empty boxes, tied scores
    boxes = data.draw(hnp.arrays(np.float32, (batches, count, 4), elements=st.integers(0, 4).map(float)))
    scores = data.draw(hnp.arrays(np.float32, (batches, classes, count), elements=st.sampled_from([0.1, 0.5, 0.7, 0.9])))
    inputs = [("boxes", boxes), ("scores", scores), ("max", np.array([data.draw(st.integers(0, 5))], np.int64)),
              ("iou", np.array([data.draw(st.sampled_from([0.0, 0.3, 0.5]))], np.float32))]
    if with_score_threshold:
        inputs.append(("score", np.array([data.draw(st.sampled_from([0.0, 0.5, 0.7]))], np.float32)))
    check_kernel("NonMaxSuppression", inputs, {"center_point_box": int(center)}, exact=True)


@SETTINGS
@given(data=st.data(), mode=st.sampled_from(["avg", "max"]), half_pixel=st.booleans(),
       sampling_ratio=st.integers(0, 3))
def test_roi_align(data, mode, half_pixel, sampling_ratio):
    n, c = data.draw(st.integers(1, 2)), data.draw(st.integers(1, 3))
    h, w = data.draw(st.integers(1, 8)), data.draw(st.integers(1, 8))
    x = data.draw(_floats((n, c, h, w)))
    count = data.draw(st.integers(1, 4))
    # regions inside, across and outside the feature map, some of no extent
    corners = data.draw(hnp.arrays(np.float32, (count, 4), elements=st.floats(-3, 10, width=32)))
    rois = np.concatenate([np.minimum(corners[:, :2], corners[:, 2:]), np.maximum(corners[:, :2], corners[:, 2:])], 1)
    batch = data.draw(hnp.arrays(np.int64, (count,), elements=st.integers(0, n - 1)))
    attrs = {"mode": mode, "coordinate_transformation_mode": "half_pixel" if half_pixel else "output_half_pixel",
             "output_height": data.draw(st.integers(1, 4)), "output_width": data.draw(st.integers(1, 4)),
             "sampling_ratio": sampling_ratio, "spatial_scale": data.draw(st.sampled_from([1.0, 0.5, 0.25]))}
    check_kernel("RoiAlign", [("x", x), ("rois", rois), ("batch", batch)], attrs, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("mode", ["nearest", "linear", "cubic"])
def test_resize_with_a_batch_known_only_when_it_runs(mode):
    """One compiled Resize serves every batch size (the output's type fixes the rest)."""
    import copy

    from ember.ir import DType, Graph, TensorType, Value
    from ember.ir.interpreter import evaluate
    from ember.ir.types import symbol

    n = symbol("n")
    x = Value("x", TensorType(DType.float32, (n, 2, 3, 4)))
    g = Graph("g", inputs=[x], opsets={"": 28})
    scales = g.add_constant("scales", np.array([1, 1, 2, 1.5], np.float32))
    y = Value("y", TensorType(DType.float32, (n, 2, 6, 6)))
    g.outputs = g.add_node("Resize", [x, None, scales], [y], {"mode": mode}).outputs
    compiled = ember.compile(copy.deepcopy(g), opt_level=0)
    assert compiled.stats.fallback_nodes == []
    for batch in (1, 3):
        feeds = {"x": np.random.default_rng(batch).standard_normal((batch, 2, 3, 4)).astype(np.float32)}
        np.testing.assert_allclose(compiled.run(feeds)["y"], evaluate(copy.deepcopy(g), feeds)["y"], rtol=1e-5,
                                   atol=1e-5)


@SETTINGS
@given(data=st.data(), dtype=st.sampled_from([np.float32, np.int64, np.bool_]))
def test_center_crop_pad(data, dtype):
    rank = data.draw(st.integers(1, 4))
    shape = tuple(data.draw(st.lists(st.integers(0, 6), min_size=rank, max_size=rank)))
    axes = sorted(data.draw(st.sets(st.integers(0, rank - 1), min_size=1)))
    x = data.draw(hnp.arrays(dtype, shape))
    target = np.array([data.draw(st.integers(0, 8)) for _ in axes], np.int64)
    check_kernel("CenterCropPad", [("x", x), ("shape", target)], {"axes": axes}, exact=True)


@SETTINGS
@given(data=st.data(), coords=st.sampled_from(["half_pixel", "pytorch_half_pixel"]),
       dtype=st.sampled_from([np.float32, np.float64]), by_sizes=st.booleans(), exclude_outside=st.booleans(),
       mode=st.sampled_from(["linear", "cubic"]))
def test_resize_through_torch_interpolate(data, coords, dtype, by_sizes, exclude_outside, mode):
    """Linear and cubic half-pixel resizes of the trailing axes run on torch's interpolate:
    the same formula, edges included."""
    rank = 4 if mode == "cubic" else data.draw(st.integers(3, 5))
    shape = tuple(data.draw(st.lists(st.integers(1, 6), min_size=rank, max_size=rank)))
    x = data.draw(_floats(shape, dtype))
    attrs = {"mode": mode, "coordinate_transformation_mode": coords,
             "exclude_outside": int(exclude_outside and mode == "linear")}
    if by_sizes:
        sizes = np.array([*shape[:2], *[data.draw(st.integers(2, 12)) for _ in shape[2:]]], np.int64)
        inputs = [("x", x), ("roi", None), ("scales", None), ("sizes", sizes)]
    else:
        spatial = [data.draw(st.sampled_from([0.5, 0.75, 1.0, 1.5, 2.0, 2.5])) for _ in shape[2:]]
        inputs = [("x", x), ("roi", None), ("scales", np.array([1, 1, *spatial], np.float32))]
    check_kernel("Resize", inputs, attrs, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("dtype", [np.float32, np.uint8])
@pytest.mark.parametrize("scales", [[1, 1, 2, 2], [1, 1, 4, 8], [2, 1, 1, 3]])
def test_nearest_upsampling_by_whole_factors_is_one_broadcasting_copy(dtype, scales):
    """A nearest resize with asymmetric coordinates and floor rounding by whole factors (the
    FPN upsampling in PP-OCR's detector) repeats each element: one copy, equal to the
    reference to the bit."""
    from ember.runtime import externs_image

    x = np.random.default_rng(len(scales) * scales[-1]).uniform(0, 200, (2, 3, 5, 4)).astype(dtype)
    attrs = {"mode": "nearest", "coordinate_transformation_mode": "asymmetric", "nearest_mode": "floor"}
    before = externs_image.REPEATS[0]
    check_kernel("Resize", [("x", x), ("roi", None), ("scales", np.array(scales, np.float32))], attrs, exact=True)
    assert externs_image.REPEATS[0] > before


@pytest.mark.parametrize("scales, generated", [([1, 1, 2, 3], True), ([1, 1, 8, 8], True), ([1, 1, 1.5, 2], False)])
def test_nearest_upsampling_by_constant_whole_factors_is_generated_into_its_reader(scales, generated):
    """With constant scales the FPN upsampling is a gather at floor(i / factor) that the
    Add reading it computes in its own kernel (no upsampled tensor, no extern call), at any
    input size, equal to onnxruntime to the bit; a factor that is not whole stays on the
    extern."""
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    graph = helper.make_graph(
        [helper.make_node("Resize", ["x", "", "s"], ["r"], mode="nearest", coordinate_transformation_mode="asymmetric",
                          nearest_mode="floor"),
         helper.make_node("Add", ["r", "z"], ["y"])], "fpn",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 8, "h", "w"]),
         helper.make_tensor_value_info("z", TensorProto.FLOAT, ["n", 8, "H", "W"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(np.array(scales, np.float32), "s")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    compiled = ember.compile(model)
    steps = [(kind, step.name) for kind, _, step in compiled._executor._steps]
    assert (("extern", "resize") not in steps) == generated, steps
    if generated:
        assert [kind for kind, _ in steps] == ["segment"]  # the gather inside the Add's kernel
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(11)
    for n, h, w in ((1, 5, 7), (2, 3, 4)):
        x = rng.standard_normal((n, 8, h, w)).astype(np.float32)
        z = rng.standard_normal((n, 8, int(h * scales[2]), int(w * scales[3]))).astype(np.float32)
        np.testing.assert_array_equal(compiled.run({"x": x, "z": z})["y"], session.run(None, {"x": x, "z": z})[0])
