"""Standard ONNX ops (domains "", "ai.onnx.ml", "ai.onnx.preview*").

An ONNX op's schema comes from `onnx.defs` at the newest opset (the frontend upgrades
older models to it), its type function from `onnx.shape_inference`, and its reference
implementation from `onnx.reference`. A family file that knows better (a faster
reference, a symbolic shape function, a Kernel IR lowering) passes its own pieces to
`standard_op`; every op left over is registered here with the delegating defaults.
"""

from __future__ import annotations

import functools

import onnx
import onnx.defs
import onnx.reference
from onnx import numpy_helper
from onnx.reference import op_run

from ...errors import IRError
from ..graph import Node
from ..registry import _REGISTRY, AttrSpec, InferFn, Known, OpDef, ParamSpec, Preparer, register_op
from . import _onnx_bridge as bridge

STANDARD_DOMAINS = ("", "ai.onnx.ml", "ai.onnx.preview", "ai.onnx.preview.training")
RANDOM_OPS = {"RandomNormal", "RandomNormalLike", "RandomUniform", "RandomUniformLike",
              "Bernoulli", "Multinomial", "Dropout"}


@functools.cache
def latest_opsets() -> dict[str, int]:
    """Newest opset of each standard domain known to the installed onnx."""
    versions: dict[str, int] = {}
    for schema in onnx.defs.get_all_schemas_with_history():
        if schema.domain in STANDARD_DOMAINS:
            versions[schema.domain] = max(versions.get(schema.domain, 1), schema.since_version)
    versions[""] = onnx.defs.onnx_opset_version()
    return versions


def _op_name(domain: str, op_type: str) -> str:
    return f"{domain}.{op_type}" if domain else op_type


def _params(formals) -> tuple[ParamSpec, ...]:
    opt = onnx.defs.OpSchema.FormalParameterOption
    return tuple(ParamSpec(p.name, optional=p.option == opt.Optional,
                           variadic=p.option == opt.Variadic, min_arity=p.min_arity)
                 for p in formals)


def _attrs(schema) -> dict[str, AttrSpec]:
    specs = {}
    for name, a in schema.attributes.items():
        kind = bridge.ATTR_KIND.get(a.type, "unknown")
        default = None
        if a.default_value is not None and a.default_value.type != 0:
            default = bridge.attr_from_proto(a.default_value, convert_graph=lambda g: None)
        specs[name] = AttrSpec(name, kind, default, a.required)
    return specs


def standard_op(op_type: str, domain: str = "", *, reference: Preparer | None = None,
                infer: InferFn | None = None) -> OpDef:
    """Register the standard op `op_type` with its ONNX schema; `reference`/`infer`
    replace the delegating defaults."""
    version = latest_opsets()[domain]
    schema = onnx.defs.get_schema(op_type, version, domain)
    opdef = OpDef(
        name=_op_name(domain, op_type),
        inputs=_params(schema.inputs),
        outputs=_params(schema.outputs),
        attrs=_attrs(schema),
        since_version=schema.since_version,
        max_version=version,
        deterministic=domain != "" or op_type not in RANDOM_OPS,
        doc=(schema.doc or "").strip().split("\n")[0],
    )
    opdef.reference = reference or functools.partial(_delegate_reference, opdef)
    opdef.infer = infer or functools.partial(_delegate_infer, opdef)
    return register_op(opdef)


def _attr_kinds(opdef: OpDef) -> dict[str, str]:
    return {name: spec.kind for name, spec in opdef.attrs.items()}


def _delegate_reference(opdef: OpDef, node: Node):
    """Prepare onnx.reference's implementation of this op for `node`."""
    from onnx.reference.ops import load_op

    proto = bridge.node_to_proto(node, _attr_kinds(opdef))
    domain = opdef.domain
    version = latest_opsets()[domain]
    loader = load_op
    if domain == "ai.onnx.ml":
        from onnx.reference.ops.aionnxml import load_op as loader
    elif domain == "ai.onnx.preview":
        from onnx.reference.ops.aionnx_preview import load_op as loader
    elif domain == "ai.onnx.preview.training":
        from onnx.reference.ops.aionnx_preview_training import load_op as loader
    kwargs = {"evaluator_cls": onnx.reference.ReferenceEvaluator} if domain == "" else {}
    try:
        cls = loader(domain, opdef.op_type, version, **kwargs)
    except op_run.RuntimeContextError:
        types = [bridge.type_to_proto(v.type if v is not None else None) for v in node.inputs]
        cls = loader(domain, opdef.op_type, version, node=proto, input_types=types, **kwargs)
    run_params = {
        "log": lambda *args: None, "opsets": latest_opsets(), "verbose": 0,
        "new_ops": {}, "existing_functions": {},
        "evaluator_cls": onnx.reference.ReferenceEvaluator,
    }
    impl = cls(proto, run_params)
    return impl.run


_MAX_INFER_DATA = 1 << 16  # constant inputs up to this many elements help inference


def _delegate_infer(opdef: OpDef, node: Node, inputs: list[Known | None]) -> list[Known | None]:
    schema = onnx.defs.get_schema(opdef.op_type, opdef.max_version, opdef.domain)
    proto = bridge.node_to_proto(node, _attr_kinds(opdef))
    types, data = {}, {}
    for value, known in zip(node.inputs, inputs):
        if value is None or known is None:
            continue
        if known.type is not None:
            types[value.name] = bridge.type_to_proto(known.type)
        array = value.const if value.const is not None else _static(known)
        if array is not None and array.size <= _MAX_INFER_DATA:
            data[value.name] = numpy_helper.from_array(array, value.name)
    opsets = [onnx.helper.make_opsetid(d, v) for d, v in latest_opsets().items()]
    try:
        out = onnx.shape_inference.infer_node_outputs(schema, proto, types, data, opset_imports=opsets)
    except Exception:  # onnx's checker rejects partial information; we then know nothing
        return [None] * len(node.outputs)
    result = []
    for v in node.outputs:
        tp = out.get(v.name)
        try:
            result.append(Known(bridge.type_from_proto(tp)) if tp is not None else None)
        except (IRError, ValueError):
            result.append(None)
    return result


def _static(known: Known):
    """The known contents as a concrete int64 array, if every element is an int."""
    import numpy as np

    if known.value is None or not all(isinstance(x, int) for x in known.value.reshape(-1).tolist()):
        return None
    return np.asarray(known.value.tolist(), dtype=np.int64)


def register_remaining() -> None:
    """Register every standard op that no family file registered itself."""
    for schema in onnx.defs.get_all_schemas():
        if schema.domain not in STANDARD_DOMAINS or schema.deprecated:
            continue
        if _op_name(schema.domain, schema.name) not in _REGISTRY:
            standard_op(schema.name, schema.domain)
