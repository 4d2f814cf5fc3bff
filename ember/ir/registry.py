"""The op registry: one `OpDef` per op, holding every fact about it.

An `OpDef` is the op's schema (inputs, outputs, attributes with defaults, opset
range), its type/shape function and its reference implementation. The reference is the
meaning of the op: kernels, passes and fusions are tested against it.

`reference` is a *preparer*: given a node it returns a function from input arrays to a
tuple of outputs. Preparing once per node lets an implementation read attributes and
build helpers (or a subgraph interpreter) before the first run.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..errors import IRError
from .graph import Node
from .types import Type

ATTR_KINDS = ("int", "float", "string", "tensor", "graph", "ints", "floats", "strings",
              "tensors", "graphs", "type", "types", "sparse_tensor", "sparse_tensors")

Kernel = Callable[..., tuple]
Preparer = Callable[[Node], Kernel]


@dataclass(frozen=True)
class Known:
    """What inference knows of a value: its type and, for a small integer tensor
    computed from shapes (Shape -> Gather -> Concat ...), its contents as an object
    array of ints and sympy expressions."""

    type: Type | None
    value: Any = None  # numpy object array, or None


# infer(node, what is known of each input) -> what is known of each output
InferFn = Callable[[Node, list[Known | None]], list[Known | None]]


@dataclass(frozen=True)
class ParamSpec:
    name: str
    optional: bool = False
    variadic: bool = False
    min_arity: int = 1  # for a variadic parameter: how many values it needs at least


@dataclass(frozen=True)
class AttrSpec:
    name: str
    kind: str
    default: Any = None
    required: bool = False


@dataclass
class OpDef:
    name: str  # "Add", "ember.Attention", "ai.onnx.ml.LabelEncoder"
    inputs: tuple[ParamSpec, ...]
    outputs: tuple[ParamSpec, ...]
    attrs: dict[str, AttrSpec] = field(default_factory=dict)
    reference: Preparer | None = None
    infer: InferFn | None = None
    since_version: int = 1
    max_version: int | None = None  # newest opset this definition is valid for
    deterministic: bool = True  # False for random ops: never folded or deduplicated
    writes_inputs: tuple[int, ...] = ()  # inputs its reference writes in place (state the caller keeps)
    doc: str = ""
    lower: Callable | None = None  # (ctx, node, inputs) -> outputs in Kernel IR; ember/codegen
    # (op, node, used) -> one value (or None where not `used`) per output: the op rewritten
    # into other ops with a node builder `op` (as passes/rewriter.py's replacements write);
    # how an op with no lowering of its own reaches kernels (passes: expand_ops; codegen)
    expand: Callable | None = None

    @property
    def domain(self) -> str:
        return self.name.rpartition(".")[0]

    @property
    def op_type(self) -> str:
        return self.name.rpartition(".")[2]

    def attr(self, node: Node, name: str) -> Any:
        """The node's attribute `name`, or its schema default."""
        if name in node.attrs:
            return node.attrs[name]
        spec = self.attrs.get(name)
        if spec is None:
            raise IRError(f"{node.describe()}: op has no attribute {name!r}")
        return spec.default

    def arity(self, which: str) -> tuple[int, int | None]:
        """(min, max) number of inputs or outputs; max None means unbounded."""
        params = self.inputs if which == "inputs" else self.outputs
        if params and params[-1].variadic:
            last = params[-1]
            lo = sum(1 for p in params[:-1] if not p.optional) + (0 if last.optional else last.min_arity)
            return lo, None
        lo = len(params)
        while lo and params[lo - 1].optional:
            lo -= 1
        return lo, len(params)


_REGISTRY: dict[str, OpDef] = {}
_loaded = False


def register_op(opdef: OpDef, *, replace: bool = False) -> OpDef:
    """Register `opdef` under its name. Registering a name twice is an error unless
    `replace=True` (how a third party overrides a reference implementation)."""
    if opdef.name in _REGISTRY and not replace:
        raise IRError(f"op {opdef.name!r} is already registered")
    _REGISTRY[opdef.name] = opdef
    return opdef


def _ensure_loaded() -> None:
    global _loaded
    if not _loaded:
        _loaded = True
        from . import ops  # noqa: F401  (registers every built-in op family)


def get_op(name: str) -> OpDef:
    _ensure_loaded()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise IRError(f"unknown op {name!r}") from None


def has_op(name: str) -> bool:
    _ensure_loaded()
    return name in _REGISTRY


def registered_ops() -> list[str]:
    _ensure_loaded()
    return sorted(_REGISTRY)
