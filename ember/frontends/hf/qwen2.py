"""Qwen2: Llama's decoder with biases on the q, k and v projections (not o), and a
sliding window on the layers from `max_window_layers` on when `use_sliding_window`.
llama.cpp stores its q/k rows as they are (no permutation)."""

from __future__ import annotations

import dataclasses
from typing import Any

from .config import ModelConfig
from .decoder import build_decoder, tensor_parallel_plan
from .llama import config_from_gguf as llama_config_from_gguf
from .llama import config_from_hf as llama_config_from_hf
from .registry import Architecture, register_architecture


def config_from_hf(d: dict[str, Any]) -> ModelConfig:
    config = llama_config_from_hf(d, family="qwen2")
    window = d.get("sliding_window") or 0 if d.get("use_sliding_window") else 0
    layer_types = tuple(d.get("layer_types") or ())
    if window and not layer_types:
        first = d.get("max_window_layers", config.num_layers)
        layer_types = tuple("sliding_attention" if i >= first else "full_attention" for i in range(config.num_layers))
    return dataclasses.replace(config, attention_bias=True, o_proj_bias=False, mlp_bias=False,
                               sliding_window=window, layer_types=layer_types)


def config_from_gguf(meta: dict[str, Any], tensor_names: list[str]) -> ModelConfig:
    return llama_config_from_gguf(meta, tensor_names, family="qwen2")


QWEN2 = register_architecture(Architecture(
    family="qwen2",
    architectures=("Qwen2ForCausalLM",),
    model_types=("qwen2",),
    config_from_hf=config_from_hf,
    build=build_decoder,
    tensor_parallel_plan=tensor_parallel_plan,
    gguf_arch="qwen2",
    config_from_gguf=config_from_gguf,
))
