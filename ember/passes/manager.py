"""Runs a list of passes: times each, counts nodes before and after, verifies the IR
after each one when asked (`verify=True` or EMBER_VERIFY=1), and writes the printed IR
after each one to a folder when asked (`dump_ir=DIR` or EMBER_DUMP_IR=DIR).

Each pass runs on the graph, then on every If/Loop/Scan body in it (outer bodies first,
each a graph of its own whose outer-scope reads stay the enclosing graph's values): the
bodies are optimized by the caller's pipeline, once, and the dumped IR shows them so;
codegen lowers them as they are."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

from ..errors import IRError
from ..ir.graph import Graph
from ..ir.printer import print_graph
from ..ir.verifier import verify as verify_graph
from .base import Pass


@dataclass(frozen=True)
class PassStats:
    name: str
    seconds: float
    nodes_before: int
    nodes_after: int
    modified: bool

    def __str__(self) -> str:
        return (f"{self.name}: {self.nodes_before} -> {self.nodes_after} nodes "
                f"in {self.seconds * 1000:.1f} ms{'' if self.modified else ' (no change)'}")


def _count(graph: Graph) -> int:
    return sum(1 for _ in graph.walk())


def _run_in_bodies(p: Pass, graph: Graph) -> bool:
    """Pass `p` on every subgraph of `graph`'s nodes, at any depth (outer first); whether
    it changed any."""
    modified = False
    for node in graph.nodes:
        for key, attr in list(node.attrs.items()):
            if isinstance(attr, Graph):
                result = p.run(attr)
                node.attrs[key] = result.graph
                modified |= result.modified | _run_in_bodies(p, result.graph)
            elif isinstance(attr, list) and attr and isinstance(attr[0], Graph):
                bodies = []
                for body in attr:
                    result = p.run(body)
                    bodies.append(result.graph)
                    modified |= result.modified | _run_in_bodies(p, result.graph)
                node.attrs[key] = bodies
    return modified


class PassManager:
    def __init__(self, passes: list[Pass], *, verify: bool | None = None,
                 dump_ir: str | os.PathLike | None = None):
        self.passes = list(passes)
        self.verify = verify if verify is not None else os.environ.get("EMBER_VERIFY") == "1"
        dump_ir = dump_ir if dump_ir is not None else os.environ.get("EMBER_DUMP_IR")
        self.dump_dir = Path(dump_ir) if dump_ir else None

    def run(self, graph: Graph) -> tuple[Graph, list[PassStats]]:
        stats = []
        self._dump(graph, 0, "input")
        for i, p in enumerate(self.passes, start=1):
            before = _count(graph)
            t0 = time.perf_counter()
            result = p.run(graph)
            graph = result.graph
            modified = _run_in_bodies(p, graph) | result.modified
            seconds = time.perf_counter() - t0
            if self.verify:
                try:
                    verify_graph(graph)
                except IRError as e:
                    raise IRError(f"IR invalid after pass {p.name!r}: {e}") from e
            stats.append(PassStats(p.name, seconds, before, _count(graph), modified))
            self._dump(graph, i, p.name)
        return graph, stats

    def _dump(self, graph: Graph, index: int, name: str) -> None:
        if self.dump_dir is not None:
            self.dump_dir.mkdir(parents=True, exist_ok=True)
            (self.dump_dir / f"{index:02d}-{name}.ir").write_text(print_graph(graph))
