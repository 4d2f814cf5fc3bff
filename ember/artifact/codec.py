"""The Program as JSON, and back without `eval`.

Buffers, steps and counts are plain JSON. A size expression is a tree of lists:
`["Add", 1, ["S", "seq", {"integer": true, "positive": true}]]` — integers as numbers,
`["Q", p, q]` a rational, `["S", name, assumptions]` a symbol, `[function, *args]` for
the functions in `ember.ir.sizes.FUNCTIONS`. A dim that is a Python int stays a number;
a symbolic one is always a list, so the two never mix up. Saving reads sympy expressions
(or `Size`s, re-saving a loaded model); loading decodes a program's buffer shapes and size
symbols to `Size`s, which the runtime evaluates without importing sympy, and a step
param's expression to sympy, as the step was made with.

Step params are JSON where they can be, and otherwise a one-key object naming what the
value is: `$expr` (a size expression), `$tuple`, `$frozenset`, `$dict` (keys that are not
plain strings), `$float` (nan, inf), `$scalar` (a numpy scalar), `$dtype`, `$tensor` (a
key into the weights), `$graph` (a subgraph in the printed IR), `$program` (a control-flow
body's program), `$node` (a fallback's node: its index in the graph) and `$value` (a
value of the graph, by name). Nothing else: a value of any other type is refused when
saving, an unknown tag when loading, each as an ArtifactError that names it.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from .._deferred import sympy
from ..codegen.memory import program_lifetimes
from ..ir.kernel import Buffer
from ..errors import ArtifactError, IRError
from ..ir import sizes
from ..ir.dtypes import DType
from ..ir.graph import Graph, Node, Value
from ..ir.parser import parse_graph
from ..ir.printer import print_graph, resources
from ..ir.sizes import Size
from ..ir.kernel import Program, Step

# the assumptions ember's symbols are made with (dims; loop variables; temps), tried in turn
_SYMBOL_KINDS = ({"integer": True, "positive": True}, {"integer": True, "nonnegative": True}, {"integer": True}, {})
_SYMBOL_NAME = re.compile(r"^\$?[A-Za-z_][A-Za-z0-9_]*$")
MAX_DEPTH = 200


# -- size expressions ---------------------------------------------------------------------
def encode_expr(e: Any) -> Any:
    if type(e) is int:
        return e
    if isinstance(e, Size):
        return sizes.to_tree(e)
    if isinstance(e, sympy.Integer):
        return int(e)
    if isinstance(e, sympy.Rational):
        return ["Q", int(e.p), int(e.q)]
    if isinstance(e, sympy.Symbol):
        kind = next((k for k in _SYMBOL_KINDS if sympy.Symbol(e.name, **k) == e), None)
        return ["S", e.name, kind if kind is not None else dict(e.assumptions0)]
    for name in sizes.CONSTANTS:
        if e == sizes.Size(name).to_sympy():
            return [name]
    if isinstance(e, sympy.Basic) and e.func.__name__ in sizes.FUNCTIONS and getattr(sympy, e.func.__name__) is e.func:
        return [e.func.__name__, *(encode_expr(a) for a in e.args)]
    raise ArtifactError(f"cannot save the size expression {e} (sympy {type(e).__name__} is not one of "
                        f"{', '.join(sizes.FUNCTIONS)})")


def decode_expr(tree: Any) -> int | Size:
    """A size expression as loading keeps it: an int or a `Size` (no sympy: importing it
    was half of loading MiniLM and running it from process start)."""
    try:
        e = sizes.from_tree(tree, max_depth=MAX_DEPTH)
    except ValueError as err:
        raise ArtifactError(str(err)) from None
    for sym in sizes.free_symbols(e):
        if not _SYMBOL_NAME.match(sym.name):  # names reach lambdify's generated code: identifiers only
            raise ArtifactError(f"bad symbol name {sym.name[:100]!r}")
        if sym.assumptions not in _SYMBOL_KINDS:
            from sympy.core.assumptions import _assume_defined

            if not set(sym.assumptions) <= _assume_defined:
                raise ArtifactError(f"symbol {sym.name!r}: bad assumptions {str(sym.assumptions)[:100]}")
    return e


def encode_dim(d: Any) -> Any:
    return d if type(d) is int else {"$expr": encode_expr(d)}


def decode_dim(d: Any) -> Any:
    if type(d) is int:
        return d
    if isinstance(d, dict) and set(d) == {"$expr"}:
        return decode_expr(d["$expr"])
    raise ArtifactError(f"bad dim {str(d)[:100]}")


# -- values -------------------------------------------------------------------------------
@dataclass
class Saving:
    """What encoding needs besides the value: where tensors go (`add_tensor` -> key),
    where kernel libraries go (`add_library(source, path)` -> index), and the graph a
    fallback's node and values belong to."""

    add_tensor: Callable[..., str]  # (array, its digest if known) -> its key
    add_library: Callable[[str, str | None], int]
    graph: Graph | None = None
    _node_index: dict[int, int] = field(default_factory=dict)
    _value_names: dict[int, str] = field(default_factory=dict)
    _name_count: dict[str, int] = field(default_factory=dict)

    def __post_init__(self):
        if self.graph is not None:
            self._node_index = {id(n): i for i, n in enumerate(self.graph.nodes)}
            for v in self.graph.values():
                self._value_names[id(v)] = v.name
                self._name_count[v.name] = self._name_count.get(v.name, 0) + 1

    def value_name(self, v: Value, where: str) -> str:
        if id(v) not in self._value_names:
            raise ArtifactError(f"{where}: value {v.name!r} is not a value of the graph")
        if self._name_count[v.name] > 1:  # read back by name: it must name one value
            raise ArtifactError(f"{where}: the graph has more than one value named {v.name!r}")
        return v.name


@dataclass
class Loading:
    tensors: dict[str, np.ndarray]
    libraries: list[tuple[str, str | None]]  # (source, library path or None), by index
    graph: Graph | None = None
    _values: dict[str, Value] = field(default_factory=dict)

    def __post_init__(self):
        if self.graph is not None:
            self._values = {v.name: v for v in self.graph.values()}


def encode_value(x: Any, s: Saving, where: str) -> Any:
    if x is None or isinstance(x, (bool, str)) or type(x) is int:
        return x
    if type(x) is float:
        return x if math.isfinite(x) else {"$float": repr(x)}
    if isinstance(x, list):
        return [encode_value(v, s, where) for v in x]
    if isinstance(x, tuple):
        return {"$tuple": [encode_value(v, s, where) for v in x]}
    if isinstance(x, (set, frozenset)):
        return {"$frozenset": [encode_value(v, s, where) for v in sorted(x, key=repr)]}
    if isinstance(x, dict):
        if all(isinstance(k, str) and not k.startswith("$") for k in x):
            return {k: encode_value(v, s, where) for k, v in x.items()}
        return {"$dict": [[encode_value(k, s, where), encode_value(v, s, where)] for k, v in x.items()]}
    if isinstance(x, DType):
        return {"$dtype": x.name}
    if isinstance(x, Size) or isinstance(x, sympy.Basic):
        return {"$expr": encode_expr(x)}
    if isinstance(x, np.ndarray):
        return {"$tensor": s.add_tensor(x)}
    if isinstance(x, np.generic) and x.dtype.kind in "biufV":
        # numpy's scalars and ml_dtypes' (bfloat16, float8, int4: kind V), each exactly an int or a float64
        dtype = DType.from_numpy(x.dtype)
        if x.dtype.kind in "biu":
            value = x.item()
        elif dtype.is_integer:
            value = int(x)
        else:
            value = float(x)
        return {"$scalar": [dtype.name, encode_value(value, s, where)]}
    if isinstance(x, Graph):
        return {"$graph": _graph_text(x, s)}
    if isinstance(x, Program):
        return {"$program": encode_program(x, Saving(s.add_tensor, s.add_library))}
    if isinstance(x, Node) and id(x) in s._node_index:
        return {"$node": s._node_index[id(x)]}
    if isinstance(x, Value):
        return {"$value": s.value_name(x, where)}
    what = f"{x.describe()}, not a node of the graph" if isinstance(x, Node) else type(x).__name__
    raise ArtifactError(f"{where}: cannot save a value of type {what}")


def decode_value(x: Any, ld: Loading, where: str) -> Any:
    if x is None or isinstance(x, (bool, str, int, float)):
        return x
    if isinstance(x, list):
        return [decode_value(v, ld, where) for v in x]
    if not isinstance(x, dict):
        raise ArtifactError(f"{where}: bad value {str(x)[:100]}")
    tags = [k for k in x if k.startswith("$")]
    if not tags:
        return {k: decode_value(v, ld, where) for k, v in x.items()}
    if len(x) != 1:
        raise ArtifactError(f"{where}: bad value {str(x)[:100]}")
    tag, body = tags[0], x[tags[0]]
    try:
        return _DECODERS[tag](body, ld, where)
    except KeyError:
        raise ArtifactError(f"{where}: unknown value kind {tag!r} (or a bad reference in it)") from None
    except (TypeError, ValueError, IndexError, ZeroDivisionError) as e:
        raise ArtifactError(f"{where}: bad {tag} value {str(body)[:100]}: {e}") from None


def _decode_scalar(body, ld, where):
    name, value = body
    dtype = DType[name]
    value = decode_value(value, ld, where)
    if dtype is DType.string or dtype.name.startswith("complex") or type(value) not in (bool, int, float):
        raise ValueError("not a number")
    return dtype.numpy.type(value)


def _decode_float(body, ld, where):
    if body not in ("nan", "inf", "-inf"):
        raise ValueError("not nan or inf")
    return float(body)


def _decode_graph(body, ld, where):
    if not isinstance(body, str):
        raise ValueError("not text")
    return parse_graph_checked(body, ld.tensors, where)


def _decode_node(body, ld, where):
    if type(body) is not int or ld.graph is None or not 0 <= body < len(ld.graph.nodes):
        raise ValueError("no such node")
    node = ld.graph.nodes[body]
    check_ops_known([node, *(n for sub in node.subgraphs() for n in sub.walk())], where)  # it runs on its reference
    return node


_DECODERS = {
    "$tuple": lambda b, ld, w: tuple(decode_value(v, ld, w) for v in _list(b)),
    "$frozenset": lambda b, ld, w: frozenset(decode_value(v, ld, w) for v in _list(b)),
    "$dict": lambda b, ld, w: {decode_value(k, ld, w): decode_value(v, ld, w) for k, v in _list(b)},
    "$float": _decode_float,
    "$scalar": _decode_scalar,
    "$dtype": lambda b, ld, w: DType[b],
    "$expr": lambda b, ld, w: sizes.to_sympy(decode_expr(b)),  # the sympy expression a step was made with
    "$tensor": lambda b, ld, w: ld.tensors[b],
    "$graph": _decode_graph,
    "$program": lambda b, ld, w: decode_program(b, Loading(ld.tensors, ld.libraries)),
    "$node": _decode_node,
    "$value": lambda b, ld, w: ld._values[b],
}


def _list(x) -> list:
    if not isinstance(x, list):
        raise ValueError("not a list")
    return x


def _graph_text(graph: Graph, s: Saving, found: dict | None = None) -> str:
    found = resources(graph) if found is None else found
    for key, array in found.items():
        s.add_tensor(array, key)
    try:
        return print_graph(graph)
    except TypeError as e:  # an attribute the printed form has no syntax for
        raise ArtifactError(f"graph {graph.name!r} cannot be printed: {e}") from None


def graph_text(graph: Graph, add_tensor: Callable[..., str]) -> str:
    """The printed IR of `graph`, its large tensors handed to `add_tensor`; checked to
    read back as the same graph."""
    found = resources(graph)
    text = _graph_text(graph, Saving(add_tensor, lambda *a: 0), found)
    try:
        again = print_graph(parse_graph(text, found))
    except IRError as e:
        raise ArtifactError(f"graph {graph.name!r} does not read back from its printed form: {e}") from None
    if again != text:
        line = next(i for i, (a, b) in enumerate(zip(text.splitlines(), again.splitlines()) ) if a != b) + 1
        raise ArtifactError(f"graph {graph.name!r} does not read back the same from its printed form "
                            f"(line {line}: {text.splitlines()[line - 1].strip()[:120]})")
    return text


def parse_graph_checked(text: str, tensors: dict[str, np.ndarray], where: str, *, check_ops: bool = True) -> Graph:
    try:
        graph = parse_graph(text, tensors)
    except IRError as e:
        raise ArtifactError(f"{where}: the graph does not parse: {e}") from None
    if check_ops:
        check_ops_known(graph.walk(), where)
    return graph


def check_ops_known(nodes, where: str) -> None:
    """Refuse a node whose op this ember does not know. Loading checks the nodes that can
    run through their op's reference implementation: a fallback's node, control-flow
    bodies, and every node of a graph run without a program. The rest of the printed
    graph describes what the program's kernels compute, and no name in it is looked up
    to run; checking those would import the op registry (onnx, ml_dtypes), which made
    loading and running MiniLM from process start 1.4x as long."""
    from ..ir.registry import has_op

    for node in nodes:
        if not has_op(node.op):
            raise ArtifactError(f"{where}: {node.describe()} is not an op this ember knows")


# -- programs -----------------------------------------------------------------------------
def encode_program(p: Program, s: Saving) -> dict:
    steps = []
    for i, step in enumerate(p.steps):
        where = f"step {i} ({step.kind} {step.name})"
        steps.append({"kind": step.kind, "name": step.name, "args": list(step.args), "num_inputs": step.num_inputs,
                      "params": encode_value(step.params, s, where), "kernels": list(step.kernels),
                      "nodes": list(step.nodes), "parts": [sorted(part) for part in step.parts]})
    return {
        "buffers": [{"name": b.name, "dtype": b.dtype.name if b.dtype is not None else None,
                     "shape": [encode_dim(d) for d in b.shape], "kind": b.kind, "view_of": b.view_of,
                     "fill": None if b.fill is None else [encode_dim(d) for d in b.fill]}
                    for b in p.buffers.values()],
        "slots": p.slots,
        "symbols": [encode_expr(sym) for sym in p.symbols],
        "steps": steps,
        "inputs": list(p.inputs), "outputs": list(p.outputs),
        "constants": {name: s.add_tensor(array) for name, array in p.constants.items()},
        "library": s.add_library(p.source, p.library) if p.source else None,
        "num_kernels": p.num_kernels, "fused_nodes": p.fused_nodes, "fallbacks": list(p.fallbacks),
        "index_bounds": {name: [extent, where] for name, (extent, where) in p.index_bounds.items()},
    }


def decode_program(d: Any, ld: Loading) -> Program:
    try:
        return _decode_program(d, ld)
    except ArtifactError:
        raise
    except (KeyError, TypeError, ValueError, IndexError, AttributeError) as e:
        raise ArtifactError(f"the program is malformed: {type(e).__name__}: {e}") from None


def _decode_program(d: dict, ld: Loading) -> Program:
    from ..runtime.externs import EXTERNS

    buffers = {}
    for b in d["buffers"]:
        buffers[b["name"]] = Buffer(_str(b["name"]), DType[b["dtype"]] if b["dtype"] is not None else None,
                                    tuple(decode_dim(x) for x in b["shape"]), _str(b["kind"]),
                                    b["view_of"], None if b["fill"] is None else [decode_dim(x) for x in b["fill"]])
    for b in buffers.values():
        if b.view_of is not None and b.view_of not in buffers:
            raise ArtifactError(f"buffer {b.name!r} views {b.view_of!r}, which the program lacks")
    symbols = [decode_expr(t) for t in d["symbols"]]
    if not all(sizes.is_symbol(sym) for sym in symbols):
        raise ArtifactError("the program's size symbols are not all symbols")
    slots = {name: int(slot) for name, slot in d["slots"].items()}
    if set(slots) - set(buffers) or sorted(slots.values()) != list(range(len(slots))):
        raise ArtifactError("the program's slots do not match its buffers")
    steps = []
    for i, st in enumerate(d["steps"]):
        where = f"step {i} ({st['kind']} {st['name']})"
        args = tuple(_str(a) for a in st["args"])
        if any(a and a not in buffers for a in args):
            raise ArtifactError(f"{where}: reads or writes a buffer the program lacks")
        if st["kind"] == "extern" and st["name"] not in EXTERNS:
            raise ArtifactError(f"{where}: {st['name']!r} is not an extern kernel this ember has")
        if st["kind"] not in ("segment", "extern", "fallback"):
            raise ArtifactError(f"{where}: unknown kind of step")
        params = decode_value(st["params"], ld, where)
        if not isinstance(params, dict):
            raise ArtifactError(f"{where}: params are not an object")
        if st["kind"] == "fallback" and not isinstance(params.get("node"), Node):
            raise ArtifactError(f"{where}: a fallback without its node")
        steps.append(Step(st["kind"], _str(st["name"]), args, int(st["num_inputs"]), params,
                          tuple(_str(k) for k in st["kernels"]), tuple(_str(n) for n in st["nodes"]),
                          tuple(frozenset(_str(a) for a in part) for part in st["parts"])))
    for name in (*d["inputs"], *d["outputs"], *d["constants"]):
        if name not in buffers:
            raise ArtifactError(f"the program names a buffer {name!r} it lacks")
    constants = {name: ld.tensors[key] for name, key in d["constants"].items()}
    library = d["library"]
    source, path = ld.libraries[library] if library is not None else ("", None)
    program = Program(buffers, slots, symbols, steps, list(d["inputs"]), list(d["outputs"]), constants,
                      source=source, library=path, num_kernels=int(d["num_kernels"]),
                      fused_nodes=int(d["fused_nodes"]), fallbacks=[_str(f) for f in d["fallbacks"]])
    for step in steps:
        if any(name not in buffers for part in step.parts for name in part):
            raise ArtifactError(f"step {step.name!r}: its kernels touch a buffer the program lacks")
    program.index_bounds = {_str(name): (int(extent), _str(where))
                            for name, (extent, where) in d.get("index_bounds", {}).items() if name in buffers}
    program.lifetimes = program_lifetimes(program)  # decided here as codegen decides it, never read from the file
    return program


def _str(x: Any) -> str:
    if not isinstance(x, str):
        raise ArtifactError(f"expected a name, got {str(x)[:100]}")
    return x
