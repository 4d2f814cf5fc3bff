"""Ops whose output sizes depend on their inputs' contents (NonZero, Compress, Unique) or
on a parameter fed at run time (Tile's repeats). Their Kernel IR lowerings are externs
that, where the output's size is known only when it runs, allocate the output and let
the executor bind its size (`LoweringContext.extern`); types and references are ONNX's."""

from __future__ import annotations

import sympy

from ._lowering import NotLowerable, attrs, constant_ints, out_type, register_lowering
from ._symbolic import normalize_axis
from .onnx_standard import standard_op

for _op in ("NonZero", "Compress", "Unique", "Tile"):
    standard_op(_op)


@register_lowering("NonZero", sizes_outputs=True)
def _lower_nonzero(ctx, node, ins):
    if not ins[0].shape:
        raise NotLowerable("a scalar (numpy's nonzero of 0-d arrays is deprecated)")
    return ctx.extern("nonzero", ins, [out_type(node)], where=node.describe())


@register_lowering("Compress", sizes_outputs=True)
def _lower_compress(ctx, node, ins):
    axis = attrs(node)["axis"]
    axis = None if axis is None else normalize_axis(axis, len(ins[0].shape))
    return ctx.extern("compress", ins, [out_type(node)], where=node.describe(), axis=axis)


@register_lowering("Unique", sizes_outputs=True)
def _lower_unique(ctx, node, ins):
    if any(v is None for v in node.outputs):
        raise NotLowerable("an output left out before one that is asked for")
    a = attrs(node)
    axis = None if a["axis"] is None else normalize_axis(a["axis"], len(ins[0].shape))
    if not a["sorted"] and axis != 0 and not (axis is None and len(ins[0].shape) == 1):
        raise NotLowerable("unsorted, along an axis other than the first (the reference takes the values "
                           "along axis 0 whatever the axis)")
    return ctx.extern("unique", ins, [out_type(node, i) for i in range(len(node.outputs))], where=node.describe(),
                      axis=axis, sorted=bool(a["sorted"]))


@register_lowering("Tile", sizes_outputs=True)
def _lower_tile(ctx, node, ins):
    """Constant repeats and a known output: a generated kernel reading x at each output
    index modulo x's dims. Repeats fed at run time: torch's repeat."""
    x = ins[0]
    dtype, shape = out_type(node)
    if constant_ints(ctx, node.inputs[1]) is None or not ctx.knows(shape):
        return ctx.extern("tile", ins, [(dtype, shape)], where=node.describe())

    def load(b, index):
        return x.load(b, tuple(i if sympy.sympify(d) == sympy.sympify(n) else sympy.Mod(i, d)
                               for i, d, n in zip(index, x.shape, shape)))
    return [ctx.pointwise(shape, dtype, load, cost=x.cost)]
