"""The pass contract. A pass has a `name`, says whether it edits the graph it is given
(`mutates`), and returns a `PassResult`: the graph to continue with and whether
anything changed. A pass leaves the IR valid (the manager verifies that in debug mode)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ..ir.graph import Graph


@dataclass(frozen=True)
class PassResult:
    graph: Graph
    modified: bool


class Pass:
    name: ClassVar[str] = ""
    mutates: ClassVar[bool] = True

    def run(self, graph: Graph) -> PassResult:
        raise NotImplementedError(f"pass {type(self).__name__} must define run()")

    def __repr__(self) -> str:
        return f"<pass {self.name}>"
