// ember.PagedAttention, fused, for the CPU: called by ember/runtime/native/paged_attention.py;
// ember/codegen/handwritten.py
// builds this file after ember's CPU prelude (ember_expf, the 16-bit float conversions) and
// a definition of EMBER_PAGED_ELEMENT, the element type of q, k, v and y (F32, F16 or BF16), and
// optionally of EMBER_PAGED_CACHE, the caches' (default: the same; also F8E4M3, float8, or I8). A
// cache of another type stores each new k and v rounded to its type (a float16 cache of a float32
// model: half the bytes each decode step reads; float8, a quarter). An I8 cache's row (one
// token's k or v of one kv head) is D int8 codes and then its float32 scale (4 bytes: rows of
// D + 4), quantized as ember.PagedAttention's docstring says; a key's scale multiplies its dot
// product, a value's its probability, so the loops over D stay those of a plain cache.
//
// One call: write the new tokens' k and v into the caches at their slots, then attend.
// The attention is flash-attention's online softmax over the keys of each sequence, read
// in place from the cache blocks its block table names (no gathered copy of the cache),
// a chunk of KC keys at a time. The work is split into items, which run in parallel
// (OpenMP, dynamic schedule, the costliest first); an item's rows are (query, query head)
// pairs of one sequence, and every K and V row it loads serves all the rows of its kv head.
// Two kernels, by the rows an item has per kv head:
//
//   few_kernel   at most FEW_ROWS (decode: one query, a GQA group of heads). An item takes
//                whole kv heads (all of them, unless the threads need more items), so it
//                reads whole cache rows. Scores are dot products along D, summed for a
//                chunk's KC keys at once into one vector, the softmax runs on that vector,
//                and O += P V along Dv with O's row in registers.
//   rows_kernel  more (prefill: tiles of queries times the group's heads, up to TILE_ROWS):
//                the rows are vector lanes. q^T [D][L] is packed once; each key element is
//                broadcast against it (S = K q^T, a register-blocked outer product), the
//                softmax runs lane-wise, and O^T [Dv][L] += V^T P the same way: no
//                horizontal sums. A tile reads keys only up to its last query's position.
//
// Scores, softmax and output accumulate in float32 whatever the element type; an item's
// result does not depend on the thread count.
//
// The same kernel runs dense attention (ember.Attention on packed [B, S, heads * D] rows,
// paged_attention.dense_attention): no slots to store (P_SLOTS null), each batch row one
// "block" of the "cache", which is the k and v arrays themselves (a slot's row S_K_SLOT /
// S_V_SLOT elements from the last), every key visible unless S_CAUSAL, and an optional
// additive float32 bias (P_BIAS; a mask): the row of a sequence b, query head h and query i
// (counted from the sequence's first new token) starts at b S_BIAS_SEQ + h S_BIAS_HEAD +
// i S_BIAS_QUERY (strides that may be 0) and holds one value per key.

#include <omp.h>
#if defined(__F16C__) || defined(__AVX2__) || defined(__AVX512F__)
#include <immintrin.h>
#endif
#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <vector>

#define EMBER_INLINE_MEMBER inline __attribute__((always_inline))  // EMBER_INLINE is static

namespace ember_paged {

constexpr int W = 16;         // lanes of a vector (one AVX-512 register of floats)
constexpr int KC = W;         // keys per softmax chunk: few_kernel holds a chunk's scores in a vector
constexpr int MAX_ROWS = 64;  // rows of an item
constexpr int FEW_ROWS = 8;   // items of at most this many rows per kv head use few_kernel
constexpr int TILE_ROWS = 32; // rows_kernel's rows: 2 vectors (q^T, O^T and S of 64 rows overflow L1)

typedef float vec __attribute__((vector_size(W * sizeof(float))));
typedef int32_t ivec __attribute__((vector_size(W * sizeof(int32_t))));

// The kernels' register blocks are of the host's own vectors (nvec: VW floats), not of `vec`:
// on AVX2 a `vec` is two ymm registers, and blocks of `vec`s sized for AVX-512's 32
// registers spilled to the stack (prefill ran at ~12 GFLOP/s, half of torch's SDPA; decode
// at 5). rows_kernel: BLOCK accumulators a block, the other registers for q^T's vectors
// and a broadcast.
// (EMBER_PAGED_VW defined before this file builds the other widths: tests run them all)
#ifndef EMBER_PAGED_VW
#if defined(__AVX512F__)
#define EMBER_PAGED_VW 16
#elif defined(__AVX__)
#define EMBER_PAGED_VW 8
#else
#define EMBER_PAGED_VW 4
#endif
#endif
constexpr int VW = EMBER_PAGED_VW;
constexpr int BLOCK = VW == 16 ? 16 : 8;  // of 32 zmm; of 16 ymm or xmm
typedef float nvec __attribute__((vector_size(VW * sizeof(float))));
static_assert(W % VW == 0, "a vec is whole native vectors");
EMBER_INLINE nvec nload(const float* p) { nvec v; std::memcpy(&v, p, sizeof v); return v; }
EMBER_INLINE void nstore(float* p, nvec v) { std::memcpy(p, &v, sizeof v); }
EMBER_INLINE nvec nsplat(float x) {  // (as an initializer: a loop of lane stores became stores to the
                                     // stack and a reload, stalled on store forwarding)
#if EMBER_PAGED_VW == 16
  return nvec{x, x, x, x, x, x, x, x, x, x, x, x, x, x, x, x};
#elif EMBER_PAGED_VW == 8
  return nvec{x, x, x, x, x, x, x, x};
#else
  return nvec{x, x, x, x};
#endif
}

EMBER_INLINE vec vload(const float* p) { vec v; std::memcpy(&v, p, sizeof v); return v; }
EMBER_INLINE void vstore(float* p, vec v) { std::memcpy(p, &v, sizeof v); }
EMBER_INLINE vec vsplat(float x) {  // a broadcast (`vec{} + x` would add 0 first)
  static_assert(W == 16, "one initializer per lane");
  return vec{x, x, x, x, x, x, x, x, x, x, x, x, x, x, x, x};
}
EMBER_INLINE vec vmax(vec a, vec b) { return a > b ? a : b; }
// max and sum of a vector's lanes, as trees (a loop over the lanes would run in order)
EMBER_INLINE float hmax(vec v) {
  v = vmax(v, __builtin_shufflevector(v, v, 8, 9, 10, 11, 12, 13, 14, 15, 0, 1, 2, 3, 4, 5, 6, 7));
  v = vmax(v, __builtin_shufflevector(v, v, 4, 5, 6, 7, 0, 1, 2, 3, 12, 13, 14, 15, 8, 9, 10, 11));
  v = vmax(v, __builtin_shufflevector(v, v, 2, 3, 0, 1, 6, 7, 4, 5, 10, 11, 8, 9, 14, 15, 12, 13));
  v = vmax(v, __builtin_shufflevector(v, v, 1, 0, 3, 2, 5, 4, 7, 6, 9, 8, 11, 10, 13, 12, 15, 14));
  return v[0];
}
EMBER_INLINE float hsum(vec v) {
  v += __builtin_shufflevector(v, v, 8, 9, 10, 11, 12, 13, 14, 15, 0, 1, 2, 3, 4, 5, 6, 7);
  v += __builtin_shufflevector(v, v, 4, 5, 6, 7, 0, 1, 2, 3, 12, 13, 14, 15, 8, 9, 10, 11);
  v += __builtin_shufflevector(v, v, 2, 3, 0, 1, 6, 7, 4, 5, 10, 11, 8, 9, 14, 15, 12, 13);
  v += __builtin_shufflevector(v, v, 1, 0, 3, 2, 5, 4, 7, 6, 9, 8, 11, 10, 13, 12, 15, 14);
  return v[0];
}
// element types: how a stored value becomes a float and back
struct F32 {
  using T = float;
  EMBER_INLINE float load(float x) { return x; }
  EMBER_INLINE float store(float x) { return x; }
};
struct F16 {
  using T = std::uint16_t;
  EMBER_INLINE float load(T x) { return ember_h2f(x); }
  EMBER_INLINE T store(float x) { return ember_f2h(x); }
};
struct BF16 {
  using T = std::uint16_t;
  EMBER_INLINE float load(T x) { return ember_bf2f(x); }
  EMBER_INLINE T store(float x) { return ember_f2bf(x); }
};
// float8 e4m3fn (a cache's type only): sign, 4 exponent bits (bias 7), 3 mantissa bits; no
// infinities, 0x7f / 0xff NaN, largest finite 448. Read as the float16 of the same bits
// shifted into place (exponent bias 15: every finite value, subnormals included, exactly 2^-8
// of its own), times 256, NaN as float16's NaN; stored rounded to nearest even and saturated
// to +-448, as ONNX's Cast (saturate=1) and torch's conversion do.
struct F8E4M3 {
  using T = std::uint8_t;
  EMBER_INLINE std::uint16_t half_bits(T x) {
    if ((x & 0x7f) == 0x7f) return 0x7e00;  // NaN (shifted, it would read as 480)
    return static_cast<std::uint16_t>(((x & 0x80) << 8) | ((x & 0x7f) << 7));
  }
  EMBER_INLINE float load(T x) { return ember_h2f(half_bits(x)) * 256.0f; }
  EMBER_INLINE T store(float x) {
    std::uint32_t bits;
    std::memcpy(&bits, &x, sizeof bits);
    const T sign = static_cast<T>((bits >> 24) & 0x80);
    const float a = std::fabs(x);
    if (a != a) return sign | 0x7f;                        // NaN
    if (a >= 448.0f) return sign | 0x7e;                   // saturated
    if (a < 0.015625f)                                     // below 2^-6: subnormal steps of 2^-9
      return sign | static_cast<T>(std::nearbyint(a * 512.0f));  // (8 steps: the smallest normal)
    std::uint32_t r = (bits & 0x7fffffffu) - (120u << 23); // exponent rebiased (127 -> 7)
    r += 0x7ffffu + ((r >> 20) & 1u);                      // round the 20 bits off to nearest even
    r >>= 20;
    return sign | static_cast<T>(r > 0x7e ? 0x7e : r);
  }
};

// int8 rows with their scale (a cache's type only): `load` gives the code; a row's float32 scale
// follows its D codes (row_scale), and quantize_row writes both.
struct I8 {
  using T = std::int8_t;
  EMBER_INLINE float load(T x) { return float(x); }
};
// elements a cache row of C holds past its D values
template <class C> constexpr int64_t ROW_EXTRA = 0;
template <> constexpr int64_t ROW_EXTRA<I8> = 4;

// the factor a cache row of D values (of C) is read with: its scale, or 1 (no multiply at all)
template <class C>
EMBER_INLINE float row_scale(const typename C::T* row, int64_t D) {
  if constexpr (ROW_EXTRA<C> > 0) {
    float scale;
    std::memcpy(&scale, row + D, sizeof scale);
    return scale;
  } else {
    return 1.0f;
  }
}

// One row of n floats into I8's codes and scale: round-half-even(x * 127 / amax), clipped to
// +-127, NaN's code 0; scale amax / 127 (NaN where the row holds one, infinite where it holds
// an infinity: the row then reads back as NaN). The reference computes the same in numpy.
static void quantize_row(std::int8_t* dst, const float* x, int64_t n) {
  float amax = 0.0f;
  for (int64_t i = 0; i < n; ++i) {
    const float a = std::fabs(x[i]);
    amax = (a > amax || a != a) ? a : amax;  // (a NaN, once seen, stays)
  }
  const float inv = amax == 0.0f ? 0.0f : 127.0f / amax;
  for (int64_t i = 0; i < n; ++i) {
    const float v = std::nearbyint(x[i] * inv);
    dst[i] = v != v ? 0 : static_cast<std::int8_t>(std::min(127.0f, std::max(-127.0f, v)));
  }
  const float scale = amax / 127.0f;
  std::memcpy(dst + n, &scale, sizeof scale);
}

// The call's arguments: P (pointers) and S (sizes), in the order paged_attention.py passes them.
enum { P_Q, P_K, P_V, P_K_CACHE, P_V_CACHE, P_SLOTS, P_TABLES, P_STARTS, P_LENS, P_Y, P_BIAS, NUM_P };
enum { S_TOKENS, S_SEQS, S_MAX_BLOCKS, S_NUM_BLOCKS, S_BLOCK_SIZE, S_HEADS, S_KV_HEADS, S_D, S_DV,
       S_Q_STRIDE, S_K_STRIDE, S_V_STRIDE, S_Y_STRIDE, S_WINDOW, S_THREADS, S_CAUSAL, S_K_SLOT, S_V_SLOT,
       S_BIAS_SEQ, S_BIAS_HEAD, S_BIAS_QUERY, NUM_S };

struct Call {
  const void* q; void* k_cache; void* v_cache; void* y;
  const int64_t *tables, *starts, *lens;
  const float* bias;  // added to the scores, or null; its rows' strides:
  int64_t bias_seq, bias_head, bias_query;
  int64_t max_blocks, block_size, heads, kv_heads, group, D, DV, q_stride, y_stride, window;
  int64_t kd, kdv;  // a kv head's row in the caches: D and DV elements, and the cache type's ROW_EXTRA
  int64_t k_slot, v_slot;
  bool causal;
  float scale;
};

// Queries [first_query, +num_queries) of sequence `seq` (its new tokens, counted from 0), with
// query heads [first_head, +num_heads): rows_kernel's items stay within one kv head's group.
struct Item {
  int64_t seq, first_query, num_queries, first_head, num_heads, cost;
};

// The rows of an item, and where each reads its query and writes its output.
template <class E>
struct Rows {
  using T = typename E::T;
  int n;
  int32_t first_key[MAX_ROWS], last_key[MAX_ROWS];  // the keys a row sees: [first, last]
  int32_t kv[MAX_ROWS];                              // its kv head, from the item's first
  const T* q[MAX_ROWS];
  T* y[MAX_ROWS];
  const float* bias[MAX_ROWS];  // the row's bias of each key, or null
  int64_t lo, hi;  // the keys any row sees

  Rows(const Call& c, const Item& it) : n(int(it.num_queries * it.num_heads)) {
    const int64_t start = c.starts[it.seq], n_new = c.starts[it.seq + 1] - start, len = c.lens[it.seq];
    lo = INT64_MAX; hi = -1;
    for (int r = 0; r < n; ++r) {
      const int64_t i = it.first_query + r / it.num_heads;
      const int64_t head = it.first_head + r % it.num_heads;
      const int64_t pos = c.causal ? len - n_new + i : len - 1;  // the last key the row sees
      const int64_t first = c.window > 0 && c.causal ? std::max<int64_t>(0, pos - c.window + 1) : 0;
      first_key[r] = int32_t(first);
      last_key[r] = int32_t(pos);
      kv[r] = int32_t(head / c.group - it.first_head / c.group);
      lo = std::min(lo, first);
      hi = std::max(hi, pos);
      q[r] = static_cast<const T*>(c.q) + (start + i) * c.q_stride + head * c.D;
      bias[r] = c.bias ? c.bias + it.seq * c.bias_seq + head * c.bias_head + i * c.bias_query : nullptr;
      y[r] = static_cast<T*>(c.y) + (start + i) * c.y_stride + head * c.DV;
    }
  }
};

// The cache rows of a sequence's keys, KC keys at a time, of the item's first kv head (its
// other kv heads follow, each kd or kdv further on). Past the last key a chunk repeats it
// (read but masked), so a chunk is always whole. few_kernel, which uses each row for a few
// rows of its own only, prefetches the next chunk's rows while it computes on this one:
// spread over its loop (a burst of prefetches stalls) and into L2 (L1 would evict what is
// being computed on), since blocks sit anywhere in the cache, where no hardware prefetcher
// looks (decode, 64 sequences x 400 keys, 1 thread: 6.0 ms without, 3.2 with).
// rows_kernel is compute bound: prefetching there only costs.
template <class E>
struct Chunks {
  using T = typename E::T;
  const Call& c;
  const int64_t* table;
  int64_t hi, kv_head, k_bytes, v_bytes;  // the last key; the bytes of a key's row the item reads
  const T* k[2][KC];                      // this chunk's rows and the next's
  const T* v[2][KC];
  int cur = 0, next_kc = 0;

  Chunks(const Call& c_, const Item& it, int64_t lo, int64_t hi_)
      : c(c_), table(c_.tables + it.seq * c_.max_blocks), hi(hi_), kv_head(it.first_head / c_.group) {
    const int64_t kv_heads = (it.first_head + it.num_heads - 1) / c.group + 1 - kv_head;
    k_bytes = kv_heads * c.kd * int64_t(sizeof(T));
    v_bytes = kv_heads * c.kdv * int64_t(sizeof(T));
    locate(lo, cur);
  }
  void locate(int64_t j0, int into) {
    next_kc = int(std::max<int64_t>(0, std::min<int64_t>(KC, hi - j0 + 1)));
    if (next_kc == 0) return;
    int64_t block = j0 / c.block_size, offset = j0 % c.block_size;
    for (int jj = 0; jj < KC; ++jj) {
      const int64_t slot = table[block] * c.block_size + offset;
      k[into][jj] = static_cast<const T*>(c.k_cache) + slot * c.k_slot + kv_head * c.kd;
      v[into][jj] = static_cast<const T*>(c.v_cache) + slot * c.v_slot + kv_head * c.kdv;
      if (jj + 1 < next_kc && ++offset == c.block_size) { offset = 0; ++block; }
    }
  }
  // The chunk of keys j0 .. (the one after the last call's) in kp, vp; returns its number of keys.
  EMBER_INLINE_MEMBER int next(int64_t j0, const T* const*& kp, const T* const*& vp) {
    kp = k[cur];
    vp = v[cur];
    cur ^= 1;
    locate(j0 + KC, cur);
    return int(std::min<int64_t>(KC, hi - j0 + 1));
  }
  // Part i of n of the next chunk's rows on their way to L2.
  EMBER_INLINE_MEMBER void prefetch(int i, int n) const {
    for (int jj = i * next_kc / n; jj < (i + 1) * next_kc / n; ++jj) {
      for (int64_t b = 0; b < k_bytes; b += 64) __builtin_prefetch((const char*)k[cur][jj] + b, 0, 2);
      for (int64_t b = 0; b < v_bytes; b += 64) __builtin_prefetch((const char*)v[cur][jj] + b, 0, 2);
    }
  }
};

// Online softmax of one row's scores of keys j0 .. j0 + KC: masked to the keys the row sees,
// turned into probabilities p; returns the factor its running sums scale by.
EMBER_INLINE float softmax_chunk(vec scores, int64_t j0, int kc, int32_t first, int32_t last, float& m, float& l,
                                 float* p) {
  const ivec jj = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15};
  const ivec j = jj + int32_t(j0);
  scores = (jj < kc) & (j >= first) & (j <= last) ? scores : vsplat(-INFINITY);
  const float mx = std::max(m, hmax(scores));
  const float base = mx == -INFINITY ? 0.0f : mx;  // nothing seen yet: exp(-inf) = 0 everywhere
  const float alpha = ember_expf(m - base);
  vstore(p, scores - base);
#pragma omp simd
  for (int i = 0; i < KC; ++i) p[i] = ember_expf(p[i]);
  m = mx;
  l = l * alpha + hsum(vload(p));
  return alpha;
}

// The lane sums of VW native vectors, as one vector (lane i: the sum of x[i]'s lanes): a
// tree of adds, each folding two vectors' halves into one (keys 2i and 2i+1, then
// 4i..4i+3, ...), so no lane is summed alone.
EMBER_INLINE nvec nsum_lanes(const nvec* x) {
#if EMBER_PAGED_VW == 16
  nvec a[8], b[4], c[2];
#pragma GCC unroll 8
  for (int i = 0; i < 8; ++i)
    a[i] = __builtin_shufflevector(x[2 * i], x[2 * i + 1], 0, 1, 2, 3, 4, 5, 6, 7, 16, 17, 18, 19, 20, 21, 22,
                                   23) +
           __builtin_shufflevector(x[2 * i], x[2 * i + 1], 8, 9, 10, 11, 12, 13, 14, 15, 24, 25, 26, 27, 28, 29,
                                   30, 31);
#pragma GCC unroll 4
  for (int i = 0; i < 4; ++i)
    b[i] = __builtin_shufflevector(a[2 * i], a[2 * i + 1], 0, 1, 2, 3, 8, 9, 10, 11, 16, 17, 18, 19, 24, 25, 26, 27) +
           __builtin_shufflevector(a[2 * i], a[2 * i + 1], 4, 5, 6, 7, 12, 13, 14, 15, 20, 21, 22, 23, 28, 29, 30, 31);
#pragma GCC unroll 2
  for (int i = 0; i < 2; ++i)
    c[i] = __builtin_shufflevector(b[2 * i], b[2 * i + 1], 0, 1, 4, 5, 8, 9, 12, 13, 16, 17, 20, 21, 24, 25, 28, 29) +
           __builtin_shufflevector(b[2 * i], b[2 * i + 1], 2, 3, 6, 7, 10, 11, 14, 15, 18, 19, 22, 23, 26, 27, 30, 31);
  return __builtin_shufflevector(c[0], c[1], 0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30) +
         __builtin_shufflevector(c[0], c[1], 1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
#elif EMBER_PAGED_VW == 8
  nvec a[4], b[2];
#pragma GCC unroll 4
  for (int i = 0; i < 4; ++i)
    a[i] = __builtin_shufflevector(x[2 * i], x[2 * i + 1], 0, 1, 2, 3, 8, 9, 10, 11) +
           __builtin_shufflevector(x[2 * i], x[2 * i + 1], 4, 5, 6, 7, 12, 13, 14, 15);
#pragma GCC unroll 2
  for (int i = 0; i < 2; ++i)
    b[i] = __builtin_shufflevector(a[2 * i], a[2 * i + 1], 0, 1, 4, 5, 8, 9, 12, 13) +
           __builtin_shufflevector(a[2 * i], a[2 * i + 1], 2, 3, 6, 7, 10, 11, 14, 15);
  return __builtin_shufflevector(b[0], b[1], 0, 2, 4, 6, 8, 10, 12, 14) +
         __builtin_shufflevector(b[0], b[1], 1, 3, 5, 7, 9, 11, 13, 15);
#else
  nvec a[2];
#pragma GCC unroll 2
  for (int i = 0; i < 2; ++i)
    a[i] = __builtin_shufflevector(x[2 * i], x[2 * i + 1], 0, 1, 4, 5) +
           __builtin_shufflevector(x[2 * i], x[2 * i + 1], 2, 3, 6, 7);
  return __builtin_shufflevector(a[0], a[1], 0, 2, 4, 6) + __builtin_shufflevector(a[0], a[1], 1, 3, 5, 7);
#endif
}

// A native vector of VW values of element type E, as floats.
template <class V>
EMBER_INLINE nvec as_nvec(const V& v) { nvec r; std::memcpy(&r, &v, sizeof r); return r; }

template <class E>
EMBER_INLINE nvec nload_as(const typename E::T* p) {
  if constexpr (std::is_same_v<E, F32>) {
    return nload(p);
#if defined(__F16C__)
  } else if constexpr (std::is_same_v<E, F16> && VW == 8) {  // one vcvtph2ps (the loop below is ~10 ops a value)
    return as_nvec(_mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))));
#endif
#if defined(__AVX512F__)
  } else if constexpr (std::is_same_v<E, F16> && VW == 16) {
    return as_nvec(_mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p))));
  } else if constexpr (std::is_same_v<E, F8E4M3> && VW == 16) {  // (F8E4M3::half_bits, 16 at once)
    const __m256i x = _mm256_cvtepu8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
    const __m256i low = _mm256_and_si256(x, _mm256_set1_epi16(0x7f));
    __m256i h = _mm256_or_si256(_mm256_slli_epi16(_mm256_and_si256(x, _mm256_set1_epi16(0x80)), 8),
                                _mm256_slli_epi16(low, 7));
    h = _mm256_blendv_epi8(h, _mm256_set1_epi16(0x7e00), _mm256_cmpeq_epi16(low, _mm256_set1_epi16(0x7f)));  // NaN
    return as_nvec(_mm512_mul_ps(_mm512_cvtph_ps(h), _mm512_set1_ps(256.0f)));
#endif
#if defined(__AVX512F__)
  } else if constexpr (std::is_same_v<E, I8> && VW == 16) {
    return as_nvec(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)))));
#endif
#if defined(__AVX2__)
  } else if constexpr (std::is_same_v<E, I8> && VW == 8) {
    std::int64_t bytes;
    std::memcpy(&bytes, p, sizeof bytes);
    return as_nvec(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_cvtsi64_si128(bytes))));
#endif
#if defined(__F16C__) && defined(__AVX2__)
  } else if constexpr (std::is_same_v<E, F8E4M3> && VW == 8) {
    std::int64_t bytes;
    std::memcpy(&bytes, p, sizeof bytes);
    const __m128i x = _mm_cvtepu8_epi16(_mm_cvtsi64_si128(bytes));
    const __m128i low = _mm_and_si128(x, _mm_set1_epi16(0x7f));
    __m128i h = _mm_or_si128(_mm_slli_epi16(_mm_and_si128(x, _mm_set1_epi16(0x80)), 8), _mm_slli_epi16(low, 7));
    h = _mm_blendv_epi8(h, _mm_set1_epi16(0x7e00), _mm_cmpeq_epi16(low, _mm_set1_epi16(0x7f)));  // NaN
    return as_nvec(_mm256_mul_ps(_mm256_cvtph_ps(h), _mm256_set1_ps(256.0f)));
#endif
  } else {
    alignas(64) float x[VW];
#pragma omp simd
    for (int i = 0; i < VW; ++i) x[i] = E::load(p[i]);
    return nload(x);
  }
}

// out [n] = a cache row of n values of element type E, as floats (times its scale, for I8).
template <class E>
EMBER_INLINE void to_floats(float* out, const typename E::T* in, int64_t n) {
  int64_t i = 0;
  if constexpr (ROW_EXTRA<E> > 0) {
    const float scale = row_scale<E>(in, n);
    for (; i + VW <= n; i += VW) nstore(out + i, nload_as<E>(in + i) * scale);
    for (; i < n; ++i) out[i] = E::load(in[i]) * scale;
  } else {
    for (; i + VW <= n; i += VW) nstore(out + i, nload_as<E>(in + i));
    for (; i < n; ++i) out[i] = E::load(in[i]);
  }
}

// VW partial sums of q . k (over lanes d % VW), q of floats and k of E.
template <class E, int D_>
EMBER_INLINE nvec partial_dot(const float* q, const typename E::T* k, int64_t D) {
  if constexpr (D_ > 0 && D_ % VW == 0) {
    nvec acc = nload(q) * nload_as<E>(k);
#pragma GCC unroll 16
    for (int i = 1; i < D_ / VW; ++i) acc += nload(q + i * VW) * nload_as<E>(k + i * VW);
    return acc;
  } else {
    float dot = 0.0f;
#pragma omp simd reduction(+:dot)
    for (int64_t d = 0; d < D; ++d) dot += q[d] * E::load(k[d]);
    nvec acc = {};
    acc[0] = dot;
    return acc;
  }
}

// o [DV] = alpha o + sum over the chunk's keys of p[jj] v[jj][off:off + DV]: o in registers
// when DV is a known multiple of VW.
template <class E, int DV_>
EMBER_INLINE void accumulate_row(float* o, float alpha, const float* p, const typename E::T* const* v, int64_t off,
                                 int kc, int64_t DV) {
  if constexpr (DV_ > 0 && DV_ % VW == 0) {
    nvec acc[DV_ / VW];
#pragma GCC unroll 16
    for (int i = 0; i < DV_ / VW; ++i) acc[i] = nload(o + i * VW) * alpha;
    for (int jj = 0; jj < kc; ++jj) {
      const typename E::T* row = v[jj] + off;
      const nvec pj = nsplat(p[jj] * row_scale<E>(row, DV));
#pragma GCC unroll 16
      for (int i = 0; i < DV_ / VW; ++i) acc[i] += pj * nload_as<E>(row + i * VW);
    }
#pragma GCC unroll 16
    for (int i = 0; i < DV_ / VW; ++i) nstore(o + i * VW, acc[i]);
  } else {
#pragma omp simd
    for (int64_t dv = 0; dv < DV; ++dv) o[dv] *= alpha;
    for (int jj = 0; jj < kc; ++jj) {
      const typename E::T* row = v[jj] + off;
      const float pj = p[jj] * row_scale<E>(row, DV);
#pragma omp simd
      for (int64_t dv = 0; dv < DV; ++dv) o[dv] += pj * E::load(row[dv]);
    }
  }
}

// Few rows per kv head (decode), of one or several kv heads: each row's scores are dot
// products along D, VW partial sums per key, summed for VW keys at once. work: q [n][D], o [n][DV].
template <class E, class C, int D_, int DV_>
static void few_kernel(const Call& c, const Item& it, float* work) {
  using T = typename C::T;
  const int64_t D = D_ ? D_ : c.D, DV = DV_ ? DV_ : c.DV;
  const Rows<E> rows(c, it);
  const int n = rows.n;
  float* q = work;
  float* o = q + n * D;
  float m[MAX_ROWS], l[MAX_ROWS];
  for (int r = 0; r < n; ++r) {
#pragma omp simd
    for (int64_t d = 0; d < D; ++d) q[r * D + d] = E::load(rows.q[r][d]) * c.scale;
    std::fill(o + r * DV, o + (r + 1) * DV, 0.0f);
    m[r] = -INFINITY;
    l[r] = 0.0f;
  }
  Chunks<C> chunks(c, it, rows.lo, rows.hi);
  const T* const* kp;
  const T* const* vp;
  for (int64_t j0 = rows.lo; j0 <= rows.hi; j0 += KC) {
    const int kc = chunks.next(j0, kp, vp);
    for (int r = 0; r < n; ++r) {
      chunks.prefetch(r, n);
      // each key's products with the row's query in W lanes of partial sums, then all summed at once
      const float* qr = q + r * D;
      const int64_t off = rows.kv[r] * c.kd;
      alignas(64) float p[KC];
#pragma GCC unroll 4
      for (int j = 0; j < KC; j += VW) {  // VW keys' scores a native vector
        nvec dots[VW];
#pragma GCC unroll 16
        for (int jj = 0; jj < VW; ++jj) dots[jj] = partial_dot<C, D_>(qr, kp[j + jj] + off, D);
        if constexpr (ROW_EXTRA<C> > 0) {  // the VW keys' scales times their dot products, at once
          alignas(64) float scales[VW];
#pragma GCC unroll 16
          for (int jj = 0; jj < VW; ++jj) scales[jj] = row_scale<C>(kp[j + jj] + off, D);
          nstore(p + j, nsum_lanes(dots) * nload(scales));
        } else {
          nstore(p + j, nsum_lanes(dots));
        }
      }
      vec scores = vload(p);
      if (rows.bias[r]) {
        alignas(64) float b[KC] = {};
        std::memcpy(b, rows.bias[r] + j0, kc * sizeof(float));
        scores += vload(b);
      }
      const float alpha = softmax_chunk(scores, j0, kc, rows.first_key[r], rows.last_key[r], m[r], l[r], p);
      accumulate_row<C, DV_>(o + r * DV, alpha, p, vp, rows.kv[r] * c.kdv, kc, DV);
    }
  }
  for (int r = 0; r < n; ++r) {
    const float inv = l[r] > 0.0f ? 1.0f / l[r] : 0.0f;  // every key masked (-inf bias): 0, as the reference
#pragma omp simd
    for (int64_t dv = 0; dv < DV; ++dv) rows.y[r][dv] = E::store(o[r * DV + dv] * inv);
  }
}

// Up to NV * W rows, one per vector lane. work: q^T [D][L], o^T [DV][L].
template <class E, class C, int NV, int D_, int DV_>
static void rows_kernel(const Call& c, const Item& it, float* work) {
  using T = typename C::T;
  constexpr int L = NV * W;
  constexpr int NN = L / VW;          // native vectors of a row of L lanes
  constexpr int KB = BLOCK / NN;      // keys per register block of S: KB * NN accumulators
  constexpr int DB = BLOCK / NN;      // value columns per register block of O
  static_assert(KB >= 1 && KC % KB == 0, "a chunk is whole register blocks");
  const int64_t D = D_ ? D_ : c.D, DV = DV_ ? DV_ : c.DV;
  const Rows<E> rows(c, it);
  float* qt = work;
  float* ot = work + D * L;
  float* kv_floats = ot + DV * L;  // a chunk's keys and values as floats, for a cache of 16-bit floats
  alignas(64) float s[KC][L];
  alignas(64) float m[L], l[L], alpha[L];
  alignas(64) int32_t first[L], last[L];
  const float* bias[L];
  bool same_bias = true;  // one bias row for every row: added as a scalar per key
  for (int r = 0; r < L; ++r) {
    // lanes past the rows: a zero query that sees row 0's keys (finite, never written)
    const int src = r < rows.n ? r : 0;
    first[r] = rows.first_key[src];
    last[r] = rows.last_key[src];
    bias[r] = rows.bias[src];
    same_bias = same_bias && bias[r] == rows.bias[0];
    for (int64_t d = 0; d < D; ++d) qt[d * L + r] = r < rows.n ? E::load(rows.q[r][d]) * c.scale : 0.0f;
    m[r] = -INFINITY;
    l[r] = 0.0f;
  }
  std::fill(ot, ot + DV * L, 0.0f);
  Chunks<C> chunks(c, it, rows.lo, rows.hi);
  const T* const* kc_rows;
  const T* const* vc_rows;
  const float* k_rows[KC];  // the chunk's rows as floats: the cache's own, or converted once into kv_floats
  const float* v_rows[KC];  // (each element is broadcast against all L rows: converting it there costs L times)
  for (int64_t j0 = rows.lo; j0 <= rows.hi; j0 += KC) {
    const int kc = chunks.next(j0, kc_rows, vc_rows);
    for (int jj = 0; jj < KC; ++jj) {  // (past kc a chunk repeats its last key: all KC rows are real)
      if constexpr (std::is_same_v<C, F32>) {
        k_rows[jj] = kc_rows[jj];
        v_rows[jj] = vc_rows[jj];
      } else {
        float* k = kv_floats + jj * (D + DV);
        to_floats<C>(k, kc_rows[jj], D);
        to_floats<C>(k + D, vc_rows[jj], DV);
        k_rows[jj] = k;
        v_rows[jj] = k + D;
      }
    }
    const float* const* kp = k_rows;
    const float* const* vp = v_rows;
    // S [KC][L] = K q^T: for each d, key elements broadcast against the row vectors of q^T
    for (int jb = 0; jb < kc; jb += KB) {
      nvec acc[KB][NN] = {};
      const float* krow[KB];
#pragma GCC unroll 16
      for (int kb = 0; kb < KB; ++kb) krow[kb] = kp[jb + kb];
      for (int64_t d = 0; d < D; ++d) {
        nvec qv[NN];
#pragma GCC unroll 8
        for (int v = 0; v < NN; ++v) qv[v] = nload(qt + d * L + v * VW);
#pragma GCC unroll 16
        for (int kb = 0; kb < KB; ++kb) {
          const nvec kv = nsplat(krow[kb][d]);
#pragma GCC unroll 8
          for (int v = 0; v < NN; ++v) acc[kb][v] += kv * qv[v];
        }
      }
#pragma GCC unroll 16
      for (int kb = 0; kb < KB; ++kb)
#pragma GCC unroll 8
        for (int v = 0; v < NN; ++v) nstore(&s[jb + kb][v * VW], acc[kb][v]);
    }
    // online softmax, lane-wise
    for (int jj = 0; jj < KC; ++jj) {
      const int64_t j = j0 + jj;
      const bool real = jj < kc;
      if (bias[0] && !same_bias && real) {
        for (int r = 0; r < L; ++r) s[jj][r] += bias[r][j];
      }
      const float b = real && bias[0] && same_bias ? bias[0][j] : 0.0f;
#pragma omp simd
      for (int r = 0; r < L; ++r) s[jj][r] = (real && j >= first[r] && j <= last[r]) ? s[jj][r] + b : -INFINITY;
    }
    alignas(64) float mx[L], base[L];
#pragma omp simd
    for (int r = 0; r < L; ++r) mx[r] = m[r];
    for (int jj = 0; jj < kc; ++jj) {
#pragma omp simd
      for (int r = 0; r < L; ++r) mx[r] = std::max(mx[r], s[jj][r]);
    }
#pragma omp simd
    for (int r = 0; r < L; ++r) {
      base[r] = mx[r] == -INFINITY ? 0.0f : mx[r];
      alpha[r] = ember_expf(m[r] - base[r]);
      m[r] = mx[r];
      l[r] *= alpha[r];
    }
    for (int jj = 0; jj < kc; ++jj) {
#pragma omp simd
      for (int r = 0; r < L; ++r) {
        s[jj][r] = ember_expf(s[jj][r] - base[r]);
        l[r] += s[jj][r];
      }
    }
    // O^T [DV][L] = alpha O^T + V^T P, DB value columns at a time in registers
    nvec av[NN];
#pragma GCC unroll 8
    for (int v = 0; v < NN; ++v) av[v] = nload(alpha + v * VW);
    int64_t dv0 = 0;
    for (; dv0 + DB <= DV; dv0 += DB) {
      nvec acc[DB][NN];
#pragma GCC unroll 16
      for (int dd = 0; dd < DB; ++dd)
#pragma GCC unroll 8
        for (int v = 0; v < NN; ++v) acc[dd][v] = nload(ot + (dv0 + dd) * L + v * VW) * av[v];
      for (int jj = 0; jj < kc; ++jj) {
        nvec pv[NN];
#pragma GCC unroll 8
        for (int v = 0; v < NN; ++v) pv[v] = nload(&s[jj][v * VW]);
        const float* vrow = vp[jj] + dv0;
#pragma GCC unroll 16
        for (int dd = 0; dd < DB; ++dd) {
          const nvec x = nsplat(vrow[dd]);
#pragma GCC unroll 8
          for (int v = 0; v < NN; ++v) acc[dd][v] += x * pv[v];
        }
      }
#pragma GCC unroll 16
      for (int dd = 0; dd < DB; ++dd)
#pragma GCC unroll 8
        for (int v = 0; v < NN; ++v) nstore(ot + (dv0 + dd) * L + v * VW, acc[dd][v]);
    }
    for (; dv0 < DV; ++dv0) {  // the last DV % DB columns, one at a time
      nvec acc[NN];
      for (int v = 0; v < NN; ++v) acc[v] = nload(ot + dv0 * L + v * VW) * av[v];
      for (int jj = 0; jj < kc; ++jj) {
        const nvec x = nsplat(vp[jj][dv0]);
        for (int v = 0; v < NN; ++v) acc[v] += x * nload(&s[jj][v * VW]);
      }
      for (int v = 0; v < NN; ++v) nstore(ot + dv0 * L + v * VW, acc[v]);
    }
  }
  for (int r = 0; r < rows.n; ++r) {
    const float inv = l[r] > 0.0f ? 1.0f / l[r] : 0.0f;  // every key masked (-inf bias): 0, as the reference
    for (int64_t dv = 0; dv < DV; ++dv) rows.y[r][dv] = E::store(ot[dv * L + r] * inv);
  }
}

template <class E, class C, int D_, int DV_>
static void run_item(const Call& c, const Item& it, float* work) {
  const int64_t n = it.num_queries * it.num_heads;
  if (it.num_queries * std::min(c.group, it.num_heads) <= FEW_ROWS) few_kernel<E, C, D_, DV_>(c, it, work);
  else if (n <= W) rows_kernel<E, C, 1, D_, DV_>(c, it, work);
  else rows_kernel<E, C, 2, D_, DV_>(c, it, work);
  static_assert(TILE_ROWS == 2 * W, "rows_kernel's instances");
  static_assert(TILE_ROWS + KC <= MAX_ROWS, "an item's work holds q^T, o^T and a chunk's rows as floats");
}

template <class E, class C, int D_, int DV_>
static void attend(const Call& c, const std::vector<Item>& items, int threads) {
  const size_t floats = size_t(c.D + c.DV) * MAX_ROWS;
#pragma omp parallel num_threads(threads) if (items.size() > 1 && threads > 1)
  {
    float* work = ember_aligned_floats(static_cast<int64_t>(floats));
#pragma omp for schedule(dynamic, 1)
    for (size_t i = 0; i < items.size(); ++i) run_item<E, C, D_, DV_>(c, items[i], work);
    std::free(work);
  }
}

// Indices a kernel cannot trust: the caller falls back to the (raising) torch path.
static int check_indices(const int64_t* P_slots, const int64_t* S, const int64_t* tables,
                         const int64_t* starts, const int64_t* lens) {
  const int64_t T = S[S_TOKENS], B = S[S_SEQS], bs = S[S_BLOCK_SIZE], nb = S[S_NUM_BLOCKS];
  if (starts[0] < 0 || starts[B] > T) return 1;
  for (int64_t b = 0; b < B; ++b) {
    const int64_t n = starts[b + 1] - starts[b];
    if (n < 0) return 1;
    if (n == 0) continue;
    if (lens[b] < n || lens[b] > S[S_MAX_BLOCKS] * bs || lens[b] >= INT32_MAX) return 2;
    for (int64_t jb = 0; jb < (lens[b] + bs - 1) / bs; ++jb) {
      const int64_t block = tables[b * S[S_MAX_BLOCKS] + jb];
      if (block < 0 || block >= nb) return 3;
    }
  }
  if (P_slots)
    for (int64_t t = 0; t < T; ++t)
      if (P_slots[t] >= nb * bs) return 4;
  return 0;
}

// Whether every query's bias row equals the first's, for each sequence and head: a padding
// mask broadcast along the queries but stored whole (transformers' [B, 1, Sq, Sk] masks),
// which is then read as one row (~20% of BERT's attention time otherwise).
static bool same_bias_rows(const Call& c, int64_t seqs, int64_t keys) {
  for (int64_t b = 0; b < seqs; ++b) {
    const int64_t n = c.starts[b + 1] - c.starts[b], len = std::min(c.lens[b], keys);
    for (int64_t h = 0; h < (c.bias_head ? c.heads : 1); ++h) {
      const float* first = c.bias + b * c.bias_seq + h * c.bias_head;
      for (int64_t i = 1; i < n; ++i)
        if (std::memcmp(first, first + i * c.bias_query, len * sizeof(float)) != 0) return false;
    }
  }
  return true;
}

// A new token's k or v (its kv heads' rows of n values of E, one after another) into its cache
// slot (C), rounded to C's precision, or (I8) each head's row quantized with its scale.
template <class E, class C>
static void store_rows(typename C::T* dst, const typename E::T* src, int64_t heads, int64_t n) {
  if constexpr (ROW_EXTRA<C> > 0) {
    float x[1024];  // (a head's row is at most 1024 values: run() checks)
    for (int64_t h = 0; h < heads; ++h) {
      for (int64_t d = 0; d < n; ++d) x[d] = E::load(src[h * n + d]);
      quantize_row(dst + h * (n + ROW_EXTRA<C>), x, n);
    }
  } else if constexpr (std::is_same_v<E, C>) {
    std::memcpy(dst, src, heads * n * sizeof(*src));
  } else {
#pragma omp simd
    for (int64_t i = 0; i < heads * n; ++i) dst[i] = C::store(E::load(src[i]));
  }
}

// E: q's, k's, v's and y's element type; C: the caches'.
template <class E, class C>
static int run(void* const* P, const int64_t* S, float scale) {
  using T = typename E::T;
  const auto* slots = static_cast<const int64_t*>(P[P_SLOTS]);
  Call c;
  c.tables = static_cast<const int64_t*>(P[P_TABLES]);
  c.starts = static_cast<const int64_t*>(P[P_STARTS]);
  c.lens = static_cast<const int64_t*>(P[P_LENS]);
  if (int bad = check_indices(slots, S, c.tables, c.starts, c.lens)) return bad;
  c.q = P[P_Q]; c.k_cache = P[P_K_CACHE]; c.v_cache = P[P_V_CACHE]; c.y = P[P_Y];
  c.max_blocks = S[S_MAX_BLOCKS]; c.block_size = S[S_BLOCK_SIZE];
  c.heads = S[S_HEADS]; c.kv_heads = S[S_KV_HEADS]; c.group = c.heads / c.kv_heads;
  c.D = S[S_D]; c.DV = S[S_DV]; c.q_stride = S[S_Q_STRIDE]; c.y_stride = S[S_Y_STRIDE];
  c.window = S[S_WINDOW];
  c.causal = S[S_CAUSAL] != 0;
  c.k_slot = S[S_K_SLOT]; c.v_slot = S[S_V_SLOT];
  c.bias = static_cast<const float*>(P[P_BIAS]);
  c.bias_seq = S[S_BIAS_SEQ]; c.bias_head = S[S_BIAS_HEAD]; c.bias_query = S[S_BIAS_QUERY];
  if (c.bias && c.bias_query != 0 && same_bias_rows(c, S[S_SEQS], S[S_BLOCK_SIZE] * S[S_MAX_BLOCKS]))
    c.bias_query = 0;  // one row per sequence and head: rows_kernel adds it as a scalar per key
  c.scale = scale;
  c.kd = c.D + ROW_EXTRA<C>;
  c.kdv = c.DV + ROW_EXTRA<C>;
  if (ROW_EXTRA<C> > 0 && std::max(c.D, c.DV) > 1024) return 5;  // (store_rows' row buffer)
  const int64_t T_ = S[S_TOKENS], B = S[S_SEQS];

  // the new keys and values into their slots, in token order (a repeated slot keeps the last)
  for (int64_t t = 0; slots && t < T_; ++t) {
    if (slots[t] < 0) continue;
    store_rows<E, C>(static_cast<typename C::T*>(c.k_cache) + slots[t] * c.k_slot,
                     static_cast<const T*>(P[P_K]) + t * S[S_K_STRIDE], c.kv_heads, c.D);
    store_rows<E, C>(static_cast<typename C::T*>(c.v_cache) + slots[t] * c.v_slot,
                     static_cast<const T*>(P[P_V]) + t * S[S_V_STRIDE], c.kv_heads, c.DV);
  }
  // rows of no sequence are 0
  for (int64_t t = 0; t < T_; ++t)
    if (t < c.starts[0] || t >= c.starts[B])
      std::memset(static_cast<T*>(c.y) + t * c.y_stride, 0, c.heads * c.DV * sizeof(T));

  // Items. Few rows per kv head (decode): whole kv heads, as many as keep enough items for
  // the threads, so that a cache block's rows are read together. Else tiles of queries, of
  // one kv head's group of query heads (or of part of it past TILE_ROWS heads).
  const int threads = int(std::max<int64_t>(1, S[S_THREADS]));
  int64_t active = 0;
  for (int64_t b = 0; b < B; ++b) active += c.starts[b + 1] > c.starts[b];
  const int64_t kv_parts = std::min<int64_t>(c.kv_heads, (2 * threads + active - 1) / std::max<int64_t>(active, 1));
  std::vector<Item> items;
  for (int64_t b = 0; b < B; ++b) {
    const int64_t n = c.starts[b + 1] - c.starts[b], len = c.lens[b];
    if (n == 0) continue;
    if (n * c.group <= FEW_ROWS) {
      const int64_t per_item = std::max<int64_t>(1, std::min(MAX_ROWS / (n * c.group),
                                                               (c.kv_heads + kv_parts - 1) / kv_parts));
      const int64_t keys = c.window > 0 && c.causal ? std::min(len, c.window + n - 1) : len;
      for (int64_t h = 0; h < c.kv_heads; h += per_item) {
        const int64_t heads = std::min(per_item, c.kv_heads - h) * c.group;
        items.push_back({b, 0, n, h * c.group, heads, n * heads * keys});
      }
      continue;
    }
    const int64_t heads_per_item = std::min<int64_t>(c.group, TILE_ROWS);
    for (int64_t h = 0; h < c.kv_heads; ++h)
      for (int64_t g0 = 0; g0 < c.group; g0 += heads_per_item) {
        const int64_t ng = std::min(heads_per_item, c.group - g0), tile = std::max<int64_t>(1, TILE_ROWS / ng);
        for (int64_t i0 = 0; i0 < n; i0 += tile) {
          const int64_t nq = std::min(tile, n - i0), last = c.causal ? len - n + i0 + nq - 1 : len - 1;
          const int64_t first = c.window > 0 && c.causal ? std::max<int64_t>(0, last - nq + 1 - c.window + 1) : 0;
          items.push_back({b, i0, nq, h * c.group + g0, ng, nq * ng * (last + 1 - first)});
        }
      }
  }
  // the longest first, so that the dynamic schedule ends evenly
  std::stable_sort(items.begin(), items.end(), [](const Item& a, const Item& b) { return a.cost > b.cost; });
  if (c.D == 32 && c.DV == 32) attend<E, C, 32, 32>(c, items, threads);  // BERT-sized heads
  else if (c.D == 64 && c.DV == 64) attend<E, C, 64, 64>(c, items, threads);
  else if (c.D == 128 && c.DV == 128) attend<E, C, 128, 128>(c, items, threads);
  else attend<E, C, 0, 0>(c, items, threads);
  return 0;
}

}  // namespace ember_paged

// The native vector width the kernels' register blocks use (tests).
extern "C" int ember_paged_vector_width() { return ember_paged::VW; }

// The element types are the builder's choice: one library per pair (paged_attention.py), the
// caches' type that of q's unless EMBER_PAGED_CACHE says otherwise.
#ifndef EMBER_PAGED_CACHE
#define EMBER_PAGED_CACHE EMBER_PAGED_ELEMENT
#endif
extern "C" int ember_paged_attention(void* const* P, const int64_t* S, float scale) {
  return ember_paged::run<ember_paged::EMBER_PAGED_ELEMENT, ember_paged::EMBER_PAGED_CACHE>(P, S, scale);
}

// The step form (runtime/executor.py: a chained run): ctx = the 11 arrays' slots in B (-1: none), the
// 21 sizes, then the scale's float bits; the arrays' addresses read from the slots when it runs.
extern "C" int ember_paged_attention_step(const int64_t* c, char** B, const int64_t*) {
  void* P[11];
  for (int i = 0; i < 11; ++i) P[i] = c[i] >= 0 ? B[c[i]] : nullptr;
  float scale;
  std::memcpy(&scale, c + 32, sizeof scale);
  return ember_paged::run<ember_paged::EMBER_PAGED_ELEMENT, ember_paged::EMBER_PAGED_CACHE>(P, c + 11, scale);
}
