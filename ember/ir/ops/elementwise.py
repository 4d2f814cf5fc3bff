"""Elementwise ops: the schemas and references are ONNX's; the type functions here
broadcast symbolic shapes and, for the integer arithmetic, comparisons and logic that
exporters use on shape values, compute the results' contents symbolically."""

from __future__ import annotations

import operator

import numpy as np
import sympy

from ..dtypes import DType
from ..graph import Node
from ..registry import Known
from ._symbolic import broadcast, contents, decide, dim, dtype_of, same_shape, shape_of, tensor, track
from .onnx_standard import standard_op


def _floor_div(a, b):
    return dim(a // b) if isinstance(a, int) and isinstance(b, int) else dim(sympy.floor(a / b))


ARITHMETIC = {"Add": operator.add, "Sub": operator.sub, "Mul": operator.mul, "Div": _floor_div,
              "Max": lambda a, b: dim(sympy.Max(a, b)), "Min": lambda a, b: dim(sympy.Min(a, b)),
              "Mod": lambda a, b: dim(sympy.Mod(a, b)), "Pow": None, "PRelu": None, "BitShift": None,
              "BitwiseAnd": None, "BitwiseOr": None, "BitwiseXor": None}
COMPARISON = {"Equal": sympy.Eq, "Less": sympy.Lt, "Greater": sympy.Gt,
              "LessOrEqual": sympy.Le, "GreaterOrEqual": sympy.Ge}
LOGIC = {"And": operator.and_, "Or": operator.or_, "Xor": operator.xor}
UNARY = ["Abs", "Acos", "Acosh", "Asin", "Asinh", "Atan", "Atanh", "Ceil", "Celu", "Clip", "Cos", "Cosh",
         "Elu", "Erf", "Exp", "Floor", "Gelu", "HardSigmoid", "HardSwish", "Hardmax", "LeakyRelu", "Log",
         "LogSoftmax", "LpNormalization", "MeanVarianceNormalization", "Mish", "Neg", "Reciprocal", "Relu",
         "Round", "Selu", "Shrink", "Sigmoid", "Sign", "Sin", "Sinh", "Softmax", "Softplus", "Softsign",
         "Sqrt", "Swish", "Tan", "Tanh", "ThresholdedRelu", "Identity", "BitwiseNot", "Not",
         "LayerNormalization", "RMSNormalization", "Trilu"]
PRESERVES_CONTENTS = {"Identity": lambda x: x, "Neg": lambda x: -x, "Abs": lambda x: dim(sympy.Abs(x))}


def _values(fn, ins: list[Known | None], shape):
    """fn over the broadcast contents of the inputs, or None if any is unknown."""
    parts = [contents(k) for k in ins]
    if any(p is None for p in parts):
        return None
    arrays = [np.array(p, dtype=object).reshape(shape_of(k)) for p, k in zip(parts, ins)]
    arrays = np.broadcast_arrays(*arrays)
    flat = [fn(*xs) for xs in zip(*(a.reshape(-1).tolist() for a in arrays))]
    if any(x is None for x in flat):
        return None
    return flat


def _binary(op: str):
    def infer(node: Node, ins: list[Known | None]) -> list[Known | None]:
        if len(ins) != 2:  # Max/Min take any number of inputs
            return _variadic(node, ins)
        shape = broadcast(shape_of(ins[0]), shape_of(ins[1]))
        if op in COMPARISON or op in LOGIC:
            dtype = DType.bool
        else:
            dtype = dtype_of(ins[0])
        if dtype is None:
            return [None]
        value = None
        if track(dtype, shape):
            if op in COMPARISON:
                value = _values(lambda a, b: decide(COMPARISON[op](a, b)), ins, shape)
            elif op in LOGIC:
                value = _values(lambda a, b: LOGIC[op](bool(a), bool(b)), ins, shape)
            elif ARITHMETIC.get(op) is not None:
                value = _values(lambda a, b: dim(ARITHMETIC[op](a, b)), ins, shape)
        return [tensor(dtype, shape, value)]

    return infer


def _unary(op: str):
    base = same_shape()

    def infer(node: Node, ins: list[Known | None]) -> list[Known | None]:
        out = base(node, ins)
        fn = PRESERVES_CONTENTS.get(op)
        if op == "Not" and out[0] is not None and contents(ins[0]) is not None:
            return [tensor(DType.bool, shape_of(ins[0]), [not decide(x) for x in contents(ins[0])])]
        if fn is not None and out[0] is not None and contents(ins[0]) is not None:
            return [tensor(out[0].type.dtype, shape_of(ins[0]), [fn(x) for x in contents(ins[0])])]
        return out

    return infer


def _cast(node: Node, ins: list[Known | None]) -> list[Known | None]:
    dtype = DType.from_onnx(node.attrs["to"])
    shape = shape_of(ins[0])
    value = contents(ins[0]) if track(dtype, shape) and dtype is not DType.bool else None
    return [tensor(dtype, shape, value)]


def _bool_like(node: Node, ins: list[Known | None]) -> list[Known | None]:
    return [tensor(DType.bool, shape_of(ins[0]))]


def _where(node: Node, ins: list[Known | None]) -> list[Known | None]:
    shape = broadcast(*(shape_of(k) for k in ins))
    dtype = dtype_of(ins[1]) or dtype_of(ins[2])
    if dtype is None:
        return [None]
    value = _values(lambda c, a, b: None if decide(c) is None else (a if decide(c) else b), ins, shape) \
        if track(dtype, shape) else None
    return [tensor(dtype, shape, value)]


def _variadic(node: Node, ins: list[Known | None]) -> list[Known | None]:
    """Sum/Mean/Max/Min over any number of inputs."""
    dtype = dtype_of(ins[0])
    return [tensor(dtype, broadcast(*(shape_of(k) for k in ins)))] if dtype else [None]


for _op in ARITHMETIC:
    standard_op(_op, infer=_binary(_op))
for _op in [*COMPARISON, *LOGIC]:
    standard_op(_op, infer=_binary(_op))
for _op in UNARY:
    standard_op(_op, infer=_unary(_op))
for _op in ("Sum", "Mean"):
    standard_op(_op, infer=_variadic)
standard_op("Cast", infer=_cast)
standard_op("IsNaN", infer=_bool_like)
standard_op("IsInf", infer=_bool_like)
standard_op("Where", infer=_where)
standard_op("Dropout", infer=same_shape())
