"""Externs for image ops: Resize, GridSample and AffineGrid, written in torch ops.

Resize and GridSample are separable: each output element is a weighted sum of input
elements picked by a few taps per resized axis. The taps (indices) and weights are
computed here from the scales, sizes, roi or grid fed at run time, in float64 as
ONNX's definition does, and the sum is one gather and one reduction per axis (Resize)
or over every tap combination (GridSample).
"""

from __future__ import annotations

import functools
import itertools
import math

import numpy as np
from ._torch import F, torch

from ..errors import ExecutionError
from .externs import extern



# -- Resize -------------------------------------------------------------------------------
def _source_coords(params, out_n: int, in_n: int, scale: float, roi) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Each output index's coordinate in the input along one axis, and (crop and resize
    only) which ones fall outside the input and take the extrapolation value."""
    y = torch.arange(out_n, dtype=torch.float64)
    out_w = scale * in_n  # the unrounded output width, as the definition uses it
    mode = params["coordinate_transformation_mode"]
    if mode == "align_corners":
        return (torch.zeros(out_n, dtype=torch.float64) if out_w == 1 else y * (in_n - 1) / (out_w - 1)), None
    if mode == "asymmetric":
        return y / scale, None
    if mode == "tf_crop_and_resize":
        # the roi's own arithmetic in its dtype (float32 scalars, as in the definition): where
        # a source coordinate lands on the input's edge, its rounding decides extrapolation
        lo, hi = roi
        x = torch.full((out_n,), float((hi - lo) * (in_n - 1) / 2), dtype=torch.float64) if out_w == 1 \
            else y * (hi - lo) * (in_n - 1) / (out_w - 1)
        x = x + lo * (in_n - 1)
        return x, (x < 0) | (x > in_n - 1)
    if mode == "pytorch_half_pixel":
        return (torch.full((out_n,), -0.5, dtype=torch.float64) if out_w == 1 else (y + 0.5) / scale - 0.5), None
    if mode == "half_pixel":
        return (y + 0.5) / scale - 0.5, None
    # half_pixel_symmetric: the centre of the input maps to the centre of the output
    offset = in_n / 2 * (1 - out_n / out_w)
    return offset + (y + 0.5) / scale - 0.5, None


def _cubic(x: torch.Tensor, a: float) -> torch.Tensor:
    """Keys' cubic convolution kernel at distance |x|."""
    x = x.abs()
    near = ((a + 2) * x - (a + 3)) * x * x + 1
    far = ((a * x - 5 * a) * x + 8 * a) * x - 4 * a
    return torch.where(x <= 1, near, torch.where(x < 2, far, torch.zeros_like(x)))


def _tap_weights(params, ratio: torch.Tensor, scale: float) -> torch.Tensor:
    """[out, taps] interpolation weights, given each output's distance `ratio` in (0, 1]
    past the input index at or left of its source coordinate."""
    mode, r = params["mode"], ratio[:, None]
    if mode == "nearest":
        how = params["nearest_mode"]
        right = {"round_prefer_floor": r > 0.5, "round_prefer_ceil": r >= 0.5,
                 "floor": torch.zeros_like(r, dtype=torch.bool), "ceil": torch.ones_like(r, dtype=torch.bool)}[how]
        right = right | (r == 1)
        return torch.cat([(~right).to(torch.float64), right.to(torch.float64)], dim=1)
    if mode == "cubic":
        return _cubic_weights(r, params["cubic_coeff_a"], scale, params["antialias"])
    if params["antialias"]:  # the kernel stretched by 1/scale when downsampling, renormalized
        s = min(scale, 1.0)
        start = math.floor(-1 / s) + 1
        x = (torch.arange(start, 2 - start, dtype=torch.float64)[None, :] - r) * s
        w = (1 - x.abs()).clamp(0, 1)
        return w / w.sum(dim=1, keepdim=True)
    return torch.cat([1 - r, r], dim=1)


def _cubic_weights(r: torch.Tensor, a: float, scale: float, antialias: bool) -> torch.Tensor:
    """Keys' cubic kernel at each tap, computed in float32 with the distances rounded to
    float32 where the definition's float32 coefficient `a` meets them (integer outputs,
    rounded half to even, must see the same sums as the reference)."""
    a = torch.tensor(a, dtype=torch.float32)
    f32 = lambda t: t.to(torch.float32)  # noqa: E731
    if antialias:  # the kernel stretched by 1/scale when downsampling, renormalized
        s = min(scale, 1.0)
        start = math.floor(-2 / s) + 1
        x = ((torch.arange(start, 2 - start, dtype=torch.float64)[None, :] - r) * s).abs()
        x2 = x * x
        x3 = x * x2
        near = (a + 2) * f32(x3) - (a + 3) * f32(x2) + 1
        far = a * f32(x3) - 5 * a * f32(x2) + 8 * a * f32(x) - 4 * a
        w = torch.where(x <= 1, near, torch.where(x < 2, far, 0.0))
        total = w[:, 0]
        for k in range(1, w.shape[1]):  # one tap after another, in float32
            total = total + w[:, k]
        # (the definition's taps past the kernel are float64 zeros, which make it divide in float64)
        return torch.where((x >= 2).any(dim=1, keepdim=True), w.to(torch.float64) / total[:, None].to(torch.float64),
                           (w / total[:, None]).to(torch.float64))

    def far(d):
        return ((a * d - 5 * a) * d + 8 * a) * d - 4 * a

    def near(d):
        return ((a + 2) * d - (a + 3)) * d * d + 1

    # at distances r + 1, r, 1 - r and (1 - r) + 1, each formed as the definition forms it
    return torch.cat([far(f32(r + 1)), near(f32(r)), near(f32(1 - r)), far(f32((1 - r) + 1))], dim=1).to(torch.float64)


def _resize_axis(params, data: torch.Tensor, axis: int, scale: float, out_n: int, roi) -> torch.Tensor:
    """`data` resized along `axis` to `out_n` elements: the nearest element (in data's
    dtype), or the weighted sum of the taps (data in float64, as the definition computes).
    (The definition's nearest is a weighted sum too, whose zero weight on the other
    neighbour turns a NaN or infinity there into NaN; picking the element does not.)"""
    in_n = data.shape[axis]
    if out_n == 0 or data.numel() == 0:
        shape = list(data.shape)
        shape[axis] = out_n
        return data.new_zeros(shape)
    x, outside = _source_coords(params, out_n, in_n, scale, roi)
    floor = torch.floor(x)
    weights = _tap_weights(params, torch.where(x == floor, torch.ones_like(x), x - floor), scale)
    n = weights.shape[1]
    # the n input indices nearest the source coordinate, ties to the smaller (edge padded)
    pad = math.ceil(n / 2)
    p = torch.floor(x + pad)
    frac = x + pad - p
    if n % 2 == 0:
        offset = torch.where(frac == 0, -(n // 2), -(n // 2) + 1)
    else:
        offset = torch.where(frac <= 0.5, -((n - 1) // 2), -((n - 1) // 2) + 1)
    taps = (p.long() + offset)[:, None] + torch.arange(n)[None, :] - pad
    if params["exclude_outside"]:
        weights = torch.where((taps < 0) | (taps >= in_n), 0.0, weights)
        total = weights.sum(dim=1, keepdim=True)
        weights = weights / torch.where(total == 0, 1.0, total)
    taps = taps.clamp(0, in_n - 1)
    # (the coordinates and weights, a few floats an output index, are worked out on the host;
    # to data's device with them, where a cuda program's data is)
    taps, weights = taps.to(data.device), weights.to(data.device)
    outside = outside.to(data.device) if outside is not None else None
    along = (1,) * axis + (out_n,) + (1,) * (data.dim() - axis - 1)  # a [out] vector along `axis`
    if params["mode"] == "nearest" and not params["exclude_outside"]:  # one tap of weight 1: pick it
        result = data.index_select(axis, taps.gather(1, weights.argmax(dim=1, keepdim=True))[:, 0])
    else:
        result = sum(data.index_select(axis, taps[:, k]) * weights[:, k].reshape(along) for k in range(n))
    if outside is not None:
        result = torch.where(outside.reshape(along), params["extrapolation_value"], result)
    return result


def _resize_plan(params, shape, roi, scales, sizes) -> tuple[list[float], list[int], list | None]:
    """(scale, output size) of every axis and the roi per axis, from the inputs fed."""
    rank, axes = len(shape), params["axes"]
    full_scales, out = [1.0] * rank, list(shape)
    if scales is not None and scales.numel():
        for a, s in zip(axes, scales.tolist()):
            full_scales[a] = float(s)
            out[a] = int(s * shape[a])
    else:
        for a, n in zip(axes, sizes.tolist()):
            out[a] = int(n)
            full_scales[a] = n / shape[a]
        policy = params["keep_aspect_ratio_policy"]
        if policy != "stretch":
            scale = (min if policy == "not_larger" else max)(full_scales[a] for a in axes)
            for a in axes:
                full_scales[a], out[a] = scale, int(scale * shape[a] + 0.5)
    rois = None
    if roi is not None and roi.numel():
        values, k = roi.reshape(-1), len(axes)
        rois = [(0.0, 1.0)] * rank
        for i, a in enumerate(axes):
            rois[a] = (values[i], values[k + i])  # 0-d tensors of roi's dtype
    return full_scales, out, rois


def _saturate(result: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Cast as the definition does: integers rounded half to even, then clipped."""
    if result.dtype == dtype:
        return result
    if dtype.is_floating_point:
        info = torch.finfo(dtype)
        return result.clamp(info.min, info.max).to(dtype)
    info = torch.iinfo(dtype)
    return result.round().clamp(info.min, info.max).to(dtype)


_TORCH_MODES = {("linear", 1): "linear", ("linear", 2): "bilinear", ("linear", 3): "trilinear",
                ("cubic", 2): "bicubic"}


def _torch_interpolate(params, x: torch.Tensor, scales: list[float], out: list[int]) -> torch.Tensor | None:
    """The resize by torch's own interpolation, where it computes the definition's formula
    (half-pixel source coordinates, edge taps clamped, no antialias; cubic with a = -0.75
    and outside taps kept) over the trailing 1-3 axes with the definition's scales; None
    elsewhere."""
    rank, coords = x.dim(), params["coordinate_transformation_mode"]
    torch_mode = _TORCH_MODES.get((params["mode"], rank - 2))
    cubic_as_torch = params["cubic_coeff_a"] == -0.75 and not params["exclude_outside"]
    if (torch_mode is None or params["antialias"] or coords not in ("half_pixel", "pytorch_half_pixel")
            or (params["mode"] == "cubic" and not cubic_as_torch)
            or x.dtype not in (torch.float32, torch.float64) or x.numel() == 0 or 0 in out
            or any(scales[a] != 1.0 or out[a] != x.shape[a] for a in (0, 1))):
        return None
    spatial = range(2, rank)
    if any(math.floor(x.shape[a] * scales[a]) != out[a] or (coords == "pytorch_half_pixel" and out[a] <= 1)
           for a in spatial):
        return None
    return F.interpolate(x, scale_factor=[scales[a] for a in spatial], mode=torch_mode, align_corners=False,
                         recompute_scale_factor=False)


REPEATS = [0]  # resizes run as a broadcasting copy (tests read it)


def _repeat_nearest(params, x: torch.Tensor, scales: list[float], out: list[int], y: torch.Tensor) -> bool:
    """A nearest resize by whole factors with asymmetric coordinates and floor rounding
    (source index = floor(i / f): each element repeated f times along the axis, as FPN
    upsampling in PP-OCR's and YOLO's necks does) as one broadcasting copy into y. False
    where the resize is not one (the caller goes on)."""
    if (params["mode"] != "nearest" or params["coordinate_transformation_mode"] != "asymmetric"
            or params["nearest_mode"] != "floor" or x.numel() == 0 or y.numel() == 0):
        return False
    factors = []
    for a in range(x.dim()):
        f = round(scales[a])
        if f < 1 or scales[a] != f or out[a] != x.shape[a] * f:
            return False
        factors.append(f)
    repeated = [d for a in range(x.dim()) for d in (x.shape[a], factors[a])]  # y as [..., size, factor, ...]
    y.view(repeated).copy_(x.reshape([d for a in range(x.dim()) for d in (x.shape[a], 1)]).expand(repeated))
    REPEATS[0] += 1
    return True


@extern("resize")
def resize(params, x, roi, scales, sizes, y):
    if params["coordinate_transformation_mode"] == "tf_crop_and_resize" and (roi is None or not roi.numel()):
        raise ExecutionError(f"{params['where']}: tf_crop_and_resize needs a roi")
    full_scales, out, rois = _resize_plan(params, x.shape, roi, scales, sizes)
    if out != list(y.shape):
        raise ExecutionError(f"{params['where']}: the scales or sizes fed give an output of shape {out}, "
                             f"but the model's declared output type is {list(y.shape)}")
    if rois is None and y.is_contiguous() and _repeat_nearest(params, x, full_scales, out, y):
        return
    fast = _torch_interpolate(params, x, full_scales, out) if rois is None else None
    if fast is not None:
        y.copy_(fast)
        return
    result = x if params["mode"] == "nearest" and not params["exclude_outside"] else x.to(torch.float64)
    for a in params["axes"]:
        identity = math.isclose(full_scales[a], 1.0) and out[a] == x.shape[a] and (
            rois is None or (math.isclose(float(rois[a][0]), 0.0) and math.isclose(float(rois[a][1]), 1.0)))
        if not identity:
            result = _resize_axis(params, result, a, full_scales[a], out[a], None if rois is None else rois[a])
    y.copy_(_saturate(result, y.dtype))


# -- GridSample ---------------------------------------------------------------------------
def _reflect(x: torch.Tensor, lo: float, hi: float) -> torch.Tensor:
    """Reflect coordinates outside [lo, hi] off the borders until they fall inside."""
    span = hi - lo
    below, above = lo - x, x - hi
    dx = torch.where(x < lo, below, above)
    n = torch.trunc(dx / span)
    r = dx - n * span
    even = torch.remainder(n, 2) == 0
    low_side = torch.where(even, lo + r, hi - r)
    high_side = torch.where(even, hi - r, lo + r)
    return torch.where(x < lo, low_side, torch.where(x > hi, high_side, x))


def _grid_taps(params, coord: torch.Tensor, size: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(input index, weight) of each tap along one spatial axis of `size` for the
    normalized coordinates `coord`; an index of -1 reads zero (zeros padding)."""
    align, padding, mode = params["align_corners"], params["padding_mode"], params["mode"]
    # denormalized in the grid's own dtype, as the definition does, then carried in float64
    x = ((coord + 1) / 2 * (size - 1) if align else ((coord + 1) * size - 1) / 2).to(torch.float64)
    lo, hi = (0.0, size - 1.0) if align else (-0.5, size - 0.5)
    if mode == "nearest":
        x = torch.round(x)  # half to even, as rint
    outside = (x < lo) | (x > hi)
    if padding == "border":
        x = torch.where(outside, x.clamp(0, size - 1), x)
    elif padding == "reflection":
        x = torch.where(outside, _reflect(x, lo, hi), x)

    def pixel(i: torch.Tensor) -> torch.Tensor:
        if padding == "zeros":
            return torch.where((i >= 0) & (i < size), i, -1)
        if padding == "border":
            return i.clamp(0, size - 1)
        return torch.trunc(_reflect(i.to(torch.float64), lo, hi)).long()

    if mode == "nearest":
        return [(pixel(torch.trunc(x).long()), torch.ones_like(x))]
    x0 = torch.floor(x)
    t = x - x0
    if mode == "linear":
        offsets, weights = (0, 1), (1 - t, t)
    else:
        offsets, weights = (-1, 0, 1, 2), tuple(_cubic(t - o, -0.75) for o in (-1, 0, 1, 2))
    return [(pixel(x0.long() + o), w) for o, w in zip(offsets, weights)]


@extern("grid_sample")
def grid_sample(params, x, grid, y):
    n, c, *dims = x.shape
    if y.numel() == 0:
        return
    coords = grid.reshape(n, -1, len(dims))  # [N, points, D], the last axis first
    per_axis = [_grid_taps(params, coords[..., len(dims) - 1 - i], size) for i, size in enumerate(dims)]
    flat = x.reshape(n, c, -1).to(torch.float64)
    total = torch.zeros(n, c, coords.shape[1], dtype=torch.float64, device=x.device)
    strides = [math.prod(dims[i + 1:]) for i in range(len(dims))]
    for taps in itertools.product(*per_axis):  # one tap along each axis: a weighted input element
        index = sum(tap.clamp(min=0) * stride for (tap, _), stride in zip(taps, strides))
        weight = functools.reduce(torch.mul, [w for _, w in taps])
        valid = functools.reduce(torch.logical_and, [tap >= 0 for tap, _ in taps])
        picked = torch.gather(flat, 2, index[:, None, :].expand(n, c, -1))
        total += torch.where(valid[:, None, :], picked, 0.0) * weight[:, None, :]
    y.copy_(total.reshape(y.shape).to(y.dtype))


# -- AffineGrid ---------------------------------------------------------------------------
def _grid_points(n: int, align_corners: bool) -> torch.Tensor:
    """Normalized coordinates of n pixels: their centres, or (align_corners) -1 to 1 by
    corners, where a single pixel sits at -1 as the definition's arange puts it."""
    i = torch.arange(n, dtype=torch.float64)
    if align_corners:
        return -1 + i * (2.0 / (n - 1)) if n > 1 else torch.full((n,), -1.0, dtype=torch.float64)
    return -1 + 1.0 / n + i * (2.0 / n)


@extern("affine_grid")
def affine_grid(params, theta, size, y):
    n, *dims, k = y.shape
    fed = [int(v) for v in size.tolist()]
    if fed[0] != n or fed[2:] != list(dims):
        raise ExecutionError(f"{params['where']}: size {fed} fed at run time, but the model's declared "
                             f"output type is {list(y.shape)}")
    # (x, y[, z], 1) at every output pixel, x along the last axis, times each theta
    axes = torch.meshgrid(*[_grid_points(d, params["align_corners"]) for d in dims], indexing="ij")
    base = torch.stack([*reversed(axes), torch.ones(dims, dtype=torch.float64)], dim=-1).reshape(-1, k + 1)
    base = base.to(theta.device)  # (worked out on the host: to theta's device, where a cuda program's is)
    grid = torch.matmul(base, theta.to(torch.float64).transpose(1, 2))
    y.copy_(grid.reshape(y.shape).to(y.dtype))


# -- NonMaxSuppression ----------------------------------------------------------------------
def _suppresses(boxes: torch.Tensor, center_point_box: bool, iou_threshold: float) -> torch.Tensor:
    """[B, B]: box i and box j overlap by more than the threshold (in the boxes' dtype;
    boxes with no area, or not overlapping, never suppress)."""
    if center_point_box:
        cx, cy, w, h = boxes.unbind(-1)
        x_lo, x_hi, y_lo, y_hi = cx - w / 2, cx + w / 2, cy - h / 2, cy + h / 2
    else:
        y1, x1, y2, x2 = boxes.unbind(-1)
        x_lo, x_hi = torch.minimum(x1, x2), torch.maximum(x1, x2)
        y_lo, y_hi = torch.minimum(y1, y2), torch.maximum(y1, y2)
    ix_lo, ix_hi = torch.maximum(x_lo[:, None], x_lo[None, :]), torch.minimum(x_hi[:, None], x_hi[None, :])
    iy_lo, iy_hi = torch.maximum(y_lo[:, None], y_lo[None, :]), torch.minimum(y_hi[:, None], y_hi[None, :])
    inter = (ix_hi - ix_lo) * (iy_hi - iy_lo)
    area = (x_hi - x_lo) * (y_hi - y_lo)
    union = area[:, None] + area[None, :] - inter
    overlap = (ix_hi > ix_lo) & (iy_hi > iy_lo) & (inter > 0)
    valid = (area[:, None] > 0) & (area[None, :] > 0) & (union > 0)
    return overlap & valid & (inter / union > iou_threshold)


@extern("non_max_suppression")
def non_max_suppression(params, boxes, scores, max_output, iou_threshold, score_threshold, y):
    """Per batch and class: boxes by descending score (ties: lower index first) above the
    score threshold, each kept unless it overlaps one kept before; at most max_output."""
    limit = max(int(max_output.reshape(-1)[0]), 0) if max_output is not None and max_output.numel() else 0
    iou = float(iou_threshold.reshape(-1)[0]) if iou_threshold is not None and iou_threshold.numel() else 0.0
    # box by box, a decision each: on the host, whatever the program's device (y.copy_ moves the result)
    boxes, scores = boxes.cpu(), scores.cpu()
    score_threshold = None if score_threshold is None else score_threshold.cpu()
    selected = []
    for b in range(boxes.shape[0]):
        suppresses = _suppresses(boxes[b], params["center_point_box"], iou)
        for c in range(scores.shape[1]):
            s = scores[b, c]
            order = torch.sort(s, descending=True, stable=True).indices
            if score_threshold is not None and score_threshold.numel():
                order = order[s[order] > score_threshold.reshape(-1)[0]]
            kept: list[int] = []
            for i in order.tolist():
                if len(kept) >= limit:
                    break
                if not kept or not bool(suppresses[i, kept].any()):
                    kept.append(i)
            selected += [(b, c, i) for i in kept]
    if len(selected) != y.shape[0]:
        raise ExecutionError(f"{params['where']}: {len(selected)} boxes selected, but the model's declared "
                             f"output type has {y.shape[0]}")
    if selected:
        y.copy_(torch.tensor(selected, dtype=torch.int64))


# -- RoiAlign -------------------------------------------------------------------------------
def _roi_samples(start: float, bin_size: float, bins: int, grid: int, size: int):
    """Bilinear taps along one axis of every sample point of every bin, [bins, grid] each:
    (low index, high index, weight of low, weight of high, inside the feature map)."""
    at = (start + torch.arange(bins, dtype=torch.float64)[:, None] * bin_size
          + (torch.arange(grid, dtype=torch.float64)[None, :] + 0.5) * bin_size / grid)
    inside = (at >= -1.0) & (at <= size)
    at = at.clamp(min=0)
    low = at.long()  # (at >= 0: truncation is floor)
    last = low >= size - 1
    low = torch.where(last, size - 1, low)
    high = torch.where(last, size - 1, low + 1)
    frac = torch.where(last, 0.0, at - low)
    return low, high, 1 - frac, frac, inside


@extern("roi_align")
def roi_align(params, x, rois, batch_indices, y):
    """Each region's bins, each the average (or the max) of a grid of bilinear samples."""
    height, width = x.shape[2:]
    ph, pw = y.shape[2:]
    scale, ratio = params["spatial_scale"], params["sampling_ratio"]
    offset = 0.5 if params["half_pixel"] else 0.0
    if rois.dtype not in (torch.float16, torch.float32, torch.float64):
        rois = rois.float()
    # the regions (a few numbers each) are read on the host, their sample taps worked out there
    # and moved to the features' device (a cuda program's data is on the GPU)
    rois, batch_indices = rois.cpu().numpy(), batch_indices.cpu()
    real = rois.dtype.type
    for n in range(rois.shape[0]):
        # the region in the rois' own precision, as the reference works it: a float32 width
        # that rounds to 0 takes no samples (in float64 it would take one)
        x0, y0, x1, y1 = (v * real(scale) - real(offset) for v in rois[n])
        roi_w, roi_h = x1 - x0, y1 - y0
        if not params["half_pixel"]:
            roi_w, roi_h = max(roi_w, real(1)), max(roi_h, real(1))
        bin_h, bin_w = roi_h / real(ph), roi_w / real(pw)
        grid_h = ratio if ratio > 0 else int(np.ceil(bin_h))
        grid_w = ratio if ratio > 0 else int(np.ceil(bin_w))
        ylo, yhi, ywl, ywh, yin = (t.to(x.device) for t in _roi_samples(float(y0), float(bin_h), ph, grid_h, height))
        xlo, xhi, xwl, xwh, xin = (t.to(x.device) for t in _roi_samples(float(x0), float(bin_w), pw, grid_w, width))
        feature = x[int(batch_indices[n])].to(torch.float64)  # [C, H, W]
        inside = (yin[:, :, None, None] & xin[None, None, :, :])  # [ph, gh, pw, gw]

        def term(yi, yw, xi, xw):
            picked = feature[:, yi[:, :, None, None], xi[None, None, :, :]]
            return picked * torch.where(inside, yw[:, :, None, None] * xw[None, None, :, :], 0.0)

        terms = [term(ylo, ywl, xlo, xwl), term(ylo, ywl, xhi, xwh), term(yhi, ywh, xlo, xwl),
                 term(yhi, ywh, xhi, xwh)]
        if params["mode"] == "avg":
            pooled = sum(terms).sum(dim=(2, 4)) / max(grid_h * grid_w, 1)
        elif grid_h * grid_w:
            pooled = torch.stack(terms).amax(dim=0).amax(dim=(2, 4))
        else:
            pooled = torch.zeros(x.shape[1], ph, pw, dtype=torch.float64, device=x.device)
        y[n].copy_(pooled.to(y.dtype))


# -- CenterCropPad --------------------------------------------------------------------------
def _centred(small: int, large: int) -> slice:
    """Where `small` elements sit centred in `large` (an odd margin puts the extra one last)."""
    start = (large - small) // 2
    return slice(start, start + small)


@extern("center_crop_pad")
def center_crop_pad(params, x, shape, y):
    """x cropped (centred) along the axes longer than asked, zero-padded (centred) along
    the shorter ones."""
    out = list(x.shape)
    for a, n in zip(params["axes"], shape.tolist()):
        out[a] = int(n)
    if out != list(y.shape):
        raise ExecutionError(f"{params['where']}: shape {shape.tolist()} fed at run time, but the model's "
                             f"declared output type is {list(y.shape)}")
    src = tuple(_centred(m, n) if m < n else slice(None) for n, m in zip(x.shape, out))
    dst = tuple(_centred(n, m) if n < m else slice(None) for n, m in zip(x.shape, out))
    y.zero_()
    y[dst] = x[src]
