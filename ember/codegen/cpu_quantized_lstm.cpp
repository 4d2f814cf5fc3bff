// The recurrence of com.microsoft.DynamicQuantizeLSTM as onnxruntime computes it, bit for bit
// (its meaning: ember/ir/ops/contrib_rnn.py; the caller: runtime/native/quantized_lstm.py). Each step
// quantizes the batch's h to uint8 (range widened to hold 0, rounding half to even), multiplies it
// by R less its zero point in exact int32 sums, scales the sums back and adds them to the step's
// X.W; the gates follow onnxruntime's order of float32 operations, its logistic and tanh are
// MLAS's FMA3 rational polynomials. A product then a sum is two roundings here, as in
// onnxruntime's build, so the compiler must not fuse them: only std::fmaf fuses.
#pragma GCC optimize("fp-contract=off")

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#if defined(__AVX2__) && !defined(EMBER_QLSTM_SCALAR)
#include <immintrin.h>
#endif
// AVX-512 VNNI: h's uint8 codes times R's 8-bit values, four products summed into each int32 lane
// by one vpdpbusd (product_vnni); elsewhere the int16 products of `product`
#if defined(__AVX512VNNI__) && defined(__AVX512BW__) && !defined(EMBER_QLSTM_SCALAR) && !defined(EMBER_QLSTM_NO_VNNI)
#define EMBER_QLSTM_VNNI 1
#endif

namespace {

// highest power of x*x first; the shorter chains padded with leading zeros change nothing
constexpr float kLogisticP[7] = {0.0f, 0.0f, 4.37031012579801e-11f, 1.15627324459942e-07f, 6.08574864600143e-05f,
                                 8.51377133304701e-03f, 2.48287947061529e-01f};
constexpr float kLogisticQ[7] = {0.0f, 6.10247389755681e-13f, 5.76102136993427e-09f, 6.29106785017040e-06f,
                                 1.70198817374094e-03f, 1.16817656904453e-01f, 9.93151921023180e-01f};
constexpr float kTanhP[7] = {-2.76076847742355e-16f, 2.00018790482477e-13f, -8.60467152213735e-11f,
                             5.12229709037114e-08f, 1.48572235717979e-05f, 6.37261928875436e-04f,
                             4.89352455891786e-03f};
constexpr float kTanhQ[7] = {0.0f, 0.0f, 0.0f, 1.19825839466702e-06f, 1.18534705686654e-04f, 2.26843463243900e-03f,
                             4.89352518554385e-03f};

inline float rational(float x, float bound, const float* p_c, const float* q_c) {
    x = std::min(std::max(x, -bound), bound);
    const float x2 = x * x;
    float p = std::fmaf(x2, p_c[0], p_c[1]);
    float q = std::fmaf(x2, q_c[0], q_c[1]);
    for (int i = 2; i < 7; ++i) {
        p = std::fmaf(x2, p, p_c[i]);
        q = std::fmaf(x2, q, q_c[i]);
    }
    return (x * p) / q;
}

inline float logistic(float x) { return std::max(rational(x, 18.0f, kLogisticP, kLogisticQ) + 0.5f, 0.0f); }
inline float mlas_tanh(float x) { return rational(x, 9.0f, kTanhP, kTanhQ); }

// acc [n4] = q [hidden] . r [hidden, n4], exact int32 sums of int16 products (each within
// 255 x 255). AVX2: two rows of r at a time, their columns interleaved in pairs (unpack) and
// multiplied by q's pair with madd (two products summed into int32), 64 columns' sums held
// in registers across all the rows; the same sums as the scalar loop, in another order.
void product(const int16_t* r, const int32_t* q, int64_t hidden, int64_t n4, int32_t* acc) {
    int64_t n0 = 0;
#if defined(__AVX2__) && !defined(EMBER_QLSTM_SCALAR)
    for (; n0 + 64 <= n4; n0 += 64) {
        __m256i lo[4], hi[4];
        for (int v = 0; v < 4; ++v) lo[v] = hi[v] = _mm256_setzero_si256();
        int64_t k = 0;
        for (; k + 2 <= hidden; k += 2) {
            const int32_t pair = static_cast<int32_t>((static_cast<uint32_t>(q[k]) & 0xffffu) | (static_cast<uint32_t>(q[k + 1]) << 16));
            const __m256i a = _mm256_set1_epi32(pair);
            const int16_t* r0 = r + k * n4 + n0;
            const int16_t* r1 = r0 + n4;
            for (int v = 0; v < 4; ++v) {
                const __m256i x = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(r0 + 16 * v));
                const __m256i y = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(r1 + 16 * v));
                lo[v] = _mm256_add_epi32(lo[v], _mm256_madd_epi16(_mm256_unpacklo_epi16(x, y), a));
                hi[v] = _mm256_add_epi32(hi[v], _mm256_madd_epi16(_mm256_unpackhi_epi16(x, y), a));
            }
        }
        for (int v = 0; v < 4; ++v) {  // lo: columns 0-3 and 8-11 of the 16, hi: 4-7 and 12-15
            _mm256_storeu_si256(reinterpret_cast<__m256i*>(acc + n0 + 16 * v), _mm256_permute2x128_si256(lo[v], hi[v], 0x20));
            _mm256_storeu_si256(reinterpret_cast<__m256i*>(acc + n0 + 16 * v + 8), _mm256_permute2x128_si256(lo[v], hi[v], 0x31));
        }
        for (; k < hidden; ++k)  // (an odd row left)
            for (int64_t n = n0; n < n0 + 64; ++n) acc[n] += q[k] * static_cast<int32_t>(r[k * n4 + n]);
    }
#endif
    std::fill(acc + n0, acc + n4, 0);
    for (int64_t k = 0; k < hidden; ++k) {
        const int32_t a = q[k];
        if (a == 0) continue;
        const int16_t* row = r + k * n4;
        for (int64_t n = n0; n < n4; ++n) acc[n] += a * static_cast<int32_t>(row[n]);
    }
}

// acc [n4] = (u - zh) . R' for one row of h's uint8 codes u [hpad] (zeros past hidden) and zero point
// zh, with R' (R less its zero point) = s + o: s [hpad / 4][n4][4] int8 (R's bytes, less 128 where
// they are uint8; four rows' values of each column together, as vpdpbusd takes them) and o [n4] the
// column's offset. Then (u - zh) . R' = u . s + o U - zh C, U = the sum of u and C [n4] the column
// sums of R': exact int32 arithmetic, the same sums as `product`'s.
void product_vnni(const int8_t* s, const int32_t* o, const int32_t* colsum, const uint8_t* u, int32_t zh,
                  int64_t hpad, int64_t n4, int32_t* acc) {
    int32_t total = 0;
    for (int64_t k = 0; k < hpad; ++k) total += u[k];
    const int64_t quads = hpad / 4;
    int64_t n0 = 0;
#if EMBER_QLSTM_VNNI
    for (; n0 + 128 <= n4; n0 += 128) {  // 128 columns' sums in 8 registers across all of h
        __m512i a[8];
        for (int j = 0; j < 8; ++j) a[j] = _mm512_setzero_si512();
        for (int64_t kq = 0; kq < quads; ++kq) {
            int32_t four;
            std::memcpy(&four, u + 4 * kq, 4);
            const __m512i x = _mm512_set1_epi32(four);
            const int8_t* row = s + (kq * n4 + n0) * 4;
            for (int j = 0; j < 8; ++j) a[j] = _mm512_dpbusd_epi32(a[j], x, _mm512_loadu_si512(row + 64 * j));
        }
        for (int j = 0; j < 8; ++j) _mm512_storeu_si512(acc + n0 + 16 * j, a[j]);
    }
    for (; n0 + 16 <= n4; n0 += 16) {
        __m512i a = _mm512_setzero_si512();
        for (int64_t kq = 0; kq < quads; ++kq) {
            int32_t four;
            std::memcpy(&four, u + 4 * kq, 4);
            a = _mm512_dpbusd_epi32(a, _mm512_set1_epi32(four), _mm512_loadu_si512(s + (kq * n4 + n0) * 4));
        }
        _mm512_storeu_si512(acc + n0, a);
    }
#endif
    for (int64_t n = n0; n < n4; ++n) {
        int32_t sum = 0;
        for (int64_t k = 0; k < hpad; ++k) sum += static_cast<int32_t>(u[k]) * s[((k / 4) * n4 + n) * 4 + k % 4];
        acc[n] = sum;
    }
    for (int64_t n = 0; n < n4; ++n) acc[n] += o[n] * total - zh * colsum[n];
}

struct Direction {
    const int16_t* r;      // [H, 4H] R less its zero point
    const int8_t* r8;      // product_vnni's s [hpad / 4][4H][4], or null (then `product` on r)
    const int32_t* r8_offset;  // its o [4H]
    const int32_t* r8_colsum;  // its C [4H]
    const float* r_scale;  // [4H]
    const float* bias;     // [4H] Wb + Rb, or null
    const float* peephole; // [3H] (i o f), or null
    int64_t hidden;
};

// One sequence's step: gates = X.W + q.R * multiplier, then onnxruntime's LSTM cell; q is the
// sequence's h quantized (less the zero point zh), u the same as uint8 codes (q + zh, zeros past
// hidden to a multiple of 4), multiplier h's scale times each column's of R.
void step_row(const Direction& dir, const float* xw, const int32_t* q, const uint8_t* u, int32_t zh,
              const float* multiplier, float* h, float* c, float* y, int32_t* acc, float* gates) {
    const int64_t hidden = dir.hidden, n4 = 4 * hidden;
    if (dir.r8)
        product_vnni(dir.r8, dir.r8_offset, dir.r8_colsum, u, zh, (hidden + 3) / 4 * 4, n4, acc);
    else
        product(dir.r, q, hidden, n4, acc);
    for (int64_t n = 0; n < n4; ++n) gates[n] = xw[n] + static_cast<float>(acc[n]) * multiplier[n];
    // each pass one loop over the units, so that the compiler vectorizes it
    float *gi = gates, *go = gi + hidden, *gf = go + hidden, *gc = gf + hidden;
    const float *b = dir.bias, *p = dir.peephole;
    if (p) {
        for (int64_t j = 0; j < hidden; ++j) gi[j] += c[j] * p[j];
        for (int64_t j = 0; j < hidden; ++j) gf[j] += c[j] * p[2 * hidden + j];
    }
    if (b) {
        for (int64_t j = 0; j < hidden; ++j) gi[j] += b[j];
        for (int64_t j = 0; j < hidden; ++j) gf[j] += b[2 * hidden + j];
        for (int64_t j = 0; j < hidden; ++j) gc[j] += b[3 * hidden + j];
    }
    for (int64_t j = 0; j < hidden; ++j) gi[j] = logistic(gi[j]);
    for (int64_t j = 0; j < hidden; ++j) gf[j] = logistic(gf[j]);
    for (int64_t j = 0; j < hidden; ++j) gc[j] = mlas_tanh(gc[j]);
    for (int64_t j = 0; j < hidden; ++j) c[j] = c[j] * gf[j] + gi[j] * gc[j];
    if (p)
        for (int64_t j = 0; j < hidden; ++j) go[j] += c[j] * p[hidden + j];
    if (b)
        for (int64_t j = 0; j < hidden; ++j) go[j] += b[hidden + j];
    for (int64_t j = 0; j < hidden; ++j) h[j] = y[j] = mlas_tanh(c[j]) * logistic(go[j]);
}

}  // namespace

// xw [dirs, steps, batch, 4H]: X.W of every step; r [dirs, H, 4H]: R less its zero point (int16;
// unread, and may be null, where r8 is given); r8, r8_offset, r8_colsum: the same R as product_vnni
// takes it ([dirs, hpad / 4, 4H, 4], [dirs, 4H], [dirs, 4H]; ember_quantized_lstm_vnni says whether
// the build runs it), or null;
// r_scale [dirs, 4H]; bias [dirs, 4H] (Wb + Rb) or null; peephole [dirs, 3H] (i o f) or null;
// lens [batch] or null (every sequence `steps` long). A direction d with bit d of `reversed`
// set runs step order[t, b] ([steps, batch]) of sequence b at its t-th step (each sequence
// backwards within its length). h, c [dirs, batch, H]: the initial states in, the last ones
// out (each held from its sequence's end); out [steps, dirs, batch, H]: h of every step, 0
// past a sequence's end. group: the rows quantized together (onnxruntime splits a batch over
// its threads). has_y: a step quantizes the previous step's outputs (0 past an end), else
// the held states. threads: how many run the directions, which are independent.
extern "C" int64_t ember_quantized_lstm_vnni() {
#if EMBER_QLSTM_VNNI
    return 1;
#else
    return 0;
#endif
}

extern "C" int ember_quantized_lstm(const float* xw, const int16_t* r, const int8_t* r8, const int32_t* r8_offset,
                                    const int32_t* r8_colsum, const float* r_scale, const float* bias,
                                    const float* peephole, const int64_t* lens, const int64_t* order, float* h,
                                    float* c, float* out, int64_t dirs, int64_t steps, int64_t batch, int64_t hidden,
                                    int64_t reversed, int64_t group, int64_t has_y, int64_t threads) {
    const int64_t n4 = 4 * hidden, hpad = (hidden + 3) / 4 * 4;
#pragma omp parallel for num_threads(static_cast<int>(threads)) schedule(static, 1)
    for (int64_t d = 0; d < dirs; ++d) {
        std::vector<float> seen(batch * hidden), gates(n4), multiplier(n4);
        std::vector<int32_t> q(batch * hidden), acc(n4);
        std::vector<uint8_t> u(r8 ? batch * hpad : 0, 0);  // (h's codes: only product_vnni reads them)
        const Direction dir{r ? r + d * hidden * n4 : nullptr, r8 ? r8 + d * hpad * n4 : nullptr,
                            r8 ? r8_offset + d * n4 : nullptr, r8 ? r8_colsum + d * n4 : nullptr,
                            r_scale + d * n4, bias ? bias + d * n4 : nullptr,
                            peephole ? peephole + d * 3 * hidden : nullptr, hidden};
        const bool backwards = (reversed >> d) & 1;
        float* hd = h + d * batch * hidden;
        float* cd = c + d * batch * hidden;
        std::memcpy(seen.data(), hd, sizeof(float) * batch * hidden);  // the first step quantizes the initial h
        for (int64_t t = 0; t < steps; ++t) {
            for (int64_t first = 0; first < batch; first += group) {
                const int64_t end = std::min(batch, first + group);
                float lo = 0.0f, hi = 0.0f;
                for (int64_t i = first * hidden; i < end * hidden; ++i) {
                    lo = std::min(lo, seen[i]);
                    hi = std::max(hi, seen[i]);
                }
                const float scale = hi == lo ? 1.0f : (hi - lo) / 255.0f;
                const float zero = std::nearbyint(std::min(std::max(0.0f - lo / scale, 0.0f), 255.0f));
                const int32_t zh = static_cast<int32_t>(zero);
                for (int64_t i = first * hidden; i < end * hidden; ++i) {
                    const float v = std::min(std::max(seen[i] / scale, -zero), 255.0f - zero);
                    q[i] = static_cast<int32_t>(std::nearbyint(v));
                }
                if (r8)
                    for (int64_t i = first * hidden; i < end * hidden; ++i)
                        u[(i / hidden) * hpad + i % hidden] = static_cast<uint8_t>(q[i] + zh);
                for (int64_t n = 0; n < n4; ++n) multiplier[n] = scale * dir.r_scale[n];
                // the group's q is taken: each row's `seen` now becomes what the next step quantizes
                for (int64_t b = first; b < end; ++b) {
                    const int64_t s = backwards ? order[t * batch + b] : t;
                    float* y = out + ((s * dirs + d) * batch + b) * hidden;
                    float* next = seen.data() + b * hidden;
                    if (lens && t >= lens[b]) {
                        std::fill(y, y + hidden, 0.0f);
                        if (has_y) std::fill(next, next + hidden, 0.0f);  // else it holds the last h
                        continue;
                    }
                    step_row(dir, xw + ((d * steps + s) * batch + b) * n4, q.data() + b * hidden,
                             r8 ? u.data() + b * hpad : nullptr, zh, multiplier.data(), hd + b * hidden,
                             cd + b * hidden, y, acc.data(), gates.data());
                    std::memcpy(next, y, sizeof(float) * hidden);
                }
            }
        }
    }
    return 0;
}
