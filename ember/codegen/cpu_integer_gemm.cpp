// The 8-bit integer GEMM of MatMulInteger, QLinearMatMul and com.microsoft.MatMulIntegerToFloat:
//
//   acc [rows, n] = (A - a_zero) [rows, k] . (B - b_zero) [k, n]       exactly, in int32
//
// A and B each uint8 or int8, a_zero one value, b_zero one value or one per column; every sum is
// the exact one, wrapped to int32 only where the true sum leaves int32 (as the reference's int32
// arithmetic wraps). B (a constant weight: once, when the step is prepared) is packed by
// ember_igemm_pack into panels of 16 columns, in one of two kinds:
//
//   kind 1 (int8)  B - shift as int8 (shift 0 for int8 B, 128 for uint8), when that lies in
//                  [-127, 127]: 4 rows x 16 columns in 64 bytes. A's rows become a' = A - shift_a
//                  (int8) beside |a'|, and AVX2's maddubs multiplies |a'| (unsigned) by w with a''s
//                  sign (sign_epi8): each product at most 128 x 127, a pair's 16-bit sum at most
//                  32512, never saturated (onnxruntime's AVX2 kernel multiplies A by B directly
//                  and saturates pairs past 2^15: 255 x 127 x 2). The zero points come back as
//                  acc = sum a'w + d_c sum a' + (shift_a - a_zero) (sum_k w + k d_c), d_c =
//                  shift_b - b_zero, from each row's sum and each column's, in int32. Under VNNI
//                  (vpdpbusd: unsigned x signed bytes, 4 products summed straight into int32, no
//                  pair to saturate) a' = A - shift_a is uint8 instead (shift_a 0 for uint8 A, -128
//                  for int8), multiplied by w as it is, and kind 1 takes any int8 B - shift.
//   kind 0 (int16) B - b_zero as int16 (in [-255, 255]; for a B of uint8 with zeros, or int8 with
//                  -128s): 2 rows x 16 columns in 64 bytes, A centered into int16 the same way, and
//                  AVX2's madd (two int16 products summed into int32) multiplies them: half the
//                  products per instruction, exact without conditions.
//
// A tile of rows of A x one panel keeps its accumulators in registers for the whole k.
//
// Epilogues (`mode`): 0 the int32 sums; 1 float32 acc * scale (one value or one per column) + bias
// (the product rounded before the bias is added, as the graph's Mul then Add round it); 2 / 3
// requantized to uint8 / int8: rint(acc * multiplier + y_zero) clipped, in double (QLinearMatMul's
// reference). The caller: runtime/native/integer_gemm.py.
//
// ember_dynamic_quantize is DynamicQuantizeLinear, which makes A from float32 activations: one pass
// for the tensor's range, one to quantize (onnx's reference arithmetic, in float32).

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <vector>

#if defined(__AVX2__) && !defined(EMBER_IGEMM_SCALAR)  // (tests build it without, too)
#include <immintrin.h>
#define EMBER_IGEMM_AVX2 1
// VNNI (vpdpbusd: 4 unsigned x signed 8-bit products summed into each int32 lane, exactly) runs
// kind 1 directly, A made unsigned rather than split into sign and magnitude: a panel's 4 rows x
// 16 columns are one AVX-512 register, or two of AVX-VNNI's 256 bits (tests build it without, too)
#if !defined(EMBER_IGEMM_NO_VNNI) && !defined(EMBER_IGEMM_NO_AVX512) && defined(__AVX512VNNI__) && \
    defined(__AVX512BW__)
#define EMBER_IGEMM_VNNI 1
#define EMBER_IGEMM_VNNI512 1
#elif !defined(EMBER_IGEMM_NO_VNNI) && defined(__AVXVNNI__)
#define EMBER_IGEMM_VNNI 1
#define EMBER_IGEMM_DPBUSD _mm256_dpbusd_avx_epi32
#elif !defined(EMBER_IGEMM_NO_VNNI) && defined(__AVX512VNNI__) && defined(__AVX512VL__)
#define EMBER_IGEMM_VNNI 1
#define EMBER_IGEMM_DPBUSD _mm256_dpbusd_epi32
#endif
#endif

namespace {

constexpr int NR = 16;          // columns of B per panel
constexpr int64_t MCHUNK = 96;  // rows of A a thread's tiles take in turn (their rows stay in L2)
constexpr int64_t HEADER = 64;  // bytes before a packed B's data: kind, k, n

// the shift that makes an 8-bit value of type T an int8 (kind 1): 0 for int8, 128 for uint8
template <typename T>
constexpr int shift_of() { return std::is_signed<T>::value ? 0 : 128; }

// kind 1's A is prepared as a' = A - a_shift: an int8 beside its magnitude where products go through
// AVX2's maddubs (a_shift: shift_of), an uint8 under VNNI (a_shift: 0 for uint8, -128 for int8)
template <typename T>
constexpr int a_shift() {
#if EMBER_IGEMM_VNNI
    return std::is_signed<T>::value ? -128 : 0;
#else
    return shift_of<T>();
#endif
}

// kind 1's bytes of A per 4 of k: a' (4 bytes) and, without VNNI, |a'| (4 more)
#if EMBER_IGEMM_VNNI512
constexpr int A_BYTES = 4;
constexpr int TILE_ROWS = 8;   // (kind 1: a tile is 8 rows of A x 2 panels, 16 accumulators; a
                               // broadcast of A serves 32 columns, a panel's load 8 rows)
constexpr int TILE_PANELS = 2;
#elif EMBER_IGEMM_VNNI
constexpr int A_BYTES = 4;
constexpr int TILE_ROWS = 6;   // (12 accumulators of a 16-column panel, 2 weight vectors, A's)
constexpr int TILE_PANELS = 1;
#else
constexpr int A_BYTES = 8;
constexpr int TILE_ROWS = 4;   // (8 accumulators, 2 weight vectors, 2 of A, ones, a temporary)
constexpr int TILE_PANELS = 1;
#endif

// A packed B's layout; its accessors take the packed bytes, read-only or (packing) writable.
struct Packed {
    int64_t kind, k, n;
    int64_t groups() const { return kind ? (k + 3) / 4 : (k + 1) / 2; }  // k in steps of 4 (int8) or 2 (int16)
    int64_t panels() const { return (n + NR - 1) / NR; }
    int64_t panel_bytes() const { return groups() * 64; }
    int64_t column_terms() const { return kind ? 2 * panels() * NR : 0; }  // int8: d_c, then e_c
    int64_t bytes() const { return HEADER + column_terms() * 4 + panels() * panel_bytes(); }
    template <typename C> C* panel(C* base, int64_t p) const { return base + HEADER + column_terms() * 4 + p * panel_bytes(); }
    const int32_t* d(const char* base) const { return reinterpret_cast<const int32_t*>(base + HEADER); }
    const int32_t* e(const char* base) const { return d(base) + panels() * NR; }
    int32_t* d(char* base) const { return reinterpret_cast<int32_t*>(base + HEADER); }
    int32_t* e(char* base) const { return d(base) + panels() * NR; }
};

template <typename T>
void pack(const Packed& f, const T* b, int64_t stride, const T* zero, int64_t zero_count, char* out) {
    std::memset(out, 0, f.bytes());
    std::memcpy(out, &f, sizeof(Packed));
    constexpr int shift = shift_of<T>();
    for (int64_t c = 0; c < f.n; ++c) {
        const int z = zero_count == 0 ? 0 : static_cast<int>(zero[zero_count == 1 ? 0 : c]);
        char* panel = f.panel(out, c / NR);
        int64_t sum = 0;
        for (int64_t r = 0; r < f.k; ++r) {
            const int v = static_cast<int>(b[r * stride + c]);
            if (f.kind) {
                reinterpret_cast<int8_t*>(panel)[(r / 4) * 64 + (c % NR) * 4 + r % 4] = static_cast<int8_t>(v - shift);
                sum += v - shift;
            } else {
                reinterpret_cast<int16_t*>(panel)[(r / 2) * 32 + (c % NR) * 2 + r % 2] = static_cast<int16_t>(v - z);
            }
        }
        if (f.kind) {
            f.d(out)[c] = shift - z;
            f.e(out)[c] = static_cast<int32_t>(static_cast<uint32_t>(sum) + static_cast<uint32_t>(f.k) *
                                               static_cast<uint32_t>(shift - z));
        }
    }
}

inline int32_t load32(const void* p) { int32_t v; std::memcpy(&v, p, 4); return v; }

// out [M][16] = the int32 sums of M prepared rows of A (a[m]) with a panel, kind 0: rows of int16
// pairs; kind 1: per 4 of k, a' (4 int8) then |a'| (4 bytes), or under VNNI a' (4 uint8)
template <int KIND, int M>
inline void tile(const char* const* a, const char* w, int64_t groups, int32_t (*out)[NR]) {
#if EMBER_IGEMM_VNNI512
    if constexpr (KIND == 1) {  // (one panel: the last of an odd count)
        __m512i acc[M];
        for (int m = 0; m < M; ++m) acc[m] = _mm512_setzero_si512();
        for (int64_t j = 0; j < groups; ++j) {
            const __m512i v = _mm512_loadu_si512(w + j * 64);
            for (int m = 0; m < M; ++m) acc[m] = _mm512_dpbusd_epi32(acc[m], _mm512_set1_epi32(load32(a[m] + 4 * j)), v);
        }
        for (int m = 0; m < M; ++m) _mm512_storeu_si512(out[m], acc[m]);
        return;
    }
#elif EMBER_IGEMM_VNNI
    if constexpr (KIND == 1) {
        __m256i acc[M][2];
        for (int m = 0; m < M; ++m) acc[m][0] = acc[m][1] = _mm256_setzero_si256();
        for (int64_t j = 0; j < groups; ++j) {
            const __m256i w0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w + j * 64));
            const __m256i w1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w + j * 64 + 32));
            for (int m = 0; m < M; ++m) {
                const __m256i x = _mm256_set1_epi32(load32(a[m] + 4 * j));
                acc[m][0] = EMBER_IGEMM_DPBUSD(acc[m][0], x, w0);
                acc[m][1] = EMBER_IGEMM_DPBUSD(acc[m][1], x, w1);
            }
        }
        for (int m = 0; m < M; ++m) {
            _mm256_storeu_si256(reinterpret_cast<__m256i*>(out[m]), acc[m][0]);
            _mm256_storeu_si256(reinterpret_cast<__m256i*>(out[m] + 8), acc[m][1]);
        }
        return;
    }
#endif
#if EMBER_IGEMM_AVX2
    __m256i acc[M][2];
    for (int m = 0; m < M; ++m) acc[m][0] = acc[m][1] = _mm256_setzero_si256();
    const __m256i ones = _mm256_set1_epi16(1);
    for (int64_t j = 0; j < groups; ++j) {
        const __m256i w0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w + j * 64));
        const __m256i w1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w + j * 64 + 32));
        for (int m = 0; m < M; ++m) {
            if constexpr (KIND == 0) {
                const __m256i x = _mm256_set1_epi32(load32(a[m] + 4 * j));
                acc[m][0] = _mm256_add_epi32(acc[m][0], _mm256_madd_epi16(x, w0));
                acc[m][1] = _mm256_add_epi32(acc[m][1], _mm256_madd_epi16(x, w1));
            } else {
                const __m256i x = _mm256_set1_epi32(load32(a[m] + 8 * j));
                const __m256i magnitude = _mm256_set1_epi32(load32(a[m] + 8 * j + 4));
                acc[m][0] = _mm256_add_epi32(acc[m][0], _mm256_madd_epi16(_mm256_maddubs_epi16(magnitude, _mm256_sign_epi8(w0, x)), ones));
                acc[m][1] = _mm256_add_epi32(acc[m][1], _mm256_madd_epi16(_mm256_maddubs_epi16(magnitude, _mm256_sign_epi8(w1, x)), ones));
            }
        }
    }
    for (int m = 0; m < M; ++m) {
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(out[m]), acc[m][0]);
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(out[m] + 8), acc[m][1]);
    }
#else
    for (int m = 0; m < M; ++m) {
        uint32_t acc[NR] = {};  // (unsigned: wraps as int32 does, without signed overflow)
        for (int64_t j = 0; j < groups; ++j) {
            for (int c = 0; c < NR; ++c) {
                if constexpr (KIND == 0) {
                    const int16_t* x = reinterpret_cast<const int16_t*>(a[m]) + 2 * j;
                    const int16_t* v = reinterpret_cast<const int16_t*>(w + j * 64) + 2 * c;
                    acc[c] += static_cast<uint32_t>(x[0] * v[0] + x[1] * v[1]);
                } else {
                    const int8_t* v = reinterpret_cast<const int8_t*>(w + j * 64) + 4 * c;
#if EMBER_IGEMM_VNNI
                    const uint8_t* x = reinterpret_cast<const uint8_t*>(a[m]) + 4 * j;
#else
                    const int8_t* x = reinterpret_cast<const int8_t*>(a[m]) + 8 * j;
#endif
                    for (int i = 0; i < 4; ++i) acc[c] += static_cast<uint32_t>(x[i] * v[i]);
                }
            }
        }
        for (int c = 0; c < NR; ++c) out[m][c] = static_cast<int32_t>(acc[c]);
    }
#endif
}

struct Epilogue {
    int mode;                 // 0 int32, 1 float32, 2 uint8, 3 int8
    const float* scale;       // mode 1: one value (scale_count 1) or one per column
    int64_t scale_count;
    const float* bias;        // mode 1: one per column, or null
    const double* multiplier; // modes 2, 3: one value or one per column
    int64_t multiplier_count;
    double y_zero;
};

template <typename F>
inline F barrier(F v) {  // keeps a product rounded on its own (no fused multiply-add with what follows)
#if defined(__GNUC__)
    __asm__("" : "+x"(v));
#endif
    return v;
}

// row `acc` (columns c0..c0+count) of the result into y's row
inline void store(const int32_t* acc, int64_t c0, int count, const Epilogue& e, char* y) {
#if EMBER_IGEMM_AVX2
    if (count == NR && e.mode == 1) {  // a whole panel's row in float32: 2 x 8 lanes, each op rounded
        float* out = reinterpret_cast<float*>(y) + c0;
        for (int h = 0; h < NR; h += 8) {
            const __m256 scale = e.scale_count == 1 ? _mm256_set1_ps(e.scale[0]) : _mm256_loadu_ps(e.scale + c0 + h);
            __m256 v = barrier(_mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(acc + h))), scale));
            if (e.bias) v = _mm256_add_ps(v, _mm256_loadu_ps(e.bias + c0 + h));
            _mm256_storeu_ps(out + h, v);
        }
        return;
    }
#endif
    switch (e.mode) {
        case 0:
            std::memcpy(reinterpret_cast<int32_t*>(y) + c0, acc, count * sizeof(int32_t));
            break;
        case 1: {
            float* out = reinterpret_cast<float*>(y) + c0;
            for (int c = 0; c < count; ++c) {
                float v = barrier(static_cast<float>(acc[c]) * e.scale[e.scale_count == 1 ? 0 : c0 + c]);
                out[c] = e.bias ? v + e.bias[c0 + c] : v;
            }
            break;
        }
        default: {
            const double low = e.mode == 2 ? 0.0 : -128.0, high = e.mode == 2 ? 255.0 : 127.0;
            for (int c = 0; c < count; ++c) {
                const double m = e.multiplier[e.multiplier_count == 1 ? 0 : c0 + c];
                const double v = std::min(high, std::max(low, std::nearbyint(barrier(static_cast<double>(acc[c]) * m) + e.y_zero)));
                if (e.mode == 2) reinterpret_cast<uint8_t*>(y)[c0 + c] = static_cast<uint8_t>(v);
                else reinterpret_cast<int8_t*>(y)[c0 + c] = static_cast<int8_t>(v);
            }
        }
    }
}

inline int element_bytes(int mode) { return mode <= 1 ? 4 : 1; }

thread_local std::vector<char> prepared;      // A's rows, as the kind's tiles read them
thread_local std::vector<int32_t> row_sums;   // kind 1: sum of each row's a'

// row r of A prepared: kind 0 (A - a_zero) as int16; kind 1 a' = A - a_shift (and |a'|) per 4
template <int KIND, typename T>
void prepare_row(const T* a, int64_t k, int a_zero, int64_t groups, char* out, int32_t* sum) {
    if constexpr (KIND == 0) {
        int16_t* o = reinterpret_cast<int16_t*>(out);
        for (int64_t i = 0; i < k; ++i) o[i] = static_cast<int16_t>(static_cast<int>(a[i]) - a_zero);
        for (int64_t i = k; i < 2 * groups; ++i) o[i] = 0;
    } else {
        constexpr int shift = a_shift<T>();
        int32_t total = 0;
        for (int64_t j = 0; j < groups; ++j) {
            for (int i = 0; i < 4; ++i) {
                const int v = 4 * j + i < k ? static_cast<int>(a[4 * j + i]) - shift : 0;
                out[A_BYTES * j + i] = static_cast<char>(v);
                if constexpr (A_BYTES == 8) out[8 * j + 4 + i] = static_cast<char>(static_cast<uint8_t>(v < 0 ? -v : v));
                total += v;
            }
        }
        *sum = total;
    }
}

#if EMBER_IGEMM_VNNI512
// kind 1, two panels (w, w + panel_bytes) at once: out [M][32]
template <int M>
inline void tile_pair(const char* const* a, const char* w, int64_t panel_bytes, int64_t groups, int32_t (*out)[2 * NR]) {
    __m512i acc[M][2];
    for (int m = 0; m < M; ++m) acc[m][0] = acc[m][1] = _mm512_setzero_si512();
    for (int64_t j = 0; j < groups; ++j) {
        const __m512i v0 = _mm512_loadu_si512(w + j * 64), v1 = _mm512_loadu_si512(w + panel_bytes + j * 64);
        for (int m = 0; m < M; ++m) {
            const __m512i x = _mm512_set1_epi32(load32(a[m] + 4 * j));
            acc[m][0] = _mm512_dpbusd_epi32(acc[m][0], x, v0);
            acc[m][1] = _mm512_dpbusd_epi32(acc[m][1], x, v1);
        }
    }
    for (int m = 0; m < M; ++m) {
        _mm512_storeu_si512(out[m], acc[m][0]);
        _mm512_storeu_si512(out[m] + NR, acc[m][1]);
    }
}
#endif

// the int32 sums of a tile's mr rows (at most M) of A with `panels` panels (1, or 2 where
// TILE_PANELS is): out [M][TILE_PANELS * NR], panel q's columns from q * NR
template <int KIND, int M>
inline void tile_of(int mr, int panels, const char* const* a, const char* w, int64_t panel_bytes, int64_t groups,
                    int32_t (*out)[TILE_PANELS * NR]) {
    if constexpr (M > 1) {
        if (mr < M) return tile_of<KIND, M - 1>(mr, panels, a, w, panel_bytes, groups, out);
    }
#if EMBER_IGEMM_VNNI512
    if constexpr (KIND == 1) {
        if (panels == 2) return tile_pair<M>(a, w, panel_bytes, groups, out);
    }
#endif
    if constexpr (TILE_PANELS == 1) {
        tile<KIND, M>(a, w, groups, out);
    } else {  // one panel into the first NR columns of out's rows
        int32_t one[M][NR];
        tile<KIND, M>(a, w, groups, one);
        for (int m = 0; m < M; ++m) std::memcpy(out[m], one[m], sizeof(one[m]));
    }
}

template <int KIND, typename T>
void run(const T* a, int64_t rows, int64_t a_stride, int a_zero, const Packed& f, const char* w, const Epilogue& e,
         char* y, int64_t y_stride, int threads) {
    constexpr int MR = KIND ? TILE_ROWS : 6;
    const int64_t groups = f.groups(), row = KIND ? A_BYTES * groups : 4 * groups, n = f.n, panels = f.panels();
    if (static_cast<int64_t>(prepared.size()) < rows * row) prepared.resize(rows * row);
    if (static_cast<int64_t>(row_sums.size()) < rows) row_sums.resize(rows);
    char* ap = prepared.data();
    int32_t* sums = row_sums.data();
#pragma omp parallel for schedule(static) num_threads(threads) if (threads > 1 && rows * f.k >= (1 << 15))
    for (int64_t r = 0; r < rows; ++r) prepare_row<KIND>(a + r * a_stride, f.k, a_zero, groups, ap + r * row, sums + r);
    const int32_t* d = KIND ? f.d(w) : nullptr;
    const int32_t* ez = KIND ? f.e(w) : nullptr;
    const uint32_t zero_term = static_cast<uint32_t>(a_shift<T>() - a_zero);
    const int64_t chunks = (rows + MCHUNK - 1) / MCHUNK, bytes = element_bytes(e.mode);
    constexpr int PN = KIND ? TILE_PANELS : 1;  // panels a tile takes at once
    const int64_t steps = (panels + PN - 1) / PN;
#pragma omp parallel for collapse(2) schedule(static) num_threads(threads) if (threads > 1 && chunks * steps > 1)
    for (int64_t chunk = 0; chunk < chunks; ++chunk) {
        for (int64_t step = 0; step < steps; ++step) {
            const int64_t p0 = step * PN;
            const int these = static_cast<int>(std::min<int64_t>(PN, panels - p0));
            const int64_t end = std::min(rows, (chunk + 1) * MCHUNK);
            int32_t out[MR][TILE_PANELS * NR];
            for (int64_t m0 = chunk * MCHUNK; m0 < end; m0 += MR) {
                const int mr = static_cast<int>(std::min<int64_t>(MR, end - m0));
                const char* x[MR];
                for (int m = 0; m < MR; ++m) x[m] = ap + (m0 + std::min(m, mr - 1)) * row;
                tile_of<KIND, MR>(mr, these, x, f.panel(w, p0), f.panel_bytes(), groups, out);
                for (int q = 0; q < these; ++q) {
                    const int64_t p = p0 + q;
                    const int count = static_cast<int>(std::min<int64_t>(NR, n - p * NR));
                    for (int m = 0; m < mr; ++m) {
                        int32_t* o = out[m] + q * NR;
                        if constexpr (KIND == 1) {  // the zero points' terms (uint32: wraps as int32 does)
                            const uint32_t s = static_cast<uint32_t>(sums[m0 + m]);
#if EMBER_IGEMM_VNNI512
                            if (count == NR) {  // (a whole panel's row: one register; the same wrapping adds)
                                const __m512i dv = _mm512_loadu_si512(d + p * NR);
                                const __m512i ev = _mm512_loadu_si512(ez + p * NR);
                                const __m512i sv = _mm512_set1_epi32(static_cast<int32_t>(s));
                                const __m512i zv = _mm512_set1_epi32(static_cast<int32_t>(zero_term));
                                __m512i v = _mm512_add_epi32(_mm512_loadu_si512(o), _mm512_mullo_epi32(dv, sv));
                                v = _mm512_add_epi32(v, _mm512_mullo_epi32(ev, zv));
                                _mm512_storeu_si512(o, v);
                                store(o, p * NR, count, e, y + (m0 + m) * y_stride * bytes);
                                continue;
                            }
#endif
                            for (int c = 0; c < count; ++c)
                                o[c] = static_cast<int32_t>(static_cast<uint32_t>(o[c]) +
                                                            static_cast<uint32_t>(d[p * NR + c]) * s +
                                                            zero_term * static_cast<uint32_t>(ez[p * NR + c]));
                        }
                        store(o, p * NR, count, e, y + (m0 + m) * y_stride * bytes);
                    }
                }
            }
        }
    }
}

// x's least and greatest values; false where x holds a NaN or an infinity
bool range(const float* x, int64_t n, int threads, float* lo_out, float* hi_out) {
    float lo = 0.0f, hi = 0.0f;  // (the reference's range always includes 0)
    int bad = 0;
#pragma omp parallel num_threads(threads) if (threads > 1 && n >= (1 << 15))
    {
        float l = 0.0f, h = 0.0f;
        int b = 0;
        int64_t i0 = 0;
#if EMBER_IGEMM_AVX2
        __m256 vl = _mm256_setzero_ps(), vh = _mm256_setzero_ps();
        __m256 unordered = _mm256_setzero_ps();
        const int64_t vectors = n / 8;
#pragma omp for schedule(static) nowait
        for (int64_t v = 0; v < vectors; ++v) {
            const __m256 x8 = _mm256_loadu_ps(x + 8 * v);
            unordered = _mm256_or_ps(unordered, _mm256_cmp_ps(x8, x8, _CMP_UNORD_Q));
            vl = _mm256_min_ps(vl, x8);
            vh = _mm256_max_ps(vh, x8);
        }
        float ls[8], hs[8];
        _mm256_storeu_ps(ls, vl);
        _mm256_storeu_ps(hs, vh);
        for (int j = 0; j < 8; ++j) { l = std::min(l, ls[j]); h = std::max(h, hs[j]); }
        b = _mm256_movemask_ps(unordered) != 0;
        i0 = vectors * 8;
#endif
#pragma omp for schedule(static) nowait
        for (int64_t i = i0; i < n; ++i) {
            if (x[i] != x[i]) b = 1;
            l = std::min(l, x[i]);
            h = std::max(h, x[i]);
        }
#pragma omp critical
        {
            lo = std::min(lo, l);
            hi = std::max(hi, h);
            bad |= b;
        }
    }
    *lo_out = lo;
    *hi_out = hi;
    return !bad && std::isfinite(lo) && std::isfinite(hi);
}

}  // namespace

extern "C" {

// DynamicQuantizeLinear of x [n]: y (uint8), its scale and zero point, as onnx's reference computes
// them (in float32: scale = (max(x, 0) - min(x, 0)) / 255, or 1 / 255 where that range is 0; zero =
// rint(clip(0 - min / scale, 0, 255)); y = clip(rint(x / scale) + zero, 0, 255)). Returns 0, or 1
// where x holds a NaN or an infinity (nothing written: the caller's reference takes it).
int ember_dynamic_quantize(const float* x, int64_t n, uint8_t* y, float* scale_out, uint8_t* zero_out,
                           int64_t threads) {
    const int t = static_cast<int>(std::max<int64_t>(1, threads));
    float lo, hi;
    if (!range(x, n, t, &lo, &hi)) return 1;
    const float scale = (hi == lo ? 1.0f : hi - lo) / 255.0f;
    const float zero = std::nearbyint(std::min(255.0f, std::max(0.0f, 0.0f - lo / scale)));
    int64_t i0 = 0;
#if EMBER_IGEMM_AVX2
    const int64_t vectors = n / 32;
    const __m256 s = _mm256_set1_ps(scale), z = _mm256_set1_ps(zero), top = _mm256_set1_ps(255.0f);
    const __m256 bottom = _mm256_setzero_ps();
#pragma omp parallel for schedule(static) num_threads(t) if (t > 1 && n >= (1 << 15))
    for (int64_t v = 0; v < vectors; ++v) {
        __m256i q[4];
        for (int j = 0; j < 4; ++j) {
            __m256 r = _mm256_round_ps(_mm256_div_ps(_mm256_loadu_ps(x + 32 * v + 8 * j), s),
                                       _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
            r = _mm256_min_ps(top, _mm256_max_ps(bottom, _mm256_add_ps(r, z)));
            q[j] = _mm256_cvtps_epi32(r);
        }
        // 32-bit -> 16 -> 8 packs interleave 128-bit lanes; the permute puts the elements back in order
        __m256i p = _mm256_packus_epi16(_mm256_packs_epi32(q[0], q[1]), _mm256_packs_epi32(q[2], q[3]));
        p = _mm256_permutevar8x32_epi32(p, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(y + 32 * v), p);
    }
    i0 = vectors * 32;
#endif
    for (int64_t i = i0; i < n; ++i)
        y[i] = static_cast<uint8_t>(std::min(255.0f, std::max(0.0f, std::nearbyint(x[i] / scale) + zero)));
    *scale_out = scale;
    *zero_out = static_cast<uint8_t>(zero);
    return 0;
}


// What the build runs, as flags: 1 AVX2 (0: the portable loops), 2 VNNI (kind 1's products in
// vpdpbusd), 4 at AVX-512's width
int64_t ember_igemm_simd() {
    int64_t flags = 0;
#if EMBER_IGEMM_AVX2
    flags |= 1;
#endif
#if EMBER_IGEMM_VNNI
    flags |= 2;
#endif
#if EMBER_IGEMM_VNNI512
    flags |= 4;
#endif
    return flags;
}

// Whether kind 1 takes every int8 B - shift, -128 included (VNNI's products, unlike maddubs's pairs,
// cannot saturate; and the portable loops' cannot either, but they share the AVX2 build's choice)
int64_t ember_igemm_any_int8() {
#if EMBER_IGEMM_VNNI
    return 1;
#else
    return 0;
#endif
}

// Bytes of B [k, n] packed as `kind` (1: int8, B - shift in [-127, 127]; 0: int16) by ember_igemm_pack.
int64_t ember_igemm_packed_bytes(int64_t kind, int64_t k, int64_t n) {
    if ((kind != 0 && kind != 1) || k < 0 || n < 0) return 0;
    return Packed{kind, k, n}.bytes();
}

// out = B [k, n] in panels of 16 columns, as `kind`; B uint8 (b_signed 0) or int8, rows b_stride
// elements apart; zero B's type, zero_count values (0: none, 1, or n: one per column). Returns 0, or
// -1 where kind 1 does not hold B (a value of B - shift is -128).
int ember_igemm_pack(int64_t kind, const void* b, int64_t b_signed, int64_t k, int64_t n, int64_t b_stride,
                     const void* zero, int64_t zero_count, void* out) {
    const Packed f{kind, k, n};
    if (kind == 1 && !ember_igemm_any_int8()) {
        for (int64_t r = 0; r < k; ++r)
            for (int64_t c = 0; c < n; ++c) {
                const int v = b_signed ? static_cast<const int8_t*>(b)[r * b_stride + c]
                                       : static_cast<const uint8_t*>(b)[r * b_stride + c] - 128;
                if (v == -128) return -1;
            }
    }
    char* o = static_cast<char*>(out);
    if (b_signed)
        pack(f, static_cast<const int8_t*>(b), b_stride, static_cast<const int8_t*>(zero), zero_count, o);
    else
        pack(f, static_cast<const uint8_t*>(b), b_stride, static_cast<const uint8_t*>(zero), zero_count, o);
    return 0;
}

// y [rows, n] (rows y_stride elements apart) = the epilogue `mode` of (A - a_zero) . (B - b_zero), A
// [rows, k] uint8 (a_signed 0) or int8, rows a_stride apart, B packed by ember_igemm_pack for this k
// and n. Returns 0, or -1 for a bad call.
int ember_igemm(const void* a, int64_t a_signed, int64_t rows, int64_t k, int64_t a_stride, int64_t a_zero,
                const void* w, int64_t n, int64_t mode, void* y, int64_t y_stride, const float* scale,
                int64_t scale_count, const float* bias, const double* multiplier, int64_t multiplier_count,
                int64_t y_zero, int64_t threads) {
    Packed f;
    std::memcpy(&f, w, sizeof(Packed));
    if (rows < 0 || f.k != k || f.n != n || (f.kind != 0 && f.kind != 1) || mode < 0 || mode > 3 ||
        (mode == 1 && (!scale || scale_count < 1)) || (mode >= 2 && (!multiplier || multiplier_count < 1)))
        return -1;
    if (rows == 0 || n == 0) return 0;
    const Epilogue e{static_cast<int>(mode), scale, scale_count, bias, multiplier, multiplier_count,
                     static_cast<double>(y_zero)};
    const int t = static_cast<int>(std::max<int64_t>(1, threads)), z = static_cast<int>(a_zero);
    const char* wb = static_cast<const char*>(w);
    char* out = static_cast<char*>(y);
    if (a_signed) {
        const int8_t* ap = static_cast<const int8_t*>(a);
        if (f.kind) run<1>(ap, rows, a_stride, z, f, wb, e, out, y_stride, t);
        else run<0>(ap, rows, a_stride, z, f, wb, e, out, y_stride, t);
    } else {
        const uint8_t* ap = static_cast<const uint8_t*>(a);
        if (f.kind) run<1>(ap, rows, a_stride, z, f, wb, e, out, y_stride, t);
        else run<0>(ap, rows, a_stride, z, f, wb, e, out, y_stride, t);
    }
    return 0;
}

}  // extern "C"
