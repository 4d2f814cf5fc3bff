"""The reference interpreter: runs any Graph node by node through each op's reference
implementation. It defines what every compiled form of a graph must compute, and it is
what constant folding and the CPU fallback call."""

from __future__ import annotations

from collections import ChainMap
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ..errors import EmberError, ExecutionError, ModelError
from .graph import Graph, Value
from .registry import get_op

Scope = Mapping[int, Any]  # id(Value) -> runtime value (ndarray, list for sequences, None)


def _normalize(result: Any) -> Any:
    if result is None or isinstance(result, (list, np.ndarray)):
        return result
    return np.asarray(result)


class Interpreter:
    """Prepared once per graph; `run` may be called many times."""

    def __init__(self, graph: Graph):
        self.graph = graph
        self.kernels = []
        for node in graph.nodes:
            try:
                opdef = get_op(node.op)
                self.kernels.append(opdef.reference(node))
            except EmberError as e:
                raise ModelError(f"{node.describe()}: {e}") from e
            except Exception as e:  # a reference that cannot be prepared for this node
                raise ModelError(f"{node.describe()}: cannot prepare its reference "
                                 f"implementation: {type(e).__name__}: {e}") from e
        self._release = self._last_uses()

    def _last_uses(self) -> list[list[int]]:
        """For each node, the ids of values it is the last reader of (freed after it)."""
        keep = {id(v) for v in self.graph.outputs}
        local = {id(v) for n in self.graph.nodes for v in n.outputs}
        last: dict[int, int] = {}
        for i, node in enumerate(self.graph.nodes):
            reads = [v for v in node.inputs if v is not None]
            for sub in node.subgraphs():
                reads += sub.free_values()
            for v in reads:
                last[id(v)] = i
        release: list[list[int]] = [[] for _ in self.graph.nodes]
        for vid, i in last.items():
            if vid in local and vid not in keep:
                release[i].append(vid)
        return release

    def run(self, inputs: Sequence[Any], scope: Scope | None = None) -> list[Any]:
        """Run with graph inputs given positionally; `scope` holds outer-scope values
        when this graph is a subgraph."""
        graph = self.graph
        if len(inputs) > len(graph.inputs):
            raise ExecutionError(f"graph {graph.name!r} takes {len(graph.inputs)} inputs, "
                                 f"got {len(inputs)}")
        local: dict[int, Any] = {id(v): v.const for v in graph.constants}
        for value, data in zip(graph.inputs, inputs):
            local[id(value)] = data
        env = ChainMap(local, scope) if scope is not None else local
        for node, kernel, release in zip(graph.nodes, self.kernels, self._release):
            args = [env[id(v)] if v is not None else None for v in node.inputs]
            try:
                if getattr(kernel, "needs_scope", False):
                    results = kernel(*args, scope=env)
                else:
                    results = kernel(*args)
            except EmberError:
                raise
            except Exception as e:
                raise ExecutionError(f"{node.describe()}: {type(e).__name__}: {e}") from e
            if len(results) < len(node.outputs):
                raise ExecutionError(f"{node.describe()}: reference returned {len(results)} "
                                     f"results for {len(node.outputs)} outputs")
            for value, result in zip(node.outputs, results):
                local[id(value)] = _normalize(result)
            for vid in release:
                local.pop(vid, None)
        return [env[id(v)] for v in graph.outputs]


def evaluate(graph: Graph, feeds: Mapping[str, Any]) -> dict[str, Any]:
    """Run `graph` once on feeds given by input name; returns outputs by name."""
    by_name: dict[str, Value] = {v.name: v for v in graph.inputs}
    unknown = set(feeds) - set(by_name)
    if unknown:
        raise ExecutionError(f"unknown inputs {sorted(unknown)}")
    inputs = [feeds.get(v.name) for v in graph.inputs]
    outputs = Interpreter(graph).run(inputs)
    return {v.name: out for v, out in zip(graph.outputs, outputs)}
