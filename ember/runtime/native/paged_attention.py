"""The fused CPU kernel of ember.PagedAttention (codegen's cpu_paged_attention.cpp, one
library per element type: ember/codegen/handwritten.py, "paged_attention-<dtype>"), called
through ctypes with the data pointers of the op's arrays.

`paged_attention(dtype, arrays, sizes, ...)` runs it; it returns False, having done nothing,
where its indices do not describe a valid batch (a slot or block past the cache, a sequence
shorter than its new tokens), so that the caller's slower path can report the error.
`available(dtype)` says whether a Program named the kernel's library for that element type
(float32, float16 or bfloat16, which compute in float32; `key(dtype, cache_dtype)` for caches
of another type) and it built.
"""

from __future__ import annotations

import ctypes
import functools

from . import function

# the pointer and size arguments, in the order of the kernel's P_* and S_* enums
ARRAYS = ("q", "k", "v", "k_cache", "v_cache", "slot_mapping", "block_tables", "query_start_loc", "seq_lens", "y",
          "bias")
SIZES = ("num_tokens", "num_seqs", "max_blocks", "num_blocks", "block_size", "num_heads", "kv_num_heads",
         "head_dim", "v_head_dim", "q_stride", "k_stride", "v_stride", "y_stride", "sliding_window", "threads",
         "causal", "k_slot_stride", "v_slot_stride", "bias_seq_stride", "bias_head_stride", "bias_query_stride")


def key(dtype: str, cache_dtype: str) -> str:
    """The library's element types: q's ("float32"), or q's and the caches' where they
    differ ("float32-float16"; codegen/handwritten.py builds one library for each)."""
    return dtype if cache_dtype == dtype else f"{dtype}-{cache_dtype}"


def _kernel(dtype: str):
    """The kernel for `dtype`'s elements; None where no Program named its library."""
    return function(f"paged_attention-{dtype}", "ember_paged_attention",
                    [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_float], ctypes.c_int)


def available(dtype: str) -> bool:
    return _kernel(dtype) is not None


def paged_attention(dtype: str, arrays: dict[str, int], sizes: dict[str, int], scale: float) -> bool:
    """Run the kernel on the arrays at the addresses `arrays` (by name, ARRAYS) of `dtype`
    with `sizes` (SIZES; strides are rows' strides in elements, `threads` the OpenMP team
    size); scale 0 means 1/sqrt(head_dim). False: the indices were invalid, nothing ran.
    A missing array is a null pointer: no slot_mapping stores nothing, no bias adds none.
    `causal` 0: every key of a sequence is visible to each of its queries; the slot strides
    are the elements between the cache rows of consecutive slots; the bias strides, those
    between the bias rows of consecutive sequences, query heads and queries (float32 bias,
    one value per key)."""
    pointers = (ctypes.c_void_p * len(ARRAYS))(*(arrays.get(name) or None for name in ARRAYS))
    values = (ctypes.c_int64 * len(SIZES))(*(sizes[name] for name in SIZES))
    scale = scale or sizes["head_dim"] ** -0.5
    return _kernel(dtype)(pointers, values, scale) == 0


def step(dtype: str, slots: dict[str, int], sizes: dict[str, int], scale: float):
    """The kernel's step form for an executor's chained run (`ember_paged_attention_step`):
    the arrays' slots (by name, ARRAYS; a missing one: none), `sizes` (SIZES), the scale
    (0: 1/sqrt(head_dim)); (its address, its ctx) or None where no Program named the library."""
    import numpy as np

    fn = function(f"paged_attention-{dtype}", "ember_paged_attention_step",
                  [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p], ctypes.c_int)
    if fn is None:
        return None
    scale = np.float32(scale or sizes["head_dim"] ** -0.5).view(np.int32)
    ctx = np.array([slots.get(name, -1) for name in ARRAYS] + [sizes[name] for name in SIZES] + [int(scale)],
                   dtype=np.int64)
    return ctypes.cast(fn, ctypes.c_void_p).value, ctx


def dense_attention(q, k, v, bias, y, heads: int, kv_heads: int, scale: float, causal: bool) -> bool:
    """ember.Attention of packed rows on the same kernel: q [B, Sq, heads * D], k and v
    [B, Sk, kv_heads * D] (torch tensors; views of one packed QKV array are fine), y
    [B, Sq, heads * Dv], bias None or an additive float32 bias that broadcasts to
    [B, heads, Sq, Sk] (a mask; -inf masks a key). Each batch row is one sequence whose
    "cache" is k and v themselves. False, having done nothing, where the kernel does not
    take these arrays (their caller's path does). Called once per attention layer per run:
    its checks and arguments cost a few microseconds, not the tens that torch calls would."""
    import torch

    if q.dtype != torch.float32 or _kernel("float32") is None or heads % kv_heads or q.dim() != 3 or k.dim() != 3 or v.dim() != 3 or y.dim() != 3:
        return False
    if any(t.device.type != "cpu" for t in (q, k, v, y, *(() if bias is None else (bias,)))):
        return False  # (a cuda program's tensors: the kernel reads host memory; the library may be
                      # loaded by a cpu program compiled in the same process)
    (b, sq, qw), (_, sk, kw), vw = q.shape, k.shape, v.shape[2]
    d, dv = qw // heads, vw // kv_heads
    if (min(b, sq, sk, d, dv) < 1 or sq > sk or qw != heads * d or kw != kv_heads * d or vw != kv_heads * dv
            or k.shape[0] != b or tuple(v.shape[:2]) != (b, sk) or tuple(y.shape) != (b, sq, heads * dv)
            or any(t.dtype != torch.float32 for t in (k, v, y))):
        return False
    qs, ks, vs, ys = q.stride(), k.stride(), v.stride(), y.stride()
    if any(st[2] != 1 or st[0] != n * st[1] for st, n in ((qs, sq), (ks, sk), (vs, sk), (ys, sq))):
        return False
    bias_strides, bias_ptr = (0, 0, 0), None
    if bias is not None:
        if bias.dtype != torch.float32 or not 1 <= bias.dim() <= 4:
            return False
        pad = 4 - bias.dim()
        shape, st = (1,) * pad + tuple(bias.shape), (0,) * pad + bias.stride()
        if shape[3] != sk or (sk > 1 and st[3] != 1) or any(n not in (1, full) for n, full in zip(shape, (b, heads, sq))):
            return False
        bias_strides, bias_ptr = tuple(0 if n == 1 else s for n, s in zip(shape[:3], st[:3])), bias.data_ptr()
    _, (tables, starts, lens) = _dense_indices(b, sq, sk)
    arrays = {"q": q.data_ptr(), "k_cache": k.data_ptr(), "v_cache": v.data_ptr(), "block_tables": tables,
              "query_start_loc": starts, "seq_lens": lens, "y": y.data_ptr(), "bias": bias_ptr}
    sizes = {"num_tokens": b * sq, "num_seqs": b, "max_blocks": 1, "num_blocks": b, "block_size": sk,
             "num_heads": heads, "kv_num_heads": kv_heads, "head_dim": d, "v_head_dim": dv, "q_stride": qs[1],
             "k_stride": 0, "v_stride": 0, "y_stride": ys[1], "sliding_window": 0, "threads": torch.get_num_threads(),
             "causal": int(causal), "k_slot_stride": ks[1], "v_slot_stride": vs[1], "bias_seq_stride": bias_strides[0],
             "bias_head_stride": bias_strides[1], "bias_query_stride": bias_strides[2]}
    return paged_attention("float32", arrays, sizes, scale)


@functools.lru_cache(maxsize=64)
def _dense_indices(b: int, sq: int, sk: int):
    """Dense attention's block tables, query starts and sequence lengths (each sequence one
    block of sk keys), and their addresses."""
    import numpy as np

    arrays = (np.arange(b, dtype=np.int64), np.arange(0, b * sq + 1, sq, dtype=np.int64), np.full(b, sk, np.int64))
    return arrays, tuple(a.ctypes.data for a in arrays)
