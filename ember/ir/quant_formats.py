"""Block-quantized weight formats: llama.cpp's (GGML's) blocks of 32 weights along a
row's input axis, which GGUF files store and ember keeps as they are (ember.QuantizedLinear's
weight is a [N, row_bytes] uint8 matrix of them, row n holding output n's weights).

    q8_0   f16 d, int8 q[32]                        w = d q
    q4_0   f16 d, 16 bytes of nibbles               w = d (q - 8)
    q4_1   f16 d, f16 m, 16 bytes of nibbles        w = d q + m
    q5_0   f16 d, 32 high bits, 16 bytes of nibbles w = d (q - 16)
    q5_1   f16 d, f16 m, 32 high bits, nibbles      w = d q + m

and the K-quants, superblocks of 256 weights in 8 groups of 32 with scales of their own
(what Q4_K_M / Q5_K_M / Q6_K files hold):

    q4_k   f16 d, f16 dmin, 12 bytes of 6-bit scales and mins, 128 of nibbles   w = d sc q - dmin m
    q5_k   as q4_k, with 32 bytes of high bits before the nibbles
    q6_k   128 bytes of low nibbles, 64 of 2-bit highs, int8 scales[16], f16 d   w = d sc (q - 32)

`quantize` and `dequantize` are gguf's numpy implementations (the reference llama.cpp's
Python tools use), so a weight ember quantizes is bit for bit what llama.cpp's tools
write; gguf has no quantizer for the K-quants, so ember keeps those where a file has them
and writes none. The CPU kernel that multiplies by them is
ember/codegen/cpu_quantized_gemm.cpp.

Also here: the rows of an int8 KV cache (`quantize_kv_rows`), a float32 scale per row.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import UnsupportedError


@dataclass(frozen=True)
class BlockFormat:
    name: str       # ember's name ("q4_1"), the op's `format` attribute
    code: int       # the kernel's format number (cpu_quantized_gemm.cpp)
    block_bytes: int  # bytes per block of `elements` weights
    bits: int       # bits per weight, as stored (before the block's scales)
    elements: int = 32  # weights per block (BLOCK; a K-quant's superblock: 256)

    @property
    def ggml(self) -> str:
        """GGML's name of the type ("Q4_1")."""
        return self.name.upper()

    def row_bytes(self, k: int) -> int:
        """Bytes of one row of k weights (k a multiple of `elements`)."""
        return k // self.elements * self.block_bytes

    def fits(self, k: int) -> bool:
        return k > 0 and k % self.elements == 0

    def quantize(self, w: np.ndarray) -> np.ndarray:
        """w [N, K] (float; K a multiple of 32) -> its blocks [N, row_bytes(K)] (uint8)."""
        import gguf

        w = np.asarray(w, dtype=np.float32)
        if self.elements != BLOCK:
            raise UnsupportedError(f"ember keeps {self.name} blocks where a GGUF file has them but does not write "
                                   f"them (gguf has no quantizer for them); quantize to one of {', '.join(SCHEMES)}")
        if w.ndim != 2 or not self.fits(w.shape[1]):
            raise UnsupportedError(f"{self.name} quantizes [N, K] weights with K a multiple of {BLOCK}, "
                                   f"not {list(w.shape)}")
        return gguf.quants.quantize(np.ascontiguousarray(w), gguf.GGMLQuantizationType[self.ggml])

    def takes_group(self, group: int) -> bool:
        """Whether `quantize_groups` writes groups of `group` weights: 32 (its blocks), or a
        multiple of 32 for the GROUPED formats."""
        return group == BLOCK or (self.name in GROUPED and group > 0 and group % BLOCK == 0)

    def quantize_groups(self, w: np.ndarray, group: int) -> np.ndarray:
        """w [N, K] quantized with one scale (and minimum) per `group` weights along K, written
        as this format's blocks of 32 (each block of a group carries the group's scale): groups
        of 64, 128, ... for q8_0, q4_0 and q4_1, by gguf's formulas over the group (`group` 32:
        gguf's quantizer itself)."""
        w = np.asarray(w, dtype=np.float32)
        if group == BLOCK:
            return self.quantize(w)
        if not self.takes_group(group):
            raise UnsupportedError(f"groups of {group} weights: {self.name} quantizes in groups of {BLOCK}, "
                                   f"{', '.join(GROUPED)} in multiples of {BLOCK}")
        if w.ndim != 2 or w.shape[1] % group:
            raise UnsupportedError(f"{self.name} in groups of {group} quantizes [N, K] weights with K a multiple "
                                   f"of {group}, not {list(w.shape)}")
        return _grouped(self.name, w, group).reshape(w.shape[0], -1)

    def dequantize(self, blocks: np.ndarray) -> np.ndarray:
        """[N, row_bytes] blocks -> the float32 weight [N, K]."""
        import gguf

        blocks = np.ascontiguousarray(blocks, dtype=np.uint8)
        n = blocks.shape[0]
        return gguf.quants.dequantize(blocks, gguf.GGMLQuantizationType[self.ggml]).reshape(n, -1).astype(
            np.float32, copy=False)


BLOCK = 32
FORMATS: dict[str, BlockFormat] = {f.name: f for f in [
    BlockFormat("q8_0", 0, 34, 8),
    BlockFormat("q4_0", 1, 18, 4),
    BlockFormat("q4_1", 2, 20, 4),
    BlockFormat("q5_0", 3, 22, 5),
    BlockFormat("q5_1", 4, 24, 5),
    BlockFormat("q4_k", 5, 144, 4, 256),
    BlockFormat("q5_k", 6, 176, 5, 256),
    BlockFormat("q6_k", 7, 210, 6, 256),
]}
GGML_NAMES = {f.ggml: f for f in FORMATS.values()}
# quantization schemes by name -> the format each writes (ember.Quantization, LLM(quantization=)):
# the formats of 32 (gguf quantizes those)
SCHEMES = {"int8": "q8_0", "int4": "q4_0", "int4_asym": "q4_1",
           **{name: name for name, f in FORMATS.items() if f.elements == BLOCK}}


GROUPED = ("q8_0", "q4_0", "q4_1")  # the formats quantize_groups writes in groups of more than 32


def _grouped(name: str, w: np.ndarray, group: int) -> np.ndarray:
    """gguf's Q8_0 / Q4_0 / Q4_1 quantize_blocks, the scale (and minimum) of each group of
    `group` weights, every block of 32 in it quantized with them: [blocks, block_bytes]."""
    from gguf.quants import np_roundf

    g = w.reshape(-1, group)
    with np.errstate(divide="ignore"):
        if name == "q8_0":
            d = abs(g).max(axis=1, keepdims=True) / 127
            q = np_roundf(g * np.where(d == 0, 0, 1 / d)).astype(np.int8).view(np.uint8)
            low = None
        elif name == "q4_0":
            d = np.take_along_axis(g, abs(g).argmax(axis=-1, keepdims=True), axis=-1) / -8
            q = np.trunc(g * np.where(d == 0, 0, 1 / d) + np.float32(8.5), dtype=np.float32).astype(np.uint8).clip(0, 15)
            low = None
        else:  # q4_1
            top, low = g.max(axis=-1, keepdims=True), g.min(axis=-1, keepdims=True)
            d = (top - low) / 15
            q = np.trunc((g - low) * np.where(d == 0, 0, 1 / d) + np.float32(0.5),
                         dtype=np.float32).astype(np.uint8).clip(0, 15)
    per = group // BLOCK  # blocks of 32 a group

    def scales(v):  # a group's value, once for each of its blocks, as float16 bytes
        return np.repeat(v, per, axis=0).astype(np.float16).view(np.uint8)

    q = q.reshape(-1, BLOCK)
    if name != "q8_0":
        q = q[:, :BLOCK // 2] | (q[:, BLOCK // 2:] << np.uint8(4))
    return np.concatenate([scales(d), *([scales(low)] if low is not None else []), q], axis=-1)


def block_format(name: str) -> BlockFormat:
    """The format named `name` ("q4_1", or GGML's "Q4_1"); UnsupportedError naming the
    formats there are otherwise."""
    f = FORMATS.get(str(name).lower())
    if f is None:
        raise UnsupportedError(f"unknown block-quantized format {name!r}; ember keeps {', '.join(FORMATS)}")
    return f


# -- KV cache rows ----------------------------------------------------------------------------------
# An int8 KV cache (ember.PagedAttention's docstring) keeps each row — one token's k or v of one
# kv head, D values — as D int8 codes and then the 4 bytes of its float32 scale: D + 4 bytes.
KV_ROW_EXTRA = {"int8": 4}  # a cache row's elements past its D values, by the cache's element type
KV_INT8_MAX = 127


def quantize_kv_rows(x: np.ndarray) -> np.ndarray:
    """Rows [..., D] of floats as an int8 cache stores them: [..., D + 4] int8, the D codes
    round-half-even(x * 127 / amax) (amax the row's largest |x|; clipped to +-127, NaN's 0)
    then the bytes of the float32 scale amax / 127 (a row holding NaN or an infinity reads
    back as NaN). The CPU kernel (cpu_paged_attention.cpp's quantize_row) and the torch path
    compute the same, bit for bit."""
    x = np.asarray(x, dtype=np.float32)
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        amax = np.abs(x).max(axis=-1, keepdims=True) if x.shape[-1] else np.zeros(x.shape[:-1] + (1,), np.float32)
        inv = np.float32(KV_INT8_MAX) / amax
        inv[amax == 0] = 0
        codes = np.rint(x * inv)
        codes = np.where(np.isnan(codes), 0, np.clip(codes, -KV_INT8_MAX, KV_INT8_MAX)).astype(np.int8)
        scale = (amax / np.float32(KV_INT8_MAX)).astype(np.float32)
    return np.concatenate([codes, scale.view(np.int8)], axis=-1)


def dequantize_kv_rows(rows: np.ndarray) -> np.ndarray:
    """An int8 cache's rows [..., D + 4] back as float32 [..., D]."""
    d = rows.shape[-1] - KV_ROW_EXTRA["int8"]
    scale = np.ascontiguousarray(rows[..., d:]).view(np.float32)
    with np.errstate(invalid="ignore"):
        return rows[..., :d].astype(np.float32) * scale
