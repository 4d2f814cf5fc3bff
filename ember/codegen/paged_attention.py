"""The fused CPU kernel of ember.PagedAttention (cpu_paged_attention.cpp): built once with
the system C++ compiler (ember's CPU prelude pasted first), cached like every kernel
library, and called through ctypes with the data pointers of the op's arrays.

`paged_attention(dtype, arrays, sizes, ...)` runs it; it returns False, having done nothing,
where its indices do not describe a valid batch (a slot or block past the cache, a sequence
shorter than its new tokens), so that the caller's slower path can report the error.
`available(dtype)` says whether there is a kernel for that element type at all: float32,
float16 and bfloat16 (which compute in float32), given a C++ compiler. Each type is its own
library, built the first time it is asked for.
"""

from __future__ import annotations

import ctypes
import functools
import logging
from pathlib import Path

from ..errors import ExecutionError
from . import cpu
from .cpu_prelude import PRELUDE

log = logging.getLogger("ember.codegen")

DTYPES = {"float32": "F32", "float16": "F16", "bfloat16": "BF16"}  # -> the kernel's element type
# the pointer and size arguments, in the order of the kernel's P_* and S_* enums
ARRAYS = ("q", "k", "v", "k_cache", "v_cache", "slot_mapping", "block_tables", "query_start_loc", "seq_lens", "y")
SIZES = ("num_tokens", "num_seqs", "max_blocks", "num_blocks", "block_size", "num_heads", "kv_num_heads",
         "head_dim", "v_head_dim", "q_stride", "k_stride", "v_stride", "y_stride", "sliding_window", "threads")
SOURCE = Path(__file__).with_name("cpu_paged_attention.cpp")


@functools.lru_cache(maxsize=None)
def _kernel(dtype: str):
    """The kernel for `dtype`'s elements, built on first use; None without a compiler."""
    if cpu.compiler() is None:
        return None
    source = f"{PRELUDE}\n#define EMBER_PAGED_ELEMENT {DTYPES[dtype]}\n{SOURCE.read_text()}"
    try:
        fn = cpu.load(str(cpu.build(source))).ember_paged_attention
    except ExecutionError as e:
        log.warning("ember: the %s paged-attention kernel did not build; it runs on torch instead:\n%s", dtype, e)
        return None
    fn.argtypes, fn.restype = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_float], ctypes.c_int
    return fn


def available(dtype: str) -> bool:
    return dtype in DTYPES and _kernel(dtype) is not None


def paged_attention(dtype: str, arrays: dict[str, int], sizes: dict[str, int], scale: float) -> bool:
    """Run the kernel on the arrays at the addresses `arrays` (by name, ARRAYS) of `dtype`
    with `sizes` (SIZES; strides are rows' strides in elements, `threads` the OpenMP team
    size); scale 0 means 1/sqrt(head_dim). False: the indices were invalid, nothing ran."""
    pointers = (ctypes.c_void_p * len(ARRAYS))(*(arrays[name] for name in ARRAYS))
    values = (ctypes.c_int64 * len(SIZES))(*(sizes[name] for name in SIZES))
    scale = scale or sizes["head_dim"] ** -0.5
    return _kernel(dtype)(pointers, values, scale) == 0
