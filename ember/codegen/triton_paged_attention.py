"""ember.PagedAttention on the cuda target: a KV-store kernel and one attention kernel for
prefill, chunked prefill and decode, in Triton.

A kernel source like the C++ ones beside it: codegen writes it into the kernel cache for
a Program that calls it (handwritten.py) and the runtime loads it from there (its
`EXTERNS`); nothing in ember imports it. It imports only triton and torch.

    _store_kv   one program per new token: its k and v rows into the caches at its slot
                (none where the slot is < 0), and a zero row of y for a token past
                query_start_loc[B]
    _attend     one program per (tile of BLOCK_Q new tokens of one sequence, kv head): the
                tile's rows are its tokens times the GROUP query heads that share the kv
                head (BLOCK_M = BLOCK_Q x GROUP padded), so the keys and values are read
                once for the group; online softmax in float32 over BLOCK_N keys at a time,
                gathered from the cache through the sequence's block table; causal, and
                within the sliding window where one is set

A float8 (e4m3fn) cache is read and written as its bytes (the caller's uint8 view of it),
each converted by integer operations (`_f8_bits`, `_f8_float`: what the cpu target's kernel
does), so that stores round to nearest even and saturate to +-448 and NaN stays NaN on every
GPU and in the interpreter alike.

An int8 cache (ember.PagedAttention's docstring: each row of D values D int8 codes and
its float32 scale's 4 bytes) is written by `_store_kv_int8` (one program per new token,
every kv head's row quantized at once) and read through a float32 view of the same bytes
for the scales: `_attend` multiplies each key's codes by its scale (QUANT). Rows whose D is
not a multiple of 4 (a scale that would not be 4-byte aligned) are left to torch.

The grid is fixed by the batch's shapes: T // BLOCK_Q + B tiles (B sequences, T tokens),
so no launch reads anything from the device first (a step can be captured in a CUDA
graph). Tile i belongs to the last sequence b with query_start_loc[b] // BLOCK_Q + b <= i
(a binary search); tiles past a sequence's tokens do nothing. BLOCK_M is 16 rows where
every sequence adds one token (decode) and 64 otherwise. Float32 runs its dots in IEEE
float32 (not TF32): the cpu target's results, within rounding.

Decode steps whose grid is small for the device (fewer tiles x kv heads than two
programs per multiprocessor) split each sequence's keys over up to MAX_SPLITS programs
(`_attend`'s third grid axis; the split count from the shapes alone, as the grid), each
keeping its partial softmax state (running maximum, sum, unnormalized output, float32),
which `_combine` merges: batch-1 decode of a long context no longer runs on a handful of
programs.
"""

import functools
import os

import torch
import triton
import triton.language as tl


@triton.jit
def _f8_bits(x):
    """float32 x as float8 e4m3fn's bits (uint8): rounded to nearest even, saturated to +-448,
    NaN 0x7f (with its sign), as torch's conversion and the cpu kernel's F8E4M3::store."""
    bits = x.to(tl.uint32, bitcast=True)
    sign = (bits >> 24) & 0x80
    a = tl.abs(x)
    r = (bits & 0x7FFFFFFF) - (120 << 23)  # the exponent rebiased (127 -> 7)
    r = (r + 0x7FFFF + ((r >> 20) & 1)) >> 20  # 20 bits rounded off to nearest even
    sub = ((a * 512.0 + 12582912.0) - 12582912.0).to(tl.uint32)  # below 2^-6: steps of 2^-9 (exact products)
    code = tl.where(a < 0.015625, sub, tl.minimum(r, 0x7E))
    code = tl.where(a >= 448.0, 0x7E, code)
    code = tl.where(a != a, 0x7F, code)
    return (code | sign).to(tl.uint8)


@triton.jit
def _f8_float(c):
    """float8 e4m3fn bits (uint8) as float32: the float16 of the bits shifted into place,
    times 256 (exact for every finite value), NaN for 0x7f / 0xff."""
    c = c.to(tl.uint16)
    h = ((c & 0x80) << 8) | ((c & 0x7F) << 7)
    h = tl.where((c & 0x7F) == 0x7F, 0x7E00, h)
    return h.to(tl.float16, bitcast=True).to(tl.float32) * 256.0


@triton.jit
def _cache_value(x, cache_ptr, F8: tl.constexpr):
    """x as a cache of cache_ptr's element type stores it (F8: a float8 cache's bytes)."""
    if F8:
        return _f8_bits(x.to(tl.float32))
    return x.to(cache_ptr.dtype.element_ty)


@triton.jit
def _store_kv(k_ptr, v_ptr, k_cache_ptr, v_cache_ptr, slot_ptr, y_ptr, qsl_ptr, num_seqs,
              k_stride, v_stride, y_stride,
              K_WIDTH: tl.constexpr, V_WIDTH: tl.constexpr, Y_WIDTH: tl.constexpr,
              KB: tl.constexpr, VB: tl.constexpr, YB: tl.constexpr, F8: tl.constexpr):
    t = tl.program_id(0).to(tl.int64)
    slot = tl.load(slot_ptr + t)
    ko = tl.arange(0, KB)
    km = (ko < K_WIDTH) & (slot >= 0)
    tl.store(k_cache_ptr + slot * K_WIDTH + ko,
             _cache_value(tl.load(k_ptr + t * k_stride + ko, mask=km), k_cache_ptr, F8), mask=km)
    vo = tl.arange(0, VB)
    vm = (vo < V_WIDTH) & (slot >= 0)
    tl.store(v_cache_ptr + slot * V_WIDTH + vo,
             _cache_value(tl.load(v_ptr + t * v_stride + vo, mask=vm), v_cache_ptr, F8), mask=vm)
    yo = tl.arange(0, YB)
    past = tl.load(qsl_ptr + num_seqs) <= t
    zero = tl.zeros([YB], dtype=tl.float32).to(y_ptr.dtype.element_ty)
    tl.store(y_ptr + t * y_stride + yo, zero, mask=(yo < Y_WIDTH) & past)


@triton.jit
def _store_kv_int8(k_ptr, v_ptr, k_cache_ptr, v_cache_ptr, k_scale_ptr, v_scale_ptr, slot_ptr, y_ptr, qsl_ptr,
                   num_seqs, k_stride, v_stride, y_stride,
                   KV_HEADS: tl.constexpr, HP: tl.constexpr, D: tl.constexpr, DV: tl.constexpr,
                   DP: tl.constexpr, DVP: tl.constexpr, Y_WIDTH: tl.constexpr, YB: tl.constexpr):
    t = tl.program_id(0).to(tl.int64)
    slot = tl.load(slot_ptr + t)
    _quantize_rows(k_ptr + t * k_stride, k_cache_ptr, k_scale_ptr, slot, KV_HEADS, HP, D, DP)
    _quantize_rows(v_ptr + t * v_stride, v_cache_ptr, v_scale_ptr, slot, KV_HEADS, HP, DV, DVP)
    yo = tl.arange(0, YB)
    past = tl.load(qsl_ptr + num_seqs) <= t
    zero = tl.zeros([YB], dtype=tl.float32).to(y_ptr.dtype.element_ty)
    tl.store(y_ptr + t * y_stride + yo, zero, mask=(yo < Y_WIDTH) & past)


@triton.jit
def _quantize_rows(x_ptr, cache_ptr, scale_ptr, slot, KV_HEADS: tl.constexpr, HP: tl.constexpr, D: tl.constexpr,
                   DP: tl.constexpr):
    """One token's KV_HEADS rows of D values at x_ptr into an int8 cache's slot: codes
    round-half-even(x * 127 / amax), clipped, NaN's 0; then the scale amax / 127 (NaN where a
    row holds one), as the reference quantizes them."""
    h = tl.arange(0, HP)
    d = tl.arange(0, DP)
    ok = (h[:, None] < KV_HEADS) & (d[None, :] < D) & (slot >= 0)
    x = tl.load(x_ptr + h[:, None] * D + d[None, :], mask=ok, other=0.0).to(tl.float32)
    a = tl.abs(x)
    amax = tl.max(a, 1)
    amax = tl.where(tl.sum((a != a).to(tl.int32), 1) > 0, float("nan"), amax)  # (a reduction may drop NaN)
    inv = tl.where(amax == 0.0, 0.0, tl.math.div_rn(tl.full([HP], 127.0, tl.float32), amax))
    v = x * inv[:, None]
    r = (v + 12582912.0) - 12582912.0  # 1.5 x 2^23: rounded to an integer, ties to even (|v| <= 127)
    codes = tl.where(r != r, 0.0, tl.minimum(tl.maximum(r, -127.0), 127.0)).to(tl.int8)
    row = slot * (KV_HEADS * (D + 4)) + h * (D + 4)
    tl.store(cache_ptr + row[:, None] + d[None, :], codes, mask=ok)
    scale = tl.math.div_rn(amax, tl.full([HP], 127.0, tl.float32))
    tl.store(scale_ptr + (row + D) // 4, scale, mask=(h < KV_HEADS) & (slot >= 0))


@triton.jit
def _attend(q_ptr, k_cache_ptr, v_cache_ptr, k_scale_ptr, v_scale_ptr, bt_ptr, qsl_ptr, seq_lens_ptr, y_ptr,
            part_m_ptr, part_l_ptr, part_acc_ptr,
            num_seqs, bt_stride, q_stride, y_stride, scale, window, split_len,
            BLOCK_SIZE: tl.constexpr, KV_HEADS: tl.constexpr, GROUP: tl.constexpr, GP: tl.constexpr,
            D: tl.constexpr, DV: tl.constexpr, DP: tl.constexpr, DVP: tl.constexpr,
            BLOCK_Q: tl.constexpr, BLOCK_N: tl.constexpr, SPLITS: tl.constexpr, PRECISION: tl.constexpr,
            UPCAST: tl.constexpr, QUANT: tl.constexpr, F8: tl.constexpr):
    KD: tl.constexpr = D + 4 if QUANT else D  # a cache row's elements (an int8 row: its scale's 4 bytes too)
    KDV: tl.constexpr = DV + 4 if QUANT else DV
    BLOCK_M: tl.constexpr = BLOCK_Q * GP
    tile = tl.program_id(0)
    kvh = tl.program_id(1)
    split = tl.program_id(2)
    # the tile's sequence: the last b whose first tile (query_start_loc[b] // BLOCK_Q + b) is <= tile
    lo = tile * 0
    hi = lo + num_seqs
    while lo + 1 < hi:
        mid = (lo + hi) // 2
        right = tl.load(qsl_ptr + mid) // BLOCK_Q + mid <= tile
        lo = tl.where(right, mid, lo)
        hi = tl.where(right, hi, mid)
    b = lo.to(tl.int64)
    q_start = tl.load(qsl_ptr + b)
    q_len = tl.load(qsl_ptr + b + 1) - q_start
    local = tile - (q_start // BLOCK_Q + b)
    seq_len = tl.load(seq_lens_ptr + b)
    context = seq_len - q_len  # the sequence's tokens before its new ones

    rows = tl.arange(0, BLOCK_M)
    qi = local * BLOCK_Q + rows // GP  # each row's token, among the sequence's new ones
    head = kvh * GROUP + rows % GP
    row_ok = (qi < q_len) & (rows % GP < GROUP)
    token = q_start + qi
    qpos = context + qi  # each row's position in the sequence
    dq = tl.arange(0, DP)
    q = tl.load(q_ptr + token[:, None] * q_stride + head[:, None] * D + dq[None, :],
                mask=row_ok[:, None] & (dq[None, :] < D), other=0.0)
    if UPCAST:
        q = q.to(tl.float32)
    dv = tl.arange(0, DVP)

    # the keys any row sees: [kv_lo, kv_hi), none for a tile past the sequence's tokens
    kv_hi = tl.minimum(context + (local + 1) * BLOCK_Q, seq_len)
    kv_hi = tl.where(local * BLOCK_Q < q_len, kv_hi, 0)
    kv_lo = kv_hi * 0
    if window > 0:
        kv_lo = tl.maximum(context + local * BLOCK_Q - window + 1, 0) // BLOCK_N * BLOCK_N
    if SPLITS > 1:  # this program's share of the keys: split_len of them (a multiple of BLOCK_N)
        kv_lo = tl.maximum(kv_lo, split * split_len)
        kv_hi = tl.minimum(kv_hi, (split + 1) * split_len)
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, DVP], tl.float32)
    j = kv_lo
    while j < kv_hi:
        keys = j + tl.arange(0, BLOCK_N)
        key_ok = keys < kv_hi
        block = tl.load(bt_ptr + b * bt_stride + keys // BLOCK_SIZE, mask=key_ok, other=0)
        slot = block * BLOCK_SIZE + keys % BLOCK_SIZE
        k = tl.load(k_cache_ptr + slot[None, :] * (KV_HEADS * KD) + kvh * KD + dq[:, None],
                    mask=key_ok[None, :] & (dq[:, None] < D), other=0.0)  # [DP, BLOCK_N]
        if QUANT:  # codes times their row's scale
            k_row = slot * (KV_HEADS * KD) + kvh * KD
            k = k.to(tl.float32) * tl.load(k_scale_ptr + (k_row + D) // 4, mask=key_ok, other=0.0)[None, :]
        if F8:
            k = _f8_float(k)
        k = k.to(q.dtype)  # a cache of another type than q's (a float16 KV cache of a float32 model) read as q's
        s = tl.dot(q, k, input_precision=PRECISION) * scale
        visible = key_ok[None, :] & (keys[None, :] <= qpos[:, None])
        visible = visible & ((window <= 0) | (qpos[:, None] - keys[None, :] < window))
        s = tl.where(visible, s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # a row that has seen no key yet
        p = tl.exp(s - m_safe[:, None])
        alpha = tl.exp(m_i - m_safe)
        l_i = l_i * alpha + tl.sum(p, 1)
        v = tl.load(v_cache_ptr + slot[:, None] * (KV_HEADS * KDV) + kvh * KDV + dv[None, :],
                    mask=key_ok[:, None] & (dv[None, :] < DV), other=0.0)  # [BLOCK_N, DVP]
        if QUANT:
            v_row = slot * (KV_HEADS * KDV) + kvh * KDV
            v = v.to(tl.float32) * tl.load(v_scale_ptr + (v_row + DV) // 4, mask=key_ok, other=0.0)[:, None]
        if F8:
            v = _f8_float(v)
        v = v.to(q.dtype)
        p = p.to(v.dtype)
        if UPCAST:
            p, v = p.to(tl.float32), v.to(tl.float32)
        acc = acc * alpha[:, None] + tl.dot(p, v, input_precision=PRECISION)
        m_i = m_new
        j += BLOCK_N
    if SPLITS > 1:  # the partial softmax state of each row, for _combine (every split writes its own)
        part = (token * (KV_HEADS * GROUP) + head) * SPLITS + split
        tl.store(part_m_ptr + part, m_i, mask=row_ok)
        tl.store(part_l_ptr + part, l_i, mask=row_ok)
        tl.store(part_acc_ptr + part[:, None] * DV + dv[None, :], acc, mask=row_ok[:, None] & (dv[None, :] < DV))
    else:
        out = acc / tl.where(l_i > 0, l_i, 1.0)[:, None]
        tl.store(y_ptr + token[:, None] * y_stride + head[:, None] * DV + dv[None, :], out.to(y_ptr.dtype.element_ty),
                 mask=row_ok[:, None] & (dv[None, :] < DV))


@triton.jit
def _combine(part_m_ptr, part_l_ptr, part_acc_ptr, y_ptr, qsl_ptr, num_seqs, y_stride,
             HEADS: tl.constexpr, SPLITS: tl.constexpr, SP: tl.constexpr, DV: tl.constexpr, DVP: tl.constexpr):
    """One (token, head): its splits' partial softmax states merged (rescaled to the
    largest running maximum), normalized, stored."""
    t = tl.program_id(0).to(tl.int64)
    h = tl.program_id(1)
    valid = t < tl.load(qsl_ptr + num_seqs)
    s = tl.arange(0, SP)
    part = (t * HEADS + h) * SPLITS + s
    ok = (s < SPLITS) & valid
    m = tl.load(part_m_ptr + part, mask=ok, other=float("-inf"))
    l_s = tl.load(part_l_ptr + part, mask=ok, other=0.0)
    m_max = tl.max(m, 0)
    weight = tl.exp(m - tl.where(m_max == float("-inf"), 0.0, m_max))
    total = tl.sum(l_s * weight, 0)
    dv = tl.arange(0, DVP)
    acc = tl.load(part_acc_ptr + part[:, None] * DV + dv[None, :], mask=ok[:, None] & (dv[None, :] < DV), other=0.0)
    out = tl.sum(acc * weight[:, None], 0) / tl.where(total > 0, total, 1.0)
    tl.store(y_ptr + t * y_stride + h * DV + dv, out.to(y_ptr.dtype.element_ty), mask=(dv < DV) & valid)


_FLOATS = (torch.float32, torch.float16, torch.bfloat16)
_CACHES = (*_FLOATS, torch.int8, torch.float8_e4m3fn)
# Triton's interpreter multiplies bfloat16 dot operands as their integer bits: there they
# are widened to float32 first (after the same rounding of p a GPU does)
_INTERPRETED = os.environ.get("TRITON_INTERPRET", "0") == "1"


def paged_attention(params, q, k, v, k_cache, v_cache, slot_mapping, block_tables, query_start_loc, seq_lens, y):
    """The extern: False (nothing done) where these tensors are not the kernels' (another
    dtype, strided rows or caches, mismatched shapes): the runtime's torch path runs then."""
    heads, kv_heads = params["num_heads"], params["kv_num_heads"]
    if (q.dtype not in _FLOATS or any(t.dtype != q.dtype for t in (k, v, y)) or k_cache.dtype not in _CACHES
            or v_cache.dtype != k_cache.dtype
            or any(t.dtype != torch.int64 or not t.is_contiguous()
                   for t in (slot_mapping, block_tables, query_start_loc, seq_lens))
            or any(t.dim() != 2 or t.stride(1) != 1 for t in (q, k, v, y)) or block_tables.dim() != 2
            or k_cache.dim() != 4 or v_cache.dim() != 4 or not (k_cache.is_contiguous() and v_cache.is_contiguous())
            or heads % kv_heads or params["sliding_window"] < 0):
        return False
    quant = k_cache.dtype == torch.int8  # rows of codes and their scale's 4 bytes
    extra = 4 if quant else 0
    num_blocks, block_size, _, d = k_cache.shape
    d -= extra
    tokens, dv, num_seqs = q.shape[0], v_cache.shape[3] - extra, seq_lens.numel()
    if quant and (d % 4 or dv % 4):  # (the scales read through a float32 view must be aligned)
        return False
    if (k_cache.shape[2] != kv_heads or v_cache.shape[:3] != k_cache.shape[:3] or min(d, dv, block_size) < 1
            or q.shape[1] != heads * d or k.shape != (tokens, kv_heads * d) or v.shape != (tokens, kv_heads * dv)
            or y.shape != (tokens, heads * dv) or slot_mapping.shape != (tokens,)
            or block_tables.shape[0] < num_seqs or query_start_loc.shape != (num_seqs + 1,)):
        return False
    if tokens == 0:
        return True
    f8 = k_cache.dtype == torch.float8_e4m3fn  # (its bytes, converted by the kernels)
    if f8:
        k_cache, v_cache = k_cache.view(torch.uint8), v_cache.view(torch.uint8)
    p2 = triton.next_power_of_2
    # an int8 cache's scales: its bytes as float32 (a row's scale at (its first byte + D) / 4)
    k_scales, v_scales = (k_cache.view(torch.float32), v_cache.view(torch.float32)) if quant else (k_cache, v_cache)
    if quant:
        _store_kv_int8[(tokens,)](k, v, k_cache, v_cache, k_scales, v_scales, slot_mapping, y, query_start_loc,
                                  num_seqs, k.stride(0), v.stride(0), y.stride(0), KV_HEADS=kv_heads, HP=p2(kv_heads),
                                  D=d, DV=dv, DP=p2(d), DVP=p2(dv), Y_WIDTH=heads * dv, YB=p2(heads * dv),
                                  enable_fp_fusion=False)  # (x * inv, then rounded: no fused multiply-add there)
    else:
        _store_kv[(tokens,)](k, v, k_cache, v_cache, slot_mapping, y, query_start_loc, num_seqs,
                             k.stride(0), v.stride(0), y.stride(0),
                             K_WIDTH=kv_heads * d, V_WIDTH=kv_heads * dv, Y_WIDTH=heads * dv,
                             KB=p2(kv_heads * d), VB=p2(kv_heads * dv), YB=p2(heads * dv), F8=f8,
                             enable_fp_fusion=False)  # (a subnormal's a * 512 + 1.5 x 2^23: no fused multiply-add)
    if num_seqs == 0:
        return True
    group = heads // kv_heads
    gp = p2(group)
    decode = tokens == num_seqs
    block_q = max(1, (16 if decode else 64) // gp)
    tiles = tokens // block_q + num_seqs
    scale = params["scale"] or d ** -0.5
    # split the keys over several programs where a decode grid is small for the device and
    # the sequences may be long (by shapes alone: max_blocks * block_size keys at most)
    max_keys = block_tables.shape[1] * block_size
    splits = 1
    if decode:
        splits = max(1, min(MAX_SPLITS, _programs_wanted(q.device) // (tiles * kv_heads), max_keys // (2 * BLOCK_N)))
    split_len = -(-max_keys // (splits * BLOCK_N)) * BLOCK_N
    if splits > 1:
        parts = tokens * heads * splits
        part_m = torch.empty(parts, dtype=torch.float32, device=q.device)
        part_l = torch.empty(parts, dtype=torch.float32, device=q.device)
        part_acc = torch.empty(parts * dv, dtype=torch.float32, device=q.device)
        STATS["split_launches"] += 1
    else:
        part_m = part_l = part_acc = y
    _attend[(tiles, kv_heads, splits)](
        q, k_cache, v_cache, k_scales, v_scales, block_tables, query_start_loc, seq_lens, y, part_m, part_l, part_acc,
        num_seqs, block_tables.stride(0), q.stride(0), y.stride(0), float(scale), int(params["sliding_window"]),
        split_len, BLOCK_SIZE=block_size, KV_HEADS=kv_heads, GROUP=group, GP=gp, D=d, DV=dv,
        DP=max(16, p2(d)), DVP=max(16, p2(dv)), BLOCK_Q=block_q, BLOCK_N=BLOCK_N, SPLITS=splits,
        PRECISION="ieee" if q.dtype == torch.float32 else None, UPCAST=_INTERPRETED and q.dtype == torch.bfloat16,
        QUANT=quant, F8=f8)
    if splits > 1:
        _combine[(tokens, heads)](part_m, part_l, part_acc, y, query_start_loc, num_seqs, y.stride(0),
                                  HEADS=heads, SPLITS=splits, SP=p2(splits), DV=dv, DVP=max(16, p2(dv)))
    return True


BLOCK_N = 32  # keys an attention program takes at a time
MAX_SPLITS = 16
STATS = {"split_launches": 0}  # (tests: the split path ran)


def _programs_wanted(device) -> int:
    """How many programs fill the device: two per multiprocessor on a GPU; in Triton's
    interpreter a small number, so that tests split their small grids too."""
    if device.type != "cuda":
        return 32
    return 2 * _multiprocessors(device.index if device.index is not None else torch.cuda.current_device())


@functools.lru_cache(maxsize=None)
def _multiprocessors(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


EXTERNS = {"paged_attention": paged_attention}
