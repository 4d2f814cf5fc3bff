"""Value types: tensors with symbolic shapes, sequences and optionals.

A shape is a tuple of dims; a dim is an `int` or a `sympy.Expr` over positive integer
symbols (`batch`, `seq`, `2*seq`). A dim that is not known is a fresh symbol, never
`None`; only a tensor whose *rank* is unknown has `shape=None`.
"""

from __future__ import annotations

import itertools
import keyword
import re
from dataclasses import dataclass
from typing import Union

from .._deferred import sympy  # imported on first use: `ember.load` + a run needs none (sizes.py)
from .dtypes import DType

Dim = Union[int, "sympy.Expr"]  # (a loaded program's dims are ints and `sizes.Size`s)

_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def symbol(name: str) -> sympy.Symbol:
    """The dim symbol called `name` (positive integer, so sympy can simplify)."""
    return sympy.Symbol(name, integer=True, positive=True)


_fresh_counter = itertools.count()


def fresh_symbol(prefix: str = "unk") -> sympy.Symbol:
    """A symbol no other dim uses: the value of a dim nobody could infer."""
    return symbol(f"_{prefix}{next(_fresh_counter)}")


def parse_dim(text: str, *, printed: bool = False) -> Dim:
    """A dim from an ONNX dim_param or (`printed`) from the printed IR: `3`, `batch`,
    `2*seq + 1`; printed dims may be any `parse_dim_expr` expression (`floor(seq/2)`).

    Names that are not valid identifiers (`gpu_0/batch`) become a symbol with the
    offending characters replaced, so every dim_param maps to some symbol."""
    text = text.strip()
    if re.fullmatch(r"-?\d+", text):
        return int(text)
    if _IDENT.match(text):
        return symbol(text)
    if re.search(r"[A-Za-z_]", text) and (printed or re.fullmatch(r"[A-Za-z0-9_+\-*() ]+", text)
                                          or _EXPORTED_EXPR.fullmatch(text) and _LOOKS_COMPUTED.search(text)):
        try:
            expr = parse_dim_expr(text)
            # an exported name read as an expression must be a whole number whatever its
            # symbols are (`Max(0, N - 240)/160` is not: it stays a name)
            if expr.free_symbols and (printed or not _EXPORTED_EXPR.fullmatch(text) or expr.is_integer):
                return expr
        except ValueError:
            pass
    return symbol(sanitize_name(text))


# exporters (torch's dynamo exporter, onnx-asr's) name a computed dim by its expression,
# `floor(DynamicDimension_1/2 - 1/2) + 1`, `Max(0, N - Mod(N + 80, 160) - 240)/160`: read
# as that expression where it calls a dim function or divides by a number (`gpu_0/batch`
# stays a name)
_EXPORTED_EXPR = re.compile(r"[A-Za-z0-9_+\-*/(), ]+")
_LOOKS_COMPUTED = re.compile(r"\b(?:floor|ceiling|Mod|Max|Min|Abs)\(|/\s*\d")

_TOKEN = re.compile(r"\s*(?:(\d+)|([A-Za-z_][A-Za-z0-9_]*)|(\*\*|[-+*/(),]))")
_DIM_FUNCTIONS = ("floor", "ceiling", "Mod", "Max", "Min", "Abs")  # sympy's, by name
MAX_DIM_EXPONENT = 64  # `**` beyond this is refused: `9**9**9` would take sympy forever
_MAX_DIM_DEPTH = 64


def parse_dim_expr(text: str) -> sympy.Expr:
    """The dim expression `text` in sympy's printed form (`2*seq + 1`, `seq/2`,
    `floor(seq/2)`, `Max(1, n)`), read without `eval`: integers, names (dim symbols),
    + - * / ** (integer exponents up to MAX_DIM_EXPONENT), parentheses and the functions
    floor, ceiling, Mod, Max, Min, Abs. ValueError if it is not one."""
    tokens, pos = [], 0
    text = text.rstrip()
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if not m:
            raise ValueError(f"unexpected {text[pos:].strip()[:10]!r} in dim {text!r}")
        tokens.append(m.group(1) and ("int", m.group(1)) or m.group(2) and ("name", m.group(2)) or ("op", m.group(3)))
        pos = m.end()
    parser = _DimExpr(tokens, text)
    expr = parser.sum(0)
    if parser.pos != len(tokens):
        raise ValueError(f"unexpected {tokens[parser.pos][1]!r} in dim {text!r}")
    return sympy.sympify(expr)


class _DimExpr:
    """Recursive descent over the tokens of a dim expression, with Python's precedence."""

    def __init__(self, tokens: list[tuple[str, str]], text: str):
        self.tokens, self.text, self.pos = tokens, text, 0

    def peek(self, *ops: str) -> bool:
        return self.pos < len(self.tokens) and self.tokens[self.pos] in [("op", o) for o in ops]

    def take(self) -> tuple[str, str]:
        if self.pos == len(self.tokens):
            raise ValueError(f"dim {self.text!r} ends too early")
        self.pos += 1
        return self.tokens[self.pos - 1]

    def expect(self, op: str) -> None:
        if self.take() != ("op", op):
            raise ValueError(f"expected {op!r} in dim {self.text!r}")

    def sum(self, depth: int):
        if depth > _MAX_DIM_DEPTH:
            raise ValueError(f"dim {self.text!r} nests too deeply")
        value = self.product(depth)
        while self.peek("+", "-"):
            op = self.take()[1]
            right = self.product(depth)
            value = value + right if op == "+" else value - right
        return value

    def product(self, depth: int):
        value = self.unary(depth)
        while self.peek("*", "/"):
            op = self.take()[1]
            right = self.unary(depth)
            if op == "/" and right == 0:
                raise ValueError(f"division by zero in dim {self.text!r}")
            value = value * right if op == "*" else value / right
        return value

    def unary(self, depth: int):
        if self.peek("-", "+"):
            sign = self.take()[1]
            value = self.unary(depth + 1)
            return -value if sign == "-" else value
        base = self.atom(depth)
        if self.peek("**"):
            self.take()
            exponent = self.unary(depth + 1)
            if not (exponent.is_Integer and abs(int(exponent)) <= MAX_DIM_EXPONENT):
                raise ValueError(f"exponent {exponent} in dim {self.text!r}: only integers up to {MAX_DIM_EXPONENT}")
            if base == 0 and exponent < 0:
                raise ValueError(f"division by zero in dim {self.text!r}")
            base = base**exponent
        return base

    def atom(self, depth: int):
        kind, token = self.take()
        if kind == "int":
            if len(token) > 40:
                raise ValueError(f"integer too long in dim {self.text!r}")
            return sympy.Integer(int(token))
        if kind == "name" and self.peek("("):
            if token not in _DIM_FUNCTIONS:
                raise ValueError(f"unknown function {token!r} in dim {self.text!r}")
            self.take()
            args = [self.sum(depth + 1)]
            while self.peek(","):
                self.take()
                args.append(self.sum(depth + 1))
            self.expect(")")
            return getattr(sympy, token)(*args)
        if kind == "name":
            return symbol(token)
        if token == "(":
            value = self.sum(depth + 1)
            self.expect(")")
            return value
        raise ValueError(f"unexpected {token!r} in dim {self.text!r}")


def sanitize_name(text: str) -> str:
    name = re.sub(r"[^A-Za-z0-9_]", "_", text) or "_"
    if name[0].isdigit() or keyword.iskeyword(name):
        name = "_" + name
    return name


def format_dim(dim: Dim) -> str:
    return str(dim)


def is_static(shape) -> bool:
    return shape is not None and all(isinstance(d, int) for d in shape)


@dataclass(frozen=True)
class TensorType:
    dtype: DType
    shape: tuple[Dim, ...] | None  # None: rank unknown

    def __post_init__(self):
        if self.shape is not None:
            dims = tuple(int(d) if isinstance(d, int) or getattr(d, "is_Integer", False) else d for d in self.shape)
            object.__setattr__(self, "shape", dims)

    @property
    def rank(self) -> int | None:
        return None if self.shape is None else len(self.shape)

    def __str__(self) -> str:
        if self.shape is None:
            return f"{self.dtype.short}[*]"
        return f"{self.dtype.short}[{', '.join(format_dim(d) for d in self.shape)}]"


@dataclass(frozen=True)
class SequenceType:
    elem: Type | None  # None: element type unknown

    def __str__(self) -> str:
        return f"seq<{self.elem if self.elem is not None else '?'}>"


@dataclass(frozen=True)
class OptionalType:
    elem: Type | None

    def __str__(self) -> str:
        return f"opt<{self.elem if self.elem is not None else '?'}>"


Type = Union[TensorType, SequenceType, OptionalType]
