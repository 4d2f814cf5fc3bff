"""eliminate_common_subexpressions: when two nodes apply the same deterministic op with
the same attributes to the same inputs, the later one's readers use the earlier one's
outputs (then dead-code elimination removes it). Equal small constants are merged the
same way. Values the graph returns keep their names, so they are never replaced."""

from __future__ import annotations

from ..ir.graph import Graph
from ..ir.printer import digest, format_attr
from ..ir.registry import get_op
from .base import Pass, PassResult
from .registry import register_pass

MAX_CONSTANT_ELEMENTS = 1 << 16  # larger constants are not hashed


@register_pass
class EliminateCommonSubexpressions(Pass):
    name = "eliminate_common_subexpressions"

    def run(self, graph: Graph) -> PassResult:
        returned = {id(v) for v in graph.outputs}
        modified = False
        seen_constants = {}
        for c in graph.constants:
            if c.const.size > MAX_CONSTANT_ELEMENTS or c.const.dtype == object or id(c) in returned:
                continue
            key = (str(c.const.dtype), digest(c.const))
            if key in seen_constants:
                graph.replace_all_uses(c, seen_constants[key])
                modified = True
            else:
                seen_constants[key] = c
        seen_nodes = {}
        for node in graph.nodes:
            if node.has_subgraphs or not get_op(node.op).deterministic:
                continue
            if any(id(v) in returned for v in node.outputs):
                continue
            attrs = tuple(sorted((k, format_attr(v, "", MAX_CONSTANT_ELEMENTS)) for k, v in node.attrs.items()))
            key = (node.op, tuple(id(v) if v is not None else None for v in node.inputs), attrs)
            first = seen_nodes.setdefault(key, node)
            if first is not node:
                for old, new in zip(node.outputs, first.outputs):
                    graph.replace_all_uses(old, new)
                modified = True
        return PassResult(graph, modified)
