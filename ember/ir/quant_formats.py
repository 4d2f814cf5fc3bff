"""Block-quantized weight formats: llama.cpp's (GGML's) blocks of 32 weights along a
row's input axis, which GGUF files store and ember keeps as they are (ember.QuantizedLinear's
weight is a [N, row_bytes] uint8 matrix of them, row n holding output n's weights).

    q8_0   f16 d, int8 q[32]                        w = d q
    q4_0   f16 d, 16 bytes of nibbles               w = d (q - 8)
    q4_1   f16 d, f16 m, 16 bytes of nibbles        w = d q + m
    q5_0   f16 d, 32 high bits, 16 bytes of nibbles w = d (q - 16)
    q5_1   f16 d, f16 m, 32 high bits, nibbles      w = d q + m

`quantize` and `dequantize` are gguf's numpy implementations (the reference llama.cpp's
Python tools use), so a weight ember quantizes is bit for bit what llama.cpp's tools
write. The CPU kernel that multiplies by them is ember/codegen/cpu_quantized_gemm.cpp.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import UnsupportedError


@dataclass(frozen=True)
class BlockFormat:
    name: str       # ember's name ("q4_1"), the op's `format` attribute
    code: int       # the kernel's format number (cpu_quantized_gemm.cpp)
    block_bytes: int  # bytes per block of `BLOCK` weights
    bits: int       # bits per weight, as stored (before the block's scales)

    @property
    def ggml(self) -> str:
        """GGML's name of the type ("Q4_1")."""
        return self.name.upper()

    def row_bytes(self, k: int) -> int:
        """Bytes of one row of k weights (k a multiple of BLOCK)."""
        return k // BLOCK * self.block_bytes

    def fits(self, k: int) -> bool:
        return k > 0 and k % BLOCK == 0

    def quantize(self, w: np.ndarray) -> np.ndarray:
        """w [N, K] (float; K a multiple of 32) -> its blocks [N, row_bytes(K)] (uint8)."""
        import gguf

        w = np.asarray(w, dtype=np.float32)
        if w.ndim != 2 or not self.fits(w.shape[1]):
            raise UnsupportedError(f"{self.name} quantizes [N, K] weights with K a multiple of {BLOCK}, "
                                   f"not {list(w.shape)}")
        return gguf.quants.quantize(np.ascontiguousarray(w), gguf.GGMLQuantizationType[self.ggml])

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
]}
GGML_NAMES = {f.ggml: f for f in FORMATS.values()}
# quantization schemes by name -> the format each writes (ember.Quantization, LLM(quantization=))
SCHEMES = {"int8": "q8_0", "int4": "q4_0", "int4_asym": "q4_1", **{name: name for name in FORMATS}}


def block_format(name: str) -> BlockFormat:
    """The format named `name` ("q4_1", or GGML's "Q4_1"); UnsupportedError naming the
    formats there are otherwise."""
    f = FORMATS.get(str(name).lower())
    if f is None:
        raise UnsupportedError(f"unknown block-quantized format {name!r}; ember keeps {', '.join(FORMATS)}")
    return f
