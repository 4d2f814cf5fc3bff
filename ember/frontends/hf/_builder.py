"""A small helper for writing forward graphs: named inputs, constants and nodes with
one output each, types left to shape inference."""

from __future__ import annotations

from typing import Any

import numpy as np

from ...ir.dtypes import DType
from ...ir.graph import Graph, Value
from ...ir.shape_inference import infer_types
from ...ir.types import TensorType

OPSET = 23  # RMSNormalization


class GraphBuilder:
    def __init__(self, name: str):
        self.graph = Graph(name, opsets={"": OPSET, "ember": 1})

    def input(self, name: str, dtype: DType, shape: tuple) -> Value:
        value = Value(name, TensorType(dtype, tuple(shape)))
        self.graph.inputs.append(value)
        return value

    def const(self, name: str, data: Any) -> Value:
        data = np.asarray(data)
        data.flags.writeable = False  # shared with the Program, like every constant
        return self.graph.add_constant(name, data)

    def ints(self, values) -> Value:
        return self.const(f"ints_{len(self.graph.constants)}", np.asarray(values, np.int64))

    def __call__(self, op: str, *inputs: Value | None, name: str = "", **attrs: Any) -> Value:
        node = self.graph.add_node(op, list(inputs), 1, attrs, name)
        out = node.outputs[0]
        if name:
            out.name = name
        return out

    def finish(self, outputs: list[Value]) -> Graph:
        self.graph.outputs = outputs
        infer_types(self.graph)  # gives every node's output its type
        return self.graph
