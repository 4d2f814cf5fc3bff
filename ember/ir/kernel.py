"""Kernel IR and the Program, as plain data: what op lowerings produce (through the
lowering context, `ember.ir.ops._lowering.LoweringContext`), what codegen's renderers render, and what
the runtime runs. Both codegen and the runtime import this module; it imports neither.

Kernel IR: what the renderers render.

A kernel is a loop nest over symbolic ranges whose body is a small scalar SSA program:

    Pointwise   ranges (the output's shape); the body loads, computes and stores one element.
    Reduction   outer ranges (one "row" each, run in parallel) and reduction ranges; a row
                runs its stages in order: a `reduce` stage loops over the reduction ranges
                and folds a value into an accumulator, a `loop` stage loops over them and
                stores, a `row` stage runs once (it may read the accumulators). Softmax is
                max -> sum(exp) -> loop(store), layer norm sum -> sum -> loop.
    Extern      a named library kernel (matmul, conv, attention) over whole buffers.

Index expressions are sympy expressions over loop variables (`$x0, $x1, ...` outer,
`$r0, ...` reduction), the graph's size symbols, and SSA temps (`$t3`) for indirect
loads (Gather). Buffers are contiguous row-major. Every op the body may use is listed in
`SCALAR_OPS`; each renderer maps every one of them, so a lowering written once runs on
each backend.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .._deferred import sympy
from .dtypes import DType
from .types import Dim

if TYPE_CHECKING:
    import numpy as np

# scalar op -> number of operands. Comparisons and logic give bool; `cast` takes its
# target dtype from the statement (and means numpy's astype).
SCALAR_OPS = {
    "add": 2, "sub": 2, "mul": 2, "div": 2, "floordiv": 2, "mod": 2, "fmod": 2, "pow": 2,
    "max": 2, "min": 2, "atan2": 2,
    "neg": 1, "abs": 1, "exp": 1, "log": 1, "sqrt": 1, "rsqrt": 1, "reciprocal": 1,
    "tanh": 1, "erf": 1, "sigmoid": 1, "sin": 1, "cos": 1, "tan": 1, "asin": 1, "acos": 1,
    "atan": 1, "sinh": 1, "cosh": 1, "asinh": 1, "acosh": 1, "atanh": 1, "floor": 1, "ceil": 1,
    "round": 1, "sign": 1, "isnan": 1, "isinf": 1, "isposinf": 1, "isneginf": 1, "log1p": 1,
    "expm1": 1, "softplus": 1,
    "lt": 2, "le": 2, "gt": 2, "ge": 2, "eq": 2, "ne": 2, "and": 2, "or": 2, "xor": 2, "not": 1,
    "bitand": 2, "bitor": 2, "bitxor": 2, "bitnot": 1, "shl": 2, "shr": 2,
    "where": 3, "cast": 1,
    "cast_exact": 1,  # a float known to be integral and within the integer type's range, converted (no checks)
    "cast_e8m0": 3,  # ONNX Cast to float8e8m0: (float32 x, int32 round mode 0 up / 1 down / 2 nearest, bool saturate)
}
REDUCE_OPS = ("sum", "max", "min", "prod")


@dataclass
class Buffer:
    """A tensor the program allocates, reads or writes. `view_of` makes it an alias of
    another buffer's storage (Reshape and friends); `fill` gives the contents of a
    shape-valued tensor as size expressions, written when sizes are bound."""

    name: str
    dtype: DType
    shape: tuple[Dim, ...]
    kind: str = "temp"  # temp | input | output | constant
    view_of: str | None = None
    fill: list[Dim] | None = None

    @property
    def numel(self) -> Dim:
        return sympy.Mul(*self.shape) if self.shape else sympy.Integer(1)

    def strides(self) -> tuple[Dim, ...]:
        strides, acc = [], sympy.Integer(1)
        for d in reversed(self.shape):
            strides.append(acc)
            acc = acc * d
        return tuple(reversed(strides))

    def offset(self, index) -> sympy.Expr:
        """The flat element offset of a multi-index (size-1 dims broadcast)."""
        assert len(index) == len(self.shape), (self.name, index, self.shape)
        return sympy.Add(*(i * s for i, s, d in zip(index, self.strides(), self.shape) if d != 1))


@dataclass(frozen=True)
class Stmt:
    out: str | None       # the temp it defines (None for store)
    op: str               # a SCALAR_OPS name, or load / store / const / index / acc
    args: tuple[Any, ...]
    dtype: DType | None


class Body:
    """A scalar SSA program: each method appends a statement and returns its temp."""

    def __init__(self, counter: list[int] | None = None):
        self.stmts: list[Stmt] = []
        self._counter = counter if counter is not None else [0]
        self._loads: dict[tuple, str] = {}
        self.dtypes: dict[str, DType] = {}

    def _emit(self, op: str, args: tuple, dtype: DType | None, out: bool = True) -> str | None:
        name = None
        if out:
            name = f"t{self._counter[0]}"
            self._counter[0] += 1
            self.dtypes[name] = dtype
        self.stmts.append(Stmt(name, op, args, dtype))
        return name

    def load(self, buffer: Buffer, index) -> str:
        offset = sympy.sympify(buffer.offset(index))
        key = (buffer.name, offset)
        if key not in self._loads:
            self._loads[key] = self._emit("load", (buffer.name, offset), buffer.dtype)
        return self._loads[key]

    def store(self, buffer: Buffer, index, value: str) -> None:
        self._emit("store", (buffer.name, sympy.sympify(buffer.offset(index)), value), buffer.dtype, out=False)

    def const(self, value, dtype: DType) -> str:
        return self._emit("const", (value,), dtype)

    def index(self, expr, dtype: DType = DType.int64) -> str:
        """The value of an index expression, as a number of `dtype`."""
        return self._emit("index", (sympy.sympify(expr),), dtype)

    def op(self, name: str, *args: str, dtype: DType) -> str:
        assert name in SCALAR_OPS and len(args) == SCALAR_OPS[name], (name, args)
        return self._emit(name, args, dtype)

    def acc(self, name: str, dtype: DType) -> str:
        """The value of a reduction stage's accumulator, in a later stage."""
        return self._emit("acc", (name,), dtype)

    def dtype(self, temp: str) -> DType:
        return self.dtypes[temp]

    @property
    def num_ops(self) -> int:
        return sum(1 for s in self.stmts if s.op not in ("load", "store", "const", "index", "acc"))

    def reads(self) -> set[str]:
        return {s.args[0] for s in self.stmts if s.op == "load"}

    def writes(self) -> set[str]:
        return {s.args[0] for s in self.stmts if s.op == "store"}


@dataclass
class Stage:
    kind: str                 # reduce | loop | row
    body: Body
    value: str | None = None  # reduce: the temp folded in
    reduce: str | None = None  # reduce: one of REDUCE_OPS
    acc: str | None = None    # reduce: the accumulator's name
    acc_dtype: DType | None = None


@dataclass
class Kernel:
    name: str
    kind: str                             # pointwise | reduction | extern
    ranges: tuple[Dim, ...] = ()          # outer loops (x0, x1, ...)
    reduction: tuple[Dim, ...] = ()       # reduction loops (r0, r1, ...)
    body: Body | None = None              # pointwise
    stages: list[Stage] = field(default_factory=list)  # reduction
    extern: str | None = None             # extern: the library kernel's name
    args: tuple[str, ...] = ()            # extern: buffer names, inputs then outputs
    params: dict[str, Any] = field(default_factory=dict)  # extern: its settings
    nodes: tuple[str, ...] = ()           # graph nodes this kernel computes
    serial: bool = False                  # pointwise: run the elements in order, on one thread
    small_for: str | None = None          # generated: the extern whose small-size path it is (`small_path`)

    def reads(self) -> set[str]:
        if self.kind == "extern":
            return set(self.args[:self.params.get("num_inputs", len(self.args) - 1)])
        bodies = [self.body] if self.body else [s.body for s in self.stages]
        return set().union(*(b.reads() for b in bodies))

    def writes(self) -> set[str]:
        if self.kind == "extern":
            return set(self.args[self.params.get("num_inputs", len(self.args) - 1):])
        bodies = [self.body] if self.body else [s.body for s in self.stages]
        return set().union(*(b.writes() for b in bodies))


def loop_vars(n: int, prefix: str = "x") -> tuple[sympy.Symbol, ...]:
    """Loop variables `$x0, $x1, ...` ("$" keeps them apart from a model's size symbols)."""
    return tuple(sympy.Symbol(f"${prefix}{i}", integer=True, nonnegative=True) for i in range(n))


def temp_symbol(temp: str) -> sympy.Symbol:
    """An SSA temp used inside an index expression (an indirect load's index)."""
    return sympy.Symbol(f"${temp}", integer=True)


# -- what a lowering hands on --------------------------------------------------------------

@dataclass
class TensorRef:
    """A lowered value: a realized `buffer`, or a *lazy* pointwise function
    `fn(body, index) -> temp` that a consumer inlines at its own index (pointwise fusion)."""

    dtype: DType
    shape: tuple[Dim, ...]
    buffer: Buffer | None = None
    fn: Callable[[Body, tuple], str] | None = None
    cost: int = 0  # ops fn emits

    @property
    def lazy(self) -> bool:
        return self.buffer is None

    def load(self, body: Body, index) -> str:
        """This tensor's element at `index` (a tuple of index expressions) in `body`."""
        if self.buffer is not None:
            return body.load(self.buffer, tuple(index))
        return self.fn(body, tuple(index))


# -- the Program ----------------------------------------------------------------------------
# What codegen hands the runtime, as data. Buffers (symbolic shape, dtype, kind, alias base,
# bind-time contents), the order of steps (a `segment` of generated kernels in the shared
# library, an `extern` library kernel, or a `fallback` node run by its reference
# implementation), the size symbols in the order the kernels read them, the library's
# source and path, the hand-written kernels' libraries, and the weights.

@dataclass
class Step:
    kind: str                      # segment | extern | fallback
    name: str                      # segment function, extern kernel, or node name
    args: tuple[str, ...] = ()     # buffers: inputs, then outputs
    num_inputs: int = 0
    params: dict[str, Any] = field(default_factory=dict)
    kernels: tuple[str, ...] = ()  # segment: the kernels it runs
    nodes: tuple[str, ...] = ()    # graph nodes computed here
    parts: tuple[frozenset[str], ...] = ()  # buffers each kernel of the step touches, in order


@dataclass
class Program:
    buffers: dict[str, Buffer]
    slots: dict[str, int]
    symbols: list[sympy.Symbol]
    steps: list[Step]
    inputs: list[str]
    outputs: list[str]
    constants: dict[str, np.ndarray]
    source: str = ""
    library: str | None = None
    num_kernels: int = 0
    fused_nodes: int = 0
    fallbacks: list[str] = field(default_factory=list)
    # the hand-written kernels its externs (its control-flow bodies' too) may call: name ->
    # the library codegen built (None: it did not build; the extern takes its other path)
    libraries: dict[str, str | None] = field(default_factory=dict)
    # [first, last] kernel (over the steps' parts, in order) of each temp buffer that is not
    # a view: its life in the run's arena (codegen.memory decides it; not saved in artifacts,
    # which recompute it on load)
    lifetimes: dict[str, tuple[int, int]] = field(default_factory=dict)
    # graph inputs read as indices (a Gather's of a fed token id): input buffer -> (the dim's
    # extent, the reader's description); a run checks them first (the kernels only clamp)
    index_bounds: dict[str, tuple[int, str]] = field(default_factory=dict)

    def root(self, name: str) -> str:
        """The buffer whose storage buffer `name` is: itself, or the base its views lead to."""
        b = self.buffers[name]
        while b.view_of is not None:
            b = self.buffers[b.view_of]
        return b.name
