"""Image resampling ops: Resize, GridSample, AffineGrid. Schemas, type functions and
references are ONNX's; a nearest Resize by whole constant factors with asymmetric
coordinates and floor rounding (FPN upsampling) is a generated gather of x at
floor(i / factor), fused into what reads it; the other lowerings are externs in torch ops
(ember/runtime/externs_image.py) that read the scales, sizes, roi, grid or size fed
at run time and check them against the output's declared type: its sizes (known
before the kernel runs, or the node would not be lowered) are the buffer the extern
fills, which makes a NonMaxSuppression whose type does not fix its count a fallback."""

from __future__ import annotations

import numpy as np
import sympy

from ..dtypes import DType
from ._lowering import FLOATS, NotLowerable, attrs, out_type, register_lowering
from ._symbolic import normalize_axis
from ..registry import get_op
from ._geometry import resize_infer
from .onnx_standard import standard_op

for _op in ("Resize", "GridSample", "AffineGrid", "NonMaxSuppression", "RoiAlign", "CenterCropPad", "ImageDecoder"):
    standard_op(_op)
get_op("Resize").infer = resize_infer(get_op("Resize").infer)

# what the externs read and write: dtypes torch views ember's buffers as
TORCH_FLOATS = FLOATS | {DType.float16}
_RESIZED = TORCH_FLOATS | {DType.int8, DType.uint8, DType.int16, DType.int32, DType.int64}
_COORDINATE_MODES = {"half_pixel", "half_pixel_symmetric", "pytorch_half_pixel", "align_corners", "asymmetric",
                     "tf_crop_and_resize"}
_NEAREST_MODES = {"round_prefer_floor", "round_prefer_ceil", "floor", "ceil"}


@register_lowering("Resize")
def _lower_resize(ctx, node, ins):
    x, roi, scales, sizes = (ins + [None] * 4)[:4]
    a = attrs(node)
    if x.dtype not in _RESIZED:
        raise NotLowerable(f"Resize of {x.dtype.name}")
    if a["mode"] not in ("nearest", "linear", "cubic") or a["coordinate_transformation_mode"] not in _COORDINATE_MODES \
            or a["nearest_mode"] not in _NEAREST_MODES or (a["mode"] == "nearest" and a["antialias"]):
        raise NotLowerable("a mode the definition does not have")
    if scales is None and sizes is None:
        raise NotLowerable("neither scales nor sizes")
    rank = len(x.shape)
    axes = [normalize_axis(v, rank) for v in a["axes"]] if a["axes"] else list(range(rank))
    dtype, shape = out_type(node)
    factors = _whole_factors(ctx, node, a, axes, shape)
    if factors is not None:
        return [ctx.pointwise(shape, dtype, lambda b, i: x.load(b, tuple(
            sympy.floor(v / f) if f > 1 else v for v, f in zip(i, factors))), cost=x.cost + 1)]
    return ctx.extern("resize", [x, roi, scales, sizes], [out_type(node)], where=node.describe(), axes=axes,
                      mode=a["mode"], coordinate_transformation_mode=a["coordinate_transformation_mode"],
                      nearest_mode=a["nearest_mode"], cubic_coeff_a=float(a["cubic_coeff_a"]),
                      exclude_outside=bool(a["exclude_outside"]), antialias=bool(a["antialias"]),
                      extrapolation_value=float(a["extrapolation_value"]),
                      keep_aspect_ratio_policy=a["keep_aspect_ratio_policy"])


def _whole_factors(ctx, node, a, axes, shape) -> list[int] | None:
    """The factor of each axis where the Resize repeats each element a whole number of
    times (nearest, asymmetric coordinates, floor rounding: source index floor(i / f),
    scales constant and whole, the output's sizes `shape` known); else None."""
    if (a["mode"] != "nearest" or a["coordinate_transformation_mode"] != "asymmetric" or a["nearest_mode"] != "floor"
            or a["exclude_outside"] or len(node.inputs) < 3 or node.inputs[2] is None):
        return None
    scales = node.inputs[2].const if node.inputs[2].const is not None else ctx.known_contents(node.inputs[2])
    if scales is None:
        return None
    scales = np.asarray(scales, dtype=np.float64).reshape(-1).tolist()
    if len(scales) != len(axes):
        return None
    factors = [1] * len(shape)
    for axis, scale in zip(axes, scales):
        if not (scale >= 1 and scale == int(scale)):
            return None
        factors[axis] = int(scale)
    if not ctx.knows(shape) or any(sympy.expand(shape[k] - node.inputs[0].type.shape[k] * f) != 0
                                   for k, f in enumerate(factors)):
        return None
    return factors


@register_lowering("GridSample")
def _lower_grid_sample(ctx, node, ins):
    x, grid = ins
    a = attrs(node)
    if x.dtype not in TORCH_FLOATS or grid.dtype not in TORCH_FLOATS:
        raise NotLowerable("not float")
    if a["mode"] not in ("nearest", "linear", "cubic") or a["padding_mode"] not in ("zeros", "border", "reflection"):
        raise NotLowerable("a mode the definition does not have")
    return ctx.extern("grid_sample", [x, grid], [out_type(node)], mode=a["mode"], padding_mode=a["padding_mode"],
                      align_corners=bool(a["align_corners"]))


@register_lowering("AffineGrid")
def _lower_affine_grid(ctx, node, ins):
    theta, size = ins
    if theta.dtype not in TORCH_FLOATS or len(theta.shape) != 3 or len(out_type(node)[1]) not in (4, 5):
        raise NotLowerable("not a float 2-d or 3-d grid")
    return ctx.extern("affine_grid", [theta, size], [out_type(node)], where=node.describe(),
                      align_corners=bool(attrs(node)["align_corners"]))


@register_lowering("NonMaxSuppression")
def _lower_non_max_suppression(ctx, node, ins):
    boxes, scores = ins[0], ins[1]
    rest = (ins[2:] + [None] * 3)[:3]
    if boxes.dtype not in TORCH_FLOATS or scores.dtype not in TORCH_FLOATS:
        raise NotLowerable("not float")
    # how many boxes are kept depends on the values; only a declared output type fixes it
    return ctx.extern("non_max_suppression", [boxes, scores, *rest], [out_type(node)], where=node.describe(),
                      center_point_box=bool(attrs(node)["center_point_box"]))


@register_lowering("RoiAlign")
def _lower_roi_align(ctx, node, ins):
    x, rois, batch_indices = ins
    if x.dtype not in TORCH_FLOATS or len(x.shape) != 4:
        raise NotLowerable("not a float [N, C, H, W] feature map")
    a = attrs(node)
    return ctx.extern("roi_align", ins, [out_type(node)], mode=a["mode"],
                      half_pixel=a["coordinate_transformation_mode"] == "half_pixel",
                      spatial_scale=float(a["spatial_scale"]), sampling_ratio=int(a["sampling_ratio"]))


@register_lowering("CenterCropPad")
def _lower_center_crop_pad(ctx, node, ins):
    x, shape = ins
    if x.dtype not in _RESIZED | {DType.bool}:
        raise NotLowerable(f"CenterCropPad of {x.dtype.name}")
    rank, axes = len(x.shape), attrs(node)["axes"]
    axes = [normalize_axis(v, rank) for v in axes] if axes else list(range(rank))
    return ctx.extern("center_crop_pad", [x, shape], [out_type(node)], where=node.describe(), axes=axes)


@register_lowering("ImageDecoder")
def _lower_image_decoder(ctx, node, ins):
    raise NotLowerable("decoding JPEG/PNG/... needs an image codec library; torch's CPU kernels have none")
