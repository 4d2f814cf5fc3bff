"""ember's Graph IR: dtypes, symbolic types, values/nodes/graphs, the op registry, the
printed form and its parser, the verifier and the reference interpreter."""

from .dtypes import DType
from .graph import Graph, Node, Value
from .interpreter import Interpreter, evaluate
from .parser import parse_graph
from .printer import print_graph, resources
from .registry import AttrSpec, OpDef, ParamSpec, get_op, has_op, register_op, registered_ops
from .types import Dim, OptionalType, SequenceType, TensorType, Type, fresh_symbol, parse_dim, symbol
from .verifier import verify

__all__ = [
    "DType", "Graph", "Node", "Value", "Interpreter", "evaluate", "parse_graph", "print_graph",
    "resources", "AttrSpec", "OpDef", "ParamSpec", "get_op", "has_op", "register_op",
    "registered_ops", "Dim", "OptionalType", "SequenceType", "TensorType", "Type",
    "fresh_symbol", "parse_dim", "symbol", "verify",
]
