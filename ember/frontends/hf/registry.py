"""The architecture registry: one `Architecture` per model family (one file each),
found by a config's `architectures` or `model_type`, or by a GGUF file's
`general.architecture`."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ...errors import ModelError
from ...ir.graph import Graph
from .config import ModelConfig


@dataclass(frozen=True)
class Architecture:
    family: str
    architectures: tuple[str, ...]          # config.json `architectures` entries
    model_types: tuple[str, ...]            # config.json `model_type`
    config_from_hf: Callable[[dict[str, Any]], ModelConfig]
    build: Callable[..., Graph]             # (config, weights, options) -> forward graph
    gguf_arch: str | None = None            # GGUF `general.architecture`
    config_from_gguf: Callable[[dict[str, Any], list[str]], ModelConfig] | None = None  # (metadata, tensor names)
    # HF tensor name suffix -> the config attribute whose head count llama.cpp permuted it by
    gguf_permuted: dict[str, str] = field(default_factory=dict)
    # config -> how the shard_tensor_parallel pass splits its forward graph's weights ({glob: split});
    # None: not shardable yet
    tensor_parallel_plan: Callable[[ModelConfig], dict[str, str]] | None = None


ARCHITECTURES: dict[str, Architecture] = {}


def register_architecture(arch: Architecture) -> Architecture:
    ARCHITECTURES[arch.family] = arch
    return arch


def _supported() -> str:
    return ", ".join(sorted(a for arch in ARCHITECTURES.values() for a in arch.architectures))


def architecture_for_config(config: dict[str, Any], where: str) -> Architecture:
    names = config.get("architectures") or []
    for arch in ARCHITECTURES.values():
        if any(name in arch.architectures for name in names):
            return arch
    for arch in ARCHITECTURES.values():
        if config.get("model_type") in arch.model_types:
            return arch
    what = f"architectures {names}" if names else f"model_type {config.get('model_type')!r}"
    raise ModelError(f"{where}: unknown architecture ({what}); ember supports {_supported()}")


def architecture_for_gguf(name: str, where: str) -> Architecture:
    for arch in ARCHITECTURES.values():
        if arch.gguf_arch == name:
            return arch
    known = ", ".join(sorted(a.gguf_arch for a in ARCHITECTURES.values() if a.gguf_arch))
    raise ModelError(f"{where}: unknown GGUF architecture {name!r}; ember reads {known}")
