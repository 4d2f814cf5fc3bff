"""The pattern rewriter: rewrites are declared, one driver edits the graph.

A `Rewrite` is a pattern, a check and a replacement, written in the builder style
graphs are written in:

    def pattern(op, x, p1, p2):
        return op.Transpose(op.Transpose(x, perm=p1), perm=p2)

    def check(m):                      # None: apply; a string: why not
        return None

    def replacement(op, x, p1, p2):
        return op.Transpose(x, perm=[p1[i] for i in p2])

    Rewrite("merge_transposes", pattern, replacement, check)

The pattern's parameters after `op` are variables: each binds a Value where it is used
as an input, or an attribute value where it is used as an attribute (a missing
attribute binds its schema default); `_as="name"` on a pattern op binds the value it
matched, for the check to look at. `commute=True` also tries the inputs of
commutative ops (Add, Mul, ...) swapped. A match whose inner values are also read
outside it is rejected (fusing it would compute them twice). The replacement gets the same bindings (None for a
variable this match left unbound) and an `op` that builds real nodes; it returns the value(s) that replace the pattern's
output(s). The driver inserts the new nodes before the matched root, infers their
types, redirects the readers of the old outputs, and sweeps what became dead.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..ir.graph import Graph, Node, Value
from ..ir.registry import get_op
from ..ir.shape_inference import known_of
from .base import Pass, PassResult
from .dead_code import EliminateDeadCode

COMMUTATIVE = {"Add", "Mul", "And", "Or", "Xor", "Max", "Min", "Sum", "Equal"}


# -- patterns ---------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class Var:
    name: str


@dataclass(eq=False)
class PatternNode:
    op: str
    inputs: list[Any]
    attrs: dict[str, Any]
    num_outputs: int = 1
    bind_as: str | None = None


@dataclass(frozen=True, eq=False)
class PatternValue:
    node: PatternNode
    index: int = 0


class _PatternBuilder:
    """`op.Name(inputs..., attr=...)` records a PatternNode; `op("ember.X", ...)` for
    namespaced ops; `_outputs=N` for multi-output ops; `_as="name"` binds the matched
    (first) output under that name."""

    def __call__(self, op: str, *inputs, _outputs: int = 1, _as: str | None = None, **attrs):
        node = PatternNode(op, list(inputs), attrs, _outputs, _as)
        values = [PatternValue(node, i) for i in range(_outputs)]
        return values[0] if _outputs == 1 else values

    def __getattr__(self, op: str):
        return lambda *inputs, **attrs: self(op, *inputs, **attrs)


@dataclass
class Match:
    root: Node
    bindings: dict[str, Any]
    nodes: list[Node] = field(default_factory=list)

    def __getitem__(self, name: str) -> Any:
        return self.bindings[name]

    def constant(self, name: str) -> np.ndarray | None:
        """The data of the constant bound to `name`, or None if it is not a constant."""
        value = self.bindings.get(name)
        return value.const if isinstance(value, Value) else None

    def is_scalar(self, name: str, number: float, rtol: float = 1e-3) -> bool:
        data = self.constant(name)
        return data is not None and data.size == 1 and bool(np.isclose(float(data.reshape(-1)[0]), number, rtol=rtol))


@dataclass
class Rewrite:
    name: str
    pattern: Callable[..., Any]
    replacement: Callable[..., Any]
    check: Callable[[Match], str | None] | None = None
    commute: bool = False

    def __post_init__(self):
        params = list(inspect.signature(self.pattern).parameters)[1:]
        self.variables = {name: Var(name) for name in params}
        out = self.pattern(_PatternBuilder(), *self.variables.values())
        self.outputs: list[PatternValue] = out if isinstance(out, list) else [out]
        self.root = self.outputs[0].node


# -- matching ---------------------------------------------------------------------
def _bind(bindings: dict, var: Var, value: Any) -> bool:
    if var.name in bindings:
        bound = bindings[var.name]
        if isinstance(bound, Value) or isinstance(value, Value):
            return bound is value
        return _same(bound, value)
    bindings[var.name] = value
    return True


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return np.array_equal(np.asarray(a), np.asarray(b))
    return a == b


def _match_node(pn: PatternNode, node: Node, bindings: dict, matched: list, commute: bool) -> dict | None:
    if node.op != pn.op or len(node.outputs) != pn.num_outputs:
        return None
    inputs = list(node.inputs)
    while inputs and inputs[-1] is None:
        inputs.pop()
    if len(inputs) != len(pn.inputs):
        return None
    bindings = dict(bindings)
    if pn.bind_as is not None and not _bind(bindings, Var(pn.bind_as), node.outputs[0]):
        return None
    opdef = get_op(node.op)
    for key, want in pn.attrs.items():
        have = node.attrs[key] if key in node.attrs else (opdef.attrs[key].default if key in opdef.attrs else None)
        if isinstance(want, Var):
            if not _bind(bindings, want, have):
                return None
        elif not _same(have, want):
            return None
    orders = [inputs]
    if commute and node.op in COMMUTATIVE and len(inputs) == 2:
        orders.append(inputs[::-1])
    for order in orders:
        result = _match_inputs(pn.inputs, order, bindings, commute)
        if result is not None:
            bound, nodes = result
            matched.extend([node, *nodes])
            return bound
    return None


def _match_inputs(patterns: list, values: list, bindings: dict, commute: bool):
    bindings = dict(bindings)
    nodes: list[Node] = []
    for pat, value in zip(patterns, values):
        if isinstance(pat, Var):
            if not _bind(bindings, pat, value):
                return None
        elif isinstance(pat, PatternValue):
            producer = value.producer if value is not None else None
            if producer is None or producer.outputs[pat.index] is not value:
                return None
            found: list[Node] = []
            bindings = _match_node(pat.node, producer, bindings, found, commute)
            if bindings is None:
                return None
            nodes.extend(found)
        else:
            return None
    return bindings, nodes


def match(rewrite: Rewrite, node: Node) -> Match | None:
    matched: list[Node] = []
    bindings = _match_node(rewrite.root, node, {}, matched, rewrite.commute)
    if bindings is None:
        return None
    return Match(node, bindings, matched)


# -- replacing --------------------------------------------------------------------
class _GraphBuilder:
    """The replacement's `op`: builds typed nodes to insert before the matched root."""

    def __init__(self, graph: Graph, prefix: str):
        self.graph = graph
        self.prefix = prefix
        self.nodes: list[Node] = []

    def __call__(self, op: str, *inputs, _outputs: int = 1, **attrs):
        index = len(self.nodes)
        name = f"{self.prefix}/{op.rpartition('.')[2]}_{index}"
        outputs = [Value(f"{name}_out{i}") for i in range(_outputs)]
        node = Node(op, list(inputs), outputs, {k: v for k, v in attrs.items() if v is not None}, name)
        known = [known_of(v) if v is not None else None for v in node.inputs]
        for value, result in zip(outputs, get_op(op).infer(node, known)):
            value.type = result.type if result is not None else None
        self.nodes.append(node)
        return outputs[0] if _outputs == 1 else outputs

    def __getattr__(self, op: str):
        return lambda *inputs, **attrs: self(op, *inputs, **attrs)

    def constant(self, data) -> Value:
        return self.graph.add_constant(f"{self.prefix}/const{len(self.graph.constants)}", np.asarray(data))


@dataclass
class RewriteReport:
    applied: dict[str, int] = field(default_factory=dict)
    rejected: list[tuple[str, str, str]] = field(default_factory=list)  # (rewrite, node, reason)


def apply_rewrites(graph: Graph, rewrites: list[Rewrite], max_rounds: int = 8) -> RewriteReport:
    """Apply `rewrites` until none matches (at most `max_rounds` sweeps over the graph)."""
    report = RewriteReport()
    for _ in range(max_rounds):
        changed = False
        for node in list(graph.nodes):
            for rewrite in rewrites:
                if node.op != rewrite.root.op or node not in graph.nodes:
                    continue
                m = match(rewrite, node)
                if m is None:
                    continue
                reason = _shared_inside(graph, m) or (rewrite.check(m) if rewrite.check else None)
                if reason:
                    report.rejected.append((rewrite.name, node.name, reason))
                    continue
                if _replace(graph, rewrite, m):
                    report.applied[rewrite.name] = report.applied.get(rewrite.name, 0) + 1
                    changed = True
                    break
        if not changed:
            break
        EliminateDeadCode().run(graph)
    return report


def _shared_inside(graph: Graph, m: Match) -> str | None:
    inside = {id(n) for n in m.nodes}
    read_outside = {id(v) for v in graph.outputs}
    for node in graph.nodes:
        if id(node) not in inside:
            read_outside.update(id(v) for v in node.inputs if v is not None)
            for sub in node.subgraphs():
                read_outside.update(id(v) for v in sub.free_values())
    for node in m.nodes:
        for value in node.outputs if node is not m.root else ():
            if id(value) in read_outside:
                return f"{value.name} is also used outside the pattern"
    return None


def _replace(graph: Graph, rewrite: Rewrite, m: Match) -> bool:
    builder = _GraphBuilder(graph, f"{m.root.name}/{rewrite.name}")
    params = list(inspect.signature(rewrite.replacement).parameters)[1:]
    result = rewrite.replacement(builder, *[m.bindings.get(p) for p in params])
    new_values = result if isinstance(result, list) else [result]
    returned = {id(v) for v in graph.outputs}
    fresh = {id(v) for n in builder.nodes for v in n.outputs}
    for old, new in zip(m.root.outputs, new_values):
        if id(old) in returned and id(new) not in fresh:
            return False  # would rename a value the graph returns
    position = graph.nodes.index(m.root)
    graph.nodes[position:position] = builder.nodes
    for old, new in zip(m.root.outputs, new_values):
        if id(old) in returned:
            new.name, old.name = old.name, f"{old.name}.replaced"
        graph.replace_all_uses(old, new)
    return True


class RewritePass(Pass):
    """A pass made of rewrites. Subclasses set `name` and `rewrites`; `report` holds what
    the last run applied and the reasons each rejected match gave."""

    rewrites: list[Rewrite] = []

    def __init__(self):
        self.report = RewriteReport()

    def run(self, graph: Graph) -> PassResult:
        self.report = apply_rewrites(graph, self.rewrites)
        return PassResult(graph, bool(self.report.applied))


__all__ = ["Rewrite", "RewritePass", "Match", "apply_rewrites", "match", "RewriteReport"]
