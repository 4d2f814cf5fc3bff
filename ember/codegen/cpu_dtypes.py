"""How generated C++ holds each element type: the one table other renderers mirror.

Every type is stored one element per byte or wider, exactly as ember's numpy buffers hold
it (ml_dtypes keeps its 4- and 2-bit types one per byte, in the low bits). A kernel body
computes with a wider C type; a *narrow* type (storage differs from what the body computes
with) converts on every load (`decode`, exact) and store (`encode`), and every result of
that type is rounded to it again (`encode` then `decode`), as numpy's ufuncs on ml_dtypes
values do. The encodings are ember's Cast rules (ember/ir/casting.py, which the reference
implementation runs), bit for bit, whatever the installed ml_dtypes' `astype` does:

    float16           round to nearest even from float; from double in one rounding
                      (`ember_d2h`, as numpy does), not twice through float.
    bfloat16, float8*, float4e2m1
                      round to nearest even from float; a double is rounded to float
                      first. Overflow and infinities: inf for e5m2, NaN for e4m3fn and the
                      fnuz kinds, the largest finite value for float4e2m1 (which has no inf
                      or NaN: a NaN becomes -0 or, negative, +0). fnuz kinds have no -0 (it
                      becomes +0) and one NaN (0x80). The parameters of each format are
                      casting.SMALL_FLOATS.
    float8e8m0        a power of two 2^(code - 127), no zero, no sign: nonpositive values,
                      NaN and inf encode as NaN (0xff); otherwise the exponent, rounded up
                      when the mantissa is at least one half (ml_dtypes 0.5's astype; only
                      arithmetic on float8e8m0 values rounds this way). ONNX Cast to it
                      rounds by its own rules (`ember_cast_e8m0`, round_mode and saturate),
                      used by the scalar op `cast_e8m0`.
    int4, uint4, int2, uint2
                      the low bits of the value (wrapping); a float goes through int32 first,
                      truncating, with NaN and out-of-range values as INT32_MIN (x86's
                      cvttss2si), so as 0. Decoding reads only the low bits.

The 16-bit floats' conversions are in cpu_prelude.py (bit arithmetic); the decodings of the
smaller floats are tables (256 or 16 entries) built from ml_dtypes itself (decoding is
exact); the encodings are functions, tested exhaustively against the reference by
tests/codegen/test_low_precision.py. `prelude()` is pasted into a translation unit only
when its kernels call one of them.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from ..ir import casting
from ..ir.dtypes import DType


@dataclass(frozen=True)
class CType:
    storage: str               # C type of one element in memory
    compute: str               # C type of a value in a kernel body
    decode: str | None = None  # storage -> compute, exact (None: no conversion)
    encode: str | None = None  # compute -> storage, rounding or wrapping as `astype` does

    @property
    def narrow(self) -> bool:
        return self.encode is not None


def _narrow_float(name: str) -> CType:
    return CType("uint8_t", "float", f"ember_{name}_to_float", f"ember_float_to_{name}")


def _narrow_int(name: str, signed: bool) -> CType:
    return CType("uint8_t", "int8_t" if signed else "uint8_t", f"ember_{name}_to_int", f"ember_int_to_{name}")


C_TYPES: dict[DType, CType] = {
    DType.float32: CType("float", "float"),
    DType.float64: CType("double", "double"),
    DType.int64: CType("int64_t", "int64_t"),
    DType.int32: CType("int32_t", "int32_t"),
    DType.int16: CType("int16_t", "int16_t"),
    DType.int8: CType("int8_t", "int8_t"),
    DType.uint8: CType("uint8_t", "uint8_t"),
    DType.uint16: CType("uint16_t", "uint16_t"),
    DType.uint32: CType("uint32_t", "uint32_t"),
    DType.uint64: CType("uint64_t", "uint64_t"),
    DType.bool: CType("bool", "bool"),
    DType.float16: CType("uint16_t", "float", "ember_h2f", "ember_f2h"),
    DType.bfloat16: CType("uint16_t", "float", "ember_bf2f", "ember_f2bf"),
    DType.float8e4m3fn: _narrow_float("f8e4m3fn"),
    DType.float8e4m3fnuz: _narrow_float("f8e4m3fnuz"),
    DType.float8e5m2: _narrow_float("f8e5m2"),
    DType.float8e5m2fnuz: _narrow_float("f8e5m2fnuz"),
    DType.float8e8m0: _narrow_float("f8e8m0"),
    DType.float4e2m1: _narrow_float("f4e2m1"),
    DType.int4: _narrow_int("i4", True),
    DType.uint4: _narrow_int("u4", False),
    DType.int2: _narrow_int("i2", True),
    DType.uint2: _narrow_int("u2", False),
}
FLOAT_TYPES = {d for d, c in C_TYPES.items() if c.compute in ("float", "double")}
# float formats of at most 8 bits (decoded through a table)
SMALL_FLOATS = (DType.float8e4m3fn, DType.float8e4m3fnuz, DType.float8e5m2, DType.float8e5m2fnuz,
                DType.float8e8m0, DType.float4e2m1)


def _decode_table(dtype: DType) -> str:
    """`static const uint32_t` bits of the float32 value of every code of `dtype`, from ml_dtypes."""
    codes = np.arange(1 << min(dtype.bits, 8), dtype=np.uint8)
    bits = codes.view(dtype.numpy).astype(np.float32).view(np.uint32)
    rows = [", ".join(f"0x{b:08x}u" for b in bits[i:i + 8]) for i in range(0, len(bits), 8)]
    name = C_TYPES[dtype].decode
    mask = len(bits) - 1
    return (f"static const std::uint32_t {name}_table[{len(bits)}] = {{\n  " + ",\n  ".join(rows) + "};\n"
            f"EMBER_INLINE float {name}(std::uint8_t b) {{ return ember_u2f({name}_table[b & {mask}u]); }}\n")


# Encodings of the small float formats: one template over each format's parameters, which
# ember/ir/casting.py's SMALL_FLOATS holds (and its encode_small_float computes the same way).
_SMALL_FLOAT_ENCODE = r"""
// float -> a small float format, round to nearest even (ember/ir/casting.py's rules).
template <int M, int BIAS, unsigned SIGN, unsigned MAXC, unsigned OVF, unsigned NANP, unsigned NANN, bool FNUZ>
EMBER_INLINE std::uint8_t ember_float_to_small(float x) {
  const std::uint32_t u = ember_f2u(x);
  const bool neg = (u >> 31) != 0;
  const std::uint32_t a = u & 0x7fffffffu;
  constexpr int shift = 23 - M;
  // normal in the target: rebias the exponent, round the mantissa (a carry bumps the exponent)
  const std::uint32_t rebased = a - ((std::uint32_t)(127 - BIAS) << 23);
  const std::uint32_t normal = (rebased + ((1u << (shift - 1)) - 1u) + ((rebased >> shift) & 1u)) >> shift;
  // below the target's normal range: adding 2^(24 - BIAS - M) rounds |x| to a multiple of the
  // smallest subnormal, whose count is left in the low bits
  constexpr std::uint32_t magic = (std::uint32_t)(127 + 24 - BIAS - M) << 23;
  const std::uint32_t sub = ember_f2u(ember_u2f(a) + ember_u2f(magic)) - magic;
  std::uint32_t mag = a < ((std::uint32_t)(128 - BIAS) << 23) ? sub : normal;
  const std::uint32_t sign = neg ? SIGN : 0u;
  std::uint32_t code = mag > MAXC ? (FNUZ ? OVF : (OVF | sign)) : (FNUZ && mag == 0 ? 0u : (mag | sign));
  code = a > 0x7f800000u ? (neg ? NANN : NANP) : code;
  return (std::uint8_t)code;
}
""" + "".join(
    f"EMBER_INLINE std::uint8_t {C_TYPES[d].encode}(float x) {{\n"
    f"  return ember_float_to_small<{f.mantissa_bits}, {f.bias}, {f.sign:#x}, {f.max_code:#x}, {f.overflow:#x}, "
    f"{f.nan:#x}, {f.neg_nan:#x}, {str(f.fnuz).lower()}>(x);\n}}\n"
    for d, f in casting.SMALL_FLOATS.items()) + r"""
// float -> float8e8m0, ml_dtypes' astype: the exponent, rounded up from a mantissa >= 1/2;
// a subnormal float is 2^-127 (code 0) up to it and 2^-126 above; NaN for x <= 0, NaN, inf.
EMBER_INLINE std::uint8_t ember_float_to_f8e8m0(float x) {
  const std::uint32_t u = ember_f2u(x);
  const std::uint32_t exp = u >> 23;
  const std::uint32_t normal = exp + ((u & 0x7fffffu) >= 0x400000u ? 1u : 0u);
  const std::uint32_t code = exp == 0 ? (u > 0x00400000u ? 1u : 0u) : (normal > 0xffu ? 0xffu : normal);
  return (x > 0.0f && u < 0x7f800000u) ? (std::uint8_t)code : (std::uint8_t)0xff;
}

// ONNX Cast to float8e8m0 (onnx.numpy_helper.to_float8e8m0), its code: the float's exponent bits (its
// sign ignored), rounded by `mode` (0 up: any mantissa; 1 down; 2 nearest: guard bit and
// round, sticky or a nonzero exponent); with `saturate`, 2^127 never rounds up to NaN.
EMBER_INLINE std::uint8_t ember_cast_e8m0(float x, int mode, bool saturate) {
  const std::uint32_t u = ember_f2u(x);
  const std::uint32_t exp = (u >> 23) & 0xffu;
  const bool up = (u & 0x7fffffu) != 0;
  const bool nearest = (u & 0x400000u) != 0 && ((u & 0x3fffffu) != 0 || exp > 0);
  bool round_up = mode == 0 ? up : (mode == 2 ? nearest : false);
  round_up = round_up && !(saturate && exp == 0xfeu);
  return (std::uint8_t)(exp == 0xffu ? 0xffu : exp + (round_up ? 1u : 0u));
}
"""

_INT_CODECS = r"""
// 4- and 2-bit integers: one per byte, in the low bits; encoding keeps the low bits (wraps)
EMBER_INLINE std::int8_t ember_i4_to_int(std::uint8_t b) { return (std::int8_t)((std::int8_t)(b << 4) >> 4); }
EMBER_INLINE std::uint8_t ember_u4_to_int(std::uint8_t b) { return (std::uint8_t)(b & 0xfu); }
EMBER_INLINE std::int8_t ember_i2_to_int(std::uint8_t b) { return (std::int8_t)((std::int8_t)(b << 6) >> 6); }
EMBER_INLINE std::uint8_t ember_u2_to_int(std::uint8_t b) { return (std::uint8_t)(b & 0x3u); }
EMBER_INLINE std::uint8_t ember_int_to_i4(std::int64_t v) { return (std::uint8_t)(v & 0xf); }
EMBER_INLINE std::uint8_t ember_int_to_u4(std::int64_t v) { return (std::uint8_t)(v & 0xf); }
EMBER_INLINE std::uint8_t ember_int_to_i2(std::int64_t v) { return (std::uint8_t)(v & 0x3); }
EMBER_INLINE std::uint8_t ember_int_to_u2(std::int64_t v) { return (std::uint8_t)(v & 0x3); }
// float -> int32 as x86's cvttss2si: truncation, INT32_MIN for NaN and out of range
template <typename F> EMBER_INLINE std::int32_t ember_to_int32(F x) {
  return (x > F(-2147483649.0) && x < F(2147483648.0)) ? (std::int32_t)x : INT32_MIN;
}

// double -> float16 in one rounding (numpy's): the float part rounded to nearest even at the
// half's precision, with the bits below float's precision kept as a sticky bit.
EMBER_INLINE std::uint16_t ember_d2h(double d) {
  const float f = (float)d;
  const double back = (double)f;
  // round to odd: a float that is not exact takes an odd last bit, so rounding it once more
  // (to 11 bits) gives the correctly rounded result of d (Boldo and Melquiond)
  std::uint32_t u = ember_f2u(f);
  const bool inexact = back != d && (u & 0x7fffffffu) < 0x7f800000u;
  u = inexact ? ((u & 1u) ? u : (back > d) == ((u >> 31) == 0) ? u - 1u : u + 1u) : u;
  return ember_f2h(ember_u2f(u));
}
"""


# the functions `prelude()` defines that generated kernels call
FUNCTIONS = ("ember_d2h", "ember_to_int32", "ember_cast_e8m0",
             *(f for d, c in C_TYPES.items() if d.bits < 16 and c.narrow for f in (c.decode, c.encode)))


def needs_prelude(source: str) -> bool:
    """Whether kernel code `source` calls anything `prelude()` defines."""
    return any(name in source for name in FUNCTIONS)


@functools.cache
def prelude() -> str:
    """The C++ for the narrow types below 16 bits and float16 from double (after
    cpu_prelude.PRELUDE, which has ember_f2u/u2f and the 16-bit floats)."""
    tables = "".join(_decode_table(d) for d in SMALL_FLOATS)
    return ("\n// ---- narrow types (ember/codegen/cpu_dtypes.py) ----\n" + tables + _SMALL_FLOAT_ENCODE
            + _INT_CODECS)
