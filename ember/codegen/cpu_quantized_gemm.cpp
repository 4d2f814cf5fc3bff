// y [rows, n] = act(x [rows, k] . W^T + bias) for a weight W [n, k] kept in llama.cpp's (GGML's)
// quantized blocks of 32 along k, row by row (the GGUF file's own bytes: nothing is dequantized).
// Formats (their meaning: ember/ir/quant_formats.py; the caller: runtime/native/quantized_gemm.py):
//
//   0 q8_0   f16 d, int8 q[32]                    w = d q
//   1 q4_0   f16 d, u8 nibbles[16]                w = d (q - 8)
//   2 q4_1   f16 d, f16 m, u8 nibbles[16]         w = d q + m
//   3 q5_0   f16 d, u32 high bits, nibbles[16]    w = d (q - 16)
//   4 q5_1   f16 d, f16 m, u32 high bits, nibbles w = d q + m
//   5-7      q4_k, q5_k, q6_k: superblocks of 256 weights (below, "K-quants")
//
// (nibble j of a block is the low half of byte j for j < 16, the high half of byte j - 16 after.)
// x is quantized first, once per call, to int8 in blocks of 32 as llama.cpp's q8_1 does (d = max|x| / 127,
// q = round(x / d)), with each block's d and d * sum(q) kept: a block's dot product is then
// d_w d_x sum(q_w q_x) + o_w d_x sum(q_x), o_w the weight's offset (-8 d, m, -16 d or 0), the integer
// sum in exact 8-bit products (AVX2's maddubs, or VNNI's dpbusd). Four weight rows share each load of x's block; threads
// split the weight's rows, each row's blocks streamed from memory once per call whatever the rows of x.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#if defined(__AVX2__) && defined(__FMA__) && !defined(EMBER_QGEMM_SCALAR)  // (tests build it without, too)
#include <immintrin.h>
#define EMBER_QGEMM_AVX2 1
// VNNI's vpdpbusd sums 4 unsigned x signed 8-bit products into each int32 lane in one instruction
// (AVX2's maddubs + madd take two, and pair sums in int16 between): the AVX-512 form on 256-bit
// registers, else AVX-VNNI's. The same exact sums either way (tests build it without, too).
// (A build without AVX-512 takes AVX-VNNI's where the CPU has both: the tests then run each.)
#if !defined(EMBER_QGEMM_NO_VNNI) && !defined(EMBER_QGEMM_NO_AVX512) && defined(__AVX512VNNI__) && \
    defined(__AVX512VL__)
#define EMBER_QGEMM_VNNI 1
#define EMBER_DPBUSD _mm256_dpbusd_epi32
#elif !defined(EMBER_QGEMM_NO_VNNI) && defined(__AVXVNNI__)
#define EMBER_QGEMM_VNNI 1
#define EMBER_DPBUSD _mm256_dpbusd_avx_epi32
#elif !defined(EMBER_QGEMM_NO_VNNI) && defined(__AVX512VNNI__) && defined(__AVX512VL__)
#define EMBER_QGEMM_VNNI 1
#define EMBER_DPBUSD _mm256_dpbusd_epi32
#endif
#endif

namespace {

constexpr int QK = 32;          // weights per block
constexpr int WROWS = 4;        // weight rows sharing one pass over x

struct XBlock {                 // a quantized block of x
    float d;                    // its scale
    float s;                    // d * sum(q)
    int8_t q[QK];
};

inline float half_to_float(uint16_t h) {
#if EMBER_QGEMM_AVX2 && defined(__F16C__)
    return _cvtsh_ss(h);
#else
    const uint32_t sign = (h & 0x8000u) << 16, exponent = (h >> 10) & 0x1f, mantissa = h & 0x3ff;
    uint32_t bits;
    if (exponent == 0) {
        if (mantissa == 0) {
            bits = sign;
        } else {  // subnormal: normalize
            int e = -1;
            uint32_t m = mantissa;
            do { ++e; m <<= 1; } while (!(m & 0x400));
            bits = sign | ((112 - e) << 23) | ((m & 0x3ff) << 13);
        }
    } else if (exponent == 31) {
        bits = sign | 0x7f800000u | (mantissa << 13);
    } else {
        bits = sign | ((exponent + 112) << 23) | (mantissa << 13);
    }
    float f;
    std::memcpy(&f, &bits, 4);
    return f;
#endif
}

inline uint16_t load16(const uint8_t* p) { uint16_t v; std::memcpy(&v, p, 2); return v; }
inline uint32_t load32(const uint8_t* p) { uint32_t v; std::memcpy(&v, p, 4); return v; }

struct Format {
    int bytes;      // per block
    int has_min;    // an f16 m after d
    int high_bits;  // 5-bit: a u32 of high bits before the nibbles
    int eight_bit;  // q8_0
    float offset;   // o = offset * d where there is no m (-8, -16, 0)
};

constexpr Format FORMATS[5] = {
    {34, 0, 0, 1, 0.0f},    // q8_0
    {18, 0, 0, 0, -8.0f},   // q4_0
    {20, 1, 0, 0, 0.0f},    // q4_1
    {22, 0, 1, 0, -16.0f},  // q5_0
    {24, 1, 1, 0, 0.0f},    // q5_1
};

// -- x to int8 blocks -------------------------------------------------------------------------------

void quantize_block(const float* x, XBlock* out) {
#if EMBER_QGEMM_AVX2
    __m256 v[4];
    __m256 amax = _mm256_setzero_ps();
    const __m256 sign = _mm256_set1_ps(-0.0f);
    for (int i = 0; i < 4; ++i) {
        v[i] = _mm256_loadu_ps(x + 8 * i);
        amax = _mm256_max_ps(amax, _mm256_andnot_ps(sign, v[i]));
    }
    __m128 m4 = _mm_max_ps(_mm256_castps256_ps128(amax), _mm256_extractf128_ps(amax, 1));
    m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
    m4 = _mm_max_ss(m4, _mm_movehdup_ps(m4));
    const float max = _mm_cvtss_f32(m4);
    const float d = max / 127.0f;
    const __m256 id = _mm256_set1_ps(max != 0.0f ? 127.0f / max : 0.0f);
    __m256i q[4];
    for (int i = 0; i < 4; ++i)
        q[i] = _mm256_cvtps_epi32(_mm256_round_ps(_mm256_mul_ps(v[i], id), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
    const __m256i total = _mm256_add_epi32(_mm256_add_epi32(q[0], q[1]), _mm256_add_epi32(q[2], q[3]));
    __m128i t4 = _mm_add_epi32(_mm256_castsi256_si128(total), _mm256_extracti128_si256(total, 1));
    t4 = _mm_hadd_epi32(t4, t4);
    t4 = _mm_hadd_epi32(t4, t4);
    out->d = d;
    out->s = d * static_cast<float>(_mm_cvtsi128_si32(t4));
    // 32-bit -> 16 -> 8 packs interleave 128-bit lanes; the permute puts the elements back in order
    __m256i p16a = _mm256_packs_epi32(q[0], q[1]), p16b = _mm256_packs_epi32(q[2], q[3]);
    __m256i p8 = _mm256_packs_epi16(p16a, p16b);
    p8 = _mm256_permutevar8x32_epi32(p8, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(out->q), p8);
#else
    float max = 0.0f;
    for (int i = 0; i < QK; ++i) max = std::max(max, std::fabs(x[i]));
    const float d = max / 127.0f, id = max != 0.0f ? 127.0f / max : 0.0f;
    int sum = 0;
    for (int i = 0; i < QK; ++i) {
        const int q = static_cast<int>(std::nearbyint(x[i] * id));
        out->q[i] = static_cast<int8_t>(q);
        sum += q;
    }
    out->d = d;
    out->s = d * static_cast<float>(sum);
#endif
}

// -- a weight block's integer dot product with x's --------------------------------------------------

#if EMBER_QGEMM_AVX2
inline __m256i nibbles(const uint8_t* qs) {
    const __m128i t = _mm_loadu_si128(reinterpret_cast<const __m128i*>(qs));
    return _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16(t, 4), t), _mm256_set1_epi8(0x0f));
}

inline __m256i high_bits(const uint8_t* qh) {  // byte j: 0x10 where bit j of qh is set
    __m256i v = _mm256_set1_epi32(static_cast<int>(load32(qh)));
    v = _mm256_shuffle_epi8(v, _mm256_setr_epi64x(0x0000000000000000, 0x0101010101010101, 0x0202020202020202,
                                                  0x0303030303030303));
    v = _mm256_or_si256(v, _mm256_set1_epi64x(0x7fbfdfeff7fbfdfe));
    return _mm256_and_si256(_mm256_cmpeq_epi8(v, _mm256_set1_epi64x(-1)), _mm256_set1_epi8(0x10));
}

// acc + each 32-bit lane's 4 products of u (unsigned bytes) and s (signed bytes), exactly: where
// there is no VNNI, maddubs's int16 pair sums (at most 2 * 255 * 128 in magnitude: exact for the
// callers', whose unsigned side is at most 127 or whose pairs stay inside int16) then madd by ones
inline __m256i dot4(__m256i acc, __m256i u, __m256i s) {
#if EMBER_QGEMM_VNNI
    return EMBER_DPBUSD(acc, u, s);
#else
    return _mm256_add_epi32(acc, _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), _mm256_set1_epi16(1)));
#endif
}

// sum over 8 lanes of q_w q_x products (int32, as float): q_w unsigned (4/5-bit), or signed (8-bit)
template <int F>
inline __m256 block_dot(const uint8_t* w, __m256i xq) {
    constexpr Format f = FORMATS[F];
    if constexpr (f.eight_bit) {
        const __m256i q = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w + 2));
        return _mm256_cvtepi32_ps(dot4(_mm256_setzero_si256(), _mm256_sign_epi8(q, q), _mm256_sign_epi8(xq, q)));
    } else {
        const uint8_t* qs = w + 2 + 2 * f.has_min + 4 * f.high_bits;
        __m256i q = nibbles(qs);
        if constexpr (f.high_bits) q = _mm256_or_si256(q, high_bits(w + 2 + 2 * f.has_min));
        return _mm256_cvtepi32_ps(dot4(_mm256_setzero_si256(), q, xq));
    }
}

inline float hsum(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}
#endif

template <int F>
inline int block_q(const uint8_t* w, int j) {  // weight j of a block, as stored (before d and o)
    constexpr Format f = FORMATS[F];
    if constexpr (f.eight_bit) return static_cast<int8_t>(w[2 + j]);
    const uint8_t* qs = w + 2 + 2 * f.has_min + 4 * f.high_bits;
    int q = j < 16 ? (qs[j] & 0x0f) : (qs[j - 16] >> 4);
    if constexpr (f.high_bits) q |= ((load32(w + 2 + 2 * f.has_min) >> j) & 1) << 4;
    return q;
}

template <int F>
inline float block_offset(const uint8_t* w, float d) {
    constexpr Format f = FORMATS[F];
    if constexpr (f.has_min) return half_to_float(load16(w + 2));
    return f.offset * d;
}

#if !EMBER_QGEMM_AVX2
// a weight block's integer dot product with x's, in the portable loops. Kept out of line and not
// vectorized: GCC 12 -march=native on an AVX-VNNI CPU turns q8_0's int8 x int8 sum into vpdpbusd,
// which reads one side as unsigned (every q8_0 dot wrong: tests/codegen/test_quantized_gemm.py)
template <int F>
__attribute__((noinline, optimize("no-tree-vectorize"))) int block_sum(const uint8_t* w, const int8_t* xq) {
    int sum = 0;
    for (int j = 0; j < QK; ++j) sum += block_q<F>(w, j) * xq[j];
    return sum;
}
#endif

// dots [R] of weight rows w[0..R) (each `blocks` blocks) with one quantized row of x
template <int F, int R>
inline void rows_dot(const uint8_t* const* w, const XBlock* x, int64_t blocks, float* dots) {
    constexpr int B = FORMATS[F].bytes;
    float offset[R] = {};
#if EMBER_QGEMM_AVX2
    __m256 acc[R];
    for (int r = 0; r < R; ++r) acc[r] = _mm256_setzero_ps();
    for (int64_t b = 0; b < blocks; ++b) {
        const XBlock& xb = x[b];
        const __m256i xq = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xb.q));
        for (int r = 0; r < R; ++r) {
            const uint8_t* wb = w[r] + b * B;
            const float d = half_to_float(load16(wb));
            acc[r] = _mm256_fmadd_ps(block_dot<F>(wb, xq), _mm256_set1_ps(d * xb.d), acc[r]);
            if constexpr (FORMATS[F].offset != 0.0f || FORMATS[F].has_min) offset[r] += block_offset<F>(wb, d) * xb.s;
        }
    }
    for (int r = 0; r < R; ++r) dots[r] = hsum(acc[r]) + offset[r];
#else
    for (int r = 0; r < R; ++r) {
        float acc = 0.0f;
        for (int64_t b = 0; b < blocks; ++b) {
            const XBlock& xb = x[b];
            const uint8_t* wb = w[r] + b * B;
            const float d = half_to_float(load16(wb));
            acc += d * xb.d * static_cast<float>(block_sum<F>(wb, xb.q));
            if constexpr (FORMATS[F].offset != 0.0f || FORMATS[F].has_min) offset[r] += block_offset<F>(wb, d) * xb.s;
        }
        dots[r] = acc + offset[r];
    }
#endif
}

inline float activate(float v, int activation) {
    switch (activation) {
        case 1: return v > 0.0f ? v : 0.0f;
        case 2: return 0.5f * v * (1.0f + std::erf(v * 0.70710678118654752f));
        case 3: return 0.5f * v * (1.0f + std::tanh(0.7978845608028654f * (v + 0.044715f * v * v * v)));
        case 4: return v / (1.0f + std::exp(-v));
        default: return v;
    }
}

template <int F>
void gemm(const XBlock* xq, int64_t rows, int64_t blocks, const uint8_t* w, int64_t n, int64_t w_row_bytes,
          const float* bias, float* y, int64_t y_stride, int activation, int threads) {
    const int64_t groups = (n + WROWS - 1) / WROWS;
#pragma omp parallel for schedule(static) num_threads(threads) if (threads > 1 && groups > 1)
    for (int64_t g = 0; g < groups; ++g) {
        const int64_t first = g * WROWS, count = std::min<int64_t>(WROWS, n - first);
        const uint8_t* wr[WROWS];
        for (int r = 0; r < WROWS; ++r) wr[r] = w + (first + std::min<int64_t>(r, count - 1)) * w_row_bytes;
        float dots[WROWS];
        for (int64_t m = 0; m < rows; ++m) {
            rows_dot<F, WROWS>(wr, xq + m * blocks, blocks, dots);
            float* out = y + m * y_stride + first;
            for (int r = 0; r < count; ++r) out[r] = activate(dots[r] + (bias ? bias[first + r] : 0.0f), activation);
        }
    }
}

// -- K-quants: llama.cpp's superblocks of 256 (Q4_K, Q5_K, Q6_K), kept as the file stores them ------
// A superblock is 8 groups of 32 weights, each group against one of x's blocks of 32:
//
//   5 q4_k  (144 bytes) f16 d, f16 dmin, scales[12] (8 6-bit scales and mins), nibbles[128]
//           group g: q = nibble of byte 32 (g / 2) + j, low for even g; w = d sc_g q - dmin m_g
//   6 q5_k  (176 bytes) as q4_k with qh[32] before the nibbles: bit g of qh[j] is q's bit 4
//   7 q6_k  (210 bytes) ql[128], qh[64], int8 scales[16], f16 d; group g = 4 n + k (half n of
//           128): q = nibble of ql[64 n + 32 (k & 1) + j] (high for k >= 2) | 2 bits of qh[32 n + j]
//           (bits 2k, 2k+1) << 4; w = d sc[8 n + 2 k + j / 16] (q - 32)
//
// (ggml's dequantize_row_q4_K / q5_K / q6_K; gguf's numpy versions are the reference.) A group's
// integer sum of q x products is exact (AVX2 maddubs: at most 2 * 63 * 127 a pair), then scaled in
// float32; the rows run as they are (no interleaved packing).

constexpr int QK_K = 256;

inline bool is_k(int64_t f) { return f >= 5 && f <= 7; }

inline int k_bytes(int f) { return f == 5 ? 144 : f == 6 ? 176 : 210; }

inline int64_t elements(int64_t f) { return is_k(f) ? QK_K : QK; }

inline int64_t row_bytes(int64_t f, int64_t k) {
    return is_k(f) ? k / QK_K * k_bytes(static_cast<int>(f)) : k / QK * FORMATS[f].bytes;
}

// q4_k / q5_k: group j's 6-bit scale and min (ggml's get_scale_min_k4)
inline void scale_min(int j, const uint8_t* q, int& sc, int& m) {
    if (j < 4) {
        sc = q[j] & 63;
        m = q[j + 4] & 63;
    } else {
        sc = (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4);
        m = (q[j + 4] >> 4) | ((q[j] >> 6) << 4);
    }
}

// q of group g, element j (0..31)
template <int F>
inline int k_q(const uint8_t* w, int g, int j) {
    if constexpr (F == 7) {
        const int n = g / 4, k = g % 4;
        const uint8_t l = w[64 * n + 32 * (k & 1) + j];
        return ((k >= 2 ? l >> 4 : l & 0xF) | (((w[128 + 32 * n + j] >> (2 * k)) & 3) << 4));
    } else {
        const uint8_t* qs = w + (F == 5 ? 16 : 48);
        const uint8_t l = qs[32 * (g / 2) + j];
        int q = g % 2 ? l >> 4 : l & 0xF;
        if constexpr (F == 6) q |= ((w[16 + j] >> g) & 1) << 4;
        return q;
    }
}

// q6_k: the int8 scale of group g's element j (each half of a group has its own)
inline int k6_scale(const uint8_t* w, int g, int j) {
    return reinterpret_cast<const int8_t*>(w + 192)[8 * (g / 4) + 2 * (g % 4) + j / 16];
}

// the dot product of one superblock with x's 8 blocks
template <int F>
inline float k_dot(const uint8_t* w, const XBlock* x) {
    float total = 0.0f;
    if constexpr (F == 7) {
        const float d = half_to_float(load16(w + 208));
#if EMBER_QGEMM_AVX2
        const int8_t* sc = reinterpret_cast<const int8_t*>(w + 192);
        __m256 acc = _mm256_setzero_ps();
        const __m256i low = _mm256_set1_epi8(0x0f), three = _mm256_set1_epi8(3), offset = _mm256_set1_epi8(32);
        for (int n = 0; n < 2; ++n) {
            const __m256i l0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w + 64 * n));
            const __m256i l1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w + 64 * n + 32));
            const __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w + 128 + 32 * n));
            const __m256i nib[4] = {_mm256_and_si256(l0, low), _mm256_and_si256(l1, low),
                                    _mm256_and_si256(_mm256_srli_epi16(l0, 4), low),
                                    _mm256_and_si256(_mm256_srli_epi16(l1, 4), low)};
            for (int k = 0; k < 4; ++k) {
                const XBlock& xb = x[4 * n + k];
                const __m256i xq = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xb.q));
                const __m256i hi = _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(h, 2 * k), three), 4);
                const __m256i q = _mm256_or_si256(nib[k], hi);
                // (q - 32) x in int16 pairs: at most 2 * 63 * 127 + 2 * 32 * 128 in magnitude
                const __m256i p = _mm256_sub_epi16(_mm256_maddubs_epi16(q, xq), _mm256_maddubs_epi16(offset, xq));
                const __m256i scales = _mm256_set_m128i(_mm_set1_epi16(sc[8 * n + 2 * k + 1]),
                                                        _mm_set1_epi16(sc[8 * n + 2 * k]));
                const __m256 sums = _mm256_cvtepi32_ps(_mm256_madd_epi16(p, scales));
                acc = _mm256_fmadd_ps(sums, _mm256_set1_ps(d * xb.d), acc);
            }
        }
        total = hsum(acc);
#else
        for (int g = 0; g < 8; ++g) {
            int sum = 0;
            for (int j = 0; j < 32; ++j) sum += k6_scale(w, g, j) * (k_q<F>(w, g, j) - 32) * x[g].q[j];
            total += d * x[g].d * static_cast<float>(sum);
        }
#endif
        return total;
    } else {
        const float d = half_to_float(load16(w)), dmin = half_to_float(load16(w + 2));
        const uint8_t* scales = w + 4;
        float mins = 0.0f;
#if EMBER_QGEMM_AVX2
        __m256 acc = _mm256_setzero_ps();
        const __m256i low = _mm256_set1_epi8(0x0f), one = _mm256_set1_epi8(1);
        const uint8_t* qs = w + (F == 5 ? 16 : 48);
        __m256i qh = _mm256_setzero_si256();
        if constexpr (F == 6) qh = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w + 16));
        for (int c = 0; c < 4; ++c) {
            const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(qs + 32 * c));
            for (int half = 0; half < 2; ++half) {
                const int g = 2 * c + half;
                int sc, m;
                scale_min(g, scales, sc, m);
                __m256i q = half ? _mm256_and_si256(_mm256_srli_epi16(v, 4), low) : _mm256_and_si256(v, low);
                if constexpr (F == 6)
                    q = _mm256_or_si256(q, _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, g), one), 4));
                const XBlock& xb = x[g];
                const __m256i xq = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xb.q));
                const __m256 sums = _mm256_cvtepi32_ps(dot4(_mm256_setzero_si256(), q, xq));
                acc = _mm256_fmadd_ps(sums, _mm256_set1_ps(d * static_cast<float>(sc) * xb.d), acc);
                mins += dmin * static_cast<float>(m) * xb.s;
            }
        }
        total = hsum(acc);
#else
        for (int g = 0; g < 8; ++g) {
            int sc, m;
            scale_min(g, scales, sc, m);
            int sum = 0;
            for (int j = 0; j < 32; ++j) sum += k_q<F>(w, g, j) * x[g].q[j];
            total += d * static_cast<float>(sc) * x[g].d * static_cast<float>(sum);
            mins += dmin * static_cast<float>(m) * x[g].s;
        }
#endif
        return total - mins;
    }
}

// y rows of K-quant weights: threads split the weight's rows, each row read once per call
template <int F>
void k_gemm(const XBlock* xq, int64_t rows, int64_t blocks, const uint8_t* w, int64_t n, int64_t w_row_bytes,
            const float* bias, float* y, int64_t y_stride, int activation, int threads) {
    const int64_t supers = blocks / 8, bytes = k_bytes(F);
#pragma omp parallel for schedule(static) num_threads(threads) if (threads > 1 && n > 1)
    for (int64_t r = 0; r < n; ++r) {
        const uint8_t* wr = w + r * w_row_bytes;
        for (int64_t m = 0; m < rows; ++m) {
            const XBlock* x = xq + m * blocks;
            float dot = 0.0f;
            for (int64_t s = 0; s < supers; ++s) dot += k_dot<F>(wr + s * bytes, x + 8 * s);
            y[m * y_stride + r] = activate(dot + (bias ? bias[r] : 0.0f), activation);
        }
    }
}

// -- rows interleaved -------------------------------------------------------------------------------
// `ember_qgemm_pack` lays q8_0, q4_0, q4_1, q5_0 and q5_1 weights out in groups of GROUP rows (8, or 16
// where the build has AVX-512's 16-lane registers; the last group padded with zero rows), block by
// block: the group's d (f16) in one run, then (q4_1, q5_1) their m, then (q5) their 32 high bits, row
// r at bytes 4r..4r+3, then their quants in chunks of 4 GROUP bytes, chunk c holding 4 bytes of each
// row in turn (row r at bytes 4r..4r+3): bytes 4c..4c+3 of the row's block (q4: elements 4c..4c+3 in
// the low nibbles, 16+4c.. in the high; q8_0: elements 4c..4c+3). The same bytes as the rows' blocks,
// moved: a chunk times x's 4 elements broadcast (one dot4) gives each row's partial sum in its own
// 32-bit lane, so the group's dots, their scales and their offsets stay lanes of one register, with
// no horizontal sums. The layout is the build's own: packed at prepare, by the library that runs it.

#if EMBER_QGEMM_AVX2 && defined(__AVX512F__) && defined(__AVX512BW__) && !defined(EMBER_QGEMM_NO_AVX512)
#define EMBER_QGEMM_AVX512 1
constexpr int GROUP = 16;
#else
constexpr int GROUP = 8;
#endif
constexpr int CHUNK = 4 * GROUP;  // bytes of a chunk of quants

inline bool packs(int f) { return f >= 0 && f <= 4; }

inline int64_t group_block_bytes(int f) { return GROUP * FORMATS[f].bytes; }

void pack(int f, const uint8_t* w, int64_t n, int64_t blocks, int64_t w_row_bytes, uint8_t* out) {
    const Format fm = FORMATS[f];
    const int64_t groups = (n + GROUP - 1) / GROUP, gb = group_block_bytes(f);
    const int scales = 2 + 2 * fm.has_min, chunks = fm.eight_bit ? 8 : 4;
    std::memset(out, 0, groups * blocks * gb);
    for (int64_t row = 0; row < n; ++row) {
        const int64_t g = row / GROUP, r = row % GROUP;
        for (int64_t b = 0; b < blocks; ++b) {
            const uint8_t* src = w + row * w_row_bytes + b * fm.bytes;
            uint8_t* dst = out + (g * blocks + b) * gb;
            std::memcpy(dst + 2 * r, src, 2);                                  // d
            if (fm.has_min) std::memcpy(dst + 2 * GROUP + 2 * r, src + 2, 2);  // m
            if (fm.high_bits) std::memcpy(dst + GROUP * scales + 4 * r, src + scales, 4);  // q5: high bits
            uint8_t* q = dst + GROUP * (scales + 4 * fm.high_bits);
            const uint8_t* qs = src + scales + 4 * fm.high_bits;
            for (int c = 0; c < chunks; ++c) std::memcpy(q + CHUNK * c + 4 * r, qs + 4 * c, 4);
        }
    }
}

#if EMBER_QGEMM_AVX2
// A group's registers: VI (GROUP 32-bit lanes of integers, or 4 GROUP bytes) and VF (GROUP floats),
// with the few operations the group's dots take, at the build's width. VDOT4: vdot4 is one
// instruction (VNNI at that width), so nothing is summed in int16 first.
#if EMBER_QGEMM_AVX512
#if defined(__AVX512VNNI__) && !defined(EMBER_QGEMM_NO_VNNI)
#define EMBER_QGEMM_VDOT4 1
#endif
using VI = __m512i;
using VF = __m512;
inline VI vload(const uint8_t* p) { return _mm512_loadu_si512(p); }
inline VF vhalves(const uint8_t* p) { return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p))); }
inline VI vbytes(int v) { return _mm512_set1_epi8(static_cast<char>(v)); }
inline VI vzeroi() { return _mm512_setzero_si512(); }
inline VI vbroadcast4(const int8_t* p) { int32_t v; std::memcpy(&v, p, 4); return _mm512_set1_epi32(v); }
inline VI vand(VI a, VI b) { return _mm512_and_si512(a, b); }
inline VI vor(VI a, VI b) { return _mm512_or_si512(a, b); }
inline VI vsub8(VI a, VI b) { return _mm512_sub_epi8(a, b); }
inline VI vhigh4(VI v) { return _mm512_and_si512(_mm512_srli_epi16(v, 4), vbytes(0x0f)); }
inline VI vabs8(VI v) { return _mm512_abs_epi8(v); }
// s negated where v's byte is negative (where v's is 0, the caller's |v| makes the product 0)
inline VI vsign8(VI s, VI v) { return _mm512_mask_sub_epi8(s, _mm512_movepi8_mask(v), _mm512_setzero_si512(), s); }
inline VI vadd16(VI a, VI b) { return _mm512_add_epi16(a, b); }
inline VI vmaddubs(VI u, VI s) { return _mm512_maddubs_epi16(u, s); }
inline VI vpairs(VI a) { return _mm512_madd_epi16(a, _mm512_set1_epi16(1)); }
inline VI vdot4(VI acc, VI u, VI s) {
#if EMBER_QGEMM_VDOT4
    return _mm512_dpbusd_epi32(acc, u, s);
#else
    return _mm512_add_epi32(acc, vpairs(vmaddubs(u, s)));
#endif
}
inline VI vhigh_nibble_bits(VI qh, int shift) {  // (as high_nibble_bits below)
    const VI bits = _mm512_and_si512(_mm512_srl_epi32(qh, _mm_cvtsi32_si128(shift)), _mm512_set1_epi32(0xf));
    const VI spread = _mm512_and_si512(_mm512_mullo_epi32(bits, _mm512_set1_epi32(0x00204081)), _mm512_set1_epi32(0x01010101));
    return _mm512_slli_epi32(spread, 4);
}
inline VF vcvt(VI a) { return _mm512_cvtepi32_ps(a); }
inline VF vzerof() { return _mm512_setzero_ps(); }
inline VF vset1(float v) { return _mm512_set1_ps(v); }
inline VF vmul(VF a, VF b) { return _mm512_mul_ps(a, b); }
inline VF vadd(VF a, VF b) { return _mm512_add_ps(a, b); }
inline VF vfmadd(VF a, VF b, VF c) { return _mm512_fmadd_ps(a, b, c); }
inline VF vloadf(const float* p) { return _mm512_loadu_ps(p); }
inline void vstoref(float* p, VF v) { _mm512_storeu_ps(p, v); }
#else
#if EMBER_QGEMM_VNNI
#define EMBER_QGEMM_VDOT4 1
#endif
using VI = __m256i;
using VF = __m256;
inline VI vload(const uint8_t* p) { return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)); }
inline VF vhalves(const uint8_t* p) { return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))); }
inline VI vbytes(int v) { return _mm256_set1_epi8(static_cast<char>(v)); }
inline VI vzeroi() { return _mm256_setzero_si256(); }
inline VI vbroadcast4(const int8_t* p) { int32_t v; std::memcpy(&v, p, 4); return _mm256_set1_epi32(v); }
inline VI vand(VI a, VI b) { return _mm256_and_si256(a, b); }
inline VI vor(VI a, VI b) { return _mm256_or_si256(a, b); }
inline VI vsub8(VI a, VI b) { return _mm256_sub_epi8(a, b); }
inline VI vhigh4(VI v) { return _mm256_and_si256(_mm256_srli_epi16(v, 4), vbytes(0x0f)); }
inline VI vabs8(VI v) { return _mm256_sign_epi8(v, v); }
inline VI vsign8(VI s, VI v) { return _mm256_sign_epi8(s, v); }
inline VI vadd16(VI a, VI b) { return _mm256_add_epi16(a, b); }
inline VI vmaddubs(VI u, VI s) { return _mm256_maddubs_epi16(u, s); }
inline VI vpairs(VI a) { return _mm256_madd_epi16(a, _mm256_set1_epi16(1)); }
inline VI vdot4(VI acc, VI u, VI s) { return dot4(acc, u, s); }
// q5: per 32-bit lane (a row), bits `shift`..`shift` + 3 of its high bits as 0x10 in bytes 0..3 (x
// 0x00204081 moves bit i to bit 8i, no two bits landing on the same one)
inline VI vhigh_nibble_bits(VI qh, int shift) {
    const VI bits = _mm256_and_si256(_mm256_srl_epi32(qh, _mm_cvtsi32_si128(shift)), _mm256_set1_epi32(0xf));
    const VI spread = _mm256_and_si256(_mm256_mullo_epi32(bits, _mm256_set1_epi32(0x00204081)), _mm256_set1_epi32(0x01010101));
    return _mm256_slli_epi32(spread, 4);
}
inline VF vcvt(VI a) { return _mm256_cvtepi32_ps(a); }
inline VF vzerof() { return _mm256_setzero_ps(); }
inline VF vset1(float v) { return _mm256_set1_ps(v); }
inline VF vmul(VF a, VF b) { return _mm256_mul_ps(a, b); }
inline VF vadd(VF a, VF b) { return _mm256_add_ps(a, b); }
inline VF vfmadd(VF a, VF b, VF c) { return _mm256_fmadd_ps(a, b, c); }
inline VF vloadf(const float* p) { return _mm256_loadu_ps(p); }
inline void vstoref(float* p, VF v) { _mm256_storeu_ps(p, v); }
#endif

// v unchanged, through an empty asm that takes it in a register: GCC may not move the adds before it past
// it. In a q4 block's chain of int16 adds (no VNNI) GCC otherwise reassociates each row's adds into a
// tree, computes all 32 products of the block (MR 4) first and spills 20 of them to the stack (171
// instructions a block, 49 of them spills and reloads; in order 150 with 8): q4_0 and q4_1 at [64-256 x
// 576] x SmolLM2's weights 1.05-1.27x the speed with it on a 2-core AMD EPYC Zen 3, the same sums. (Not
// for the other formats: q8_0's and q5's chains, of 32-bit adds, ran 10-25% slower held in order.)
inline void in_order(VI& v) { asm("" : "+v"(v)); }

// the dots of NG groups of rows (w[g]) with MR rows of x (x[m]: row m's blocks), into out[g][m][0..GROUP):
// each chunk of weights is loaded (and its nibbles unpacked) once for the MR rows, and each 4 bytes of x
// broadcast once for the NG groups. NG groups far apart in memory are read in step (a batch-1 GEMV: two
// streams per thread keep more of the memory's bandwidth busy than one). A row's offsets (o_w d_x sum q_x)
// go into the same accumulator as its products.
template <int F, int MR, int NG>
inline void group_dot(const uint8_t* const* wg, const XBlock* const* x, int64_t blocks, float (*out)[GROUP]) {
    constexpr Format fm = FORMATS[F];
    constexpr int64_t gb = GROUP * fm.bytes;
    constexpr int scales = 2 + 2 * fm.has_min;
    const VI low = vbytes(0x0f);
    VF acc[NG][MR];
    for (int g = 0; g < NG; ++g)
        for (int m = 0; m < MR; ++m) acc[g][m] = vzerof();
    for (int64_t b = 0; b < blocks; ++b) {
        const uint8_t* w[NG];
        const uint8_t* q[NG];
        VI sums[NG][MR];
        for (int g = 0; g < NG; ++g) {
            w[g] = wg[g] + b * gb;
            q[g] = w[g] + GROUP * (scales + 4 * fm.high_bits);
            for (int m = 0; m < MR; ++m) sums[g][m] = vzeroi();
        }
        if constexpr (fm.eight_bit) {
            // |q| times x with q's sign: |q| at most 128, so maddubs's pairs stay inside int16
            for (int c = 0; c < 8; ++c) {
                VI v[NG], magnitude[NG];
                for (int g = 0; g < NG; ++g) {
                    v[g] = vload(q[g] + CHUNK * c);
                    magnitude[g] = vabs8(v[g]);
                }
                for (int m = 0; m < MR; ++m) {
                    const VI xs = vbroadcast4(x[m][b].q + 4 * c);
                    for (int g = 0; g < NG; ++g) sums[g][m] = vdot4(sums[g][m], magnitude[g], vsign8(xs, v[g]));
                }
            }
        } else if constexpr (fm.high_bits) {
            // q5_0's q - 16 is summed here, exactly (signed: |q - 16| times x signed like q - 16), not
            // as a -16 d sum(x) term after: the two terms nearly cancel, and their float32 roundings
            // would not
            VI qh[NG];
            for (int g = 0; g < NG; ++g) qh[g] = vload(w[g] + GROUP * scales);
            for (int c = 0; c < 4; ++c) {
                VI lo[NG], hi[NG];
                for (int g = 0; g < NG; ++g) {
                    const VI v = vload(q[g] + CHUNK * c);
                    lo[g] = vor(vand(v, low), vhigh_nibble_bits(qh[g], 4 * c));
                    hi[g] = vor(vhigh4(v), vhigh_nibble_bits(qh[g], 16 + 4 * c));
                    if constexpr (!fm.has_min) {
                        lo[g] = vsub8(lo[g], vbytes(16));
                        hi[g] = vsub8(hi[g], vbytes(16));
                    }
                }
                for (int m = 0; m < MR; ++m) {
                    const VI xl = vbroadcast4(x[m][b].q + 4 * c), xh = vbroadcast4(x[m][b].q + 16 + 4 * c);
                    for (int g = 0; g < NG; ++g) {
                        if constexpr (fm.has_min)
                            sums[g][m] = vdot4(vdot4(sums[g][m], lo[g], xl), hi[g], xh);
                        else
                            sums[g][m] = vdot4(vdot4(sums[g][m], vabs8(lo[g]), vsign8(xl, lo[g])), vabs8(hi[g]),
                                               vsign8(xh, hi[g]));
                    }
                }
            }
        } else {
            for (int c = 0; c < 4; ++c) {
                VI lo[NG], hi[NG];
                for (int g = 0; g < NG; ++g) {
                    const VI v = vload(q[g] + CHUNK * c);
                    lo[g] = vand(v, low);
                    hi[g] = vhigh4(v);
                }
                for (int m = 0; m < MR; ++m) {
                    const VI xl = vbroadcast4(x[m][b].q + 4 * c), xh = vbroadcast4(x[m][b].q + 16 + 4 * c);
                    for (int g = 0; g < NG; ++g) {
#if EMBER_QGEMM_VDOT4
                        sums[g][m] = vdot4(vdot4(sums[g][m], lo[g], xl), hi[g], xh);
#else
                        // 8 products of 4-bit by 8-bit pairs: at most 8 * 2 * 15 * 127 < 2^15, summed in int16
                        sums[g][m] = vadd16(vadd16(sums[g][m], vmaddubs(lo[g], xl)), vmaddubs(hi[g], xh));
                        in_order(sums[g][m]);
#endif
                    }
                }
            }
#if !EMBER_QGEMM_VDOT4
            for (int g = 0; g < NG; ++g)
                for (int m = 0; m < MR; ++m) sums[g][m] = vpairs(sums[g][m]);
#endif
        }
        for (int g = 0; g < NG; ++g) {
            const VF d = vhalves(w[g]);
            VF offsets = d;  // (q4_1, q5_1: m; q4_0: d, times -8 below)
            if constexpr (fm.has_min) offsets = vhalves(w[g] + 2 * GROUP);
            for (int m = 0; m < MR; ++m) {
                const XBlock& xb = x[m][b];
                acc[g][m] = vfmadd(vcvt(sums[g][m]), vmul(d, vset1(xb.d)), acc[g][m]);
                if constexpr (fm.has_min)
                    acc[g][m] = vfmadd(offsets, vset1(xb.s), acc[g][m]);
                else if constexpr (fm.offset != 0.0f && !fm.high_bits)  // (q5_0's: in the sums)
                    acc[g][m] = vfmadd(offsets, vset1(fm.offset * xb.s), acc[g][m]);
            }
        }
    }
    for (int g = 0; g < NG; ++g)
        for (int m = 0; m < MR; ++m) vstoref(out[g * MR + m], acc[g][m]);
}
#else
template <int F>
inline void group_dot_one(const uint8_t* w, const XBlock* x, int64_t blocks, float* out) {
    constexpr Format fm = FORMATS[F];
    constexpr int64_t gb = GROUP * fm.bytes;
    constexpr int scales = 2 + 2 * fm.has_min;
    for (int r = 0; r < GROUP; ++r) out[r] = 0.0f;
    for (int64_t b = 0; b < blocks; ++b, w += gb) {
        const XBlock& xb = x[b];
        const uint8_t* q = w + GROUP * (scales + 4 * fm.high_bits);
        for (int r = 0; r < GROUP; ++r) {
            const float d = half_to_float(load16(w + 2 * r));
            const uint32_t qh = fm.high_bits ? load32(w + GROUP * scales + 4 * r) : 0;
            int sum = 0;
            for (int c = 0; c < (fm.eight_bit ? 8 : 4); ++c) {
                for (int i = 0; i < 4; ++i) {
                    const uint8_t byte = q[CHUNK * c + 4 * r + i];
                    if (fm.eight_bit) {
                        sum += static_cast<int8_t>(byte) * xb.q[4 * c + i];
                    } else {
                        const int j = 4 * c + i;  // (q5: bit j of qh is element j's fifth bit; q5_0: less 16)
                        const int shift = fm.high_bits && !fm.has_min ? 16 : 0;
                        sum += (((byte & 0x0f) | (((qh >> j) & 1) << 4)) - shift) * xb.q[j] +
                               (((byte >> 4) | (((qh >> (16 + j)) & 1) << 4)) - shift) * xb.q[16 + j];
                    }
                }
            }
            const float offset = fm.has_min ? half_to_float(load16(w + 2 * GROUP + 2 * r))
                                 : fm.high_bits ? 0.0f : fm.offset * d;  // (q5_0's: in the sum)
            out[r] += d * xb.d * static_cast<float>(sum) + offset * xb.s;
        }
    }
}

template <int F, int MR, int NG>
inline void group_dot(const uint8_t* const* wg, const XBlock* const* x, int64_t blocks, float (*out)[GROUP]) {
    for (int g = 0; g < NG; ++g)
        for (int m = 0; m < MR; ++m) group_dot_one<F>(wg[g], x[m], blocks, out[g * MR + m]);
}
#endif

constexpr int XROWS = 4;  // rows of x sharing each pass over a group's weights
// groups of weight rows sharing each load of x's bytes in a batched call: 2 where AVX-512's 32 registers
// hold 2 x XROWS sums and accumulators (16 of them) beside the unpacked chunks, else 1 (AVX2's 16 would spill)
constexpr int PASS = GROUP == 16 ? 2 : 1;

// group_dot for mr (1..XROWS) rows of x
template <int F, int NG>
inline void group_dots(int mr, const uint8_t* const* wg, const XBlock* const* x, int64_t blocks, float (*out)[GROUP]) {
    switch (mr) {
        case 4: group_dot<F, 4, NG>(wg, x, blocks, out); break;
        case 3: group_dot<F, 3, NG>(wg, x, blocks, out); break;
        case 2: group_dot<F, 2, NG>(wg, x, blocks, out); break;
        default: group_dot<F, 1, NG>(wg, x, blocks, out); break;
    }
}
constexpr int64_t MCHUNK = 64;  // rows of x (2.8 KiB of int8 blocks a row at K = 2048) kept in L2

inline void store_group(const float* dots, int64_t first, int64_t count, const float* bias, float* out, int activation) {
#if EMBER_QGEMM_AVX2
    if (count == GROUP && activation == 0) {  // (the common case: a whole group, no epilogue but the bias)
        VF v = vloadf(dots);
        if (bias) v = vadd(v, vloadf(bias + first));
        vstoref(out, v);
        return;
    }
#endif
    for (int64_t r = 0; r < count; ++r) out[r] = activate(dots[r] + (bias ? bias[first + r] : 0.0f), activation);
}

template <int F>
void packed_gemm(const XBlock* xq, int64_t rows, int64_t blocks, const uint8_t* w, int64_t n, const float* bias,
                 float* y, int64_t y_stride, int activation, int threads) {
    const int64_t groups = (n + GROUP - 1) / GROUP, gb = group_block_bytes(F) * blocks;  // gb: a group's bytes
    auto count = [&](int64_t g) { return std::min<int64_t>(GROUP, n - g * GROUP); };
    if (rows == 1) {  // batch 1: group p with group p + half, two streams per thread
        const int64_t half = groups / 2;
#pragma omp parallel for schedule(static) num_threads(threads) if (threads > 1 && half > 1)
        for (int64_t p = 0; p < half; ++p) {
            float dots[2][GROUP];
            const uint8_t* wg[2] = {w + p * gb, w + (p + half) * gb};
            group_dot<F, 1, 2>(wg, &xq, blocks, dots);
            store_group(dots[0], p * GROUP, count(p), bias, y + p * GROUP, activation);
            store_group(dots[1], (p + half) * GROUP, count(p + half), bias, y + (p + half) * GROUP, activation);
        }
        if (groups % 2) {
            float dots[1][GROUP];
            const uint8_t* wg[1] = {w + (groups - 1) * gb};
            group_dot<F, 1, 1>(wg, &xq, blocks, dots);
            store_group(dots[0], (groups - 1) * GROUP, count(groups - 1), bias, y + (groups - 1) * GROUP, activation);
        }
        return;
    }
    // rows of x in chunks of MCHUNK (their int8 blocks stay in the core's L2 while every group of the
    // weight, from L3, passes over them); a thread takes consecutive (chunk, PASS groups) pairs
    const int64_t chunks = (rows + MCHUNK - 1) / MCHUNK, passes = (groups + PASS - 1) / PASS;
#pragma omp parallel for collapse(2) schedule(static) num_threads(threads) if (threads > 1 && chunks * passes > 1)
    for (int64_t chunk = 0; chunk < chunks; ++chunk) {
      for (int64_t p = 0; p < passes; ++p) {
        const int64_t g0 = p * PASS;
        const int ng = static_cast<int>(std::min<int64_t>(PASS, groups - g0));
        const uint8_t* wg[PASS];
        for (int i = 0; i < PASS; ++i) wg[i] = w + std::min(g0 + i, groups - 1) * gb;
        float dots[PASS * XROWS][GROUP];
        const int64_t end = std::min(rows, (chunk + 1) * MCHUNK);
        for (int64_t m0 = chunk * MCHUNK; m0 < end; m0 += XROWS) {
            const int mr = static_cast<int>(std::min<int64_t>(XROWS, end - m0));
            const XBlock* x[XROWS];
            for (int m = 0; m < XROWS; ++m) x[m] = xq + (m0 + std::min(m, mr - 1)) * blocks;
            if (ng == PASS)
                group_dots<F, PASS>(mr, wg, x, blocks, dots);
            else
                group_dots<F, 1>(mr, wg, x, blocks, dots);
            for (int i = 0; i < ng; ++i)  // (group_dot's out[g * MR + m], MR = mr)
                for (int m = 0; m < mr; ++m)
                    store_group(dots[i * mr + m], (g0 + i) * GROUP, count(g0 + i), bias,
                                y + (m0 + m) * y_stride + (g0 + i) * GROUP, activation);
        }
      }
    }
}

// -- rows dequantized (an embedding's lookup from its blocks) -------------------------------------
// Each value as gguf's dequantization computes it in float32: d q (q8_0), d (q - 8) (q4_0), d (q - 16)
// (q5_0), d q + m (q4_1, q5_1); the K-quants (d sc) q - dmin m and (d sc) (q - 32).
template <int F>
void dequantize_row(const uint8_t* w, int64_t k, float* out) {
    if constexpr (F >= 5) {
        for (int64_t s = 0; s < k / QK_K; ++s, w += k_bytes(F), out += QK_K) {
            for (int g = 0; g < 8; ++g) {
                for (int j = 0; j < 32; ++j) {
                    if constexpr (F == 7) {
                        const float scale = half_to_float(load16(w + 208)) * static_cast<float>(k6_scale(w, g, j));
                        out[32 * g + j] = scale * static_cast<float>(k_q<F>(w, g, j) - 32);
                    } else {
                        int sc, m;
                        scale_min(g, w + 4, sc, m);
                        const float scale = half_to_float(load16(w)) * static_cast<float>(sc);
                        const float low = half_to_float(load16(w + 2)) * static_cast<float>(m);
                        out[32 * g + j] = scale * static_cast<float>(k_q<F>(w, g, j)) - low;
                    }
                }
            }
        }
    } else {
        constexpr Format f = FORMATS[F];
        for (int64_t b = 0; b < k / QK; ++b, w += f.bytes) {
            const float d = half_to_float(load16(w));
            const float m = f.has_min ? half_to_float(load16(w + 2)) : 0.0f;
            const int shift = f.has_min || f.eight_bit ? 0 : (f.high_bits ? 16 : 8);
            for (int j = 0; j < QK; ++j) {
                const int q = block_q<F>(w, j);
                out[b * QK + j] = f.has_min ? d * static_cast<float>(q) + m : d * static_cast<float>(q - shift);
            }
        }
    }
}

thread_local std::vector<XBlock> x_blocks;

}  // namespace

extern "C" {

// What the build runs, as flags: 1 AVX2 (0: the portable loops), 2 VNNI's 256-bit dot products, 4
// AVX-512 groups of 16 interleaved rows, 8 the groups' dot products in one instruction (VNNI)
int64_t ember_qgemm_simd() {
    int64_t flags = 0;
#if EMBER_QGEMM_AVX2
    flags |= 1;
#endif
#if EMBER_QGEMM_VNNI
    flags |= 2;
#endif
#if EMBER_QGEMM_AVX512
    flags |= 4;
#endif
#if EMBER_QGEMM_VDOT4
    flags |= 8;
#endif
    return flags;
}

// Bytes of `format`'s weight [n, k] packed by ember_qgemm_pack (0: the format is not packed; its rows
// run as they are).
int64_t ember_qgemm_packed_bytes(int64_t format, int64_t n, int64_t k) {
    if (format < 0 || format > 7 || !packs(static_cast<int>(format)) || k % QK) return 0;
    return (n + GROUP - 1) / GROUP * (k / QK) * group_block_bytes(static_cast<int>(format));
}

// out (ember_qgemm_packed_bytes) = the weight [n, k] (rows w_row_bytes apart) in groups of 8 rows.
void ember_qgemm_pack(int64_t format, const uint8_t* w, int64_t n, int64_t k, int64_t w_row_bytes, uint8_t* out) {
    if (ember_qgemm_packed_bytes(format, n, k) == 0) return;
    pack(static_cast<int>(format), w, n, k / QK, w_row_bytes, out);
}

// y [rows, n] (rows y_stride floats apart) = act(x [rows, k] (rows x_stride apart) . W^T + bias [n]),
// W [n, k] in `format`'s blocks, w_row_bytes apart (w_row_bytes 0: W packed by ember_qgemm_pack); k a
// multiple of 32 (of 256 for the K-quants, formats 5-7). Returns 0, or -1 for a bad call.
int ember_qgemm(int64_t format, const float* x, int64_t rows, int64_t k, int64_t x_stride, const uint8_t* w,
                int64_t n, int64_t w_row_bytes, const float* bias, float* y, int64_t y_stride, int64_t activation,
                int64_t threads) {
    if (format < 0 || format > 7 || k % elements(format) || rows < 0 || n < 0) return -1;
    const int64_t blocks = k / QK;
    const bool packed = w_row_bytes == 0;
    if (packed ? !packs(static_cast<int>(format)) : w_row_bytes < row_bytes(format, k)) return -1;
    if (rows == 0 || n == 0) return 0;
    const int t = static_cast<int>(std::max<int64_t>(1, threads));
    std::vector<XBlock>& xq = x_blocks;
    if (static_cast<int64_t>(xq.size()) < rows * blocks) xq.resize(rows * blocks);
    XBlock* xqp = xq.data();
#pragma omp parallel for schedule(static) num_threads(t) if (t > 1 && rows * blocks >= 256)
    for (int64_t i = 0; i < rows * blocks; ++i) quantize_block(x + (i / blocks) * x_stride + (i % blocks) * QK, xqp + i);
    const int act = static_cast<int>(activation);
    if (packed) {
        switch (format) {
            case 0: packed_gemm<0>(xqp, rows, blocks, w, n, bias, y, y_stride, act, t); break;
            case 1: packed_gemm<1>(xqp, rows, blocks, w, n, bias, y, y_stride, act, t); break;
            case 2: packed_gemm<2>(xqp, rows, blocks, w, n, bias, y, y_stride, act, t); break;
            case 3: packed_gemm<3>(xqp, rows, blocks, w, n, bias, y, y_stride, act, t); break;
            case 4: packed_gemm<4>(xqp, rows, blocks, w, n, bias, y, y_stride, act, t); break;
        }
        return 0;
    }
    switch (format) {
        case 0: gemm<0>(xqp, rows, blocks, w, n, w_row_bytes, bias, y, y_stride, act, t); break;
        case 1: gemm<1>(xqp, rows, blocks, w, n, w_row_bytes, bias, y, y_stride, act, t); break;
        case 2: gemm<2>(xqp, rows, blocks, w, n, w_row_bytes, bias, y, y_stride, act, t); break;
        case 3: gemm<3>(xqp, rows, blocks, w, n, w_row_bytes, bias, y, y_stride, act, t); break;
        case 4: gemm<4>(xqp, rows, blocks, w, n, w_row_bytes, bias, y, y_stride, act, t); break;
        case 5: k_gemm<5>(xqp, rows, blocks, w, n, w_row_bytes, bias, y, y_stride, act, t); break;
        case 6: k_gemm<6>(xqp, rows, blocks, w, n, w_row_bytes, bias, y, y_stride, act, t); break;
        case 7: k_gemm<7>(xqp, rows, blocks, w, n, w_row_bytes, bias, y, y_stride, act, t); break;
    }
    return 0;
}

// out [count, k] = rows ids[0..count) of W [n, k] in `format`'s blocks (rows w_row_bytes apart),
// dequantized. Returns 0, or -1 for a bad call (an id outside [0, n), k not whole blocks).
int ember_qgemm_dequantize_rows(int64_t format, const uint8_t* w, int64_t n, int64_t k, int64_t w_row_bytes,
                                const int64_t* ids, int64_t count, float* out, int64_t threads) {
    if (format < 0 || format > 7 || k % elements(format) || w_row_bytes < row_bytes(format, k)) return -1;
    for (int64_t i = 0; i < count; ++i)
        if (ids[i] < 0 || ids[i] >= n) return -1;
    const int t = static_cast<int>(std::max<int64_t>(1, threads));
#pragma omp parallel for schedule(static) num_threads(t) if (t > 1 && count * k >= (1 << 16))
    for (int64_t i = 0; i < count; ++i) {
        const uint8_t* row = w + ids[i] * w_row_bytes;
        float* o = out + i * k;
        switch (format) {
            case 0: dequantize_row<0>(row, k, o); break;
            case 1: dequantize_row<1>(row, k, o); break;
            case 2: dequantize_row<2>(row, k, o); break;
            case 3: dequantize_row<3>(row, k, o); break;
            case 4: dequantize_row<4>(row, k, o); break;
            case 5: dequantize_row<5>(row, k, o); break;
            case 6: dequantize_row<6>(row, k, o); break;
            case 7: dequantize_row<7>(row, k, o); break;
        }
    }
    return 0;
}

// The step form (runtime/executor.py: a chained run): ctx = {format, x's slot, w's slot, packed w (0:
// none), bias's slot (-1: none), y's slot, rows, k, n, activation, threads}, the buffers' addresses
// read from the slots B when it runs.
int ember_qgemm_step(const int64_t* c, char** B, const int64_t*) {
    const uint8_t* w = c[3] ? reinterpret_cast<const uint8_t*>(c[3]) : reinterpret_cast<const uint8_t*>(B[c[2]]);
    return ember_qgemm(c[0], reinterpret_cast<const float*>(B[c[1]]), c[6], c[7], c[7], w, c[8],
                       c[3] ? 0 : row_bytes(c[0], c[7]), c[4] >= 0 ? reinterpret_cast<const float*>(B[c[4]]) : nullptr,
                       reinterpret_cast<float*>(B[c[5]]), c[8], c[9], c[10]);
}

// The row lookup's step form: ctx = {format, w's slot, ids' slot, out's slot, n, k, count, threads}.
int ember_qgemm_dequantize_rows_step(const int64_t* c, char** B, const int64_t*) {
    return ember_qgemm_dequantize_rows(c[0], reinterpret_cast<const uint8_t*>(B[c[1]]), c[4], c[5],
                                       row_bytes(c[0], c[5]), reinterpret_cast<const int64_t*>(B[c[2]]), c[6],
                                       reinterpret_cast<float*>(B[c[3]]), c[7]);
}

}  // extern "C"
