"""Conversions between ember's IR pieces and ONNX protos: types, attributes, nodes.

Used by the ONNX frontend (proto -> IR) and by the standard ops, whose type functions
and reference implementations delegate to `onnx.shape_inference` / `onnx.reference`
(IR -> proto)."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ...errors import IRError
from ..dtypes import DType
from ..graph import Graph, Node
from ..types import Dim, OptionalType, SequenceType, TensorType, Type, fresh_symbol, parse_dim

ATTR_KIND = {
    onnx.AttributeProto.FLOAT: "float", onnx.AttributeProto.INT: "int",
    onnx.AttributeProto.STRING: "string", onnx.AttributeProto.TENSOR: "tensor",
    onnx.AttributeProto.GRAPH: "graph", onnx.AttributeProto.FLOATS: "floats",
    onnx.AttributeProto.INTS: "ints", onnx.AttributeProto.STRINGS: "strings",
    onnx.AttributeProto.TENSORS: "tensors", onnx.AttributeProto.GRAPHS: "graphs",
    onnx.AttributeProto.TYPE_PROTO: "type", onnx.AttributeProto.TYPE_PROTOS: "types",
    onnx.AttributeProto.SPARSE_TENSOR: "sparse_tensor",
    onnx.AttributeProto.SPARSE_TENSORS: "sparse_tensors",
}
ATTR_CODE = {kind: code for code, kind in ATTR_KIND.items()}
# dim_params that name no dim, only "unknown": exporters write `?`, `""`, `-1`, `None`
# (tf2onnx: `unk__N`, as onnx's shape inference does for dims it cannot name). Each is
# a dim of its own; only a real name (`batch`) says two dims are equal. Anonymous: no
# letter or digit at all, a negative number, or a spelling of "unknown".
_ANONYMOUS_PARAM = re.compile(r"^(?:[\W_]*|-\d+|none|null|unk__\d+)$", re.IGNORECASE)


def is_anonymous_dim(d: onnx.TensorShapeProto.Dimension) -> bool:
    """A dim that declares nothing but that it is unknown: no value and no real name."""
    if d.HasField("dim_value"):
        return d.dim_value < 0
    return not d.HasField("dim_param") or bool(_ANONYMOUS_PARAM.match(d.dim_param.strip()))


# -- types ------------------------------------------------------------------------
def type_from_proto(tp: onnx.TypeProto, fresh: Callable[[int], Dim] | None = None) -> Type | None:
    """The IR type of an ONNX type. Each anonymous dim (`is_anonymous_dim`) becomes a new
    symbol: `fresh(axis)` where given (the frontend names it after its value and axis),
    else `fresh_symbol()`."""
    which = tp.WhichOneof("value")
    if which == "tensor_type":
        tt = tp.tensor_type
        if tt.elem_type == 0:
            return None
        dtype = DType.from_onnx(tt.elem_type)
        if not tt.HasField("shape"):
            return TensorType(dtype, None)
        dims = []
        for axis, d in enumerate(tt.shape.dim):
            if is_anonymous_dim(d):
                dims.append(fresh(axis) if fresh else fresh_symbol())
            elif d.HasField("dim_value"):
                dims.append(int(d.dim_value))
            else:
                dims.append(parse_dim(d.dim_param))
        return TensorType(dtype, tuple(dims))
    if which == "sequence_type":
        return SequenceType(type_from_proto(tp.sequence_type.elem_type, fresh))
    if which == "optional_type":
        return OptionalType(type_from_proto(tp.optional_type.elem_type, fresh))
    if which is None:
        return None
    raise IRError(f"ONNX type {which!r} is not supported")


def type_to_proto(t: Type | None) -> onnx.TypeProto:
    if t is None:
        return onnx.TypeProto()
    if isinstance(t, TensorType):
        shape = None if t.shape is None else [d if isinstance(d, int) else str(d) for d in t.shape]
        return helper.make_tensor_type_proto(t.dtype.onnx_code, shape)
    if isinstance(t, SequenceType):
        return helper.make_sequence_type_proto(type_to_proto(t.elem))
    if isinstance(t, OptionalType):
        return helper.make_optional_type_proto(type_to_proto(t.elem))
    raise IRError(f"cannot express type {t} in ONNX")


# -- attributes -------------------------------------------------------------------
def attr_from_proto(attr: onnx.AttributeProto, convert_graph) -> Any:
    """The python value of an attribute: int, float, str, list, ndarray, Graph, Type."""
    kind = ATTR_KIND.get(attr.type)
    if kind == "graph":
        return convert_graph(attr.g)
    if kind == "graphs":
        return [convert_graph(g) for g in attr.graphs]
    if kind == "tensor":
        return numpy_helper.to_array(attr.t)
    if kind == "tensors":
        return [numpy_helper.to_array(t) for t in attr.tensors]
    if kind == "string":
        return attr.s.decode("utf-8", errors="surrogateescape")
    if kind == "strings":
        return [s.decode("utf-8", errors="surrogateescape") for s in attr.strings]
    if kind == "type":
        return type_from_proto(attr.tp)
    if kind == "types":
        return [type_from_proto(t) for t in attr.type_protos]
    if kind in ("sparse_tensor", "sparse_tensors"):
        raise IRError(f"attribute {attr.name!r}: sparse tensors are not supported")
    if kind is None:
        raise IRError(f"attribute {attr.name!r} has no type")
    return helper.get_attribute_value(attr)


def attr_to_proto(name: str, value: Any, kind: str | None) -> onnx.AttributeProto:
    if isinstance(value, Graph) or (isinstance(value, list) and value and isinstance(value[0], Graph)):
        raise IRError(f"attribute {name!r}: graph attributes cannot be passed to onnx.reference")
    if kind in ("tensor",):
        return helper.make_attribute(name, numpy_helper.from_array(np.asarray(value)))
    if kind == "tensors":
        return helper.make_attribute(name, [numpy_helper.from_array(np.asarray(v)) for v in value])
    if kind in ("type",):
        return helper.make_attribute(name, type_to_proto(value))
    if kind == "strings":
        value = [v.encode("utf-8", errors="surrogateescape") for v in value]
    if kind == "string":
        value = value.encode("utf-8", errors="surrogateescape")
    code = ATTR_CODE.get(kind) if kind else None
    return helper.make_attribute(name, value, attr_type=code)


def node_to_proto(node: Node, attr_kinds: dict[str, str]) -> onnx.NodeProto:
    inputs = [v.name if v is not None else "" for v in node.inputs]
    while inputs and inputs[-1] == "":
        inputs.pop()
    proto = helper.make_node(node.op_type, inputs, [v.name for v in node.outputs],
                             name=node.name, domain=node.domain)
    for key, value in node.attrs.items():
        kind = attr_kinds.get(key)
        if kind is None:
            kind = _guess_kind(value)
        proto.attribute.append(attr_to_proto(key, value, kind))
    return proto


def _guess_kind(value: Any) -> str | None:
    if isinstance(value, (bool, int, np.integer)):
        return "int"
    if isinstance(value, (float, np.floating)):
        return "float"
    if isinstance(value, str):
        return "string"
    if isinstance(value, np.ndarray):
        return "tensor"
    if isinstance(value, list) and value:
        inner = _guess_kind(value[0])
        return {"int": "ints", "float": "floats", "string": "strings", "tensor": "tensors"}.get(inner)
    return None
