"""Reductions (axes as an input, keepdims, noop_with_empty_axes): symbolic shapes."""

from __future__ import annotations

import itertools
import math

import numpy as np
import sympy

from ..dtypes import DType
from ..graph import Node
from ..types import fresh_symbol
from ._lowering import (
    FLOATS,
    KERNEL_FLOATS,
    NotLowerable,
    V,
    attrs,
    constant_ints,
    out_type,
    reduce_kernel,
    register_lowering,
    rows_normalize,
    rows_softmax,
)
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
    keep = node.attrs.get("keepdims", 1)
    if axes is None or not all(isinstance(a, int) for a in axes):
        return [tensor(dtype, _runtime_axes_dims(dims, shape_of(ins[1]), keep,
                                                 node.attrs.get("noop_with_empty_axes", 0)))]
    if not axes:
        if node.attrs.get("noop_with_empty_axes", 0):
            return [tensor(dtype, dims)]
        axes = list(range(len(dims)))
    axes = {normalize_axis(a, len(dims)) for a in axes}
    out = [1 if i in axes else d for i, d in enumerate(dims) if keep or i not in axes]
    return [tensor(dtype, out)]


def _runtime_axes_dims(dims, axes_shape, keep: int, noop: int):
    """The output dims of a reduction whose axes are fed at run time, or None where even
    the rank is unknown: keepdims keeps the rank, and so does knowing how many axes are
    fed. Each dim that may or may not be reduced is a fresh size, bound when it runs."""
    if keep:
        return [1 if d == 1 else fresh_symbol() for d in dims]
    if axes_shape is None or len(axes_shape) != 1 or not isinstance(axes_shape[0], int):
        return None
    count = axes_shape[0]
    if count == 0:
        return list(dims) if noop else []
    return [fresh_symbol() for _ in range(len(dims) - count)] if count <= len(dims) else None


for _op in REDUCTIONS:
    standard_op(_op, infer=_reduce)


# -- Kernel IR lowerings ----------------------------------------------------------------
def _lower_layernorm(ctx, node, ins):
    if len([v for v in node.outputs if v is not None]) > 1 or ins[0].dtype not in FLOATS:
        raise NotLowerable("mean / inverse std outputs, or not float")
    a = attrs(node)
    axis = normalize_axis(a["axis"], len(ins[0].shape))
    return [rows_normalize(ctx, ins[0], axis, a["epsilon"], ins[1], ins[2] if len(ins) > 2 else None)]


def _lower_rmsnorm(ctx, node, ins):
    if ins[0].dtype not in FLOATS:
        raise NotLowerable("not float")
    a = attrs(node)
    axis = normalize_axis(a["axis"], len(ins[0].shape))
    return [rows_normalize(ctx, ins[0], axis, a["epsilon"], ins[1], rms=True)]


def _lower_softmax(log: bool):
    def lower(ctx, node, ins):
        if ins[0].dtype not in FLOATS or not ins[0].shape:
            raise NotLowerable("not float, or a scalar")
        return [rows_softmax(ctx, ins[0], normalize_axis(attrs(node)["axis"], len(ins[0].shape)), log)]
    return lower


# op -> (value transform, reduce op, finish(acc, n))
_REDUCE = {
    "ReduceSum": (lambda v: v, "sum", lambda s, n: s),
    "ReduceMean": (lambda v: v, "sum", lambda s, n: s / n),
    "ReduceMax": (lambda v: v, "max", lambda s, n: s),
    "ReduceMin": (lambda v: v, "min", lambda s, n: s),
    "ReduceProd": (lambda v: v, "prod", lambda s, n: s),
    "ReduceL1": (lambda v: v.abs(), "sum", lambda s, n: s),
    "ReduceL2": (lambda v: v * v, "sum", lambda s, n: s.sqrt()),
    "ReduceSumSquare": (lambda v: v * v, "sum", lambda s, n: s),
    "ReduceLogSum": (lambda v: v, "sum", lambda s, n: s.log()),
}


def _equal(a, b) -> bool:
    return sympy.simplify(sympy.sympify(a) - b) == 0


def _axes_from_shapes(in_shape, out_shape, keepdims: int) -> list[int] | None:
    """The reduced axes, read off the output's type when only one choice gives it (axes
    that are fed at run time must agree with the type the model declares). Unit dims
    reduce to themselves, so they are left out."""
    if keepdims:
        if len(in_shape) != len(out_shape):
            return None
        axes = [a for a, (d, o) in enumerate(zip(in_shape, out_shape)) if o == 1 and d != 1]
        if not all(_equal(d, o) for a, (d, o) in enumerate(zip(in_shape, out_shape)) if a not in axes):
            return None
        return axes
    kept = len(out_shape)
    choices = []
    for dropped in itertools.combinations(range(len(in_shape)), len(in_shape) - kept):
        rest = [d for a, d in enumerate(in_shape) if a not in dropped]
        if all(_equal(d, o) for d, o in zip(rest, out_shape)):
            choices.append(list(dropped))
    return choices[0] if len(choices) == 1 else None


def _lower_reduce(op: str):
    transform, how, finish = _REDUCE[op]

    def lower(ctx, node, ins):
        x = ins[0]
        rank, a = len(x.shape), attrs(node)
        axes_value = node.inputs[1] if len(node.inputs) > 1 else None
        axes = [] if axes_value is None else constant_ints(ctx, axes_value)
        if axes is None:
            axes = _axes_from_shapes(x.shape, out_type(node)[1], a["keepdims"])
            if not axes:  # None, or nothing but unit dims reduced (which the type cannot tell)
                return _reduce_extern(ctx, node, ins)
            # checked when it runs: other axes would give a wrong result silently
            ctx.extern("check_axes", [ins[1]], [], where=node.describe(), rank=rank, expected=sorted(axes),
                       noop_with_empty_axes=a["noop_with_empty_axes"],
                       unit_axes=[i for i, d in enumerate(x.shape) if a["keepdims"] and d == 1])
        if not axes:
            if a["noop_with_empty_axes"]:  # each element reduced alone: |x| for L1, x*x for SumSquare ...
                def alone(b, i):
                    v = transform(V(b, x.load(b, i), x.dtype))
                    return finish(v, V(b, b.const(1, x.dtype), x.dtype)).cast(x.dtype).name
                return [ctx.pointwise(x.shape, x.dtype, alone, cost=x.cost + 2)]
            axes = list(range(rank))
        axes = {normalize_axis(v, rank) for v in axes}
        _check_reducible(op, x.dtype)
        dtype, out_shape = out_type(node)
        if any(x.shape[i] == 0 for i in axes):  # the empty set: every output is the identity
            identity = _empty_identity(op, x.dtype)
            return [ctx.pointwise(out_shape, dtype, lambda b, i: b.const(identity, dtype), cost=0)]
        out = ctx.new_buffer("reduce", dtype, out_shape)
        acc_dtype = x.dtype

        def stages(Stage, full, xv, n):
            b0 = ctx.body()
            v = transform(V(b0, x.load(b0, full), x.dtype))
            b1 = ctx.body()
            s = finish(V(b1, b1.acc("acc", acc_dtype), acc_dtype), V(b1, b1.index(n, acc_dtype), acc_dtype))
            xs = iter(xv)
            out_index = tuple(0 if i in axes else next(xs) for i in range(rank)) if a["keepdims"] else tuple(xv)
            b1.store(out, out_index, s.cast(dtype).name)
            return [Stage("reduce", b0, value=v.name, reduce=how, acc="acc", acc_dtype=acc_dtype), Stage("row", b1)]

        reduce_kernel(ctx, op, x.shape, axes, stages)
        from ...codegen.lowering import TensorRef

        return [TensorRef(dtype, out_shape, buffer=out)]
    return lower


def _check_reducible(op: str, dtype: DType) -> None:
    if op in ("ReduceL2", "ReduceLogSum", "ReduceMean", "ReduceLogSumExp") and dtype not in KERNEL_FLOATS:
        raise NotLowerable("integer result of a float formula")
    if dtype in KERNEL_FLOATS - FLOATS and op not in ("ReduceMax", "ReduceMin"):
        raise NotLowerable("a 16-bit float sum or product (numpy rounds it its own way)")


def _empty_identity(op: str, dtype: DType):
    """What reducing an empty set gives (the reference's constants): 0, 1, NaN for the
    mean, -inf for the logs, and the smallest (largest) value for Max (Min)."""
    if op in ("ReduceMax", "ReduceMin"):
        low = op == "ReduceMax"
        if dtype == DType.bool:
            return not low
        if dtype in KERNEL_FLOATS:
            return -math.inf if low else math.inf
        info = np.iinfo(dtype.numpy)
        return int(info.min if low else info.max)
    return {"ReduceProd": 1, "ReduceMean": math.nan, "ReduceLogSum": -math.inf,
            "ReduceLogSumExp": -math.inf}.get(op, 0)


def _reduce_extern(ctx, node, ins):
    """A reduction whose axes are known only when it runs (torch's kernels); its output
    sizes, where the type does not tell them, are bound when it runs."""
    x = ins[0]
    op, a = node.op, attrs(node)
    _check_reducible(op, x.dtype)
    if x.dtype == DType.bool and op not in ("ReduceMax", "ReduceMin"):
        raise NotLowerable(f"{op} of {x.dtype.name} with axes known only when it runs")
    axes = ins[1] if len(ins) > 1 else None
    return ctx.extern("reduce", [x, axes], [out_type(node)], where=node.describe(), op=op,
                      keepdims=a["keepdims"], noop_with_empty_axes=a["noop_with_empty_axes"],
                      identity=_empty_identity(op, x.dtype))


def _lower_log_sum_exp(ctx, node, ins):
    """ReduceLogSumExp with axes fed at run time; with constant axes, its function body."""
    if len(node.inputs) < 2 or node.inputs[1] is None or constant_ints(ctx, node.inputs[1]) is not None:
        raise NotLowerable("constant axes: lowered through its function body")
    return _reduce_extern(ctx, node, ins)


def _lower_arg_extreme(how: str):
    """ArgMax / ArgMin: one pass finds the extreme (NaN if any), a second the first (or
    last) index holding it."""
    def lower(ctx, node, ins):
        x = ins[0]
        a = attrs(node)
        rank = len(x.shape)
        axis = normalize_axis(a["axis"], rank)
        if x.shape[axis] == 0:
            raise NotLowerable("an empty axis")
        dtype, out_shape = out_type(node)
        out = ctx.new_buffer(node.op, dtype, out_shape)
        last = bool(a["select_last_index"])

        def stages(Stage, full, xv, n):
            b0 = ctx.body()
            v0 = V(b0, x.load(b0, full), x.dtype)
            b1 = ctx.body()
            v1 = V(b1, x.load(b1, full), x.dtype)
            best = V(b1, b1.acc("acc_best", x.dtype), x.dtype)
            hit = v1.eq(best, dtype=DType.bool).op(
                "or", best.ne(best, dtype=DType.bool).op("and", v1.ne(v1, dtype=DType.bool), dtype=DType.bool),
                dtype=DType.bool)
            at = V(b1, b1.index(full[axis]), DType.int64)
            pick = hit.where(at, -1 if last else 2 ** 62)
            b2 = ctx.body()
            xs = iter(xv)
            index = tuple(0 if i == axis else next(xs) for i in range(rank)) if a["keepdims"] else tuple(xv)
            b2.store(out, index, b2.acc("acc_index", DType.int64))
            return [Stage("reduce", b0, value=v0.name, reduce=how, acc="acc_best", acc_dtype=x.dtype),
                    Stage("reduce", b1, value=pick.name, reduce="max" if last else "min", acc="acc_index",
                          acc_dtype=DType.int64),
                    Stage("row", b2)]

        reduce_kernel(ctx, node.op, x.shape, {axis}, stages)
        from ...codegen.lowering import TensorRef

        return [TensorRef(dtype, out_shape, buffer=out)]
    return lower


register_lowering("LayerNormalization")(_lower_layernorm)
register_lowering("RMSNormalization")(_lower_rmsnorm)
register_lowering("Softmax")(_lower_softmax(False))
register_lowering("LogSoftmax")(_lower_softmax(True))
for _op in _REDUCE:
    register_lowering(_op, sizes_outputs=True)(_lower_reduce(_op))
register_lowering("ReduceLogSumExp", sizes_outputs=True)(_lower_log_sum_exp)
for _op, _how in (("ArgMax", "max"), ("ArgMin", "min")):
    standard_op(_op)
    register_lowering(_op)(_lower_arg_extreme(_how))
