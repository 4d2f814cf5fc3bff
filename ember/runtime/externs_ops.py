"""Externs for standard ops that torch runs exactly, and the run-time checks that guard
what a lowering assumed about an input's contents."""

from __future__ import annotations

from ._torch import torch

from ..errors import ExecutionError
from . import externs_paged  # noqa: F401 - registers the paged-attention extern
from .externs import extern


@extern("check_axes")
def check_axes(params, axes):
    """A reduction whose axes are fed at run time was compiled for the axes its declared
    output type fixes; any other axes would give a wrong result, so they are an error.
    Axes of static size 1 may be named or not (keepdims: reducing them changes nothing)."""
    rank = params["rank"]
    fed = [int(v) for v in axes.reshape(-1).tolist()]
    if any(not -rank <= v < rank for v in fed):
        raise ExecutionError(f"{params['where']}: axes {fed} out of range for rank {rank}")
    named = {v % rank for v in fed}
    if not named and not params["noop_with_empty_axes"]:
        named = set(range(rank))
    optional = set(params["unit_axes"])
    if named - optional != set(params["expected"]) - optional:
        raise ExecutionError(f"{params['where']}: axes {fed} fed at run time, but the model's declared "
                             f"output type was compiled as reducing axes {params['expected']}")


@extern("cumulative")
def cumulative(params, x, axis, y):
    """CumSum / CumProd along `axis` (a tensor of one element), one slice at a time in
    x's dtype: each partial result rounds (or wraps) exactly as numpy's running sum does."""
    rank = x.dim()
    ax = int(axis.reshape(-1)[0])
    if not -rank <= ax < rank:
        raise ExecutionError(f"{params['where']}: axis {ax} out of range for rank {rank}")
    xs, ys = x.movedim(ax, 0), y.movedim(ax, 0)
    combine = torch.add if params["how"] == "sum" else torch.mul
    order = range(xs.shape[0] - 1, -1, -1) if params["reverse"] else range(xs.shape[0])
    acc = None
    for i in order:
        if params["exclusive"]:
            ys[i] = params["identity"] if acc is None else acc
        acc = xs[i].clone() if acc is None else combine(acc, xs[i])
        if not params["exclusive"]:
            ys[i] = acc


@extern("topk")
def topk(params, x, k, values, indices):
    """The reference's order: a stable sort (ties keep the lower index first, NaN counts
    as the largest), then the first k."""
    axis, n = params["axis"], values.shape[params["axis"]]
    if int(k.reshape(-1)[0]) != n:
        raise ExecutionError(f"{params['where']}: k = {int(k.reshape(-1)[0])} fed at run time, "
                             f"but the model's declared output type has {n} along axis {axis}")
    order = torch.sort(x, dim=axis, descending=params["largest"], stable=True).indices.narrow(axis, 0, n)
    indices.copy_(order)
    values.copy_(torch.gather(x, axis, order))


@extern("hardmax")
def hardmax(params, x, y):
    """1 at the first largest element along `axis` (numpy's argmax), 0 elsewhere."""
    y.zero_()
    if x.numel():
        y.scatter_(params["axis"], x.argmax(dim=params["axis"], keepdim=True), 1)


@extern("einsum")
def einsum(params, *args):
    *operands, y = args
    y.copy_(torch.einsum(params["equation"], *operands))


@extern("check_write_indices")
def check_write_indices(params, writes):
    """TensorScatter in linear mode writes `length` steps from each write index: past the
    cache's end the reference fails, and so does this (a negative index counts from the end)."""
    cache, length = int(params["cache"]), int(params["length"])
    bad = [int(w) for w in writes.reshape(-1).tolist() if not -cache <= int(w) <= cache - length]
    if bad:
        raise ExecutionError(f"{params['where']}: write_indices {bad} would write past the cache's "
                             f"{cache} steps along axis {params['axis']} (linear mode, {length} steps)")


@extern("all_reduce")
def all_reduce(params, x, y):
    """ember.AllReduce over torch.distributed's default group (ir/ops/collectives.py)."""
    from ..ir.ops import collectives  # (imports the op registry: only a sharded model's steps)

    y.copy_(x)
    collectives.all_reduce(y, world_size=params["world_size"], where=params["where"])


@extern("all_gather")
def all_gather(params, x, y):
    """ember.AllGather over torch.distributed's default group (ir/ops/collectives.py)."""
    from ..ir.ops import collectives

    y.copy_(collectives.all_gather(x, world_size=params["world_size"], axis=params["axis"], where=params["where"]))
