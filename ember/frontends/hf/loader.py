"""Opening a model: a Hugging Face folder (config.json, safetensors, tokenizer files) or
a single GGUF file, as a `PretrainedModel` whose forward graph is built on demand."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..._builtin import cache_dir
from ...errors import ModelError, UnsupportedError
from ...ir.graph import Graph
from . import gpt2, llama, mixtral, qwen2  # noqa: F401 - register their architectures
from .config import ModelConfig
from .decoder import ForwardOptions, cache_shape
from .gguf_file import GGUFWeights, metadata, open_gguf
from .registry import Architecture, architecture_for_config, architecture_for_gguf
from .weights import SafetensorsWeights, Weights


@dataclass
class PretrainedModel:
    path: Path
    config: ModelConfig
    architecture: Architecture
    weights: Weights
    metadata: dict[str, Any] | None = None  # a GGUF file's metadata

    def graph(self, block_size: int = 16, max_model_len: int | None = None, kv_cache_dtype=None) -> Graph:
        """The forward graph over a flattened batch (see `decoder`), weights loaded now; its
        KV caches of `kv_cache_dtype` (a DType; default: the model's)."""
        return self.architecture.build(self.config, self.weights,
                                       ForwardOptions(block_size, max_model_len, kv_cache_dtype))

    def cache_shape(self, num_blocks: int, block_size: int = 16, dtype=None) -> tuple[int, int, int, int]:
        return cache_shape(self.config, num_blocks, block_size, dtype)

    def tokenizer(self):
        """The model's tokenizer, with its chat template: transformers' fast tokenizer read
        from the folder's tokenizer files or the GGUF metadata (local files only, no
        remote code)."""
        try:
            from transformers import AutoTokenizer
        except ImportError:
            raise UnsupportedError("the tokenizer needs transformers (pip install transformers)") from None
        try:
            if self.path.is_dir():
                return AutoTokenizer.from_pretrained(self.path, local_files_only=True, trust_remote_code=False)
            # building it from GGUF metadata takes transformers ~20 s: keep the result, by file identity
            stat = self.path.stat()
            key = hashlib.sha256(f"{self.path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:16]
            cached = cache_dir() / "tokenizers" / key
            if (cached / "tokenizer.json").is_file():
                return AutoTokenizer.from_pretrained(cached, local_files_only=True, trust_remote_code=False)
            tokenizer = AutoTokenizer.from_pretrained(self.path.parent, gguf_file=self.path.name,
                                                      local_files_only=True, trust_remote_code=False)
            try:
                tmp = cached.with_name(f"{key}.{os.getpid()}.tmp")
                tokenizer.save_pretrained(tmp)
                os.replace(tmp, cached)
            except OSError:  # a read-only or raced cache: the tokenizer is fine without it
                shutil.rmtree(tmp, ignore_errors=True)
            return tokenizer
        except (OSError, ValueError, KeyError) as e:
            raise ModelError(f"{self.path}: cannot load its tokenizer: {e}") from None


def load_pretrained(path: str | os.PathLike, *, dtype="float32", progress: bool = True) -> PretrainedModel:
    """Open a Hugging Face model folder or a GGUF file. Weights stay mapped, unread,
    until the graph is built. dtype: "float32" (default), "float16" or "bfloat16"."""
    path = Path(path)
    if path.is_dir():
        return _load_folder(path, dtype, progress)
    if path.is_file():
        return _load_gguf(path, dtype, progress)
    raise ModelError(f"{path}: no such model folder or GGUF file")


def _load_folder(folder: Path, dtype, progress: bool) -> PretrainedModel:
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise ModelError(f"{folder}: no config.json (not a Hugging Face model folder)")
    try:
        raw = json.loads(config_file.read_text())
    except ValueError as e:
        raise ModelError(f"{config_file}: not valid JSON: {e}") from None
    arch = architecture_for_config(raw, str(config_file))
    config = arch.config_from_hf(raw)
    return PretrainedModel(folder, config, arch, SafetensorsWeights(folder, dtype, progress))


def _load_gguf(file: Path, dtype, progress: bool) -> PretrainedModel:
    reader = open_gguf(file)
    meta = metadata(reader)
    name = meta.get("general.architecture")
    if name is None:
        raise ModelError(f"{file}: GGUF metadata has no general.architecture")
    arch = architecture_for_gguf(name, str(file))
    config = arch.config_from_gguf(meta, [t.name for t in reader.tensors])
    permuted = {suffix: getattr(config, attr) for suffix, attr in arch.gguf_permuted.items()}
    return PretrainedModel(file, config, arch, GGUFWeights(file, reader, permuted, dtype, progress), meta)
