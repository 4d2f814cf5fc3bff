"""Reductions (axes as an input, keepdims, noop_with_empty_axes): symbolic shapes."""

from __future__ import annotations

import itertools
import math

import numpy as np
import sympy

from ..dtypes import DType
from ..graph import Node
from ..kernel import TensorRef
from ..registry import get_op
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
    # (16-bit floats too: the rows are normalized in float32, as stash_type 1 asks)
    if len([v for v in node.outputs if v is not None]) > 1 or ins[0].dtype not in KERNEL_FLOATS:
        raise NotLowerable("mean / inverse std outputs, or not float")
    a = attrs(node)
    axis = normalize_axis(a["axis"], len(ins[0].shape))
    return [rows_normalize(ctx, ins[0], axis, a["epsilon"], ins[1], ins[2] if len(ins) > 2 else None)]


def _lower_rmsnorm(ctx, node, ins):
    if ins[0].dtype not in KERNEL_FLOATS:
        raise NotLowerable("not float")
    a = attrs(node)
    axis = normalize_axis(a["axis"], len(ins[0].shape))
    return [rows_normalize(ctx, ins[0], axis, a["epsilon"], ins[1], rms=True)]


def _lower_softmax(log: bool):
    def lower(ctx, node, ins):
        if ins[0].dtype not in KERNEL_FLOATS or not ins[0].shape:
            raise NotLowerable("not float, or a scalar")
        axis = normalize_axis(attrs(node)["axis"], len(ins[0].shape))
        if ins[0].dtype not in FLOATS:  # the reference's 16-bit roundings, in torch...
            try:
                return ctx.extern("softmax16", [ins[0]], [out_type(node)], axis=axis, log=log)
            except NotLowerable:  # ...where the target has that extern; else in float32, rounded once
                pass
        return [rows_softmax(ctx, ins[0], axis, log)]
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


def _log_sum_exp_stages(ctx, x, dtype):
    """The reference's log-sum-exp: m = max over the finite elements (infinities count as
    -inf), then log(sum(exp(x - m))) + m; an empty row gives -inf."""
    def stages(Stage, full, out, store_index):
        b0 = ctx.body()
        v = V(b0, x.load(b0, full), x.dtype)
        finite = v.isinf(dtype=DType.bool).where(float("-inf"), v)
        b1 = ctx.body()
        m1 = V(b1, b1.acc("acc_max", x.dtype), x.dtype)
        e = (V(b1, x.load(b1, full), x.dtype) - m1).exp()
        b2 = ctx.body()
        total = V(b2, b2.acc("acc_sum", x.dtype), x.dtype).log() + V(b2, b2.acc("acc_max", x.dtype), x.dtype)
        b2.store(out, store_index, total.cast(dtype).name)
        return [Stage("reduce", b0, value=finite.name, reduce="max", acc="acc_max", acc_dtype=x.dtype),
                Stage("reduce", b1, value=e.name, reduce="sum", acc="acc_sum", acc_dtype=x.dtype), Stage("row", b2)]
    return stages


def _lower_reduce(op: str):
    transform, how, finish = _REDUCE.get(op, (None, "logsumexp", None))

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

        def out_index(xv):
            xs = iter(xv)
            return tuple(0 if i in axes else next(xs) for i in range(rank)) if a["keepdims"] else tuple(xv)

        def stages(Stage, full, xv, n):
            if how == "logsumexp":
                return _log_sum_exp_stages(ctx, x, dtype)(Stage, full, out, out_index(xv))
            b0 = ctx.body()
            v = transform(V(b0, x.load(b0, full), x.dtype))
            b1 = ctx.body()
            s = finish(V(b1, b1.acc("acc", acc_dtype), acc_dtype), V(b1, b1.index(n, acc_dtype), acc_dtype))
            b1.store(out, out_index(xv), s.cast(dtype).name)
            return [Stage("reduce", b0, value=v.name, reduce=how, acc="acc", acc_dtype=acc_dtype), Stage("row", b1)]

        reduce_kernel(ctx, op, x.shape, axes, stages)

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

        return [TensorRef(dtype, out_shape, buffer=out)]
    return lower


register_lowering("LayerNormalization")(_lower_layernorm)
register_lowering("RMSNormalization")(_lower_rmsnorm)
register_lowering("Softmax")(_lower_softmax(False))
register_lowering("LogSoftmax")(_lower_softmax(True))
for _op in [*_REDUCE, "ReduceLogSumExp"]:  # axes fed at run time: the reduce extern sizes the output
    register_lowering(_op, sizes_outputs=True)(_lower_reduce(_op))
for _op, _how in (("ArgMax", "max"), ("ArgMin", "min")):
    standard_op(_op)
    register_lowering(_op)(_lower_arg_extreme(_how))


# -- normalizations over some axes --------------------------------------------------------
def _normalize_kernel(ctx, node, x, axes: set[int], sums, finish):
    """A reduction kernel over `axes` of x: each of `sums` (value fn of the element's V)
    is summed into an accumulator; then a loop stores finish(body, x's V, [sums' V],
    n, full index) at every element. Returns the output ref."""
    dtype, shape = out_type(node)
    out = ctx.new_buffer(node.op, dtype, shape)

    def stages(Stage, full, xv, n):
        out_stages = []
        for i, fn in enumerate(sums):
            b = ctx.body()
            out_stages.append(Stage("reduce", b, value=fn(V(b, x.load(b, full), x.dtype)).name, reduce="sum",
                                    acc=f"acc{i}", acc_dtype=x.dtype))
        b = ctx.body()
        accs = [V(b, b.acc(f"acc{i}", x.dtype), x.dtype) for i in range(len(sums))]
        y = finish(b, V(b, x.load(b, full), x.dtype), accs, V(b, b.index(n, x.dtype), x.dtype), full)
        b.store(out, full, y.cast(dtype).name)
        return [*out_stages, Stage("loop", b)]

    reduce_kernel(ctx, node.op, x.shape, axes, stages)

    return TensorRef(dtype, shape, buffer=out)


def _lp_normalization_reference(node):
    a = attrs(node)

    def run(x):
        """x / (sum |x|^p)^(1/p) along axis, 0 where the norm is 0."""
        norm = np.power(np.power(np.abs(x), a["p"]).sum(axis=a["axis"], keepdims=True), 1.0 / a["p"])
        return (np.where(norm == 0, 0, x / norm).astype(x.dtype),)
    return run


get_op("LpNormalization").reference = _lp_normalization_reference


@register_lowering("LpNormalization")
def _lower_lp_normalization(ctx, node, ins):
    (x,), a = ins, attrs(node)
    if x.dtype not in FLOATS or a["p"] not in (1, 2) or not x.shape:
        raise NotLowerable("not float, p other than 1 or 2, or a scalar")

    def finish(b, v, accs, n, full):
        norm = accs[0] if a["p"] == 1 else accs[0].sqrt()
        return (norm.eq(0, dtype=DType.bool)).where(0.0, v / norm)

    magnitude = (lambda v: v.abs()) if a["p"] == 1 else (lambda v: v * v)
    return [_normalize_kernel(ctx, node, x, {normalize_axis(a["axis"], len(x.shape))}, [magnitude], finish)]


standard_op("InstanceNormalization")


@register_lowering("InstanceNormalization")
def _lower_instance_normalization(ctx, node, ins):
    """s * (x - mean) / sqrt(var + epsilon) + bias over each (sample, channel)'s spatial axes."""
    x, scale, bias = ins
    if x.dtype not in FLOATS or len(x.shape) < 3 or scale.dtype != x.dtype or bias.dtype != x.dtype:
        raise NotLowerable("not float, or fewer than 3 dims")
    eps = attrs(node)["epsilon"]
    spatial = set(range(2, len(x.shape)))
    dtype, shape = out_type(node)
    out = ctx.new_buffer(node.op, dtype, shape)

    def stages(Stage, full, xv, n):
        b0 = ctx.body()
        b1 = ctx.body()
        count = V(b1, b1.index(n, x.dtype), x.dtype)
        mean1 = V(b1, b1.acc("acc_sum", x.dtype), x.dtype) / count
        d1 = V(b1, x.load(b1, full), x.dtype) - mean1
        b2 = ctx.body()
        count = V(b2, b2.index(n, x.dtype), x.dtype)
        mean = V(b2, b2.acc("acc_sum", x.dtype), x.dtype) / count
        var = V(b2, b2.acc("acc_var", x.dtype), x.dtype) / count
        s = V(b2, scale.load(b2, (full[1],)), x.dtype)
        y = s * (V(b2, x.load(b2, full), x.dtype) - mean) / (var + eps).sqrt() + V(b2, bias.load(b2, (full[1],)), x.dtype)
        b2.store(out, full, y.cast(dtype).name)
        return [Stage("reduce", b0, value=x.load(b0, full), reduce="sum", acc="acc_sum", acc_dtype=x.dtype),
                Stage("reduce", b1, value=(d1 * d1).name, reduce="sum", acc="acc_var", acc_dtype=x.dtype),
                Stage("loop", b2)]

    reduce_kernel(ctx, node.op, x.shape, spatial, stages)

    return [TensorRef(dtype, shape, buffer=out)]


@register_lowering("MeanVarianceNormalization")
def _lower_mean_variance_normalization(ctx, node, ins):
    """The function body's formula: (x - E[x]) / (sqrt(E[x^2] - E[x]^2) + 1e-9) over `axes`."""
    (x,) = ins
    if x.dtype not in FLOATS or not x.shape:
        raise NotLowerable("not float, or a scalar")
    axes = {normalize_axis(v, len(x.shape)) for v in attrs(node)["axes"]}

    def finish(b, v, accs, n, full):
        mean, mean_square = accs[0] / n, accs[1] / n
        return (v - mean) / ((mean_square - mean * mean).sqrt() + 1e-9)

    return [_normalize_kernel(ctx, node, x, axes, [lambda v: v, lambda v: v * v], finish)]


def _lrn_reference(node):
    a = attrs(node)

    def run(x):
        """x / (bias + alpha / size * (sum of x^2 over a window of channels)) ** beta."""
        size, channels = a["size"], x.shape[1]
        before, after = (size - 1) // 2, math.ceil((size - 1) / 2) + 1
        squares = x * x
        total = np.zeros_like(x)
        for c in range(channels):  # (onnx.reference loops over the batch here: a slip for N != C)
            total[:, c] = squares[:, max(0, c - before):min(channels, c + after)].sum(axis=1)
        return ((x / (a["bias"] + (a["alpha"] / size) * total) ** a["beta"]).astype(x.dtype),)
    return run


standard_op("LRN", reference=_lrn_reference)


@register_lowering("LRN")
def _lower_lrn(ctx, node, ins):
    (x,), a = ins, attrs(node)
    if x.dtype not in FLOATS or len(x.shape) < 3:
        raise NotLowerable("not float, or fewer than 3 dims")
    size, channels = a["size"], x.shape[1]
    before = (size - 1) // 2

    def lrn(b, index):
        v = V(b, x.load(b, index), x.dtype)
        total = None
        for k in range(size):  # the window, unrolled: channels outside [0, C) add nothing
            c = index[1] - before + k
            at = V(b, b.index(c), DType.int64)
            inside = (at >= 0).op("and", at < V(b, b.index(channels), DType.int64), dtype=DType.bool)
            w = V(b, x.load(b, (index[0], sympy.Max(0, sympy.Min(c, channels - 1)), *index[2:])), x.dtype)
            term = inside.where(w * w, 0.0)
            total = term if total is None else total + term
        base = a["bias"] + float(np.float32(a["alpha"]) / np.float32(size)) * total
        return (v / base.op("pow", V(b, b.const(a["beta"], x.dtype), x.dtype))).name

    return [ctx.pointwise(x.shape, x.dtype, lrn, cost=6 * size)]

