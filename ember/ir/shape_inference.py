"""Symbolic shape inference over a whole graph.

Each node's type function (its OpDef's `infer`) sees what is known of its inputs: their
types and, for small integer tensors computed from shapes, their contents as sympy
expressions. So `Shape -> Gather -> Unsqueeze -> Concat -> Reshape` chains resolve to
dims like `batch*seq` instead of unknowns. An inferred dim replaces the type the value
had unless it is itself unknown (a fresh symbol) and the old one was not."""

from __future__ import annotations

from collections import ChainMap

from .graph import Graph, Value
from .ops._symbolic import tensor, track
from .registry import Known, get_op
from .types import Dim, TensorType, Type


def is_unknown(d: Dim) -> bool:
    """A dim nobody could infer: it involves a fresh symbol (named `_...`)."""
    return not isinstance(d, int) and any(s.name.startswith("_") for s in d.free_symbols)


def _merge(old: Type | None, new: Type | None) -> Type | None:
    if new is None:
        return old
    if not isinstance(old, TensorType) or not isinstance(new, TensorType):
        return new if old is None or isinstance(new, type(old)) else old
    if new.shape is None:
        return TensorType(new.dtype, old.shape)
    if old.shape is None or len(old.shape) != len(new.shape):
        return new
    dims = tuple(o if is_unknown(n) and not is_unknown(o) else n for o, n in zip(old.shape, new.shape))
    return TensorType(new.dtype, dims)


def known_of(v: Value) -> Known:
    """What a value's type (and, for a small integer constant, its data) tells."""
    data, t = v.const, v.type
    if data is not None and isinstance(t, TensorType) and track(t.dtype, data.shape):
        return tensor(t.dtype, data.shape, data.reshape(-1).tolist())
    return Known(t)


def infer_types(graph: Graph, outer: ChainMap | None = None) -> ChainMap:
    """Infer every value's type in place (subgraphs included). Returns what is known of
    each value of this graph, by id: passes read shape-tensor contents from it."""
    known: ChainMap = (outer if outer is not None else ChainMap()).new_child()
    if outer is None:  # a subgraph on its own (a pass on an If/Loop/Scan body): its outer reads as declared
        for v in graph.free_values():
            known[id(v)] = known_of(v) if v.const is not None else Known(v.type)
    for v in graph.inputs:
        known[id(v)] = Known(v.type)
    for v in graph.constants:
        known[id(v)] = known_of(v)
    for node in graph.nodes:
        for sub in node.subgraphs():
            infer_types(sub, known)
        ins = [known.get(id(v)) if v is not None else None for v in node.inputs]
        try:
            results = get_op(node.op).infer(node, ins)
        except Exception:  # noqa: BLE001 - a type function that cannot cope knows nothing
            results = [None] * len(node.outputs)
        for value, result in zip(node.outputs, list(results) + [None] * len(node.outputs)):
            merged = _merge(value.type, result.type if result is not None else None)
            value.type = merged
            keep_contents = result is not None and result.value is not None and merged == result.type
            known[id(value)] = Known(merged, result.value if keep_contents else None)
    return known
