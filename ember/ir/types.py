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

import sympy

from .dtypes import DType

Dim = Union[int, sympy.Expr]

_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def symbol(name: str) -> sympy.Symbol:
    """The dim symbol called `name` (positive integer, so sympy can simplify)."""
    return sympy.Symbol(name, integer=True, positive=True)


_fresh_counter = itertools.count()


def fresh_symbol(prefix: str = "unk") -> sympy.Symbol:
    """A symbol no other dim uses: the value of a dim nobody could infer."""
    return symbol(f"_{prefix}{next(_fresh_counter)}")


def parse_dim(text: str) -> Dim:
    """A dim from its printed form or an ONNX dim_param: `3`, `batch`, `2*seq + 1`.

    Names that are not valid identifiers (`gpu_0/batch`) become a symbol with the
    offending characters replaced, so every dim_param maps to some symbol."""
    text = text.strip()
    if re.fullmatch(r"-?\d+", text):
        return int(text)
    if _IDENT.match(text):
        return symbol(text)
    names = set(re.findall(r"[A-Za-z_][A-Za-z0-9_]*", text))
    if names and re.fullmatch(r"[A-Za-z0-9_+\-*() ]+", text):
        try:
            expr = sympy.sympify(text, locals={n: symbol(n) for n in names})
            if isinstance(expr, sympy.Expr) and expr.free_symbols:
                return expr
        except (sympy.SympifyError, SyntaxError, TypeError):
            pass
    return symbol(sanitize_name(text))


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
            dims = tuple(int(d) if isinstance(d, (int, sympy.Integer)) else d for d in self.shape)
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
