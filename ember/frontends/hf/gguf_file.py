"""Reading a GGUF file (llama.cpp's format) with the `gguf` package: its metadata as a
dict, and its tensors under Hugging Face names, dequantized on load.

Tensors are memory-mapped by gguf's reader; each is dequantized when taken (gguf's own
numpy dequantization, the reference for its formats), and its quantization type and
raw blocks stay available (`quant_type`, `raw_blocks`) for re-quantizing later.
llama.cpp's converter permutes the rows of Llama's q and k projections (it pairs the
rotary halves as interleaved pairs); that permutation is undone here, so the weights
match the Hugging Face layout the graph builders expect.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import numpy as np

from ...errors import ModelError
from .weights import Weights

# llama.cpp's tensor names -> Hugging Face's (the Llama-style decoders)
_BLOCK_NAMES = {
    "attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm",
    "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj",
}
_TOP_NAMES = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"}
_BLOCK = re.compile(r"^blk\.(\d+)\.(\w+)\.(weight|bias)$")
_TOP = re.compile(r"^(\w+)\.(weight|bias)$")


def hf_name(name: str) -> str | None:
    """The Hugging Face name of a llama.cpp tensor name (None: not one ember knows)."""
    if m := _BLOCK.match(name):
        part = _BLOCK_NAMES.get(m[2])
        return None if part is None else f"model.layers.{m[1]}.{part}.{m[3]}"
    if m := _TOP.match(name):
        part = _TOP_NAMES.get(m[1])
        return None if part is None else f"{part}.{m[2]}"
    return None


def open_gguf(path: str | os.PathLike):
    """gguf's reader over `path`, or a ModelError saying why the file cannot be read."""
    import gguf

    path = Path(path)
    if not path.is_file():
        raise ModelError(f"{path}: no such GGUF file")
    with open(path, "rb") as f:
        if f.read(4) != b"GGUF":
            raise ModelError(f"{path}: not a GGUF file (no GGUF magic)")
    try:
        reader = gguf.GGUFReader(path)
    except Exception as e:  # noqa: BLE001 - gguf raises whatever numpy does on a short file
        raise ModelError(f"{path}: cannot read the GGUF file, truncated or corrupt? "
                         f"({type(e).__name__}: {e})") from None
    size = path.stat().st_size
    for t in reader.tensors:
        if t.data_offset + t.n_bytes > size:
            raise ModelError(f"{path}: truncated: tensor {t.name!r} ends at byte {t.data_offset + t.n_bytes}, "
                             f"the file has {size}")
    return reader


def metadata(reader) -> dict[str, Any]:
    """Every metadata field as a Python value (strings, numbers, lists)."""
    meta = {}
    for key, field in reader.fields.items():
        try:
            meta[key] = field.contents()
        except Exception:  # noqa: BLE001 - a field gguf cannot decode is left out
            continue
    return meta


def unpermute(w: np.ndarray, num_heads: int) -> np.ndarray:
    """Undo llama.cpp's q/k row permutation: rows (head, half, i) were stored as (head, i, half)."""
    return w.reshape(num_heads, w.shape[0] // num_heads // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


class GGUFWeights(Weights):
    def __init__(self, path: str | os.PathLike, reader, permuted: dict[str, int], dtype="float32",
                 progress: bool = True):
        """`permuted`: HF name suffix -> head count of tensors llama.cpp permuted."""
        super().__init__(dtype, progress)
        self.path = Path(path)
        self._tensors = {}
        for t in reader.tensors:
            name = hf_name(t.name)
            if name is not None:
                self._tensors[name] = t
        self._permuted = permuted

    def names(self) -> list[str]:
        return list(self._tensors)

    def __contains__(self, name: str) -> bool:
        return name in self._tensors

    def quant_type(self, name: str) -> str:
        """The tensor's GGML type as stored: "F32", "Q8_0", "Q4_1", ..."""
        return self._tensors[name].tensor_type.name

    def raw_blocks(self, name: str) -> np.ndarray:
        """The tensor's stored bytes (quantized blocks), a view of the mapped file."""
        return self._tensors[name].data

    def _blocks(self, name: str):
        from ...ir.quant_formats import GGML_NAMES

        t = self._tensors[name]
        fmt = GGML_NAMES.get(t.tensor_type.name)
        if fmt is None or len(t.data.shape) != 2:
            return None
        blocks = t.data
        for suffix, heads in self._permuted.items():
            if name.endswith(suffix):
                blocks = unpermute(blocks, heads)  # (whole rows: the blocks run along them)
        return fmt, blocks

    def _raw(self, name: str) -> np.ndarray:
        import gguf

        t = self._tensors[name]
        qtype = t.tensor_type
        if qtype in (gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16):
            w = t.data
        else:
            try:
                w = gguf.quants.dequantize(t.data, qtype)
            except NotImplementedError:
                raise ModelError(f"{self.path}: tensor {t.name!r} has GGML type {qtype.name}, which "
                                 "ember cannot dequantize") from None
        w = w.reshape(tuple(int(d) for d in reversed(t.shape)))
        for suffix, heads in self._permuted.items():
            if name.endswith(suffix):
                w = unpermute(w, heads)
        return w

    def describe(self) -> str:
        return str(self.path)
