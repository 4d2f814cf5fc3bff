"""Collectives of tensor parallelism: what the sharding pass (passes/shard_tensor_parallel.py)
puts between the ranks' shards of a model.

    ember.AllReduce(x) -> y       the sum of x over the ranks, on every rank   (world_size)
    ember.AllGather(x) -> y       the ranks' x concatenated along `axis`, rank 0's first,
                                  on every rank                               (world_size, axis)

`world_size` is the number of ranks the graph was sharded for; the group that runs it must
be that big. The meaning runs over torch.distributed's default process group (gloo on a
CPU, NCCL on GPUs; ember has no transport of its own); a group of one is the identity,
without torch. Neither op is folded or deduplicated: every rank must run the same
collectives in the same order.
"""

from __future__ import annotations

import numpy as np

from ...errors import ExecutionError
from ..graph import Node
from ..registry import AttrSpec, Known, OpDef, ParamSpec, get_op, register_op
from ._lowering import out_type, register_lowering
from ._symbolic import dtype_of, shape_of, tensor

WORLD = {"world_size": AttrSpec("world_size", "int", required=True)}


def process_group(world_size: int, where: str):
    """torch.distributed, checked to run a group of `world_size` ranks (None for a group
    of one, which needs none)."""
    if world_size == 1:
        return None
    import torch.distributed as dist

    if not dist.is_available() or not dist.is_initialized():
        raise ExecutionError(f"{where}: a collective of a model sharded over {world_size} ranks, run outside a "
                             "process group (run it through ember.LLM(..., tensor_parallel_size=N) or torchrun)")
    if dist.get_world_size() != world_size:
        raise ExecutionError(f"{where}: the model was sharded over {world_size} ranks, the process group has "
                             f"{dist.get_world_size()}")
    return dist


def all_reduce(x, *, world_size: int, where: str = "ember.AllReduce"):
    """The sum of torch tensor `x` over the group, in place; x itself. Two ranks swap their
    tensors (one send and one receive each, at once) and add: on gloo that takes a quarter
    of its all_reduce's time for an LLM step's activations (0.34 vs 1.58 ms for 36 KB
    between two processes of a 2-core EPYC VM), and a + b is b + a, so both ranks hold the
    same sum. Larger groups use all_reduce."""
    dist = process_group(world_size, where)
    if dist is None:
        return x
    if world_size == 2:
        import torch

        other = torch.empty_like(x)
        peer = 1 - dist.get_rank()
        sent, received = dist.isend(x, peer), dist.irecv(other, peer)
        sent.wait()
        received.wait()
        x.add_(other)
    else:
        dist.all_reduce(x)
    return x


def all_gather(x, *, world_size: int, axis: int, where: str = "ember.AllGather"):
    """The group's torch tensors `x` concatenated along `axis` (a new tensor)."""
    dist = process_group(world_size, where)
    if dist is None:
        return x.clone()
    import torch

    parts = [torch.empty_like(x) for _ in range(world_size)]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts, dim=axis)


def _reference(node: Node):
    opdef = get_op(node.op)
    world, where = opdef.attr(node, "world_size"), node.describe()

    def run(x):
        if world == 1:
            return (np.array(x),)
        import torch

        t = torch.from_numpy(np.array(x))
        if node.op == "ember.AllReduce":
            return (all_reduce(t, world_size=world, where=where).numpy(),)
        return (all_gather(t, world_size=world, axis=opdef.attr(node, "axis") % x.ndim, where=where).numpy(),)

    return run


def _infer_reduce(node: Node, ins: list[Known | None]) -> list[Known | None]:
    return [tensor(dtype_of(ins[0]), shape_of(ins[0])) if dtype_of(ins[0]) is not None else None]


def _infer_gather(node: Node, ins: list[Known | None]) -> list[Known | None]:
    dtype, shape = dtype_of(ins[0]), shape_of(ins[0])
    if dtype is None or shape is None:
        return [tensor(dtype, None) if dtype is not None else None]
    opdef = get_op(node.op)
    axis = opdef.attr(node, "axis") % len(shape)
    world = opdef.attr(node, "world_size")
    return [tensor(dtype, tuple(d * world if i == axis else d for i, d in enumerate(shape)))]


register_op(OpDef(
    "ember.AllReduce", inputs=(ParamSpec("x"),), outputs=(ParamSpec("y"),), attrs=WORLD,
    reference=_reference, infer=_infer_reduce, deterministic=False,
    doc="the sum of x over the ranks of a tensor-parallel group, on every rank",
))
register_op(OpDef(
    "ember.AllGather", inputs=(ParamSpec("x"),), outputs=(ParamSpec("y"),),
    attrs={**WORLD, "axis": AttrSpec("axis", "int", -1)},
    reference=_reference, infer=_infer_gather, deterministic=False,
    doc="the ranks' x concatenated along axis (rank 0's first), on every rank",
))


def _lower(ctx, node, ins):
    opdef = get_op(node.op)
    params = {"world_size": opdef.attr(node, "world_size"), "where": node.describe()}
    if node.op == "ember.AllGather":
        params["axis"] = opdef.attr(node, "axis") % len(ins[0].shape)
    return ctx.extern("all_reduce" if node.op == "ember.AllReduce" else "all_gather", ins, [out_type(node)],
                      **params)


register_lowering("ember.AllReduce", "ember.AllGather")(_lower)
