"""Externs for the spatial ops torch's pooling and convolution entry points do not cover
as ONNX defines them: pools over any window geometry (dilated, asymmetrically padded,
ceil mode, Lp norms, MaxPool's indices), ConvTranspose with ONNX's pads and output
shape, Col2Im and MaxUnpool.

A pool gathers each output's window taps along every spatial axis (index_select with
the geometry its lowering computed), masks the taps that fall on padding or past the
padded input, and reduces.
"""

from __future__ import annotations

import math

from ._torch import F, torch


from ..errors import ExecutionError
from .externs import extern


def _gather_windows(x: torch.Tensor, params) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """x [N, C, *spatial] -> (taps [N, C, *out, K], inside [*out, K]: the tap reads the
    input, not padding; counted [*out, K]: the tap lies within the padded input;
    input [*out, K]: the flat spatial index it reads, in storage order)."""
    kernel, strides, dilations = params["kernel"], params["strides"], params["dilations"]
    out, begin, limit = params["out"], params["begin"], params["limit"]
    dims = len(kernel)
    spatial = list(x.shape[2:])
    order = range(dims) if params.get("storage_order", 0) else range(dims - 1, -1, -1)
    place, step = [0] * dims, 1
    for i in order:  # the flat index's stride of each axis (column-major for storage_order 1)
        place[i], step = step, step * spatial[i]
    inside = counted = torch.ones((), dtype=torch.bool)
    flat = torch.zeros((), dtype=torch.long)
    for i in range(dims):
        pos = strides[i] * torch.arange(out[i])[:, None] + dilations[i] * torch.arange(kernel[i])[None, :]
        idx = pos - begin[i]
        shape = [1] * (2 * dims)
        shape[2 * i:2 * i + 2] = [out[i], kernel[i]]
        inside = inside & ((idx >= 0) & (idx < spatial[i])).reshape(shape)
        counted = counted & (pos < limit[i]).reshape(shape)
        flat = flat + (idx.clamp(0, spatial[i] - 1) * place[i]).reshape(shape)
        x = x.index_select(2 + 2 * i, idx.clamp(0, spatial[i] - 1).reshape(-1)).unflatten(2 + 2 * i,
                                                                                          (out[i], kernel[i]))
    # [O0, k0, O1, k1, ...] -> [O0, O1, ..., k0 * k1 * ...]
    perm = [2 * i for i in range(dims)] + [2 * i + 1 for i in range(dims)]
    window = (lambda t: t.expand(*[d for pair in zip(out, kernel) for d in pair]).permute(perm)
              .reshape(*out, -1))
    taps = x.permute(0, 1, *[2 + p for p in perm]).reshape(*x.shape[:2], *out, -1)
    return taps, window(inside), window(counted), window(flat)


@extern("window_pool")
def window_pool(params, x, y, indices=None):
    kind = params["kind"]
    taps, inside, counted, flat = _gather_windows(x, params)
    if kind == "max":
        use = inside & counted
        if x.dtype.is_floating_point:
            use = use & ~torch.isnan(taps)
            low = float("-inf")
        else:
            low = torch.iinfo(x.dtype).min
        best = torch.where(use, taps, torch.full((), low, dtype=x.dtype)).max(dim=-1)
        y.copy_(best.values)
        if indices is not None:
            n, c = x.shape[:2]
            planes = torch.arange(n * c).reshape(n, c, *[1] * (x.dim() - 2)) * math.prod(x.shape[2:])
            indices.copy_(planes + flat.expand(*taps.shape).gather(-1, best.indices[..., None])[..., 0])
        return
    values = taps.to(torch.float64)
    if kind == "lp":
        values = values.abs() ** params["p"]
    if kind == "lp":  # padding counts as zeros, NaN inputs are left out
        values = torch.where(inside, values, 0.0)
        use = counted & ~torch.isnan(values)
    elif params["count_include_pad"]:  # padding counts as zeros
        values = torch.where(inside, values, 0.0)
        use = counted.expand(values.shape)
    else:  # the mean of the input taps (NaNs left out, as the reference's padding)
        use = inside & counted & ~torch.isnan(values)
    mean = torch.where(use, values, 0.0).sum(dim=-1) / use.sum(dim=-1)
    if kind == "lp":
        mean = (math.prod(params["kernel"]) * mean) ** (1.0 / params["p"])
    y.copy_(mean.to(y.dtype))


@extern("conv_transpose")
def conv_transpose(params, x, w, bias, y):
    """The full transposed convolution, then the output's window of it: output element j
    of each axis is full element j + begin (zero where there is none). (Non-overlapping
    windows, kernel = stride, are lowered as a GEMM and a gather: ir/ops/spatial.py.)"""
    dims = x.dim() - 2
    fn = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}[dims]
    full = fn(x, w, None, stride=tuple(params["strides"]), groups=params["group"],
              dilation=tuple(params["dilations"]))
    y.zero_()
    src, dst = [slice(None)] * 2, [slice(None)] * 2
    for i, b in enumerate(params["begin"]):
        first = max(0, -b)  # the first output element with a full element
        n = max(0, min(y.shape[2 + i], full.shape[2 + i] - b) - first)
        src.append(slice(first + b, first + b + n))
        dst.append(slice(first, first + n))
    y[tuple(dst)] = full[tuple(src)]
    if bias is not None:
        y += bias.reshape(1, -1, *[1] * dims)


@extern("col2im")
def col2im(params, cols, image_shape, block_shape, y):
    """Each column's block added into the image at its place (ConvTranspose with an
    identity filter): one index_add over the flattened image."""
    image, block = [int(v) for v in image_shape.tolist()], [int(v) for v in block_shape.tolist()]
    if image != list(y.shape[2:]):
        raise ExecutionError(f"{params['where']}: image_shape {image} fed at run time, but the model's "
                             f"declared output type is {list(y.shape)}")
    dims, pads = len(image), params["pads"] or [0] * (2 * len(image))
    strides, dilations = params["strides"] or [1] * dims, params["dilations"] or [1] * dims
    counts = [(image[i] + pads[i] + pads[dims + i] - (block[i] - 1) * dilations[i] - 1) // strides[i] + 1
              for i in range(dims)]
    n, c = y.shape[:2]
    if cols.shape[1] != c * math.prod(block) or cols.shape[2] != math.prod(counts):
        raise ExecutionError(f"{params['where']}: input of shape {list(cols.shape)} does not hold blocks "
                             f"{block} of {c} channels at {counts} places")
    # target of (block offset k_i, place l_i) along each axis, and whether it is in the image
    target = torch.zeros((), dtype=torch.long)
    valid = torch.ones((), dtype=torch.bool)
    place_stride = math.prod(image)
    for i in range(dims):
        place_stride //= image[i]
        at = torch.arange(block[i])[:, None] * dilations[i] + torch.arange(counts[i])[None, :] * strides[i] - pads[i]
        shape = [1] * (2 * dims)
        shape[i], shape[dims + i] = block[i], counts[i]
        valid = valid & ((at >= 0) & (at < image[i])).reshape(shape)
        target = target + (at.clamp(0, image[i] - 1) * place_stride).reshape(shape)
    values = cols.reshape(n, c, -1)
    keep = valid.reshape(-1)
    out = torch.zeros(n, c, math.prod(image), dtype=cols.dtype)
    out.index_add_(2, target.expand(valid.shape).reshape(-1)[keep], values[:, :, keep])
    y.copy_(out.reshape(y.shape))


@extern("max_unpool")
def max_unpool(params, x, indices, output_shape, y):
    """Zeros of the unpooled shape the attributes give, each value of x put at its index
    into them (flattened), placed at the front of an output that may be larger."""
    if output_shape is not None and [int(v) for v in output_shape.tolist()] != list(y.shape):
        raise ExecutionError(f"{params['where']}: output_shape {output_shape.tolist()} fed at run time, "
                             f"but the model's declared output type is {list(y.shape)}")
    unpooled = torch.zeros(*x.shape[:2], *params["unpooled"], dtype=x.dtype)
    flat = indices.reshape(-1)
    if flat.numel() and (int(flat.min()) < 0 or int(flat.max()) >= unpooled.numel()):
        raise ExecutionError(f"{params['where']}: an index out of range for {unpooled.numel()} elements")
    unpooled.view(-1)[flat] = x.reshape(-1)
    y.zero_()
    y[tuple(slice(0, d) for d in unpooled.shape)] = unpooled


def _bilinear(image: torch.Tensor, ys: torch.Tensor, xs: torch.Tensor) -> torch.Tensor:
    """image [N, C, H, W] sampled at (ys, xs) [N, *points] bilinearly, zero outside:
    [N, C, *points]."""
    n, c, height, width = image.shape
    flat = image.reshape(n, c, -1)
    y0, x0 = torch.floor(ys), torch.floor(xs)
    total = 0
    for dy, dx in ((0, 0), (0, 1), (1, 0), (1, 1)):
        yi, xi = y0 + dy, x0 + dx
        weight = (1 - (ys - yi).abs()) * (1 - (xs - xi).abs())
        inside = (yi >= 0) & (yi < height) & (xi >= 0) & (xi < width)
        index = (yi.clamp(0, height - 1) * width + xi.clamp(0, width - 1)).long().reshape(n, 1, -1)
        picked = torch.gather(flat, 2, index.expand(n, c, -1)).reshape(n, c, *ys.shape[1:])
        total = total + torch.where(inside, weight, 0.0)[:, None] * picked
    return total


@extern("deform_conv")
def deform_conv(params, x, w, offset, bias, mask, y):
    """A 2-d convolution whose taps are moved by `offset` (per offset group, kernel tap
    and output position), sampled bilinearly, and scaled by `mask`."""
    n, c, _, _ = x.shape
    oc, cpg, kh, kw = w.shape
    oh, ow = y.shape[2:]
    groups, offset_groups = params["group"], params["offset_group"]
    (sh, sw), (dh, dw), pads = params["strides"], params["dilations"], params["pads"]
    offset = offset.to(torch.float64).reshape(n, offset_groups, kh, kw, 2, oh, ow)
    base_h = (-pads[0] + sh * torch.arange(oh, dtype=torch.float64))[None, :, None] + dh * torch.arange(kh, dtype=torch.float64)[:, None, None]
    base_w = (-pads[1] + sw * torch.arange(ow, dtype=torch.float64))[None, None, :] + dw * torch.arange(kw, dtype=torch.float64)[:, None, None]
    ys = base_h[None, None, :, None] + offset[:, :, :, :, 0]  # [N, G, kh, kw, oh, ow]
    xs = base_w[None, None, None, :] + offset[:, :, :, :, 1]
    per_group = c // offset_groups
    cols = torch.cat([_bilinear(x[:, g * per_group:(g + 1) * per_group].to(torch.float64), ys[:, g], xs[:, g])
                      for g in range(offset_groups)], dim=1)  # [N, C, kh, kw, oh, ow]
    if mask is not None:
        scale = mask.to(torch.float64).reshape(n, offset_groups, 1, kh, kw, oh, ow)
        cols = (cols.reshape(n, offset_groups, per_group, kh, kw, oh, ow) * scale).reshape(cols.shape)
    cols = cols.reshape(n, groups, cpg * kh * kw, oh * ow)
    out = torch.einsum("gok,ngkp->ngop", w.to(torch.float64).reshape(groups, oc // groups, -1), cols).reshape(n, oc, oh, ow)
    if bias is not None:
        out = out + bias.to(torch.float64).reshape(1, -1, 1, 1)
    y.copy_(out.to(y.dtype))
