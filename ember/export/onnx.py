"""Graph -> ONNX: the optimised graph as a model onnxruntime or ember can load again.

    export_onnx(graph, "model.onnx")                          # ember's ops in the `ember` domain
    export_onnx(graph, "model.onnx", standard_ops_only=True)  # each one decomposed: onnxruntime runs it

Every node is written as it is; an ember op `ember.X` becomes op type `X` of domain
`ember` (opset 1), which ember's ONNX frontend maps back. With `standard_ops_only` each
ember op is replaced by the standard ops its reference implementation computes
(`_decompose.DECOMPOSITIONS`, the inverse of the fusion passes); one that has none
(`ember.PagedAttention`) raises UnsupportedError. Symbolic dims become dim_params
(their printed form: `batch`, `2*seq + 1`), constants initializers, subgraphs
(If/Loop/Scan bodies) are written recursively. Types, attributes and dtypes go through
the same tables the frontend reads them with (`ir.ops._onnx_bridge`)."""

from __future__ import annotations

import os
from pathlib import Path

import onnx
import onnx.version_converter
from onnx import helper, numpy_helper

from ..errors import UnsupportedError
from ..ir.graph import Graph, Node, Value
from ..ir.ops import _onnx_bridge as bridge
from ..ir.ops.onnx_standard import STANDARD_DOMAINS, latest_opsets
from ..ir.registry import get_op, has_op
from ._decompose import DECOMPOSITIONS, NOT_DECOMPOSABLE, Builder

EMBER_DOMAIN = "ember"
EMBER_OPSET = 1
# protobuf cannot serialize a message of 2 GiB or more: past this, weights go to a file beside the model
MAX_INLINE_BYTES = 1_800_000_000


def export_onnx(graph: Graph, path: str | os.PathLike | None = None, *, standard_ops_only: bool = False,
                opset: int | None = None, external_data: bool | None = None) -> onnx.ModelProto:
    """Write `graph` as an ONNX model to `path` (when given) and return it.

    standard_ops_only: decompose ember's ops into standard ONNX ops, so that any ONNX
        runtime can load the model; the outputs are those of ember's reference
        implementations. Raises UnsupportedError for an op with no decomposition.
    opset: the default-domain opset to write (default: the graph's, ember's newest);
        an older one is reached with onnx's version converter, where it can.
    external_data: keep the weights in `<path>.data` beside the model (default: only
        when they would not fit in one protobuf, ~2 GB); the model returned then refers
        to that file rather than holding them."""
    writer = _Writer(graph, standard_ops_only)
    body = writer.graph(graph)
    current = graph.opsets.get("", latest_opsets()[""])
    opsets = {**{d: v for d, v in graph.opsets.items() if d not in ("", "ai.onnx", EMBER_DOMAIN)}, "": current}
    for domain in writer.domains - {""}:  # ember's ops and third-party ones: one version each, 1
        opsets.setdefault(domain, EMBER_OPSET if domain == EMBER_DOMAIN else 1)
    imports = [helper.make_opsetid(d, v) for d, v in opsets.items()]
    model = helper.make_model(body, opset_imports=imports, producer_name="ember",
                              ir_version=helper.find_min_ir_version_for(imports, ignore_unknown=True))
    if opset is not None and opset != current:
        model = _convert(model, current, opset)
    if path is not None:
        _save(model, Path(path), external_data, writer.num_weight_bytes)
    elif external_data:
        raise UnsupportedError("external_data=True needs a path to write the weights beside")
    return model


def _convert(model: onnx.ModelProto, current: int, opset: int) -> onnx.ModelProto:
    if opset > current:
        # ember's IR already holds every op in its newest form; a newer number means nothing new
        raise UnsupportedError(f"opset {opset} is newer than the graph's ({current})")
    try:
        model = onnx.version_converter.convert_version(model, opset)
    except Exception as e:
        raise UnsupportedError(f"cannot write the model at opset {opset} (onnx's version converter: {e}); "
                               f"export at opset {current}") from None
    # the converter keeps the IR version of the newest opset: an older runtime (onnxruntime
    # 1.30 reads IR 13 at most, which onnx 1.23's opset 28 needs 14 of) would refuse the
    # model. Lowered only where every element type is one IR 7 already had: the newer
    # ones (float8, int4, float4, ...) need the IR versions that brought them.
    if _classic_types_only(model.graph):
        model.ir_version = max(7, helper.find_min_ir_version_for(list(model.opset_import), ignore_unknown=True))
    return model


def _classic_types_only(graph: onnx.GraphProto) -> bool:
    """Whether every tensor of `graph` (and its subgraphs) has an element type of IR
    version 7 or older (up to BFLOAT16)."""
    def types(g):
        for t in g.initializer:
            yield t.data_type
        for v in (*g.input, *g.output, *g.value_info):
            if v.type.HasField("tensor_type"):
                yield v.type.tensor_type.elem_type
        for node in g.node:
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.TENSOR:
                    yield attr.t.data_type
                for sub in ([attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs)):
                    yield from types(sub)
    return all(t <= onnx.TensorProto.BFLOAT16 for t in types(graph))


def _save(model: onnx.ModelProto, path: Path, external_data: bool | None, num_weight_bytes: int) -> None:
    if external_data is None:
        external_data = num_weight_bytes > MAX_INLINE_BYTES
    if external_data:
        onnx.save_model(model, os.fspath(path), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=f"{path.name}.data", size_threshold=1024)
    else:
        onnx.save_model(model, os.fspath(path))


class _Names:
    """One ONNX name per Value (ONNX names are global across subgraphs); a value keeps its
    own name unless another value took it first."""

    def __init__(self):
        self.of_value: dict[int, str] = {}
        self.taken: set[str] = set()

    def fresh(self, base: str) -> str:
        base = base or "v"
        name, i = base, 0
        while name in self.taken:
            i += 1
            name = f"{base}_{i}"
        self.taken.add(name)
        return name

    def __call__(self, value: Value) -> str:
        name = self.of_value.get(id(value))
        if name is None:
            name = self.of_value[id(value)] = self.fresh(value.name)
        return name


class _Writer:
    def __init__(self, graph: Graph, standard_ops_only: bool):
        self.standard_ops_only = standard_ops_only
        self.names = _Names()
        self.used = graph.used_values()
        self.domains: set[str] = set()  # of the nodes written
        self.num_weight_bytes = 0
        for value in graph.inputs:  # the model's signature keeps its names
            self.names(value)
        for value in graph.outputs:
            self.names(value)

    def graph(self, graph: Graph, is_subgraph: bool = False) -> onnx.GraphProto:
        initializers = []
        for value in graph.constants:
            if id(value) in self.used:
                initializers.append(numpy_helper.from_array(value.const, self.names(value)))
                self.num_weight_bytes += value.const.nbytes
        inputs = [self._value_info(v) for v in graph.inputs]
        nodes, value_info = [], []
        for node in graph.nodes:
            nodes += self.node(node, initializers)
            value_info += [self._value_info(v) for v in node.outputs
                           if v.type is not None and id(v) in self.used and v not in graph.outputs]
        outputs = []
        produced = {id(v) for node in graph.nodes for v in node.outputs}
        for value in graph.outputs:
            if is_subgraph and id(value) not in produced:
                # a body returning an input, a constant or an outer value: through an Identity,
                # so each body output is a node output of its own
                name = self.names.fresh(f"{value.name}_out")
                nodes.append(helper.make_node("Identity", [self.names(value)], [name], name=f"{name}_identity"))
                outputs.append(self._value_info(value, name))
            else:
                outputs.append(self._value_info(value))
        return helper.make_graph(nodes, graph.name, inputs, outputs, initializers, value_info=value_info)

    def _value_info(self, value: Value, name: str | None = None) -> onnx.ValueInfoProto:
        return helper.make_value_info(name or self.names(value), bridge.type_to_proto(value.type))

    # -- nodes -------------------------------------------------------------------------
    def node(self, node: Node, initializers: list[onnx.TensorProto]) -> list[onnx.NodeProto]:
        decompose = DECOMPOSITIONS.get(node.op) if self.standard_ops_only else None
        if decompose is not None:
            return self._decomposed(node, decompose, initializers)
        if self.standard_ops_only and node.domain not in STANDARD_DOMAINS:
            why = NOT_DECOMPOSABLE.get(node.op, "it has no decomposition into standard ONNX ops")
            raise UnsupportedError(f"{node.describe()}: cannot export with standard_ops_only: {why}")
        self.domains.add(node.domain)
        inputs = [self.names(v) if v is not None else "" for v in node.inputs]
        while inputs and inputs[-1] == "":
            inputs.pop()
        proto = helper.make_node(node.op_type, inputs, self._outputs(node), name=node.name, domain=node.domain)
        kinds = {k: spec.kind for k, spec in get_op(node.op).attrs.items()} if has_op(node.op) else {}
        for key, value in node.attrs.items():
            if value is not None:
                proto.attribute.append(self._attribute(node, key, value, kinds.get(key)))
        return [proto]

    def _outputs(self, node: Node) -> list[str]:
        """Output names; an optional output nobody reads is left out ("")."""
        specs = get_op(node.op).outputs if has_op(node.op) else ()
        names = []
        for i, value in enumerate(node.outputs):
            spec = specs[min(i, len(specs) - 1)] if specs else None
            unread = id(value) not in self.used and spec is not None and spec.optional and not spec.variadic
            names.append("" if unread else self.names(value))
        while names and names[-1] == "":
            names.pop()
        return names

    def _attribute(self, node: Node, key: str, value, kind: str | None) -> onnx.AttributeProto:
        if isinstance(value, Graph):
            return helper.make_attribute(key, self.graph(value, is_subgraph=True))
        if isinstance(value, list) and value and isinstance(value[0], Graph):
            return helper.make_attribute(key, [self.graph(g, is_subgraph=True) for g in value])
        try:
            return bridge.attr_to_proto(key, value, kind or bridge._guess_kind(value))
        except Exception as e:
            raise UnsupportedError(f"{node.describe()}: attribute {key!r} = {value!r} "
                                   f"cannot be written to ONNX: {e}") from None

    def _decomposed(self, node: Node, decompose, initializers: list[onnx.TensorProto]) -> list[onnx.NodeProto]:
        builder = Builder(self.names, node)
        inputs = [self.names(v) if v is not None else None for v in node.inputs]
        results = decompose(builder, node, inputs)
        for value, result in zip(node.outputs, results):
            if id(value) in self.used:
                if result is None:
                    raise UnsupportedError(f"{node.describe()}: its decomposition does not compute "
                                           f"output {value.name!r}")
                builder.rename(result, self.names(value))
        initializers += builder.initializers
        return builder.nodes
