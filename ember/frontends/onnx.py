"""ONNX frontend: ModelProto -> Graph.

The model is read (external data only from inside the model's folder), model-local
functions are inlined, the default-domain opset is upgraded to the newest one with
onnx's version converter (so every op in the IR has its newest form), ONNX shape
inference fills in value types, and the nodes become an ember Graph in topological
order. Anything the IR cannot hold raises `ModelError` naming the node, op and reason.
"""

from __future__ import annotations

import io
import os
from collections import ChainMap
from pathlib import Path

import networkx as nx
import numpy as np
import onnx
import onnx.inliner
import onnx.version_converter
from google.protobuf.message import DecodeError
from onnx import external_data_helper, numpy_helper

from ..errors import EmberError, IRError, ModelError
from ..ir.graph import Graph, Node, Value
from ..ir.ops import _onnx_bridge as bridge
from ..ir.ops.onnx_standard import latest_opsets
from ..ir.registry import get_op, has_op
from ..ir.shape_inference import infer_types
from ..ir.types import sanitize_name, symbol
from ..ir.verifier import verify
from ._onnx_weights import MIN_BYTES, CorruptModel, WeightData, split_weights


def load_onnx(model, *, base_dir: str | os.PathLike | None = None, metadata: dict | None = None,
              fixed_dims: dict[str, int] | None = None, fixed_denotations: dict[str, int] | None = None) -> Graph:
    """Lower an ONNX model (path, serialized bytes or ModelProto) into a verified Graph.

    `base_dir` is where external data files are looked up for a ModelProto or bytes;
    for a path it is the model's folder. `metadata`, when given, is filled with the
    model's own facts, which the Graph does not carry (`model_metadata`). `fixed_dims` /
    `fixed_denotations`: sizes for the symbolic dims of the main graph's inputs, outputs
    and value infos by dim_param name / by denotation (`fix_dims`)."""
    proto, weights, base = _read(model, base_dir)
    if fixed_dims or fixed_denotations:
        fix_dims(proto.graph, fixed_dims or {}, fixed_denotations or {})
    if metadata is not None:
        metadata.update(model_metadata(proto))
    weights.update(_load_external_data(proto, base))
    proto = _normalize(proto, weights)
    return _Importer(proto, weights).run()


def fix_dims(graph: onnx.GraphProto, by_name: dict[str, int], by_denotation: dict[str, int]) -> None:
    """Give each symbolic dim of `graph`'s inputs, outputs and value infos whose dim_param
    is in `by_name` (or whose denotation is in `by_denotation`) that size, in place:
    onnxruntime's free dimension overrides. A name no dim has changes nothing."""
    for info in (*graph.input, *graph.output, *graph.value_info):
        if not info.type.HasField("tensor_type") or not info.type.tensor_type.HasField("shape"):
            continue
        for dim in info.type.tensor_type.shape.dim:
            size = by_name.get(dim.dim_param) if dim.HasField("dim_param") else None
            if size is None and dim.denotation:
                size = by_denotation.get(dim.denotation)
            if size is not None:
                dim.dim_value = size  # (clears dim_param: a dim holds one of the two)


def model_metadata(proto: onnx.ModelProto) -> dict:
    """What onnxruntime's `get_modelmeta()` reports: producer, domain, doc strings, the
    model version and `metadata_props` (custom key/value pairs)."""
    return {"producer_name": proto.producer_name, "producer_version": proto.producer_version,
            "graph_name": proto.graph.name, "domain": proto.domain, "description": proto.doc_string,
            "graph_description": proto.graph.doc_string, "version": int(proto.model_version),
            "custom_metadata_map": {p.key: p.value for p in proto.metadata_props}}


def _read(model, base_dir) -> tuple[onnx.ModelProto, dict[str, WeightData], Path | None]:
    """The light model (large initializers without their data: `_onnx_weights`), the
    data taken out of it by initializer name, and the folder external data lives in."""
    base = Path(base_dir) if base_dir else None
    if isinstance(model, onnx.ModelProto):
        # the caller's proto is never written to: the reader works on its serialized copy
        stream, where = io.BytesIO(model.SerializeToString()), "<ModelProto>"
    elif isinstance(model, (bytes, bytearray)):
        stream, where = io.BytesIO(model), "<bytes>"
    elif isinstance(model, (str, os.PathLike)):
        path = Path(model)
        if path.is_dir():
            raise ModelError(f"{path}: is a folder, not an ONNX model file")
        if not path.is_file():
            raise ModelError(f"{path}: no such model file")
        stream, where, base = open(path, "rb"), str(path), path.resolve().parent
    else:
        raise ModelError(f"cannot load a model from {type(model).__name__}; "
                         "pass a path, bytes or an onnx.ModelProto")
    proto = onnx.ModelProto()
    with stream:
        try:
            light, taken = split_weights(stream)
            proto.ParseFromString(light)
        except (CorruptModel, DecodeError, RuntimeError, ValueError) as e:
            raise ModelError(f"{where}: not a valid ONNX model (truncated or corrupt file?): {e}") from None
    if not proto.HasField("graph"):
        raise ModelError(f"{where}: not a valid ONNX model: it has no graph")
    initializers = proto.graph.initializer
    return proto, {initializers[i].name: data for i, data in taken}, base


def _load_external_data(proto: onnx.ModelProto, base: Path | None) -> dict[str, WeightData]:
    """Read external tensor data, refusing any location outside the model's folder. Large
    initializers of the main graph get theirs as `WeightData` (returned by name, the
    tensor left light, as `_read` leaves them); every other tensor as raw_data."""
    weights = {}
    for tensor in proto.graph.initializer:
        if external_data_helper.uses_external_data(tensor):
            raw = _read_external(tensor, base)
            if raw.size >= MIN_BYTES:
                weights[tensor.name] = WeightData(raw)
            else:
                tensor.raw_data = raw.tobytes()
    for tensor in external_data_helper._get_all_tensors(proto):
        if external_data_helper.uses_external_data(tensor):
            tensor.raw_data = _read_external(tensor, base).tobytes()
    return weights


def _read_external(tensor: onnx.TensorProto, base: Path | None) -> np.ndarray:
    """The tensor's external data (uint8), its external-data reference removed."""
    info = external_data_helper.ExternalDataInfo(tensor)
    if base is None:
        raise ModelError(f"tensor {tensor.name!r} keeps its data in {info.location!r}, but the "
                         "model was not loaded from a path; pass base_dir=")
    location = Path(info.location)
    target = (base / location).resolve()
    if location.is_absolute() or not target.is_relative_to(base.resolve()):
        raise ModelError(f"tensor {tensor.name!r}: external data location {info.location!r} "
                         f"leaves the model's folder {base}; refusing to read it")
    if not target.is_file():
        raise ModelError(f"tensor {tensor.name!r}: external data file {target} does not exist")
    with open(target, "rb") as f:
        f.seek(info.offset or 0)
        raw = np.empty(max(info.length or os.fstat(f.fileno()).st_size - f.tell(), 0), np.uint8)
        num_read = f.readinto(memoryview(raw))
    if num_read != raw.size:
        raise ModelError(f"tensor {tensor.name!r}: external data file {target} is truncated")
    tensor.data_location = onnx.TensorProto.DEFAULT
    del tensor.external_data[:]
    return raw


# onnxruntime's contrib ops that it registers in the default domain (exporters write them
# there); ember defines them in com.microsoft with the others, and the version converter
# would refuse them as unknown standard ops
ORT_DEFAULT_DOMAIN_OPS = {"SimplifiedLayerNormalization"}


def _move_ort_ops(proto: onnx.ModelProto) -> onnx.ModelProto:
    """`proto` with onnxruntime's default-domain contrib ops moved to com.microsoft (a copy
    when there are any: the caller's model is left as it is)."""
    def nodes(graph):
        for node in graph.node:
            yield node
            for a in node.attribute:
                for g in [a.g] if a.HasField("g") else list(a.graphs):
                    yield from nodes(g)

    if not any(n.domain in ("", "ai.onnx") and n.op_type in ORT_DEFAULT_DOMAIN_OPS for n in nodes(proto.graph)):
        return proto
    moved = onnx.ModelProto()
    moved.CopyFrom(proto)
    for node in nodes(moved.graph):
        if node.domain in ("", "ai.onnx") and node.op_type in ORT_DEFAULT_DOMAIN_OPS:
            node.domain = "com.microsoft"
    if not any(o.domain == "com.microsoft" for o in moved.opset_import):
        moved.opset_import.append(onnx.helper.make_opsetid("com.microsoft", 1))
    return moved


def _normalize(proto: onnx.ModelProto, weights: dict[str, WeightData]) -> onnx.ModelProto:
    proto = _move_ort_ops(proto)
    _clear_anonymous_dims(proto.graph)
    if proto.functions:
        try:
            proto = onnx.inliner.inline_local_functions(proto)
        except Exception as e:
            raise ModelError(f"cannot inline the model's local functions: {e}") from None
    latest = latest_opsets()[""]
    version = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), None)
    if version is None:
        if any(n.domain in ("", "ai.onnx") for n in proto.graph.node):
            raise ModelError("model uses standard ONNX ops but imports no default-domain opset")
    elif version > latest:
        raise ModelError(f"model opset {version} is newer than the newest this ember knows ({latest})")
    elif version < latest:
        try:
            proto = onnx.version_converter.convert_version(proto, latest)
        except Exception as e:
            # The converter's messages rarely name the node: importing the model as it is
            # finds a malformed graph (unknown op, dangling input...) and says where.
            _Importer(proto, weights).run()
            raise ModelError(f"cannot upgrade the model from opset {version} to {latest}: {e}") from None
    try:
        proto = onnx.shape_inference.infer_shapes(proto, check_type=False, strict_mode=False, data_prop=True)
    except Exception:  # inference is best effort here; the per-op type functions follow
        pass
    return proto


def _clear_anonymous_dims(graph: onnx.GraphProto) -> None:
    """Make every anonymous dim (`?`, `""`, `-1`, `None`, `unk__N`: see
    `bridge.is_anonymous_dim`) a plain unknown one, in this graph and its subgraphs, so
    that onnx's shape inference does not take two `?` for the same dim either."""
    for dim in _declared_dims(graph):
        if bridge.is_anonymous_dim(dim):
            dim.Clear()


def _declared_dims(graph: onnx.GraphProto):
    """Every dim of every declared type (inputs, outputs, value_info), subgraphs included."""
    for vi in (*graph.input, *graph.output, *graph.value_info):
        tp = vi.type
        while tp.WhichOneof("value") in ("sequence_type", "optional_type"):
            tp = getattr(tp, tp.WhichOneof("value")).elem_type
        if tp.WhichOneof("value") == "tensor_type" and tp.tensor_type.HasField("shape"):
            yield from tp.tensor_type.shape.dim
    for node in graph.node:
        for attr in node.attribute:
            for sub in (attr.g,) if attr.HasField("g") else attr.graphs:
                yield from _declared_dims(sub)


class _Importer:
    def __init__(self, proto: onnx.ModelProto, weights: dict[str, WeightData] | None = None):
        self.proto = proto
        self.weights = dict(weights or {})  # the main graph's, taken as its initializers are read
        self.types: dict[str, onnx.TypeProto] = {}
        # dim names taken, by the model's own dims and by the symbols made for anonymous ones
        self.dim_names = {d.dim_param.strip() for d in _declared_dims(proto.graph) if d.HasField("dim_param")}
        self.opsets = {("" if o.domain == "ai.onnx" else o.domain): o.version for o in proto.opset_import}
        self.opsets[""] = latest_opsets()[""]

    def run(self) -> Graph:
        graph = self.graph(self.proto.graph, ChainMap())
        graph.opsets = dict(self.opsets)
        infer_types(graph)
        try:
            verify(graph)
        except IRError as e:
            raise ModelError(str(e)) from None
        return graph

    def _collect_types(self, g: onnx.GraphProto) -> None:
        for vi in (*g.input, *g.output, *g.value_info):
            if vi.type.WhichOneof("value") is not None:
                self.types[vi.name] = vi.type

    def _type(self, name: str):
        tp = self.types.get(name)
        if tp is None:
            return None
        try:
            return bridge.type_from_proto(tp, lambda axis: self._anonymous_dim(name, axis))
        except (IRError, ValueError) as e:
            raise ModelError(f"value {name!r}: {e}") from None

    def _anonymous_dim(self, value: str, axis: int):
        """A new symbol for an anonymous dim, named after where it is declared so that a
        message about it reads `_x_dim2` (value 'x', dim 2) rather than `_unk17`. The
        leading `_` marks it unknown to shape inference, as every fresh symbol is."""
        base = f"_{sanitize_name(value)}_dim{axis}"
        name, n = base, 1
        while name in self.dim_names:
            n += 1
            name = f"{base}_{n}"
        self.dim_names.add(name)
        return symbol(name)

    def graph(self, g: onnx.GraphProto, outer: ChainMap) -> Graph:
        self._collect_types(g)
        scope = outer.new_child()
        graph = Graph(g.name or "main")
        for init in g.initializer:
            weight = self.weights.pop(init.name, None)
            try:
                data = numpy_helper.to_array(init) if weight is None else weight.array(init)
            except Exception as e:
                raise ModelError(f"initializer {init.name!r} cannot be read: {e}") from None
            scope[init.name] = graph.add_constant(init.name, data)
        if g.sparse_initializer:
            raise ModelError(f"graph {graph.name!r}: sparse initializers are not supported")
        for vi in g.input:
            if vi.name in scope.maps[0]:
                continue  # old-style input that only declares an initializer
            value = Value(vi.name, self._type(vi.name))
            graph.inputs.append(value)
            scope[vi.name] = value
        nodes = [self.node(n, i, scope) for i, n in enumerate(g.node)]
        for node_proto, node in zip(g.node, nodes):
            for i, name in enumerate(node_proto.input):
                if name == "":
                    continue
                if name not in scope:
                    raise ModelError(f"{node.describe()}: input {i} reads {name!r}, which no node, "
                                     "graph input or initializer produces")
                node.inputs[i] = scope[name]
        graph.nodes = nodes
        self._sort(graph)
        for vi in g.output:
            if vi.name not in scope:
                raise ModelError(f"graph {graph.name!r}: output {vi.name!r} is never produced")
            graph.outputs.append(scope[vi.name])
        return graph

    def node(self, n: onnx.NodeProto, index: int, scope: ChainMap) -> Node:
        domain = "" if n.domain == "ai.onnx" else n.domain
        op = f"{domain}.{n.op_type}" if domain else n.op_type
        name = n.name or f"{n.op_type}_{index}"
        where = f"node {name!r} (op {op})"
        if not has_op(op):
            raise ModelError(f"{where}: unknown op {op!r}; ember has no definition for it")
        kinds = {k: s.kind for k, s in get_op(op).attrs.items()}
        attrs = {}
        for a in n.attribute:
            if a.ref_attr_name:
                raise ModelError(f"{where}: attribute {a.name!r} refers to a function attribute")
            actual, expected = bridge.ATTR_KIND.get(a.type), kinds.get(a.name)
            if expected is not None and actual != expected:
                raise ModelError(f"{where}: attribute {a.name!r} is {actual or 'untyped'}, "
                                 f"but the op expects {expected}")
            try:
                attrs[a.name] = bridge.attr_from_proto(a, lambda g: self.graph(g, scope))
            except EmberError as e:
                raise ModelError(f"{where}: {e}") from None
        outputs = []
        for out in n.output:
            if out == "":
                outputs.append(Value(f"{name}_unused{len(outputs)}"))
                continue
            if out in scope.maps[0]:
                raise ModelError(f"{where}: output {out!r} is already produced elsewhere "
                                 "(the graph is not in SSA form)")
            value = Value(out, self._type(out))
            scope[out] = value
            outputs.append(value)
        return Node(op, [None] * len(n.input), outputs, attrs, name)

    @staticmethod
    def _sort(graph: Graph) -> None:
        cycle = graph.find_cycle()
        if cycle:
            names = " -> ".join(repr(n.name) for n in cycle)
            raise ModelError(f"graph {graph.name!r} has a cycle through nodes {names}")
        try:
            graph.topological_sort()
        except nx.NetworkXUnfeasible:
            raise ModelError(f"graph {graph.name!r} has a cycle") from None
