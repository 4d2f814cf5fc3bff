"""ONNX Cast on numpy arrays, by ember's rules rather than by ml_dtypes' `astype`.

ml_dtypes gives ember the storage of bfloat16, the float8/float4 kinds and the 4- and 2-bit
integers, but its conversions change between releases: 0.7 turns a float out of an integer
type's range (NaN and inf included) into 0 where either type is one of its own (float32 to
int4, bfloat16 to int8), where 0.5 and 0.6 converted as a C cast does (ONNX's own test data
for Cast to INT4/UINT4/INT2/UINT2 wraps). onnx.reference's
Cast is `astype`, so it moves with them. ember's Cast -- the reference implementation, the
constant folding that runs it, and the generated kernels (codegen/cpu_dtypes.py renders
the same rules in C++, from the tables below) -- is defined here instead:

    to bool           nonzero (NaN included) is true.
    to bfloat16, float8e4m3fn/e4m3fnuz/e5m2/e5m2fnuz, float4e2m1
                      the value as float32 (a float64 rounded to it first, so twice, as
                      ml_dtypes and onnx.reference do; an integer in one rounding), then
                      rounded to nearest even. bfloat16
                      keeps inf and NaN. The float8 kinds with `saturate` (ONNX's default)
                      first clip to their finite range, so inf and overflow give +-max and NaN
                      stays NaN; without it overflow and inf give inf for e5m2 and NaN for
                      the others (ONNX's Cast table). float4e2m1 has no inf or NaN: overflow
                      and inf give +-6, a NaN -0 (or, with its sign bit set, +0): ml_dtypes'
                      choice, which the node suite's expected outputs follow (onnx's float4
                      notes say 6).
    to float8e8m0     onnx.numpy_helper.to_float8e8m0 of the float32 value (round_mode and
                      saturate as given): onnx's own bit arithmetic.
    to int4, uint4, int2, uint2
                      the low bits of the integer (wrapping); a float is first truncated
                      toward zero to int32, with NaN, inf and values out of int32's range
                      as INT32_MIN (x86's cvttss2si), so they become 0.
    anything else     numpy's astype (to float16, float32, float64 and the other integer
                      types; integers wrap), strings as onnx.reference converts them.

Narrow sources (bfloat16, float8, float4, float6, the 4- and 2-bit integers) are first
decoded to float32 or int8, which is exact.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .dtypes import DType


@dataclass(frozen=True)
class SmallFloat:
    """How a float format of at most 8 bits encodes a value (round to nearest even)."""
    mantissa_bits: int
    bias: int
    sign: int        # the sign bit's code (0x80, or 0x8 for float4)
    max_code: int    # the code of the largest finite magnitude
    overflow: int    # the code of an overflow or infinity, before the sign (fnuz: 0x80, no sign)
    nan: int         # the code of a NaN with the sign bit clear
    neg_nan: int     # ... and with it set
    fnuz: bool       # no -0 (and the sign is not applied to `overflow`)


SMALL_FLOATS: dict[DType, SmallFloat] = {
    DType.float8e4m3fn: SmallFloat(3, 7, 0x80, 0x7e, 0x7f, 0x7f, 0xff, False),
    DType.float8e4m3fnuz: SmallFloat(3, 8, 0x80, 0x7f, 0x80, 0x80, 0x80, True),
    DType.float8e5m2: SmallFloat(2, 15, 0x80, 0x7b, 0x7c, 0x7e, 0xfe, False),
    DType.float8e5m2fnuz: SmallFloat(2, 16, 0x80, 0x7f, 0x80, 0x80, 0x80, True),
    DType.float4e2m1: SmallFloat(1, 1, 0x8, 0x7, 0x7, 0x8, 0x0, False),
}
# Cast's `saturate` clips to the finite range first for these
SATURATING = (DType.float8e4m3fn, DType.float8e4m3fnuz, DType.float8e5m2, DType.float8e5m2fnuz)
SMALL_INT_BITS = {DType.int4: 4, DType.uint4: 4, DType.int2: 2, DType.uint2: 2}  # held as their low bits
# decoded to float32 (floats) or int8 (integers) before converting: exact
NARROW_FLOATS = (DType.bfloat16, *SMALL_FLOATS, DType.float8e8m0, DType.float6e2m3, DType.float6e3m2)
_INT32_MIN = -(1 << 31)


def finite_max(dtype: DType) -> float:
    """The largest finite value of a small float format."""
    f = SMALL_FLOATS[dtype]
    exponent = (f.max_code >> f.mantissa_bits) - f.bias
    mantissa = 1 + (f.max_code & ((1 << f.mantissa_bits) - 1)) / (1 << f.mantissa_bits)
    return float(mantissa * 2.0 ** exponent)


def cast(x: np.ndarray, to: DType, saturate: bool = True, round_mode: str = "up") -> np.ndarray:
    """`x` cast to `to` as ONNX's Cast (and CastLike) with these attributes, by the rules in
    the module's docstring."""
    x = np.asarray(x)
    if to == DType.string or x.dtype.kind in "OSU":
        from onnx.reference.ops.op_cast import cast_to

        return cast_to(x, to.onnx_code, saturate, round_mode)
    src = DType.from_numpy(x.dtype)
    if to == src and not (to in SATURATING and saturate):  # (onnx.reference clips even then)
        return x.copy()
    if src in NARROW_FLOATS:
        x, src = x.astype(np.float32), DType.float32
    elif src in SMALL_INT_BITS:
        x, src = x.astype(np.int8), DType.int8
    if to == DType.bool:
        return x != 0
    if to == DType.float8e8m0:
        from onnx.numpy_helper import to_float8e8m0

        return to_float8e8m0(_as_float32(x), saturate, round_mode).view(to.numpy)
    if to == DType.bfloat16:
        return _encode_bfloat16(_as_float32(x)).view(to.numpy)
    if to in SMALL_FLOATS:
        f = _as_float32(x)
        if to in SATURATING and saturate:
            high = np.float32(finite_max(to))
            f = np.clip(f, -high, high)  # keeps NaN
        return encode_small_float(f, SMALL_FLOATS[to]).view(to.numpy)
    if to in SMALL_INT_BITS:
        v = _truncate_to_int32(x) if src.is_float else x
        low = v.astype(np.int64) & ((1 << SMALL_INT_BITS[to]) - 1)
        return low.astype(np.uint8).view(to.numpy)
    return x.astype(to.numpy)


def _as_float32(x: np.ndarray) -> np.ndarray:
    return x if x.dtype == np.float32 else x.astype(np.float32)


def _truncate_to_int32(x: np.ndarray) -> np.ndarray:
    """x truncated toward zero; NaN, inf and values out of int32's range as INT32_MIN."""
    with np.errstate(invalid="ignore"):
        ok = np.abs(x) < 2.0**31  # false for NaN
        return np.where(ok, np.trunc(np.where(ok, x, 0)), _INT32_MIN).astype(np.int32)


def _encode_bfloat16(f: np.ndarray) -> np.ndarray:
    """float32 -> bfloat16 bits, round to nearest even; a NaN stays a (quiet) NaN."""
    u = f.view(np.uint32).astype(np.uint64)
    nan = (u & 0x7FFFFFFF) > 0x7F800000
    rounded = (u + 0x7FFF + ((u >> 16) & 1)) >> 16
    return np.where(nan, (u >> 16) | 0x40, rounded).astype(np.uint16)


def encode_small_float(f: np.ndarray, fmt: SmallFloat) -> np.ndarray:
    """float32 -> the codes of a small float format, round to nearest even (what
    codegen/cpu_dtypes.py's ember_float_to_small computes, step for step)."""
    u = f.view(np.uint32).astype(np.int64)
    neg = (u >> 31) != 0
    a = u & 0x7FFFFFFF
    shift = 23 - fmt.mantissa_bits
    # normal in the target: rebias the exponent, round the mantissa (a carry bumps the exponent)
    rebased = a - ((127 - fmt.bias) << 23)
    normal = (rebased + ((1 << (shift - 1)) - 1) + ((rebased >> shift) & 1)) >> shift
    # below the target's normal range: adding 2^(24 - bias - M) in float32 rounds |x| to a
    # multiple of the smallest subnormal, whose count is left in the low bits
    magic = (127 + 24 - fmt.bias - fmt.mantissa_bits) << 23
    small = np.where(a < (128 - fmt.bias) << 23, a, 0).astype(np.uint32).view(np.float32)
    sub = (small + np.uint32(magic).view(np.float32)).view(np.uint32).astype(np.int64) - magic
    mag = np.where(a < (128 - fmt.bias) << 23, sub, normal)
    sign = np.where(neg, fmt.sign, 0)
    overflow = fmt.overflow if fmt.fnuz else fmt.overflow | sign
    code = np.where(mag > fmt.max_code, overflow, np.where(fmt.fnuz & (mag == 0), 0, mag | sign))
    code = np.where(a > 0x7F800000, np.where(neg, fmt.neg_nan, fmt.nan), code)
    return code.astype(np.uint8)
