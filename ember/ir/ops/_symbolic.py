"""Helpers for symbolic type functions: broadcasting sympy dims, and computing with the
contents of small shape tensors (object arrays of ints and sympy expressions)."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import sympy

from ..dtypes import DType
from ..graph import Node
from ..registry import InferFn, Known
from ..types import Dim, TensorType

MAX_VALUE_ELEMENTS = 64  # contents are tracked for shape-sized tensors only
INT_DTYPES = {DType.int64, DType.int32}
BIG = 2 ** 31  # slice bounds at or past this mean "to the end"


def dim(x) -> Dim:
    """A dim in canonical form: python int when it is a number, else a sympy expression."""
    if isinstance(x, (int, np.integer)):
        return int(x)
    x = sympy.sympify(x)
    return int(x) if x.is_Integer else x


def tensor(dtype: DType, shape, value=None) -> Known:
    shape = None if shape is None else tuple(dim(d) for d in shape)
    if value is not None:
        value = np.asarray(value, dtype=object).reshape(shape if shape is not None else -1)
        value = np.vectorize(dim, otypes=[object])(value) if value.size else value
    return Known(TensorType(dtype, shape), value)


def shape_of(k: Known | None):
    t = k.type if k is not None else None
    return t.shape if isinstance(t, TensorType) else None


def dtype_of(k: Known | None) -> DType | None:
    t = k.type if k is not None else None
    return t.dtype if isinstance(t, TensorType) else None


def contents(k: Known | None) -> list | None:
    """The flattened contents of a tracked shape tensor, or None."""
    if k is None or k.value is None:
        return None
    return [dim(x) for x in k.value.reshape(-1).tolist()]


def track(dtype: DType | None, shape) -> bool:
    """Whether a tensor of this type is small enough and integer, so worth tracking."""
    if dtype not in INT_DTYPES | {DType.bool} or shape is None:
        return False
    return all(isinstance(d, int) for d in shape) and math.prod(shape) <= MAX_VALUE_ELEMENTS


def decide(relation) -> bool | None:
    """True/False if sympy can decide the relation, else None."""
    relation = sympy.sympify(relation)
    if relation in (sympy.true, True):
        return True
    if relation in (sympy.false, False):
        return False
    return None


def broadcast(*shapes) -> tuple | None:
    if any(s is None for s in shapes):
        return None
    rank = max(len(s) for s in shapes)
    out = []
    for i in range(rank):
        dims = [s[len(s) - rank + i] for s in shapes if len(s) - rank + i >= 0]
        others = [d for d in dims if d != 1]
        if not others:
            out.append(1)
        elif all(decide(sympy.Eq(d, others[0])) for d in others):
            out.append(others[0])
        else:
            ints = [d for d in others if isinstance(d, int)]
            # sizes that must each be 1 or equal when it runs: the largest of them (an FPN's
            # floor(h/32)+1 beside 2*(floor(h/64)+1), equal for the sizes it is fed); kernels
            # clamp an index into such an input, so a 1 there broadcasts
            out.append(ints[0] if ints else dim(sympy.Max(*others)))
    return tuple(out)


def normalize_axis(axis: int, rank: int) -> int:
    return axis + rank if axis < 0 else axis


def product(dims) -> Dim:
    return dim(sympy.Mul(*dims)) if dims else 1


def same_shape(dtype_from: Callable[[Node, list[Known | None]], DType | None] | None = None) -> InferFn:
    """Output 0 has input 0's shape; its dtype is input 0's unless `dtype_from` says."""
    def infer(node: Node, ins: list[Known | None]) -> list[Known | None]:
        dtype = dtype_from(node, ins) if dtype_from else dtype_of(ins[0])
        if dtype is None:
            return [None] * len(node.outputs)
        return [tensor(dtype, shape_of(ins[0]))] + [None] * (len(node.outputs) - 1)

    return infer
