"""flush_denormals: float constants' subnormal values become zero (of their sign).

A product with a subnormal operand takes a microcode assist on x86 unless the thread
flushes them (MXCSR's FTZ/DAZ, which a library's worker threads do not set): PP-OCRv6
det ships 256K subnormal weights of its 2.4M, and two of its 1x1 convolutions (50 rows
x 768 x 384) took 5 and 13 ms a call on oneDNN's GEMM where the same shapes with normal
weights take 0.17 ms. A subnormal is below 1.2e-38 (float32): zero changes a sum of
products by less than that times the other factor, far below float32's resolution of
any sum that has a normal term. Runs last, after the fusions that scale weights (a
folded BatchNorm can make new ones). Subgraphs' constants included."""

from __future__ import annotations

import numpy as np

from ..ir.graph import Graph
from .base import Pass, PassResult
from .registry import register_pass

FLUSHED = [0]  # values flushed so far, in this process (tests read it)


def _flush(graph: Graph) -> int:
    count = 0
    for sub in (s for n in graph.nodes for s in n.subgraphs()):
        count += _flush(sub)
    for value in graph.constants:
        a = value.const
        if not isinstance(a, np.ndarray) or a.dtype not in (np.float32, np.float64) or not a.size:
            continue
        tiny = np.finfo(a.dtype).tiny
        subnormal = np.abs(a) < tiny
        subnormal &= a != 0
        n = int(np.count_nonzero(subnormal))
        if n:
            flushed = np.array(a, copy=True)
            flushed[subnormal] = np.copysign(np.zeros(n, a.dtype), flushed[subnormal])
            value.const = flushed
            count += n
    return count


@register_pass
class FlushDenormals(Pass):
    name = "flush_denormals"

    def run(self, graph: Graph) -> PassResult:
        count = _flush(graph)
        FLUSHED[0] += count
        return PassResult(graph, count > 0)
