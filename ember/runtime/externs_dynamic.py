"""Externs whose outputs' sizes (or whose parameters) are known only when they run: the
data-dependent ops (NonZero, Compress, Unique), and ops whose axes, pads, starts, shape
or repeats are fed at run time (reductions, Pad, Slice, Tile, Reshape, Expand,
ConstantOfShape, Range), all on torch's CPU kernels.

Each is given None for an output whose size nothing knew before it ran (see
`LoweringContext.extern`): it allocates that output and returns every output, and the
executor binds the output's size symbols from it, so the generated kernels after it run
with those sizes. An output the executor did allocate (the model declared its size) is
written in place, after checking the size the op computed is that one.
"""

from __future__ import annotations

import math

from ._torch import F, torch

from ..errors import ExecutionError
from .externs import extern


def _give(params, outs, results) -> list[torch.Tensor]:
    """Write each result into its output buffer (checking the declared size), or hand it
    over where the executor gave None."""
    given = []
    for y, r in zip(outs, results):
        if y is None:
            given.append(r.contiguous())
            continue
        if tuple(y.shape) != tuple(r.shape):
            raise ExecutionError(f"{params['where']}: computed shape {list(r.shape)} when it ran, but the "
                                 f"model declares {list(y.shape)}")
        y.copy_(r)
        given.append(y)
    return given


def _ints(t) -> list[int]:
    return [int(v) for v in t.reshape(-1).tolist()]


# -- reductions with axes fed at run time ----------------------------------------------
# a reduction over no axis, elementwise (the others give the element itself)
_ALONE = {"ReduceL1": lambda x: x.abs(), "ReduceL2": lambda x: (x * x).sqrt(), "ReduceSumSquare": lambda x: x * x,
          "ReduceLogSum": lambda x: x.log()}


def _reduce(op: str, x: torch.Tensor, dims: list[int]) -> torch.Tensor:
    """`op` over `dims` of x (none empty), keeping them (as size 1)."""
    if op == "ReduceSum":
        return x.sum(dims, keepdim=True, dtype=x.dtype)
    if op == "ReduceMean":
        return x.mean(dims, keepdim=True)
    if op in ("ReduceMax", "ReduceMin"):
        if x.dtype == torch.bool:
            return _reduce(op, x.to(torch.uint8), dims).to(torch.bool)
        return x.amax(dims, keepdim=True) if op == "ReduceMax" else x.amin(dims, keepdim=True)
    if op == "ReduceProd":
        for d in dims:  # torch's prod takes one dim at a time
            x = x.prod(d, keepdim=True, dtype=x.dtype)
        return x
    if op == "ReduceL1":
        return x.abs().sum(dims, keepdim=True, dtype=x.dtype)
    if op == "ReduceL2":
        return (x * x).sum(dims, keepdim=True).sqrt()
    if op == "ReduceSumSquare":
        return (x * x).sum(dims, keepdim=True, dtype=x.dtype)
    if op == "ReduceLogSum":
        return x.sum(dims, keepdim=True).log()
    if op == "ReduceLogSumExp":
        return torch.logsumexp(x, dims, keepdim=True)
    raise ExecutionError(f"no reduction {op}")


@extern("reduce")
def reduce(params, x, axes, y):
    """ONNX's reductions with the axes fed at run time: an empty axes input reduces every
    axis (or nothing, with noop_with_empty_axes); reducing an empty set gives the op's
    identity (params["identity"]: 0, 1, -inf, +inf, NaN for the mean)."""
    rank = x.dim()
    fed = _ints(axes) if axes is not None else []
    if any(not -rank <= a < rank for a in fed):
        raise ExecutionError(f"{params['where']}: axes {fed} out of range for rank {rank}")
    op = params["op"]
    dims = sorted({a % rank for a in fed}) if fed else [] if params["noop_with_empty_axes"] else list(range(rank))
    if not dims:  # each element reduced alone (torch would take no dims as every dim)
        return _give(params, [y], [_ALONE.get(op, lambda x: x.clone())(x).to(x.dtype)])
    shape = [1 if i in dims else n for i, n in enumerate(x.shape)]
    if any(x.shape[d] == 0 for d in dims):
        result = torch.full(shape, params["identity"], dtype=x.dtype, device=x.device)
    else:
        result = _reduce(op, x, dims).to(x.dtype)
    if not params["keepdims"]:
        result = result.reshape([n for i, n in enumerate(shape) if i not in dims])
    return _give(params, [y], [result])


# -- shapes and positions fed at run time -----------------------------------------------
@extern("range")
def range_(params, start, limit, delta, y):
    """start + i * delta for i < max(ceil((limit - start) / delta), 0), in the inputs' dtype."""
    s, e, d = start.item(), limit.item(), delta.item()
    if d == 0:
        raise ExecutionError(f"{params['where']}: delta is 0")
    n = max(math.ceil((e - s) / d), 0)
    if start.dtype.is_floating_point:
        result = torch.arange(n, dtype=torch.float64, device=start.device).mul_(d).add_(s).to(start.dtype)
    else:
        result = torch.arange(n, dtype=start.dtype, device=start.device).mul_(d).add_(s)
    return _give(params, [y], [result])


def _pad_source(mode: str, i: torch.Tensor, begin: int, n: int) -> torch.Tensor:
    """Where each output position `i` reads along a padded axis of `n` elements."""
    src = i - begin
    if mode == "reflect":  # numpy's: periodic in 2(n-1), so pads longer than the axis reflect again
        if n == 1:
            return torch.zeros_like(src)
        return (n - 1) - ((n - 1) - src.remainder(2 * (n - 1))).abs()
    if mode == "wrap":
        return src.remainder(n)
    return src.clamp(0, n - 1)  # edge


@extern("pad")
def pad(params, x, pads, value, axes, y):
    """ONNX Pad with pads (and axes) fed at run time: negative pads crop."""
    rank = x.dim()
    amounts = _ints(pads)
    chosen = [a % rank for a in _ints(axes)] if axes is not None else list(range(rank))
    if len(amounts) != 2 * len(chosen):
        raise ExecutionError(f"{params['where']}: {len(amounts)} pads for {len(chosen)} axes")
    begin, end = [0] * rank, [0] * rank
    for j, a in enumerate(chosen):
        begin[a], end[a] = amounts[j], amounts[j + len(chosen)]
    mode = params["mode"]
    if mode == "constant":
        fill = value.reshape(-1)[0].item() if value is not None and value.numel() else 0
        flat = [p for a in reversed(range(rank)) for p in (begin[a], end[a])]
        result = F.pad(x, flat, value=fill) if rank else x.clone()
    else:
        result = x
        for a in range(rank):
            if begin[a] or end[a]:
                n = x.shape[a]
                if n == 0:
                    raise ExecutionError(f"{params['where']}: {mode} padding of an empty axis")
                at = torch.arange(n + begin[a] + end[a], device=x.device)
                result = result.index_select(a, _pad_source(mode, at, begin[a], n))
    return _give(params, [y], [result])


@extern("slice")
def slice_(params, x, starts, ends, axes, steps, y):
    """ONNX Slice with starts, ends, axes or steps fed at run time (numpy's clamping)."""
    rank = x.dim()
    first, last = _ints(starts), _ints(ends)
    chosen = [a % rank for a in _ints(axes)] if axes is not None else list(range(len(first)))
    strides = _ints(steps) if steps is not None else [1] * len(first)
    result = x
    for a, s, e, st in zip(chosen, first, last, strides):
        if st == 0:
            raise ExecutionError(f"{params['where']}: a step of 0")
        picked = range(*slice(s, e, st).indices(x.shape[a]))
        result = result.index_select(a, torch.arange(len(picked), dtype=torch.int64, device=x.device) * picked.step
                                     + picked.start)
    return _give(params, [y], [result])


@extern("tile")
def tile(params, x, repeats, y):
    times = _ints(repeats)
    if len(times) != x.dim() or any(t < 0 for t in times):
        raise ExecutionError(f"{params['where']}: repeats {times} for rank {x.dim()}")
    return _give(params, [y], [x.repeat(*times) if times else x.clone()])


@extern("reshape")
def reshape(params, x, shape, y):
    """ONNX Reshape to a shape fed at run time: 0 copies the input's dim (unless
    allowzero), -1 is what is left."""
    target = _ints(shape)
    if not params["allowzero"]:
        target = [x.shape[i] if t == 0 and i < x.dim() else t for i, t in enumerate(target)]
    return _give(params, [y], [x.reshape(target).clone()])


@extern("squeeze")
def squeeze(params, x, axes, y):
    """x without the axes fed at run time (each of size 1), or without every 1."""
    rank = x.dim()
    drop = {a % rank for a in _ints(axes)} if axes is not None and axes.numel() else \
        {i for i, n in enumerate(x.shape) if n == 1}
    if any(x.shape[a] != 1 for a in drop):
        raise ExecutionError(f"{params['where']}: cannot squeeze axes {sorted(drop)} of shape {list(x.shape)}")
    return _give(params, [y], [x.reshape([n for i, n in enumerate(x.shape) if i not in drop]).clone()])


@extern("unsqueeze")
def unsqueeze(params, x, axes, y):
    """x with 1s inserted at the axes fed at run time (axes of the output)."""
    rank = x.dim() + axes.numel()
    at = sorted(a % rank for a in _ints(axes))
    shape = list(x.shape)
    for a in at:
        shape.insert(a, 1)
    return _give(params, [y], [x.reshape(shape).clone()])


@extern("expand")
def expand(params, x, shape, y):
    """x broadcast with a shape fed at run time (numpy's rules, both ways)."""
    target = torch.broadcast_shapes(tuple(x.shape), tuple(_ints(shape)))
    return _give(params, [y], [x.expand(target).clone()])


@extern("constant_of_shape")
def constant_of_shape(params, shape, y):
    dtype = y.dtype if y is not None else getattr(torch, params["dtype"])  # DType names are torch's
    return _give(params, [y], [torch.full(_ints(shape), params["value"], dtype=dtype)])


# -- data-dependent sizes ---------------------------------------------------------------
@extern("nonzero")
def nonzero(params, x, y):
    """The indices of the non-zero elements, [rank, count], in row-major order."""
    return _give(params, [y], [torch.nonzero(x).t()])


@extern("compress")
def compress(params, x, condition, y):
    """The slices along `axis` (of x flattened, with no axis) where condition is true; a
    condition shorter than the axis leaves out the rest (numpy's compress)."""
    axis = params["axis"]
    data = x.reshape(-1) if axis is None else x
    axis = 0 if axis is None else axis
    cond = condition.reshape(-1).to(torch.bool)
    n = data.shape[axis]
    if cond.numel() > n and bool(cond[n:].any()):
        raise ExecutionError(f"{params['where']}: condition selects past the end of axis {axis} (length {n})")
    picked = torch.nonzero(cond[:n]).reshape(-1)
    return _give(params, [y], [data.index_select(axis, picked)])


@extern("unique")
def unique(params, x, *outs):
    """ONNX Unique: the unique values (or slices along `axis`), sorted or in order of
    first occurrence, the index of each one's first occurrence, each element's (slice's)
    index into them, and their counts."""
    axis = params["axis"]
    data = x.reshape(-1) if axis is None else x
    dim = 0 if axis is None else axis
    values, inverse, counts = torch.unique(data, sorted=True, return_inverse=True, return_counts=True,
                                           dim=None if axis is None else axis)
    nans = int(values.isnan().sum()) if axis is None and values.dtype.is_floating_point else 0
    if nans > 1:  # numpy counts every NaN of a flattened input as one value (torch: each its own, sorted last)
        kept = values.shape[0] - nans
        values, inverse = values[:kept + 1], inverse.clamp(max=kept)
        counts = torch.cat([counts[:kept], counts[kept:].sum().reshape(1)])
    n, k = data.shape[dim], values.shape[dim]
    first = torch.full((k,), n, dtype=torch.int64, device=data.device).scatter_reduce_(
        0, inverse.reshape(-1), torch.arange(n, device=data.device), "amin")
    if not params["sorted"]:  # in order of first occurrence
        order = torch.argsort(first)
        values, first, counts = values.index_select(dim, order), first[order], counts[order]
        rank = torch.empty_like(order)
        rank[order] = torch.arange(k, device=order.device)
        inverse = rank[inverse]
    results = [values, first, inverse.reshape(-1), counts.to(torch.int64)]
    return _give(params, outs, results[:len(outs)])
