"""Mixtral: Llama's decoder with a sparse mixture of SwiGLU experts as each MLP (top-k
routing, the picked experts' outputs weighed by the softmax of their router logits)."""

from __future__ import annotations

import dataclasses
from typing import Any

from .config import ModelConfig, require
from .decoder import build_decoder, tensor_parallel_plan
from .llama import config_from_hf as llama_config_from_hf
from .registry import Architecture, register_architecture


def config_from_hf(d: dict[str, Any]) -> ModelConfig:
    config = llama_config_from_hf(d, family="mixtral")
    experts, k = require(d, "num_local_experts", "mixtral config"), require(d, "num_experts_per_tok", "mixtral config")
    return dataclasses.replace(config, num_experts=int(experts), experts_per_token=int(k))


MIXTRAL = register_architecture(Architecture(
    family="mixtral",
    architectures=("MixtralForCausalLM",),
    model_types=("mixtral",),
    config_from_hf=config_from_hf,
    build=build_decoder,
    tensor_parallel_plan=tensor_parallel_plan,
))
