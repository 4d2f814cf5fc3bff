"""eliminate_dead_code: drop nodes none of whose outputs is read (in this graph, a
subgraph, or the outputs), and constants nobody reads. Leaves the IR valid."""

from __future__ import annotations

from ..ir.graph import Graph
from .base import Pass, PassResult
from .registry import register_pass


def _sweep(graph: Graph, used: set[int]) -> bool:
    changed = False
    for sub in (s for n in graph.nodes for s in n.subgraphs()):
        changed |= _sweep(sub, used)
    kept = []
    for node in reversed(graph.nodes):
        if any(id(v) in used for v in node.outputs):
            kept.append(node)
        else:
            changed = True
    graph.nodes = kept[::-1]
    constants = [c for c in graph.constants if id(c) in used]
    changed |= len(constants) != len(graph.constants)
    graph.constants = constants
    return changed


@register_pass
class EliminateDeadCode(Pass):
    name = "eliminate_dead_code"

    def run(self, graph: Graph) -> PassResult:
        modified = False
        while True:  # removing a node can make its producers dead
            if not _sweep(graph, graph.used_values()):
                return PassResult(graph, modified)
            modified = True
