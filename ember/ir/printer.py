"""The printed form of the IR: stable, diffable, and read back by `ir.parser`.

    graph main(%x: f32[batch, 384]) opsets {"": 28} {
      const %w = tensor<f32[384, 384]> resource<5f1c0e2a9b3d4e61>
      %h: f32[batch, 384] = MatMul(%x, %w) @MatMul_0
      %a: f32[batch, 192], %b: f32[batch, 192] = Split(%h) {axis = 1, num_outputs = 2} @split
      return %a, %b
    }

Tensors up to `max_elements` are printed inline; larger ones as a `resource<digest>`
whose data `resources(graph)` returns (the parser takes that dict back)."""

from __future__ import annotations

import hashlib
import json
import math
import re
from typing import Any

import numpy as np

from .dtypes import DType
from .graph import Graph, Node, Value
from .types import OptionalType, SequenceType, TensorType, Type

_BARE = re.compile(r"^[A-Za-z0-9_.]+$")
DEFAULT_MAX_ELEMENTS = 16


def quote(name: str) -> str:
    return name if _BARE.match(name) else json.dumps(name)


def format_type(t: Type | None) -> str:
    return "?" if t is None else str(t)


def digest(data: np.ndarray) -> str:
    h = hashlib.sha256(str(data.dtype).encode() + str(data.shape).encode())
    h.update(np.ascontiguousarray(data).tobytes() if data.dtype != object else json.dumps(data.tolist()).encode())
    return h.hexdigest()[:16]


def _inline_ok(data: np.ndarray, max_elements: int) -> bool:
    return data.size <= max_elements and data.dtype.kind != "c"


def _format_scalar(x: Any, dtype: DType) -> str:
    if dtype is DType.string:
        return json.dumps(x.decode("utf-8", "surrogateescape") if isinstance(x, bytes) else str(x))
    if dtype is DType.bool:
        return "true" if x else "false"
    if dtype.is_float:
        return _format_float(x)
    return str(int(x))


def _format_float(x: Any) -> str:
    """Shortest text that reads back to the same value *in x's own dtype*."""
    if math.isnan(float(x)):
        return "nan"
    text = str(x)  # numpy/ml_dtypes scalars print their shortest round-trip form
    return text if any(c in text for c in ".ein") else text + ".0"


def format_tensor(data: np.ndarray, max_elements: int = DEFAULT_MAX_ELEMENTS) -> str:
    dtype = DType.from_numpy(data.dtype)
    head = f"tensor<{TensorType(dtype, tuple(data.shape))}>"
    if not _inline_ok(data, max_elements):
        return f"{head} resource<{digest(data)}>"
    flat = data.reshape(-1)
    items = flat if dtype.is_float else flat.tolist()
    return f"{head}[{', '.join(_format_scalar(x, dtype) for x in items)}]"


def format_attr(value: Any, indent: str, max_elements: int) -> str:
    if isinstance(value, Graph):
        return _graph_text(value, indent, max_elements).rstrip("\n")
    if isinstance(value, np.ndarray):
        return format_tensor(value, max_elements)
    if isinstance(value, (TensorType, SequenceType, OptionalType)):
        return f"type<{value}>"
    if isinstance(value, bool):
        return str(int(value))
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        return _format_float(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(format_attr(v, indent, max_elements) for v in value) + "]"
    if value is None:
        return "none"
    raise TypeError(f"cannot print attribute value of type {type(value).__name__}")


def _value_ref(v: Value | None) -> str:
    return "_" if v is None else "%" + quote(v.name)


def _node_text(node: Node, indent: str, max_elements: int) -> str:
    outs = ", ".join(f"%{quote(v.name)}: {format_type(v.type)}" for v in node.outputs)
    args = ", ".join(_value_ref(v) for v in node.inputs)
    text = f"{indent}{outs} = {quote(node.op)}({args})"
    if node.attrs:
        inner = indent + "  "
        attrs = ", ".join(f"{quote(k)} = {format_attr(v, inner, max_elements)}"
                          for k, v in sorted(node.attrs.items()))
        text += f" {{{attrs}}}"
    return text + f" @{quote(node.name)}\n"


def _graph_text(graph: Graph, indent: str, max_elements: int) -> str:
    params = ", ".join(f"%{quote(v.name)}: {format_type(v.type)}" for v in graph.inputs)
    header = f"graph {quote(graph.name)}({params})"
    if graph.opsets:
        header += " opsets " + json.dumps(dict(sorted(graph.opsets.items())))
    lines = [header + " {\n"]
    inner = indent + "  "
    for c in graph.constants:
        lines.append(f"{inner}const %{quote(c.name)} = {format_tensor(c.const, max_elements)}\n")
    for node in graph.nodes:
        lines.append(_node_text(node, inner, max_elements))
    lines.append(f"{inner}return {', '.join(_value_ref(v) for v in graph.outputs)}\n")
    lines.append(f"{indent}}}\n")
    return "".join(lines)


def print_graph(graph: Graph, max_elements: int = DEFAULT_MAX_ELEMENTS) -> str:
    """The printed form of `graph`, subgraphs included."""
    return _graph_text(graph, "", max_elements)


def resources(graph: Graph, max_elements: int = DEFAULT_MAX_ELEMENTS) -> dict[str, np.ndarray]:
    """The tensors `print_graph` elided, by digest: what `parse_graph` needs back."""
    found: dict[str, np.ndarray] = {}

    def visit_attr(value):
        if isinstance(value, np.ndarray) and not _inline_ok(value, max_elements):
            found[digest(value)] = value
        elif isinstance(value, Graph):
            visit(value)
        elif isinstance(value, list):
            for v in value:
                visit_attr(v)

    def visit(g: Graph):
        for c in g.constants:
            visit_attr(c.const)
        for node in g.nodes:
            for value in node.attrs.values():
                visit_attr(value)

    visit(graph)
    return found
