"""Symbolic type functions of the sliding-window ops (Conv, the pools, ConvTranspose)
and of Resize: output sizes as sympy expressions of the input's, so a CNN whose batch,
height and width are runtime sizes keeps dims like `floor((h - 1)/2) + 1` instead of
fresh unknowns. onnx's own shape inference, which these wrap, only computes with
integers; wherever it knows a dim, its answer stands.

Output sizes, per spatial axis (extent = dilation*(kernel - 1) + 1):
    explicit pads   floor((n + begin + end - extent) / stride) + 1   (ceil in ceil_mode)
    SAME_*          ceil(n / stride)
    VALID           floor((n - extent) / stride) + 1
    ConvTranspose   stride*(n - 1) + output_padding + extent - begin - end   (n*stride if SAME)
    Resize          floor(n * scale), or the sizes input
"""

from __future__ import annotations

import sympy

from ..graph import Node
from ..registry import InferFn, Known
from ._symbolic import contents, dim, dtype_of, normalize_axis, shape_of, tensor


def floor_div(a, b: int):
    return a // b if isinstance(a, int) else dim(sympy.floor(a / b))


def ceil_div(a, b: int):
    return -(-a // b) if isinstance(a, int) else dim(sympy.ceiling(a / b))


def window_outputs(a: dict, spatial, kernel, *, ceil_mode: bool = False) -> list | None:
    """Each spatial axis's output size under `a`'s strides, dilations, pads and auto_pad,
    or None where it cannot be written as an expression (ceil mode's correction of a
    last window that would start in the end padding, on a symbolic size)."""
    dims = len(spatial)
    strides = list(a.get("strides") or [1] * dims)
    dilations = list(a.get("dilations") or [1] * dims)
    auto_pad = a.get("auto_pad", "NOTSET") or "NOTSET"
    pads = [0] * (2 * dims) if auto_pad == "VALID" else list(a.get("pads") or [0] * (2 * dims))
    out = []
    for i, (n, k, s, d) in enumerate(zip(spatial, kernel, strides, dilations)):
        extent = d * (k - 1) + 1
        if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
            out.append(ceil_div(n, s))
            continue
        begin, end = pads[i], pads[dims + i]
        span = n + begin + end - extent
        if not ceil_mode:
            out.append(floor_div(span, s) + 1)
            continue
        # ONNX drops a last window that would start past the input and its begin padding;
        # with end + stride <= extent no window can, whatever n is
        if isinstance(n, int) or end + s <= extent:
            o = ceil_div(span, s) + 1
            if isinstance(o, int) and (o - 1) * s >= n + begin:
                o -= 1
            out.append(o)
        else:
            return None
    return [dim(o) for o in out]


def conv_transpose_outputs(a: dict, spatial, kernel) -> list:
    dims = len(spatial)
    if a.get("output_shape"):
        return [dim(o) for o in list(a["output_shape"])[-dims:]]
    strides = list(a.get("strides") or [1] * dims)
    dilations = list(a.get("dilations") or [1] * dims)
    output_padding = list(a.get("output_padding") or [0] * dims)
    if not a.get("pads") and a.get("auto_pad", "NOTSET") in ("SAME_UPPER", "SAME_LOWER"):
        return [dim(n * s) for n, s in zip(spatial, strides)]
    pads = list(a.get("pads") or [0] * (2 * dims))
    return [dim(s * (n - 1) + p + d * (k - 1) + 1 - pads[i] - pads[dims + i])
            for i, (n, s, p, k, d) in enumerate(zip(spatial, strides, output_padding, kernel, dilations))]


def _symbolic(known: list) -> bool:
    return any(not isinstance(d, int) for d in known)


def _keep_known(inferred: Known | None, computed: tuple) -> Known:
    """onnx's answer where it knows a dim (an int), ours elsewhere."""
    old = shape_of(inferred)
    if old is not None and len(old) == len(computed):
        computed = tuple(o if isinstance(o, int) else c for o, c in zip(old, computed))
    return tensor(dtype_of(inferred), computed)


def spatial_infer(delegate: InferFn, kind: str, weights: int = 1) -> InferFn:
    """`delegate` (onnx's type function of a Conv, pool or ConvTranspose whose filter is
    input `weights`), with symbolic spatial sizes computed where onnx leaves them unknown."""
    def infer(node: Node, ins: list[Known | None]) -> list[Known | None]:
        results = list(delegate(node, ins))
        x = shape_of(ins[0]) if ins else None
        if x is None or len(x) < 3 or not results or results[0] is None or dtype_of(results[0]) is None \
                or not _symbolic(x):
            return results
        a, spatial = node.attrs, list(x[2:])
        if kind == "pool":
            kernel = list(a.get("kernel_shape") or [])
            channels = x[1]
        else:
            w = shape_of(ins[weights]) if len(ins) > weights else None
            if w is None or len(w) != len(x):
                return results
            kernel = list(a.get("kernel_shape") or w[2:])
            channels = w[0] if kind == "conv" else w[1] * int(a.get("group", 1) or 1)
        if len(kernel) != len(spatial) or _symbolic(kernel):
            return results
        if kind == "conv_transpose":
            out = conv_transpose_outputs(a, spatial, kernel)
        else:
            out = window_outputs(a, spatial, kernel, ceil_mode=bool(a.get("ceil_mode", 0)))
        if out is None:
            return results
        shape = (x[0], channels, *out)
        return [_keep_known(r, shape) if r is not None else None for r in results]
    return infer


def resize_infer(delegate: InferFn) -> InferFn:
    """Resize's type: each resized axis floor(n * scale) for constant scales, or the
    sizes input's contents (constant, or computed from shapes), when onnx cannot say."""
    def infer(node: Node, ins: list[Known | None]) -> list[Known | None]:
        results = list(delegate(node, ins))
        x = shape_of(ins[0]) if ins else None
        if x is None or not results or results[0] is None or dtype_of(results[0]) is None or not _symbolic(x):
            return results
        a = node.attrs
        if a.get("coordinate_transformation_mode") == "tf_crop_and_resize" \
                or (a.get("keep_aspect_ratio_policy") or "stretch") != "stretch":
            return results
        rank = len(x)
        axes = [normalize_axis(v, rank) for v in a["axes"]] if a.get("axes") else list(range(rank))
        scales = contents(ins[2]) if len(ins) > 2 else None
        sizes = contents(ins[3]) if len(ins) > 3 else None
        if scales is None and len(ins) > 2 and ins[2] is not None and node.inputs[2] is not None \
                and node.inputs[2].const is not None:
            scales = [float(s) for s in node.inputs[2].const.reshape(-1)]
        shape = list(x)
        if sizes and len(sizes) == len(axes):
            for axis, size in zip(axes, sizes):
                shape[axis] = size
        elif scales and len(scales) == len(axes):
            for axis, scale in zip(axes, scales):
                # exact: a float32 scale times a size below 2**29 is exact in float64, as
                # the reference computes it
                shape[axis] = dim(sympy.floor(shape[axis] * sympy.Rational(float(scale))))
        else:
            return results
        return [_keep_known(results[0], tuple(shape))] + results[1:]
    return infer
