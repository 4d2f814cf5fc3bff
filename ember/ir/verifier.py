"""The IR verifier: SSA, scoping and topological order, ops and attributes against
their schemas, and well-formed types. Raises `IRError` naming the first fault."""

from __future__ import annotations

from .._deferred import sympy
from ..errors import IRError
from .graph import Graph, Node, Value
from .registry import get_op, has_op
from .types import OptionalType, SequenceType, TensorType


def verify(graph: Graph) -> None:
    _verify(graph, outer=set())


def _check_type(value: Value) -> None:
    t = value.type
    while isinstance(t, (SequenceType, OptionalType)):
        t = t.elem
    if isinstance(t, TensorType) and t.shape is not None:
        for d in t.shape:
            ok = (isinstance(d, int) and d >= 0) or isinstance(d, sympy.Expr)
            if not ok:
                raise IRError(f"value {value.name!r}: bad dim {d!r} in type {value.type}")


def _verify(graph: Graph, outer: set[int]) -> None:
    defined: set[int] = set(outer)
    names: dict[str, Value] = {}

    def define(value: Value, what: str) -> None:
        if id(value) in defined:
            raise IRError(f"graph {graph.name!r}: value {value.name!r} is defined twice ({what})")
        other = names.get(value.name)
        if other is not None and other is not value:
            raise IRError(f"graph {graph.name!r}: two values are named {value.name!r}")
        names[value.name] = value
        defined.add(id(value))
        _check_type(value)

    for v in graph.inputs:
        define(v, "graph input")
    for v in graph.constants:
        if v.const is None:
            raise IRError(f"constant {v.name!r} has no data")
        define(v, "constant")
    for node in graph.nodes:
        _verify_node(node)
        for v in node.inputs:
            if v is not None and id(v) not in defined:
                raise IRError(f"{node.describe()}: input {v.name!r} is not defined before "
                              f"this node (graph {graph.name!r} is not in topological order, "
                              f"has a cycle, or reads an unknown value)")
        for sub in node.subgraphs():
            _verify(sub, defined)
        for v in node.outputs:
            if v.producer is not node:
                raise IRError(f"{node.describe()}: output {v.name!r} names another producer")
            define(v, f"output of {node.describe()}")
    for v in graph.outputs:
        if id(v) not in defined:
            raise IRError(f"graph {graph.name!r}: output {v.name!r} is never produced")


def _verify_node(node: Node) -> None:
    if not has_op(node.op):
        raise IRError(f"{node.describe()}: unknown op {node.op!r}")
    opdef = get_op(node.op)
    for which, values in (("inputs", node.inputs), ("outputs", node.outputs)):
        lo, hi = opdef.arity(which)
        n = len(values)
        if n < lo or (hi is not None and n > hi):
            expect = f"{lo}..{hi}" if hi != lo else str(lo)
            raise IRError(f"{node.describe()}: expects {expect if hi is not None else f'at least {lo}'} "
                          f"{which}, has {n}")
    for name in node.attrs:
        if name not in opdef.attrs:
            raise IRError(f"{node.describe()}: unknown attribute {name!r} "
                          f"(known: {', '.join(sorted(opdef.attrs)) or 'none'})")
    for name, spec in opdef.attrs.items():
        if spec.required and name not in node.attrs:
            raise IRError(f"{node.describe()}: missing required attribute {name!r}")
