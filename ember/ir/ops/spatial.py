"""Spatial ops beyond nn.py's fast paths, as externs (ember/runtime/externs_spatial.py):
pools over any window geometry (AveragePool dilated, asymmetrically padded or in ceil
mode, LpPool, MaxPool with indices or of integers), ConvTranspose (but one whose windows
do not overlap: a GEMM on the linear extern and a generated gather), Col2Im, MaxUnpool.
Schemas, type functions and references are ONNX's; the window geometry each lowering
computes is the reference's, quirks included (ceil mode's extra padding is split
between both ends)."""

from __future__ import annotations

import math

import numpy as np
import sympy

from ..dtypes import DType
from ._lowering import FLOATS, NotLowerable, attrs, out_type, register_lowering
from ..registry import get_op
from ._geometry import spatial_infer
from .onnx_standard import standard_op

for _op in ("LpPool", "ConvTranspose", "Col2Im", "MaxUnpool", "DeformConv"):
    standard_op(_op)
get_op("LpPool").infer = spatial_infer(get_op("LpPool").infer, "pool")
get_op("ConvTranspose").infer = spatial_infer(get_op("ConvTranspose").infer, "conv_transpose")

_UNSIGNED = {DType.uint8, DType.uint16, DType.uint32, DType.uint64}
_POOLED = FLOATS | {DType.float16}


def _static_spatial(x) -> list[int]:
    spatial = list(x.shape[2:])
    if not all(isinstance(d, int) for d in spatial) or not spatial:
        raise NotLowerable("symbolic spatial dims")
    return spatial


def _average_geometry(a: dict, spatial, kernel, strides, dilations) -> tuple[list, list, list]:
    """(output size, padding before the first window, the end of the padded input) of
    each axis, as the reference's average and Lp pools compute them."""
    dims, auto_pad = len(spatial), a.get("auto_pad", "NOTSET")
    if auto_pad in ("SAME_UPPER", "SAME_LOWER", "VALID"):
        if a.get("ceil_mode") or any(d != 1 for d in dilations):
            raise NotLowerable("auto_pad with ceil_mode or dilations")
        if auto_pad == "VALID":
            out = [(n - k) // s + 1 for n, k, s in zip(spatial, kernel, strides)]
            return out, [0] * dims, list(spatial)
        out = [(n - 1) // s + 1 for n, s in zip(spatial, strides)]
        total = [(o - 1) * s + k - n for o, s, k, n in zip(out, strides, kernel, spatial)]
        begin = [t // 2 if auto_pad == "SAME_UPPER" else t - t // 2 for t in total]
        return out, begin, [n + t for n, t in zip(spatial, total)]
    pads = list(a.get("pads") or [0] * (2 * dims))
    out, begin, limit = [], [], []
    for i in range(dims):
        extent = dilations[i] * (kernel[i] - 1) + 1
        padded = spatial[i] + pads[i] + pads[dims + i]
        size = (padded - extent) / strides[i] + 1
        if a.get("ceil_mode"):
            o = math.ceil(size)
            if (o - 1) * strides[i] >= spatial[i] + pads[i]:
                o -= 1
        else:
            o = math.floor(size)
        extra = (o - 1) * strides[i] + extent - padded
        out.append(o)
        begin.append(pads[i] + (extra // 2 if extra > 0 else 0))
        limit.append(padded)
    return out, begin, limit


def _max_geometry(a: dict, spatial, kernel, strides, dilations) -> tuple[list, list, list]:
    """MaxPool's windows: explicit pads only (the reference's auto_pad output sizes
    differ between its code paths); every tap inside the input counts."""
    if a.get("auto_pad", "NOTSET") not in ("NOTSET", "VALID"):
        raise NotLowerable("MaxPool with SAME auto_pad outside the simple path")
    dims = len(spatial)
    pads = list(a.get("pads") or [0] * (2 * dims)) if a.get("auto_pad", "NOTSET") == "NOTSET" else [0] * (2 * dims)
    out = []
    for i in range(dims):
        size = (spatial[i] + pads[i] + pads[dims + i] - ((kernel[i] - 1) * dilations[i] + 1)) / strides[i] + 1
        o = math.ceil(size) if a.get("ceil_mode") else math.floor(size)
        if a.get("ceil_mode") and (o - 1) * strides[i] >= spatial[i] + pads[i]:
            o -= 1
        out.append(o)
    return out, pads[:dims], [1 << 40] * dims  # no tap lies past the padded input


def lower_window_pool(ctx, node, ins, kind: str):
    """`node` (AveragePool, LpPool or MaxPool) as the window_pool extern."""
    x = ins[0]
    if x.dtype not in _POOLED and not (kind == "max" and x.dtype in _UNSIGNED | {DType.int8, DType.int32,
                                                                                 DType.int64}):
        raise NotLowerable(f"a {x.dtype.name} pool")
    a = attrs(node)
    spatial = _static_spatial(x)
    kernel = list(a["kernel_shape"])
    dims = len(kernel)
    strides = list(a.get("strides") or [1] * dims)
    dilations = list(a.get("dilations") or [1] * dims)
    geometry = _max_geometry if kind == "max" else _average_geometry
    out, begin, limit = geometry(a, spatial, kernel, strides, dilations)
    if kind == "max" and x.dtype not in _POOLED | _UNSIGNED and any(a.get("pads") or []):
        raise NotLowerable("a padded max pool of signed integers (the reference pads them with NaN cast)")
    outputs = [v for v in node.outputs if v is not None]
    for i in range(len(outputs)):
        if list(out_type(node, i)[1][2:]) != out:
            raise NotLowerable("an output type that disagrees with the pool's geometry")
    storage_order = int(a.get("storage_order", 0) or 0)
    if len(outputs) > 1 and storage_order and dims != 2:
        raise NotLowerable("column-major indices of a pool that is not 2-d")
    return ctx.extern("window_pool", [x], [out_type(node, i) for i in range(len(outputs))], kind=kind,
                      kernel=kernel, strides=strides, dilations=dilations, out=out, begin=begin, limit=limit,
                      p=int(a.get("p", 2) or 2), count_include_pad=bool(a.get("count_include_pad", 0)),
                      storage_order=storage_order)


register_lowering("LpPool")(lambda ctx, node, ins: lower_window_pool(ctx, node, ins, "lp"))


def _conv_transpose_geometry(a: dict, spatial, kernel) -> tuple[list, list]:
    """(elements cropped off the front of the full transposed convolution, output size)
    of each axis, as the reference computes them from pads, auto_pad and output_shape."""
    dims = len(spatial)
    strides = list(a.get("strides") or [1] * dims)
    dilations = list(a.get("dilations") or [1] * dims)
    output_padding = list(a.get("output_padding") or [0] * dims)
    kernel = list(a.get("kernel_shape") or kernel)
    output_shape = list(a.get("output_shape") or [])[-dims:] if a.get("output_shape") else None
    full = [s * (n - 1) + op + (k - 1) * d + 1
            for s, n, op, k, d in zip(strides, spatial, output_padding, kernel, dilations)]
    pads = a.get("pads")
    if not pads and a.get("auto_pad", "NOTSET") in ("SAME_UPPER", "SAME_LOWER"):
        out = output_shape or [n * s for n, s in zip(spatial, strides)]
        total = [f - o for f, o in zip(full, out)]
        begin = [t // 2 if a["auto_pad"] == "SAME_UPPER" else t - t // 2 for t in total]
        return begin, out
    pads = list(pads or [0] * (2 * dims))
    out = output_shape or [f - pads[i] - pads[dims + i] for i, f in enumerate(full)]
    return pads[:dims], out


@register_lowering("ConvTranspose")
def _lower_conv_transpose(ctx, node, ins):
    x, w = ins[0], ins[1]
    bias = ins[2] if len(ins) > 2 else None
    if x.dtype not in FLOATS or len(x.shape) not in (3, 4, 5):
        raise NotLowerable("not a float 1-3d transposed convolution")
    a = attrs(node)
    if not all(isinstance(d, int) for d in w.shape[2:]):
        raise NotLowerable("symbolic kernel")
    begin, out = _conv_transpose_geometry(a, list(x.shape[2:]), list(w.shape[2:]))
    if not all(isinstance(b, int) or getattr(b, "is_Integer", False) for b in begin):
        raise NotLowerable("an output_shape whose crop depends on a symbolic input size")
    begin = [int(b) for b in begin]
    if any(b < 0 for b in begin):
        # an output_shape past the full transposed convolution: onnx.reference does not pad
        # it with zeros as the spec's negative padding would; its reference keeps the meaning
        raise NotLowerable("an output_shape larger than the full transposed convolution")
    dtype, shape = out_type(node)
    if any(sympy.simplify(d - o) != 0 for d, o in zip(shape[2:], out)):
        raise NotLowerable("an output type that disagrees with the pads and output_shape")
    dims = len(out)
    blocks = _blocks(ctx, node, x, w, bias, a, begin, dtype, shape)
    if blocks is not None:
        return [blocks]
    return ctx.extern("conv_transpose", [x, w, bias], [(dtype, shape)], begin=begin,
                      strides=list(a.get("strides") or [1] * dims), dilations=list(a.get("dilations") or [1] * dims),
                      group=int(a["group"]))


def _blocks(ctx, node, x, w, bias, a: dict, begin, dtype, shape):
    """A 2-d transposed convolution whose windows do not overlap and are not cropped
    (kernel = stride, no dilation, one group, a constant float32 filter: the 2x
    upsampling of PP-OCR's DB head and U-Nets) as a GEMM: x's pixels [N, H, W, C] (a
    generated transpose, fused with x's producer) times the filter as a [C, O x KH x KW]
    weight (the linear extern: ember's tiled GEMM) gives each pixel's output block, which
    y reads back (a generated gather, with the bias, fused with y's consumers). The conv
    transpose extern's torch matmul and copy took 0.35-0.45 ms a call for PP-OCRv6's
    24 -> 24 channels at 40x80 (onnxruntime: 0.14) on a 2-core AMD EPYC. None where it
    does not apply."""
    from ._lowering import V, constant_linear

    kernel = list(w.shape[2:])
    if (x.dtype != DType.float32 or len(x.shape) != 4 or int(a["group"]) != 1 or any(begin)
            or list(a.get("strides") or [1, 1]) != kernel or any(d != 1 for d in a.get("dilations") or [1, 1])
            or w.buffer is None or w.buffer.kind != "constant" or w.buffer.name not in ctx.constants
            or w.dtype != DType.float32 or (bias is not None and bias.dtype != DType.float32)):
        return None
    n, c, h, wd = x.shape
    kh, kw = kernel
    o = w.shape[1]
    if tuple(shape) != (n, o, h * kh, wd * kw):
        return None
    filters = np.asarray(ctx.constants[w.buffer.name], dtype=np.float32).reshape(c, o * kh * kw)  # [C, O KH KW]
    pixels = ctx.pointwise((n, h, wd, c), DType.float32, lambda b, i: x.load(b, (i[0], i[3], i[1], i[2])),
                           cost=1 + x.cost)
    cols = constant_linear(ctx, pixels, filters, None, "", (n, h, wd, o * kh * kw), "deconv_filter_kn")

    def load(b, index):
        batch, oc, oh, ow = index
        hh, ww = sympy.floor(oh / kh), sympy.floor(ow / kw)
        j = (oc * kh + oh - hh * kh) * kw + ow - ww * kw
        value = V(b, cols.load(b, (batch, hh, ww, j)), DType.float32)
        if bias is not None:
            value = value + V(b, bias.load(b, (oc,)), DType.float32)
        return value.cast(dtype).name

    return ctx.pointwise(tuple(shape), dtype, load, cost=3)


@register_lowering("Col2Im")
def _lower_col2im(ctx, node, ins):
    cols = ins[0]
    dtype, shape = out_type(node)
    if cols.dtype not in _POOLED or not all(isinstance(d, int) for d in shape[2:]):
        raise NotLowerable("not float, or an image size known only when it runs")
    a = attrs(node)
    return ctx.extern("col2im", ins, [(dtype, shape)], where=node.describe(), pads=list(a.get("pads") or []),
                      strides=list(a.get("strides") or []), dilations=list(a.get("dilations") or []))


@register_lowering("MaxUnpool")
def _lower_max_unpool(ctx, node, ins):
    x, indices = ins[0], ins[1]
    output_shape = ins[2] if len(ins) > 2 else None
    a = attrs(node)
    spatial = _static_spatial(x)
    kernel = list(a["kernel_shape"])
    dims = len(kernel)
    strides, pads = list(a.get("strides") or [1] * dims), list(a.get("pads") or [0] * (2 * dims))
    unpooled = [(n - 1) * s - (pads[i] + pads[dims + i]) + k for i, (n, s, k) in enumerate(zip(spatial, strides, kernel))]
    dtype, shape = out_type(node)
    if not all(isinstance(d, int) for d in shape) or any(u > d for u, d in zip(unpooled, shape[2:])):
        raise NotLowerable("an output type smaller than the unpooled shape, or known only when it runs")
    return ctx.extern("max_unpool", [x, indices, output_shape], [(dtype, shape)], where=node.describe(),
                      unpooled=unpooled)


@register_lowering("DeformConv")
def _lower_deform_conv(ctx, node, ins):
    x, w, offset = ins[:3]
    bias, mask = (ins[3:] + [None, None])[:2]
    if x.dtype not in _POOLED or len(x.shape) != 4:
        raise NotLowerable("not a float 2-d deformable convolution")
    a = attrs(node)
    _static_spatial(x)
    dtype, shape = out_type(node)
    if not all(isinstance(d, int) for d in (*w.shape, *shape[1:])):
        raise NotLowerable("symbolic filter or output sizes")
    return ctx.extern("deform_conv", [x, w, offset, bias, mask], [(dtype, shape)],
                      strides=list(a.get("strides") or [1, 1]), dilations=list(a.get("dilations") or [1, 1]),
                      pads=list(a.get("pads") or [0] * 4), group=int(a.get("group") or 1),
                      offset_group=int(a.get("offset_group") or 1))
