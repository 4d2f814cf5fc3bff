"""Elementwise ops: the schemas and references are ONNX's; the type functions here
broadcast symbolic shapes and, for the integer arithmetic, comparisons and logic that
exporters use on shape values, compute the results' contents symbolically."""

from __future__ import annotations

import operator

import numpy as np
import sympy

from .. import casting
from ..dtypes import DType
from ..graph import Node
from ..registry import Known
from ._lowering import (
    FLOATS,
    KERNEL_FLOATS,
    SQRT1_2,
    NotLowerable,
    V,
    attrs,
    out_type,
    pointwise,
    register_lowering,
)
from ._symbolic import (
    broadcast,
    contents,
    decide,
    dim,
    dtype_of,
    normalize_axis,
    same_shape,
    shape_of,
    tensor,
    track,
)
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
    if value is not None and dtype == DType.int32:  # a known int wraps as Cast wraps it (INT64_MAX is -1)
        value = [(x + 2**31) % 2**32 - 2**31 if isinstance(x, int) else x for x in value]
    return [tensor(dtype, shape, value)]


def _cast_like(node: Node, ins: list[Known | None]) -> list[Known | None]:
    dtype = dtype_of(ins[1])
    return [tensor(dtype, shape_of(ins[0]))] if dtype else [None]


def _cast_reference(node: Node):
    """Cast and CastLike by ember's rules (ember/ir/casting.py), not ml_dtypes' astype,
    which changes between its releases."""
    a = attrs(node)
    saturate, round_mode = bool(a["saturate"]), a["round_mode"]
    to = DType.from_onnx(a["to"]) if node.op == "Cast" else None

    def run(x, like=None):
        dtype = to if like is None else DType.from_numpy(like.dtype)
        return (casting.cast(x, dtype, saturate, round_mode),)

    return run


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
standard_op("Cast", infer=_cast, reference=_cast_reference)
standard_op("CastLike", infer=_cast_like, reference=_cast_reference)
standard_op("IsNaN", infer=_bool_like)
standard_op("IsInf", infer=_bool_like)
standard_op("Where", infer=_where)
standard_op("Dropout", infer=same_shape())
standard_op("BitCast")
standard_op("EyeLike")


# -- Kernel IR lowerings ----------------------------------------------------------------
def _gelu(x: V, approximate: str) -> V:
    if approximate == "tanh":
        return 0.5 * x * (1 + (0.7978845608028654 * (x + 0.044715 * x * x * x)).tanh())
    return 0.5 * x * (1 + (x * SQRT1_2).erf())


HALF = "16-bit floats too"  # an op whose lowering rounds 16-bit floats as the reference does


def _wide(x: V) -> V:
    """x as numpy promotes it against a float32 attribute (onnx.reference keeps float
    attributes as np.float32): 16-bit floats widen to float32."""
    return x.cast(DType.float32) if x.dtype in KERNEL_FLOATS - FLOATS else x


# op -> (scalar formula, which dtypes: False any, True float32/64, HALF any float)
_UNARY_LOWERINGS = {
    "Neg": (lambda x, a: -x, False), "Abs": (lambda x, a: x.abs(), False),
    "Identity": (lambda x, a: x, False), "Sign": (lambda x, a: x.sign(), False),
    "Not": (lambda x, a: x.op("not"), False), "IsNaN": (lambda x, a: x.isnan(dtype=DType.bool), HALF),
    "BitwiseNot": (lambda x, a: x.bitnot(), False),
    "Relu": (lambda x, a: x.max(0), False),
    "Exp": (lambda x, a: x.exp(), HALF), "Log": (lambda x, a: x.log(), True), "Sqrt": (lambda x, a: x.sqrt(), True),
    "Reciprocal": (lambda x, a: x.reciprocal(), True), "Tanh": (lambda x, a: x.tanh(), True),
    "Erf": (lambda x, a: x.erf(), True), "Sigmoid": (lambda x, a: x.sigmoid(), True),
    "Sin": (lambda x, a: x.sin(), True), "Cos": (lambda x, a: x.cos(), True), "Tan": (lambda x, a: x.tan(), True),
    "Asin": (lambda x, a: x.asin(), True), "Acos": (lambda x, a: x.acos(), True),
    "Atan": (lambda x, a: x.atan(), True), "Sinh": (lambda x, a: x.sinh(), True),
    "Cosh": (lambda x, a: x.cosh(), True), "Asinh": (lambda x, a: x.asinh(), True),
    "Acosh": (lambda x, a: x.acosh(), True), "Atanh": (lambda x, a: x.atanh(), True),
    "Floor": (lambda x, a: x.floor(), True), "Ceil": (lambda x, a: x.ceil(), True),
    "Round": (lambda x, a: x.round(), True), "Softplus": (lambda x, a: x.softplus(), True),
    "Softsign": (lambda x, a: x / (1 + x.abs()), True),
    "Gelu": (lambda x, a: _gelu(x, a["approximate"]), True),
    "Swish": (lambda x, a: x * (a["alpha"] * _wide(x)).sigmoid().cast(x.dtype), HALF),
    "Mish": (lambda x, a: x * x.softplus().tanh(), True),
    "LeakyRelu": (lambda x, a: (x < 0).where(a["alpha"] * x, x), True),
    "Elu": (lambda x, a: (x > 0).where(_wide(x), a["alpha"] * _wide(x.expm1())), HALF),
    "Celu": (lambda x, a: _wide(x.max(0)) + (a["alpha"] * (_wide(x) / a["alpha"]).expm1()).min(0), HALF),
    "Selu": (lambda x, a: (x <= 0).where(a["gamma"] * (a["alpha"] * x.exp() - a["alpha"]), a["gamma"] * x), True),
    "HardSigmoid": (lambda x, a: (a["alpha"] * x + a["beta"]).max(0).min(1), True),
    # alpha * x as the spec (and onnxruntime) has it: a division costs 4-10x a multiply
    "HardSwish": (lambda x, a: x * ((1.0 / 6) * x + 0.5).max(0).min(1), True),
    "ThresholdedRelu": (lambda x, a: (x > a["alpha"]).where(x, 0.0), True),
    "Shrink": (lambda x, a: (x < -a["lambd"]).where(x + a["bias"], (x > a["lambd"]).where(x - a["bias"], 0.0)), True),
}

_BINARY_LOWERINGS = {
    "Add": lambda a, b: a + b, "Sub": lambda a, b: a - b, "Mul": lambda a, b: a * b,
    "Div": lambda a, b: a / b, "Equal": lambda a, b: a.eq(b, dtype=DType.bool),
    "Less": lambda a, b: a < b, "Greater": lambda a, b: a > b, "LessOrEqual": lambda a, b: a <= b,
    "GreaterOrEqual": lambda a, b: a >= b, "And": lambda a, b: a.op("and", b, dtype=DType.bool),
    "Or": lambda a, b: a.op("or", b, dtype=DType.bool), "Xor": lambda a, b: a.op("xor", b, dtype=DType.bool),
    "BitwiseAnd": lambda a, b: a.bitand(b), "BitwiseOr": lambda a, b: a.bitor(b),
    "BitwiseXor": lambda a, b: a.bitxor(b),
    "PRelu": lambda x, s: (x < 0).where(x * s, x),
}


def _lower_unary(op: str):
    fn, floats_only = _UNARY_LOWERINGS[op]

    def lower(ctx, node, ins):
        # 16-bit floats round each step's result, as numpy's loops do, but only the
        # formulas marked HALF widen to float32 where the reference does
        if floats_only and ins[0].dtype not in (KERNEL_FLOATS if floats_only == HALF else FLOATS):
            raise NotLowerable(f"{op} on {ins[0].dtype.name}")
        a = attrs(node)
        return [pointwise(ctx, node, ins, lambda x: fn(x, a))]
    return lower


def _lower_binary(op: str):
    fn = _BINARY_LOWERINGS[op]

    def lower(ctx, node, ins):
        if ins[0].dtype != ins[1].dtype:
            raise NotLowerable("mixed dtypes")
        return [pointwise(ctx, node, ins, fn)]
    return lower


def _lower_pow(ctx, node, ins):
    x, y = ins
    if x.dtype in FLOATS:
        return [pointwise(ctx, node, ins, lambda x, y: x.op("pow", y.cast(x.dtype)))]
    if x.dtype in KERNEL_FLOATS:
        raise NotLowerable(f"Pow on {x.dtype.name}")
    if y.dtype in FLOATS:  # numpy: int ** float computes in float64, then casts back
        return [pointwise(ctx, node, ins, lambda x, y: x.cast(DType.float64).op("pow", y.cast(DType.float64)))]
    if y.dtype in KERNEL_FLOATS or {x.dtype, y.dtype} & {DType.bool, DType.uint16, DType.uint32, DType.uint64}:
        raise NotLowerable(f"Pow of {x.dtype.name} by {y.dtype.name} (torch has no such pow)")
    # integers: exact, wrapping like numpy's (torch squares and multiplies in the wider type)
    return ctx.extern("integer_pow", [x, y], [out_type(node)], where=node.describe())


def _lower_mod(ctx, node, ins):
    fmod = attrs(node)["fmod"]
    return [pointwise(ctx, node, ins, lambda a, b: a.fmod(b) if fmod else a.mod(b))]


def _lower_bitshift(ctx, node, ins):
    left = attrs(node)["direction"] == "LEFT"
    return [pointwise(ctx, node, ins, lambda a, b: a.shl(b) if left else a.shr(b))]


def _lower_variadic(op: str):
    def lower(ctx, node, ins):
        if len({r.dtype for r in ins}) != 1:
            raise NotLowerable("mixed dtypes")

        def fold(*xs):
            acc = xs[0]
            for x in xs[1:]:
                acc = {"Max": lambda a, b: a.max(b), "Min": lambda a, b: a.min(b)}.get(op, lambda a, b: a + b)(acc, x)
            return acc / len(xs) if op == "Mean" else acc
        if op == "Mean" and ins[0].dtype not in FLOATS:
            raise NotLowerable("integer Mean")
        return [pointwise(ctx, node, ins, fold)]
    return lower


def _lower_clip(ctx, node, ins):
    def clip(x, lo=None, hi=None):
        if lo is not None:
            x = (x < lo).where(lo, x)
        if hi is not None:
            x = (x > hi).where(hi, x)
        return x
    ins = list(ins) + [None] * (3 - len(ins))
    return [pointwise(ctx, node, ins, clip)]


_SMALL_FLOATS = {*casting.SATURATING, DType.float8e8m0, DType.float4e2m1}
_E8M0_ROUND_MODES = {"up": 0, "down": 1, "nearest": 2}  # the mode numbers of the cast_e8m0 scalar op


def _lower_cast(ctx, node, ins):
    """Cast, and CastLike (to its second input's dtype), by ember/ir/casting.py's rules: to a
    float8 with `saturate`, clipped to its finite range (in the input's type) and then
    converted; to float8e8m0, the exponent rounded by `round_mode` (the cast_e8m0 scalar
    op); else a plain conversion, which the renderer rounds or wraps by the same rules
    (ember/codegen/cpu_dtypes.py)."""
    dtype, _ = out_type(node)
    src = ins[0].dtype
    a = attrs(node)
    saturate = bool(a["saturate"])
    if src in _SMALL_FLOATS and dtype.is_integer and dtype not in casting.SMALL_INT_BITS:
        # the reference converts their float32 value by numpy's astype, whose results for
        # inf and NaN (which these formats hold) differ from the kernels' C++ conversion
        raise NotLowerable(f"{src.name} to {dtype.name}: inf and NaN convert as numpy's astype does")
    if dtype == DType.float8e8m0:
        mode = _E8M0_ROUND_MODES.get(a["round_mode"])
        if mode is None:
            raise NotLowerable(f"round_mode {a['round_mode']!r}")

        def convert(x):
            b = x.body
            return x.cast(DType.float32).op("cast_e8m0", V(b, b.const(mode, DType.int32), DType.int32),
                                             V(b, b.const(saturate, DType.bool), DType.bool), dtype=dtype)
    elif dtype in casting.SATURATING and saturate:
        if src not in KERNEL_FLOATS and not src.is_integer and src != DType.bool:
            raise NotLowerable(f"saturating {src.name} to {dtype.name}")
        high = casting.finite_max(dtype)

        def convert(x):
            x = x if src in KERNEL_FLOATS else x.cast(DType.float32)  # integers: clipped as float32
            return x.max(-high).min(high).cast(dtype)
    else:
        def convert(x):
            return x.cast(dtype)
    return [pointwise(ctx, node, ins[:1], convert)]


def _lower_isinf(ctx, node, ins):
    a = attrs(node)
    if ins[0].dtype not in KERNEL_FLOATS:
        raise NotLowerable("IsInf on integers")
    name = {(1, 1): "isinf", (1, 0): "isneginf", (0, 1): "isposinf"}.get((a["detect_negative"], a["detect_positive"]))
    if name is None:
        return [pointwise(ctx, node, ins, lambda x: V(x.body, x.body.const(False, DType.bool), DType.bool))]
    return [pointwise(ctx, node, ins, lambda x: x.op(name, dtype=DType.bool))]


for _op in _UNARY_LOWERINGS:
    register_lowering(_op)(_lower_unary(_op))
for _op in _BINARY_LOWERINGS:
    register_lowering(_op)(_lower_binary(_op))
for _op in ("Max", "Min", "Sum", "Mean"):
    register_lowering(_op)(_lower_variadic(_op))
register_lowering("Pow")(_lower_pow)
register_lowering("Mod")(_lower_mod)
register_lowering("BitShift")(_lower_bitshift)
register_lowering("Clip")(_lower_clip)
register_lowering("Cast", "CastLike")(_lower_cast)
register_lowering("IsInf")(_lower_isinf)
register_lowering("Where")(lambda ctx, node, ins: [pointwise(ctx, node, ins, lambda c, a, b: c.where(a, b))])
def _lower_dropout(ctx, node, ins):
    """Inference: y = x, and the mask (if asked for) all true."""
    training = node.inputs[2] if len(node.inputs) > 2 else None
    if training is not None and (training.const is None or training.const.any()):
        raise NotLowerable("training-mode dropout draws random numbers")
    outs = [pointwise(ctx, node, ins[:1], lambda x: x)]
    if len(node.outputs) > 1 and node.outputs[1] is not None:
        dtype, shape = out_type(node, 1)
        outs.append(ctx.pointwise(shape, dtype, lambda b, i: b.const(True, dtype), cost=0))
    return outs


register_lowering("Dropout")(_lower_dropout)


@register_lowering("Hardmax")
def _lower_hardmax(ctx, node, ins):
    (x,) = ins
    if x.dtype not in FLOATS:
        raise NotLowerable("not float")
    return ctx.extern("hardmax", [x], [out_type(node)], axis=normalize_axis(attrs(node)["axis"], len(x.shape)))


_TORCH_VIEWS = {DType.float16, DType.bfloat16, DType.float32, DType.float64, DType.int8, DType.int16, DType.int32,
                DType.int64, DType.uint8, DType.uint16, DType.uint32, DType.uint64, DType.bool}


@register_lowering("BitCast")
def _lower_bitcast(ctx, node, ins):
    """The same bytes read as another dtype of the same width (torch's view)."""
    dtype, shape = out_type(node)
    if ins[0].dtype.numpy.itemsize != dtype.numpy.itemsize or not {ins[0].dtype, dtype} <= _TORCH_VIEWS:
        raise NotLowerable("different widths, or a dtype torch has no view of")
    return ctx.extern("bitcast", [ins[0]], [(dtype, shape)])


@register_lowering("EyeLike")
def _lower_eye_like(ctx, node, ins):
    """1 on the k-th diagonal, 0 elsewhere."""
    dtype, shape = out_type(node)
    if len(shape) != 2:
        raise NotLowerable("not 2-d")
    k = attrs(node)["k"]

    def eye(b, index):
        on = V(b, b.index(index[1] - index[0]), DType.int64).eq(k, dtype=DType.bool)
        return on.where(V(b, b.const(1, dtype), dtype), 0).name

    return [ctx.pointwise(shape, dtype, eye)]
