"""The Graph IR: `Value`, `Node`, `Graph`.

SSA: every `Value` has exactly one producer: a node, a graph input, or a constant
(`value.const` holds its data). A node's missing optional input is `None`. Subgraphs
(If/Loop/Scan bodies) are `Graph` attributes; their nodes may read values of the
enclosing graphs directly (by identity), as ONNX's outer-scope references do.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np

from .dtypes import DType
from .types import TensorType, Type


class Value:
    __slots__ = ("name", "type", "producer", "const")

    def __init__(self, name: str, type: Type | None = None, const: np.ndarray | None = None):
        self.name = name
        self.type = type
        self.producer: Node | None = None
        self.const = const

    @property
    def is_constant(self) -> bool:
        return self.const is not None

    def __repr__(self) -> str:
        return f"Value({self.name!r}: {self.type})"


class Node:
    __slots__ = ("op", "inputs", "outputs", "attrs", "name")

    def __init__(self, op: str, inputs: list[Value | None], outputs: list[Value],
                 attrs: dict[str, Any] | None = None, name: str = ""):
        self.op = op
        self.inputs = list(inputs)
        self.outputs = list(outputs)
        self.attrs = dict(attrs or {})
        self.name = name
        for out in self.outputs:
            out.producer = self

    @property
    def domain(self) -> str:
        """The op's domain: "" for standard ONNX ops, "ember" for ember's own."""
        return self.op.rpartition(".")[0]

    @property
    def op_type(self) -> str:
        return self.op.rpartition(".")[2]

    def subgraphs(self) -> Iterator[Graph]:
        for attr in self.attrs.values():
            if isinstance(attr, Graph):
                yield attr
            elif isinstance(attr, list) and attr and isinstance(attr[0], Graph):
                yield from attr

    @property
    def has_subgraphs(self) -> bool:
        return next(self.subgraphs(), None) is not None

    def describe(self) -> str:
        """How error messages name this node: `node 'Add_3' (op Add)`."""
        return f"node {self.name or '<unnamed>'!r} (op {self.op})"

    def __repr__(self) -> str:
        return f"Node({self.describe()})"


class Graph:
    def __init__(self, name: str = "main", inputs: list[Value] | None = None,
                 outputs: list[Value] | None = None, nodes: list[Node] | None = None,
                 constants: list[Value] | None = None, opsets: dict[str, int] | None = None):
        self.name = name
        self.inputs: list[Value] = list(inputs or [])
        self.outputs: list[Value] = list(outputs or [])
        self.nodes: list[Node] = list(nodes or [])
        self.constants: list[Value] = list(constants or [])
        self.opsets: dict[str, int] = dict(opsets or {})

    # -- building ---------------------------------------------------------------
    def add_constant(self, name: str, data: np.ndarray) -> Value:
        data = np.asarray(data)
        value = Value(name, TensorType(DType.from_numpy(data.dtype), tuple(data.shape)), const=data)
        self.constants.append(value)
        return value

    def add_node(self, op: str, inputs: list[Value | None], outputs: list[Value] | int = 1,
                 attrs: dict[str, Any] | None = None, name: str = "") -> Node:
        if isinstance(outputs, int):
            base = name or op.rpartition(".")[2]
            outputs = [Value(f"{base}_{len(self.nodes)}_out{i}") for i in range(outputs)]
        node = Node(op, inputs, outputs, attrs, name or f"{op.rpartition('.')[2]}_{len(self.nodes)}")
        self.nodes.append(node)
        return node

    # -- editing (for the pass driver; passes themselves declare rewrites) --------
    def replace_all_uses(self, old: Value, new: Value) -> None:
        """Make every reader of `old` (nodes, subgraphs, graph outputs) read `new`."""
        for g in [self, *self.all_subgraphs()]:
            for node in g.nodes:
                node.inputs = [new if v is old else v for v in node.inputs]
            g.outputs = [new if v is old else v for v in g.outputs]

    def used_values(self) -> set[int]:
        """ids of every value read by a node (subgraphs included) or returned."""
        used = {id(v) for v in self.outputs}
        for node in self.walk():
            used.update(id(v) for v in node.inputs if v is not None)
        for sub in self.all_subgraphs():
            used.update(id(v) for v in sub.outputs)
        return used

    def all_subgraphs(self) -> Iterator[Graph]:
        """Every subgraph at any depth."""
        for node in self.walk():
            yield from node.subgraphs()

    # -- queries ----------------------------------------------------------------
    def __iter__(self) -> Iterator[Node]:
        return iter(self.nodes)

    def __len__(self) -> int:
        return len(self.nodes)

    def walk(self) -> Iterator[Node]:
        """Every node, subgraph nodes included (each after the node that owns it)."""
        for node in self.nodes:
            yield node
            for sub in node.subgraphs():
                yield from sub.walk()

    def values(self) -> Iterator[Value]:
        yield from self.inputs
        yield from self.constants
        for node in self.nodes:
            yield from node.outputs

    def free_values(self) -> list[Value]:
        """Values this graph (or its subgraphs) reads but does not define: outer-scope
        references of a subgraph."""
        defined = {id(v) for v in self.values()}
        free: dict[int, Value] = {}
        for node in self.nodes:
            reads = [v for v in node.inputs if v is not None]
            for sub in node.subgraphs():
                reads += sub.free_values()
            for v in reads:
                if id(v) not in defined:
                    free.setdefault(id(v), v)
        for v in self.outputs:
            if id(v) not in defined:
                free.setdefault(id(v), v)
        return list(free.values())

    def op_histogram(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for node in self.walk():
            counts[node.op] = counts.get(node.op, 0) + 1
        return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))

    def num_parameters(self) -> int:
        return sum(int(v.const.size) for v in self.constants)

    def topological_sort(self) -> None:
        """Reorder `nodes` so every node comes after the producers of what it reads.
        Raises `networkx.NetworkXUnfeasible` naming nothing if there is a cycle; callers
        that know the source (the frontend) turn that into a ModelError."""
        import networkx as nx  # not at the top: loading an artifact never sorts

        index = {id(n): i for i, n in enumerate(self.nodes)}
        dag = nx.DiGraph()
        dag.add_nodes_from(range(len(self.nodes)))
        for i, node in enumerate(self.nodes):
            reads = [v for v in node.inputs if v is not None]
            for sub in node.subgraphs():
                reads += sub.free_values()
            for v in reads:
                j = index.get(id(v.producer)) if v.producer is not None else None
                if j is not None:
                    dag.add_edge(j, i)
        order = nx.lexicographical_topological_sort(dag)
        self.nodes = [self.nodes[i] for i in order]

    def find_cycle(self) -> list[Node]:
        import networkx as nx

        index = {id(n): i for i, n in enumerate(self.nodes)}
        dag = nx.DiGraph()
        for i, node in enumerate(self.nodes):
            for v in node.inputs:
                if v is not None and v.producer is not None and id(v.producer) in index:
                    dag.add_edge(index[id(v.producer)], i)
        try:
            edges = nx.find_cycle(dag)
        except nx.NetworkXNoCycle:
            return []
        return [self.nodes[a] for a, _ in edges]

    def __repr__(self) -> str:
        return f"Graph({self.name!r}, {len(self.inputs)} inputs, {len(self.nodes)} nodes)"
