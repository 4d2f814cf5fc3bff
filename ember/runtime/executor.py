"""Runs a compiled graph.

Until CPU code generation lands, every node runs its reference implementation on the
CPU: the fallback path that ARCHITECTURE.md gives nodes without a kernel on the target.
`fallback_nodes` reports them, so `compiled.stats` never hides where time goes."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..ir.graph import Graph
from ..ir.interpreter import Interpreter


class Executor:
    def __init__(self, graph: Graph):
        self.graph = graph
        self._interpreter = Interpreter(graph)

    @property
    def fallback_nodes(self) -> list[str]:
        return [node.name for node in self.graph.nodes]

    def run(self, inputs: Sequence[Any]) -> list[Any]:
        return self._interpreter.run(inputs)
