"""Linear (de)quantization: QuantizeLinear, DequantizeLinear. Schemas, type functions and
references are ONNX's. Their lowerings are pointwise, with the scale and zero point
indexed per tensor, per axis or per block; they take the integer types whose arithmetic
the reference does in float32 exactly (2- to 16-bit), the float8 kinds and float4e2m1, and
float32 (or, to dequantize, 16-bit float) scales."""

from __future__ import annotations

import numpy as np
import sympy

from ..dtypes import DType
from ._lowering import NotLowerable, V, attrs, out_type, register_lowering
from ._symbolic import normalize_axis
from ..registry import get_op
from ._geometry import spatial_infer
from .onnx_standard import standard_op

for _op in ("QuantizeLinear", "DequantizeLinear"):
    standard_op(_op)

_INTEGERS = {DType.int8: (-128, 127), DType.uint8: (0, 255), DType.int16: (-32768, 32767), DType.uint16: (0, 65535),
             DType.int4: (-8, 7), DType.uint4: (0, 15), DType.int2: (-2, 1), DType.uint2: (0, 3)}
# float8 kinds: the reference ignores their zero point (it must be 0), and saturates or not
_FLOAT8 = {DType.float8e4m3fn, DType.float8e4m3fnuz, DType.float8e5m2, DType.float8e5m2fnuz}


def _per_element(ctx, node, x_shape, param):
    """A load of the scale or zero point `param` at an element of x (the reference's
    reshape_input: one value, one per index of `axis`, or one per block along it)."""
    a = attrs(node)
    rank = len(x_shape)
    axis = normalize_axis(a["axis"], rank) if rank else 0
    block = a.get("block_size", 0) or 0
    if all(d == 1 for d in param.shape):
        return lambda b, index: param.load(b, (0,) * len(param.shape))
    if not block:
        if len(param.shape) != 1:
            raise NotLowerable("a scale of rank > 1 without blocks")
        return lambda b, index: param.load(b, (index[axis],))
    if len(param.shape) != rank:
        raise NotLowerable("blocked scales of another rank")
    return lambda b, index: param.load(b, tuple(sympy.floor(i / block) if d == axis else i
                                                for d, i in enumerate(index)))


@register_lowering("DequantizeLinear")
def _lower_dequantize(ctx, node, ins):
    x, scale = ins[0], ins[1]
    zero = ins[2] if len(ins) > 2 else None
    dtype, shape = out_type(node)
    small_float = x.dtype in _FLOAT8 or x.dtype == DType.float4e2m1
    if (x.dtype not in _INTEGERS and not small_float) or scale.dtype not in (DType.float32, DType.float16,
                                                                             DType.bfloat16):
        raise NotLowerable(f"dequantizing {x.dtype.name} with {scale.dtype.name} scales")
    if dtype not in (DType.float32, DType.float16, DType.bfloat16) or (zero is not None and zero.dtype != x.dtype):
        raise NotLowerable("an output or zero point type the kernel does not take")
    if small_float:
        # the reference subtracts no float zero point; a float8 one must be 0 (it raises
        # otherwise): checked here when it is a constant, taken as 0 when it is fed
        known = node.inputs[2].const if zero is not None else None
        if x.dtype in _FLOAT8 and known is not None and np.any(np.asarray(known).astype(np.float32) != 0):
            raise NotLowerable("a float8 zero point that is not 0")
        zero = None
    scale_at = _per_element(ctx, node, x.shape, scale)
    zero_at = None if zero is None else _per_element(ctx, node, x.shape, zero)

    def value(b, index):
        # (float32(x) - zero) * scale, in float32, rounded once to the output type
        v = V(b, x.load(b, index), x.dtype).cast(DType.float32)
        if zero_at is not None:
            v = v - V(b, zero_at(b, index), zero.dtype).cast(DType.float32)
        return (v * V(b, scale_at(b, index), scale.dtype).cast(DType.float32)).cast(dtype).name
    return [ctx.pointwise(shape, dtype, value, cost=3 + x.cost)]


@register_lowering("QuantizeLinear")
def _lower_quantize(ctx, node, ins):
    x, scale = ins[0], ins[1]
    zero = ins[2] if len(ins) > 2 else None
    dtype, shape = out_type(node)
    a = attrs(node)
    if x.dtype != DType.float32 or scale.dtype != DType.float32 or a.get("precision"):
        raise NotLowerable(f"quantizing {x.dtype.name} with {scale.dtype.name} scales")
    if zero is not None and zero.dtype != dtype:
        raise NotLowerable("a zero point of another type")
    scale_at = _per_element(ctx, node, x.shape, scale)
    zero_at = None if zero is None else _per_element(ctx, node, x.shape, zero)
    if dtype in _FLOAT8:
        import ml_dtypes  # (on first use: ember.ir.dtypes says why)

        high = float(ml_dtypes.finfo(dtype.numpy).max) if a["saturate"] else None

        def value(b, index):
            # x / scale, clipped to the finite range with saturate, rounded once (no zero point)
            q = V(b, x.load(b, index), x.dtype) / V(b, scale_at(b, index), scale.dtype)
            return (q if high is None else q.max(-high).min(high)).cast(dtype).name
        return [ctx.pointwise(shape, dtype, value, cost=4 + x.cost)]
    if dtype == DType.float4e2m1:
        def value(b, index):
            # x / scale + zero, in float32, rounded once (float4 saturates on its own)
            q = V(b, x.load(b, index), x.dtype) / V(b, scale_at(b, index), scale.dtype)
            if zero_at is not None:
                q = q + V(b, zero_at(b, index), zero.dtype).cast(DType.float32)
            return q.cast(dtype).name
        return [ctx.pointwise(shape, dtype, value, cost=3 + x.cost)]
    if dtype not in _INTEGERS:
        raise NotLowerable(f"quantizing to {dtype.name}")
    low, high = _INTEGERS[dtype]

    def value(b, index):
        # clip(int32(rint(x / scale)) + zero): numpy's float -> int32 gives INT32_MIN out of range (NaN too),
        # and the int32 sum wraps (added as uint32, which wraps by definition; in 32 bits, which AVX2 vectorizes)
        q = (V(b, x.load(b, index), x.dtype) / V(b, scale_at(b, index), scale.dtype)).round()
        in_range = (q >= -2.0**31).op("and", q < 2.0**31)
        qi = in_range.where(q, -2.0**31).op("cast_exact", dtype=DType.int32)  # (integral, in range: no checks)
        if zero_at is not None:
            z = V(b, zero_at(b, index), zero.dtype).cast(DType.int32)
            qi = (qi.cast(DType.uint32) + z.cast(DType.uint32)).cast(DType.int32)
        return qi.max(low).min(high).cast(dtype).name
    return [ctx.pointwise(shape, dtype, value, cost=6 + x.cost)]


# -- integer and quantized matmul / conv ----------------------------------------------------
# torch externs: the integer products exactly (int64, or float64 for convolutions, whose
# sums of 8-bit products stay far below 2^53), wrapped to int32 as the reference's int32
# arithmetic; the requantizing ops then scale in float64, round half to even and clip.
for _op in ("MatMulInteger", "QLinearMatMul", "ConvInteger", "QLinearConv"):
    standard_op(_op)
get_op("ConvInteger").infer = spatial_infer(get_op("ConvInteger").infer, "conv")
get_op("QLinearConv").infer = spatial_infer(get_op("QLinearConv").infer, "conv", weights=3)
_EIGHT_BIT = {DType.int8, DType.uint8}


def _one_value(*refs) -> bool:
    return all(r is None or all(d == 1 for d in r.shape) for r in refs)


def _one_per(w, rank: int, axis: int, *refs) -> bool:
    """Scales / zero points of one value, or one per index of `axis` of a rank-`rank` w."""
    return all(_one_value(r) or (len(w.shape) == rank and tuple(r.shape) == (w.shape[axis],)) for r in refs)


def _per_channel_ok(w, *refs) -> bool:
    """Of one value, or one per output channel of a 2-d filter."""
    return _one_per(w, 4, 0, *refs)


def _per_column_ok(b, *refs) -> bool:
    """Of one value, or one per column of a matrix B."""
    return _one_per(b, 2, 1, *refs)


@register_lowering("MatMulInteger", "QLinearMatMul")
def _lower_integer_matmul(ctx, node, ins):
    ins = list(ins) + [None] * (8 - len(ins))
    if node.op == "MatMulInteger":
        a, b, a_zero, b_zero = ins[:4]
        scales = []
        per_column = _per_column_ok(b, b_zero)
    else:
        a, a_scale, a_zero, b, b_scale, b_zero, y_scale, y_zero = ins
        scales = [a_scale, b_scale, y_scale]
        per_column = _one_value(b_zero, *scales, *ins[7:])
    if a.dtype not in _EIGHT_BIT or b.dtype not in _EIGHT_BIT or not _one_value(a_zero) or not per_column:
        raise NotLowerable("not 8-bit, or scales / zero points of more than one value (a MatMulInteger's B: "
                           "or one per column)")
    if scales and (any(s.dtype not in (DType.float32, DType.float16) for s in scales) or ins[7] is None):
        raise NotLowerable("scales not float32/float16, or no output zero point")
    operands = [a, b, a_zero, b_zero, *([*scales, ins[7]] if scales else [])]
    return ctx.extern("integer_matmul", operands, [out_type(node)])


standard_op("DynamicQuantizeLinear")


@register_lowering("DynamicQuantizeLinear")
def _lower_dynamic_quantize(ctx, node, ins):
    """The range and the quantization of the whole tensor in two passes of ember's kernel
    (cpu_integer_gemm.cpp), rather than the function body's min and max reductions and a
    QuantizeLinear."""
    if ins[0].dtype != DType.float32:
        raise NotLowerable("not float32")
    return ctx.extern("dynamic_quantize", [ins[0]], [out_type(node, i) for i in range(3)])


@register_lowering("com.microsoft.MatMulIntegerToFloat")
def _lower_integer_matmul_to_float(ctx, node, ins):
    a, b, a_scale, b_scale, a_zero, b_zero, bias = (list(ins) + [None] * 7)[:7]
    if (a.dtype not in _EIGHT_BIT or b.dtype not in _EIGHT_BIT or any(
            z is not None and z.dtype != x.dtype for z, x in ((a_zero, a), (b_zero, b)))
            or a_scale.dtype != DType.float32 or b_scale.dtype != DType.float32
            or (bias is not None and (bias.dtype != DType.float32 or len(bias.shape) != 1))
            or not _one_value(a_zero, a_scale) or not _per_column_ok(b, b_zero, b_scale)):
        raise NotLowerable("not 8-bit by 8-bit with float32 scales of one value (B's: or one per column) and a "
                           "float32 bias per column")
    return ctx.extern("integer_matmul", [a, b, a_zero, b_zero, a_scale, b_scale, bias], [out_type(node)],
                      to_float=True)


@register_lowering("ConvInteger", "QLinearConv")
def _lower_integer_conv(ctx, node, ins):
    from .nn import _kernel_pads

    ins = list(ins) + [None] * (9 - len(ins))
    if node.op == "ConvInteger":
        x, w, x_zero, w_zero = ins[:4]
        x_scale = w_scale = y_scale = y_zero = bias = None
    else:
        x, x_scale, x_zero, w, w_scale, w_zero, y_scale, y_zero, bias = ins
    if (x.dtype not in _EIGHT_BIT or w.dtype not in _EIGHT_BIT or len(x.shape) not in (3, 4, 5)
            or not _one_value(x_zero, x_scale, y_scale, y_zero) or not _per_channel_ok(w, w_zero, w_scale)):
        raise NotLowerable("not an 8-bit 1-3d convolution, or scales / zero points per something else than "
                           "the output channel of a 2-d filter")
    a = attrs(node)
    kernel = list(w.shape[2:])
    rank = len(kernel)
    strides, dilations = a["strides"] or [1] * rank, a["dilations"] or [1] * rank
    pads = _kernel_pads(a, x, kernel, strides, dilations, False)
    conv = {"pads": [p for p, _ in pads] + [q for _, q in pads], "strides": list(strides),
            "dilations": list(dilations), "group": int(a["group"])}
    return ctx.extern("integer_conv", [x, w, x_zero, w_zero, bias, x_scale, w_scale, y_scale, y_zero],
                      [out_type(node)], conv=conv)
