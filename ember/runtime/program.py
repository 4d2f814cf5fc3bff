"""The Program: what codegen hands the runtime, as data.

Buffers (symbolic shape, dtype, kind, alias base, bind-time contents), the order of
steps (a `segment` of generated kernels in the shared library, an `extern` library
kernel, or a `fallback` node run by its reference implementation), the size symbols
in the order the kernels read them, the library's source and path, and the weights.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .._deferred import sympy
from ..codegen.kir import Buffer


@dataclass
class Step:
    kind: str                      # segment | extern | fallback
    name: str                      # segment function, extern kernel, or node name
    args: tuple[str, ...] = ()     # buffers: inputs, then outputs
    num_inputs: int = 0
    params: dict[str, Any] = field(default_factory=dict)
    kernels: tuple[str, ...] = ()  # segment: the kernels it runs
    nodes: tuple[str, ...] = ()    # graph nodes computed here
    parts: tuple[frozenset[str], ...] = ()  # buffers each kernel of the step touches, in order


@dataclass
class Program:
    buffers: dict[str, Buffer]
    slots: dict[str, int]
    symbols: list[sympy.Symbol]
    steps: list[Step]
    inputs: list[str]
    outputs: list[str]
    constants: dict[str, np.ndarray]
    source: str = ""
    library: str | None = None
    num_kernels: int = 0
    fused_nodes: int = 0
    fallbacks: list[str] = field(default_factory=list)
