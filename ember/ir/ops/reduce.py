"""Reductions (axes as an input, keepdims, noop_with_empty_axes): symbolic shapes."""

from __future__ import annotations

from ..graph import Node
from ._symbolic import contents, dtype_of, normalize_axis, shape_of, tensor
from .onnx_standard import standard_op

REDUCTIONS = ["ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1", "ReduceL2",
              "ReduceLogSum", "ReduceLogSumExp", "ReduceSumSquare"]


def _reduce(node: Node, ins):
    dims, dtype = shape_of(ins[0]), dtype_of(ins[0])
    if dims is None or dtype is None:
        return [tensor(dtype, None)] if dtype else [None]
    has_axes = len(ins) > 1 and ins[1] is not None
    axes = contents(ins[1]) if has_axes else []
    if axes is None or not all(isinstance(a, int) for a in axes):
        return [tensor(dtype, None)]
    keep = node.attrs.get("keepdims", 1)
    if not axes:
        if node.attrs.get("noop_with_empty_axes", 0):
            return [tensor(dtype, dims)]
        axes = list(range(len(dims)))
    axes = {normalize_axis(a, len(dims)) for a in axes}
    out = [1 if i in axes else d for i, d in enumerate(dims) if keep or i not in axes]
    return [tensor(dtype, out)]


for _op in REDUCTIONS:
    standard_op(_op, infer=_reduce)
