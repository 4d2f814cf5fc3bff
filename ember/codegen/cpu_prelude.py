"""C++ prelude for the CPU kernels: scalar math helpers the generated code calls.

`PRELUDE` is pasted at the top of every generated C++ translation unit. Its functions are
called per element inside `#pragma omp simd` loops, so they are written with plain
arithmetic, comparisons, ternaries and bit casts only — no branches the vectorizer
cannot if-convert, no libm calls in the float math — and forced inline, so that GCC 12 vectorizes them with
`-O3 -march=native -fopenmp -fno-math-errno -fno-trapping-math`. No `-ffast-math`: NaN,
inf, signed zeros and denormals keep their IEEE meaning, and the selects below rely on it
(`x != x` is how NaN is detected).

float (the fast, vectorizable ones; max errors over float32 inputs, measured against float64
references by tests/codegen/test_cpu_prelude.py, with FMA contraction / without):
    ember_expf      Cephes expf: round(x/ln2) range reduction, degree-5 polynomial, 2^n
                    applied as two exact powers of two. 8.3e-8 relative (<= 1 ulp) for
                    normal results. Overflows to +inf exactly where IEEE does (from
                    88.72284 on; ln(FLT_MAX) = 88.7228391); results below FLT_MIN are
                    denormals within 0.75 denormal ulp, 0 below -103.9721. NaN -> NaN,
                    -inf -> 0, +inf -> +inf.
    ember_logf      Cephes logf: frexp by bit manipulation (denormal inputs prescaled by
                    2^23, so they get full accuracy), degree-8 polynomial. 7.9e-8
                    relative. log(+-0) = -inf, log(x < 0) = NaN, log(inf) = inf, NaN -> NaN.
    ember_erff      Eigen's generic_fast_erf_float (current master, a 9/12 odd/even
                    rational), +-1 for |x| >= erfinv(1 - 2^-24), results clamped to
                    [-1, 1]. 4.0e-7 / 4.2e-7 absolute (an exhaustive sweep; the worst
                    cases sit near |x| = 3.8), 2.5e-7 relative for |x| < 1. Odd.
    ember_tanhf     Cephes tanhf: an odd polynomial for |x| < 0.625, 1 - 2/(exp(2|x|)+1)
                    (via ember_expf) beyond; exactly +-1 once exp overflows. 7.9e-8
                    absolute, 1.4e-7 relative. Odd, tanh(-0) = -0.
    ember_sigmoidf  e = exp(-|x|); 1/(1+e) for x >= 0, e/(1+e) for x < 0, so that the
                    negative side keeps its relative accuracy (1.8e-7) down to FLT_MIN.
double: the same names call std:: (ember_exp(double) is std::exp, and so on).

Generic names for a code generator: ember_exp, ember_log, ember_erf, ember_tanh,
ember_sigmoid (float or double); ember_max, ember_min, ember_mod, ember_fmod, ember_sign,
ember_round (every arithmetic type, both operands of the same type):
    ember_max/min   NaN-propagating like numpy.maximum/minimum for floating types; plain
                    max/min for integers and bool.
    ember_mod       integers: Python / ONNX Mod (fmod=0), the result has the divisor's
                    sign; floats: numpy.mod (floored, also the divisor's sign).
    ember_fmod      floats: C fmod (std::fmod: a libm call, so a loop that uses it is not
                    vectorized); integers: C's truncated %, the dividend's sign.
                    Integer mod/fmod by 0 give 0 (as numpy does) instead of trapping, and
                    so does INT_MIN % -1.
    ember_sign      -1, 0 or 1 (+0 for either zero; NaN -> NaN).
    ember_round     round half to even (std::nearbyint in the default rounding mode);
                    integers unchanged.
    ember_aligned_floats  n floats on a 64-byte boundary (std::free them): a hand-written
                    kernel's own buffers, whose vector loads and stores then never straddle
                    two cache lines (operator new gives 16 bytes; an mmap'd block sits 16
                    past a page).
"""

PRELUDE = r"""
// ---- ember CPU prelude (ember/codegen/cpu_prelude.py) ------------------------------------
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <type_traits>

// Forced inline: a call left out of line keeps its `omp simd` loop scalar.
#define EMBER_INLINE static inline __attribute__((always_inline))

// n floats (at least one) on a 64-byte boundary, rounded up to whole lines; std::free them
EMBER_INLINE float* ember_aligned_floats(std::int64_t n) {
  const std::size_t bytes = (static_cast<std::size_t>(n > 0 ? n : 1) * sizeof(float) + 63) & ~std::size_t(63);
  return static_cast<float*>(std::aligned_alloc(64, bytes));
}

EMBER_INLINE std::uint32_t ember_f2u(float x) { return __builtin_bit_cast(std::uint32_t, x); }
EMBER_INLINE float ember_u2f(std::uint32_t u) { return __builtin_bit_cast(float, u); }

// exp, after Cephes expf.c (S. L. Moshier): x = n ln2 + r, |r| <= ln2/2,
// exp(r) = 1 + r + r^2 P(r), exp(x) = 2^n exp(r). `ember_exp_reduced` gives exp(r) and t,
// whose bits less those of 1.5 * 2^23 are n; ember_expf scales by 2^n (and a softmax's
// exponential in cpu_gemm.cpp, whose x <= 0, its own way).
// `ember_exp_reduced_of` takes a float or a vector of floats (the attention's softmax runs it
// on vectors), the same operations either way.
template <typename T>
struct EmberExpPartsOf { T y, t; };
template <typename T>
EMBER_INLINE EmberExpPartsOf<T> ember_exp_reduced_of(T x) {
  // n = round(x / ln2), to nearest: adding 1.5 * 2^23 leaves n in the low mantissa bits of t.
  const float magic = 12582912.0f;
  const T t = x * 1.44269504088896341f + magic;
  const T n = t - magic;
  // r = x - n ln2 with ln2 split in two (C1 has few bits, so n * C1 is exact).
  T r = x - n * 0.693359375f;
  r = r - n * -2.12194440e-4f;
  T p = r * 1.9875691500e-4f + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  return {p * (r * r) + r + 1.0f, t};
}
typedef EmberExpPartsOf<float> EmberExpParts;
EMBER_INLINE EmberExpParts ember_exp_reduced(float x) { return ember_exp_reduced_of(x); }

EMBER_INLINE float ember_expf(float x) {
  // Keep n in [-150, 128]; the comparisons are false for NaN, which flows through.
  x = x > 88.8f ? 88.8f : x;
  x = x < -104.0f ? -104.0f : x;
  const EmberExpParts e = ember_exp_reduced(x);
  // 2^n = 2^n1 * 2^n2 with both factors normal floats: y * 2^n1 is exact, and the second
  // product rounds once, overflowing to inf or underflowing to a correctly rounded denormal.
  const std::int32_t ni = (std::int32_t)(ember_f2u(e.t) - ember_f2u(12582912.0f));
  const std::int32_t n1 = ni >> 1;
  const std::int32_t n2 = ni - n1;
  const float s1 = ember_u2f((std::uint32_t)(n1 + 127) << 23);
  const float s2 = ember_u2f((std::uint32_t)(n2 + 127) << 23);
  return e.y * s1 * s2;
}

// log, after Cephes logf.c: x = m 2^e with m in [sqrt(1/2), sqrt(2)), f = m - 1,
// log(x) = f - f^2/2 + f^3 P(f) + e ln2 (ln2 split in two as in ember_expf).
EMBER_INLINE float ember_logf(float x) {
  // Denormals: scale into the normal range first, then take the 23 back from e.
  const bool sub = x < 1.17549435e-38f;  // also true for 0 and negatives: harmless
  const float xs = sub ? x * 8388608.0f : x;
  const std::uint32_t u = ember_f2u(xs);
  // frexp: m in [0.5, 1), x = m 2^e.
  std::int32_t e = (std::int32_t)((u >> 23) & 0xffu) - 126;
  e = sub ? e - 23 : e;
  const float m = ember_u2f((u & 0x007fffffu) | 0x3f000000u);
  const bool lo = m < 0.707106781186547524f;
  const float f = lo ? (m + m) - 1.0f : m - 1.0f;  // exact
  const float fe = (float)(lo ? e - 1 : e);
  const float z = f * f;
  float p = 7.0376836292e-2f;
  p = p * f + -1.1514610310e-1f;
  p = p * f + 1.1676998740e-1f;
  p = p * f + -1.2420140846e-1f;
  p = p * f + 1.4249322787e-1f;
  p = p * f + -1.6668057665e-1f;
  p = p * f + 2.0000714765e-1f;
  p = p * f + -2.4999993993e-1f;
  p = p * f + 3.3333331174e-1f;
  float y = f * (z * p);
  y = y + fe * -2.12194440e-4f;
  y = y - 0.5f * z;
  float res = f + y;
  res = res + fe * 0.693359375f;
  // IEEE special cases.
  res = x == 0.0f ? -std::numeric_limits<float>::infinity() : res;
  res = x < 0.0f ? std::numeric_limits<float>::quiet_NaN() : res;
  res = x == std::numeric_limits<float>::infinity() ? x : res;
  return x != x ? x : res;
}

// erf: Eigen's generic_fast_erf_float (Eigen/src/SpecialFunctions/
// SpecialFunctionsImpl.h, master): erf(x) = x P(x^2) / Q(x^2), P of degree 4 and Q of
// degree 6 in x^2, and sign(x) where |x| >= erfinv(1 - 2^-24) (fl(erf) is +-1 there).
// `ember_erf_of` takes a float or a vector of floats (GCC's vector extensions: the tiled
// kernels' GELU epilogue runs it on registers); the same operations either way.
template <typename T>
EMBER_INLINE T ember_erf_of(T x) {
  const T one = T{} + 1.0f, cut = T{} + 3.832506856900711f;
  const T x2 = x * x;
  T p = x2 * 0.00022905065861350646f + 0.0034082910107109506f;
  p = p * x2 + 0.050955695062380861f;
  p = p * x2 + 0.18520832239976145f;
  p = p * x2 + 1.128379143519084f;
  p = p * x;
  T q = x2 * -1.1791602954361697e-7f + 0.000023547966471313185f;
  q = q * x2 + 0.0010179625278914885f;
  q = q * x2 + 0.014070470171167667f;
  q = q * x2 + 0.11098505178285362f;
  q = q * x2 + 0.49746925110067538f;
  q = q * x2 + 1.0f;
  T r = p / q;
  r = r > one ? one : (r < -one ? -one : r);  // just below the cut p / q can pass 1 by an ulp
  // Comparisons are false for NaN, which keeps p / q = NaN.
  return x >= cut ? one : (x <= -cut ? -one : r);
}
EMBER_INLINE float ember_erff(float x) { return ember_erf_of(x); }

// tanh, after Cephes tanhf.c: for |x| < 0.625 an odd polynomial x + x^3 P(x^2), beyond it
// 1 - 2 / (exp(2|x|) + 1); both on |x|, then x's sign bit is put back (exactly odd, and
// tanh(-0) = -0). exp overflows to inf for large |x|, which gives exactly 1. (Eigen's 13/6
// rational was measured at 2.7e-7 abs error with FMA and 3.9e-7 without; this form stays
// under 1e-7 either way, for ~1.5x the cost.)
EMBER_INLINE float ember_tanhf(float x) {
  const std::uint32_t sign = ember_f2u(x) & 0x80000000u;
  const float ax = ember_u2f(ember_f2u(x) & 0x7fffffffu);
  const float e = ember_expf(2.0f * ax);  // NaN flows through
  const float big = 1.0f - 2.0f / (e + 1.0f);
  const float s = ax * ax;
  float p = -5.70498872745e-3f;
  p = p * s + 2.06390887954e-2f;
  p = p * s + -5.37397155531e-2f;
  p = p * s + 1.33314422036e-1f;
  p = p * s + -3.33332819422e-1f;
  const float small = (p * s) * ax + ax;
  const float r = ax < 0.625f ? small : big;  // >= 0 (or NaN)
  return ember_u2f(ember_f2u(r) | sign);
}

// sigmoid = 1 / (1 + exp(-x)), evaluated as e / (1 + e) with e = exp(-|x|) for x < 0 so
// that tiny results keep their relative accuracy. sigmoid(+inf) = 1, sigmoid(-inf) = 0.
EMBER_INLINE float ember_sigmoidf(float x) {
  const float e = ember_expf(x < 0.0f ? x : -x);
  return (x < 0.0f ? e : 1.0f) / (1.0f + e);
}

// ---- 16-bit floats: stored as their bits, computed as float ---------------------------
// float16 <-> float, round to nearest even, after F. Giesen's float_to_half_fast3_rtne
// (public domain): overflow to inf, NaN stays a (quiet) NaN, denormals via one float add.
EMBER_INLINE float ember_h2f(std::uint16_t h) {
  const std::uint32_t sign = (std::uint32_t)(h & 0x8000u) << 16;
  const std::uint32_t bits = (std::uint32_t)(h & 0x7fffu) << 13;  // exponent + mantissa
  const std::uint32_t exp = bits & 0x0f800000u;
  // normal: rebias by 112; inf/NaN: max out the exponent; denormal/zero: renormalise
  const float normal = ember_u2f(bits + (112u << 23));
  const float special = ember_u2f(bits | 0x7f800000u);
  const float denorm = ember_u2f(bits + (113u << 23)) - ember_u2f(113u << 23);
  const float mag = exp == 0x0f800000u ? special : (exp == 0 ? denorm : normal);
  return ember_u2f(ember_f2u(mag) | sign);
}

EMBER_INLINE std::uint16_t ember_f2h(float f) {
  std::uint32_t u = ember_f2u(f);
  const std::uint32_t sign = u & 0x80000000u;
  u ^= sign;
  std::uint32_t o;
  if (u >= (143u << 23)) {  // overflow, inf or NaN
    o = u > 0x7f800000u ? 0x7e00u : 0x7c00u;
  } else if (u < (113u << 23)) {  // a denormal half (or zero): the float add rounds
    o = ember_f2u(ember_u2f(u) + ember_u2f(126u << 23)) - (126u << 23);
  } else {
    const std::uint32_t odd = (u >> 13) & 1u;
    u += ((15u - 127u) << 23) + 0xfffu + odd;
    o = u >> 13;
  }
  return (std::uint16_t)(o | (sign >> 16));
}

// bfloat16 <-> float: the high half of the float's bits, rounded to nearest even; NaN quiet.
EMBER_INLINE float ember_bf2f(std::uint16_t h) { return ember_u2f((std::uint32_t)h << 16); }

EMBER_INLINE std::uint16_t ember_f2bf(float f) {
  const std::uint32_t u = ember_f2u(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return (std::uint16_t)((u >> 16) | 0x40u);
  return (std::uint16_t)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}

// ---- one name per function for float (the fast versions) and double (std::) -----------
EMBER_INLINE float ember_exp(float x) { return ember_expf(x); }
EMBER_INLINE double ember_exp(double x) { return std::exp(x); }
EMBER_INLINE float ember_log(float x) { return ember_logf(x); }
EMBER_INLINE double ember_log(double x) { return std::log(x); }
EMBER_INLINE float ember_erf(float x) { return ember_erff(x); }
EMBER_INLINE double ember_erf(double x) { return std::erf(x); }
EMBER_INLINE float ember_tanh(float x) { return ember_tanhf(x); }
EMBER_INLINE double ember_tanh(double x) { return std::tanh(x); }
EMBER_INLINE float ember_sigmoid(float x) { return ember_sigmoidf(x); }
EMBER_INLINE double ember_sigmoid(double x) {
  const double e = std::exp(x < 0.0 ? x : -x);
  return (x < 0.0 ? e : 1.0) / (1.0 + e);
}

// ---- generic helpers, every arithmetic type (both operands of one type) ------------------
// numpy.maximum / numpy.minimum: a NaN in either operand gives NaN.
template <typename T>
EMBER_INLINE T ember_max(T a, T b) {
  if constexpr (std::is_floating_point_v<T>) {
    const T m = a > b ? a : b;  // two flat selects: nested ones keep gcc 12 from vectorizing a
    return a != a ? a : m;      // chain of them (a 3x3 max pool ran scalar)
  } else {
    return a > b ? a : b;
  }
}

template <typename T>
EMBER_INLINE T ember_min(T a, T b) {
  if constexpr (std::is_floating_point_v<T>) {
    const T m = a < b ? a : b;  // (as ember_max)
    return a != a ? a : m;
  } else {
    return a < b ? a : b;
  }
}

// C's truncated remainder (sign of the dividend). Integers: x % 0 and INT_MIN % -1 give 0.
template <typename T>
EMBER_INLINE T ember_fmod(T a, T b) {
  if constexpr (std::is_floating_point_v<T>) {
    return std::fmod(a, b);
  } else if constexpr (std::is_signed_v<T>) {
    return (b == 0 || b == T(-1)) ? T(0) : T(a % b);
  } else {
    return b == 0 ? T(0) : T(a % b);
  }
}

// Python's floored remainder (sign of the divisor): ONNX Mod with fmod=0, numpy.mod.
template <typename T>
EMBER_INLINE T ember_mod(T a, T b) {
  if constexpr (std::is_floating_point_v<T>) {
    T r = std::fmod(a, b);
    r = (r != T(0) && ((r < T(0)) != (b < T(0)))) ? r + b : r;
    return r == T(0) ? std::copysign(T(0), b) : r;  // a zero takes the divisor's sign
  } else if constexpr (std::is_signed_v<T>) {
    const T r = ember_fmod(a, b);
    return (r != 0 && ((r < 0) != (b < 0))) ? T(r + b) : r;
  } else {
    return ember_fmod(a, b);
  }
}

// -1, 0 or 1; +0 for either zero, NaN for NaN (x - x).
template <typename T>
EMBER_INLINE T ember_sign(T x) {
  if constexpr (std::is_floating_point_v<T>) {
    return x > T(0) ? T(1) : (x < T(0) ? T(-1) : x - x);
  } else if constexpr (std::is_signed_v<T>) {
    return x > 0 ? T(1) : (x < 0 ? T(-1) : T(0));
  } else {
    return x > 0 ? T(1) : T(0);
  }
}

// Round half to even (the default rounding mode); integers are already integral.
template <typename T>
EMBER_INLINE T ember_round(T x) {
  if constexpr (std::is_floating_point_v<T>) {
    return std::nearbyint(x);
  } else {
    return x;
  }
}
// ---- end of ember CPU prelude ------------------------------------------------------------
"""
