"""Lowering an op through its ONNX function body, or through its own expansion.

Many ONNX ops are defined by a function: a small graph of simpler ops (Attention,
NegativeLogLikelihoodLoss, LayerNormalization with its statistics outputs, ...). A node
whose op has no lowering of its own can still run on kernels when every node of that
body lowers: `function_nodes` builds the body as IR nodes reading the node's inputs,
with the node's attributes substituted and Constant nodes turned into constant values;
the lowering context lowers them in order, and keeps the result only if nothing in it
fell back. An op defined as a rewrite into other ops (`OpDef.expand`: onnxruntime's
contrib ops) is lowered the same way through `expansion_nodes`.
"""

from __future__ import annotations

import numpy as np
import onnx

from ..ir.dtypes import DType
from ..ir.graph import Node, Value
from ..ir.ops import _onnx_bridge as bridge
from ..ir.ops.onnx_standard import latest_opsets
from ..ir.registry import get_op, has_op
from ..ir.types import TensorType

_LOCAL = "ember.function_body"  # the domain a body is inlined from


def _body(node: Node) -> onnx.FunctionProto | None:
    opdef = get_op(node.op)
    if opdef.max_version is None:  # not an ONNX op
        return None
    try:
        schema = onnx.defs.get_schema(opdef.op_type, opdef.max_version, opdef.domain)
    except onnx.defs.SchemaError:
        return None
    if schema.has_function:
        return schema.function_body
    if not schema.has_context_dependent_function:
        return None
    proto = bridge.node_to_proto(node, {name: spec.kind for name, spec in opdef.attrs.items()})
    types = [bridge.type_to_proto(v.type if v is not None else None).SerializeToString() for v in node.inputs]
    try:
        body = schema.get_context_dependent_function(proto.SerializeToString(), types)
    except Exception:  # noqa: BLE001 - the builder rejects what it cannot type: no body then
        return None
    return onnx.FunctionProto.FromString(body) if body else None


def _body_graph(node: Node, body: onnx.FunctionProto) -> onnx.GraphProto | None:
    """The body inlined into a one-node model of `node` (attributes substituted), upgraded
    to the newest opset as the ONNX frontend upgrades models; None if that fails. The
    graph's inputs are `in<i>` (node input i), its outputs `out<i>`."""
    opdef = get_op(node.op)
    kinds = {name: spec.kind for name, spec in opdef.attrs.items()}
    proto = bridge.node_to_proto(node, kinds)
    for name, spec in opdef.attrs.items():  # the body may refer to an attribute left at its default
        if name not in node.attrs and spec.default is not None:
            proto.attribute.append(bridge.attr_to_proto(name, spec.default, spec.kind))
    del proto.input[:], proto.output[:]
    proto.input.extend(f"in{i}" if v is not None else "" for i, v in enumerate(node.inputs))
    proto.output.extend(f"out{i}" for i in range(len(node.outputs)))
    proto.domain, proto.op_type = _LOCAL, body.name or opdef.op_type
    fn = onnx.FunctionProto()
    fn.CopyFrom(body)
    fn.domain, fn.name = _LOCAL, proto.op_type
    inputs = [onnx.helper.make_value_info(f"in{i}", bridge.type_to_proto(v.type))
              for i, v in enumerate(node.inputs) if v is not None]
    outputs = [onnx.helper.make_value_info(f"out{i}", onnx.TypeProto()) for i in range(len(node.outputs))]
    versions = {("" if o.domain == "ai.onnx" else o.domain): o.version for o in body.opset_import}
    versions.setdefault("", latest_opsets()[""])
    model = onnx.helper.make_model(
        onnx.helper.make_graph([proto], "body", inputs, outputs), functions=[fn],
        opset_imports=[onnx.helper.make_opsetid(d, v) for d, v in versions.items()]
        + [onnx.helper.make_opsetid(_LOCAL, 1)])
    try:
        model = onnx.inliner.inline_local_functions(model)
        if versions[""] < latest_opsets()[""]:
            model = onnx.version_converter.convert_version(model, latest_opsets()[""])
    except Exception:  # noqa: BLE001 - no body ember can use
        return None
    return model.graph


def _constant(attrs: dict) -> np.ndarray | None:
    if "value" in attrs:
        return np.asarray(attrs["value"])
    for key, dtype in (("value_float", np.float32), ("value_floats", np.float32),
                       ("value_int", np.int64), ("value_ints", np.int64)):
        if key in attrs:
            return np.asarray(attrs[key], dtype)
    return None


def function_nodes(node: Node) -> tuple[list[Node], list[Value | None], list[Value]] | None:
    """The body of `node`'s op as IR nodes reading `node`'s inputs: (nodes, the values
    standing for the node's outputs, constant values made from Constant nodes); None
    when the op has no usable body."""
    body = _body(node)
    if body is None:
        return None
    graph = _body_graph(node, body)
    if graph is None:
        return None
    scope: dict[str, Value | None] = {"": None}
    for i, value in enumerate(node.inputs):
        scope[f"in{i}"] = value
    nodes: list[Node] = []
    constants: list[Value] = []
    for i, n in enumerate(graph.node):
        domain = "" if n.domain == "ai.onnx" else n.domain
        op = f"{domain}.{n.op_type}" if domain else n.op_type
        if not has_op(op):
            return None
        attrs = {}
        for a in n.attribute:
            if a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS):
                return None
            attrs[a.name] = bridge.attr_from_proto(a, convert_graph=lambda g: None)
        if any(name and name not in scope for name in n.input):
            return None
        where = f"{node.name}/{n.name or n.op_type}_{i}"
        if op == "Constant" and (data := _constant(attrs)) is not None:
            scope[n.output[0]] = value = Value(where, TensorType(DType.from_numpy(data.dtype), data.shape), const=data)
            constants.append(value)
            continue
        outputs = [Value(f"{where}:{j}") for j in range(len(n.output))]
        scope.update(zip(n.output, outputs))
        nodes.append(Node(op, [scope[name] if name else None for name in n.input], outputs, attrs, where))
    if any(o.name not in scope for o in graph.output):
        return None
    return nodes, [scope[o.name] for o in graph.output], constants


class _NodeBuilder:
    """The `op` an expansion builds with: `op("ember.Attention", q, ..., num_heads=4)`,
    `op.Add(a, b)`, `op.constant(array)`; types are inferred afterwards."""

    def __init__(self, prefix: str):
        self.prefix = prefix
        self.nodes: list[Node] = []
        self.constants: list[Value] = []

    def __call__(self, op: str, *inputs, _outputs: int = 1, **attrs):
        name = f"{self.prefix}/{op.rpartition('.')[2]}_{len(self.nodes)}"
        outputs = [Value(f"{name}:{i}") for i in range(_outputs)]
        self.nodes.append(Node(op, list(inputs), outputs, {k: v for k, v in attrs.items() if v is not None}, name))
        return outputs[0] if _outputs == 1 else outputs

    def __getattr__(self, op: str):
        if op.startswith("_"):
            raise AttributeError(op)
        return lambda *inputs, **attrs: self(op, *inputs, **attrs)

    def constant(self, data) -> Value:
        data = np.asarray(data)
        value = Value(f"{self.prefix}/const{len(self.constants)}", TensorType(DType.from_numpy(data.dtype), data.shape),
                      const=data)
        self.constants.append(value)
        return value


def expansion_nodes(node: Node, used: list[bool]) -> tuple[list[Node], list[Value | None], list[Value]]:
    """`node` rewritten by its op's `expand` into IR nodes reading `node`'s inputs: (nodes,
    the values standing for the node's outputs, constant values)."""
    builder = _NodeBuilder(node.name)
    outs = get_op(node.op).expand(builder, node, used)
    return builder.nodes, list(outs), builder.constants
