"""The normalized configuration of a decoder-only LLM: what the graph builders read,
whichever source (config.json or GGUF metadata) it came from."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ...errors import ModelError


@dataclass(frozen=True)
class ModelConfig:
    family: str                    # the registry's key: "llama", "qwen2"
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    max_position_embeddings: int
    rms_norm_eps: float = 1e-6
    rope: dict[str, Any] = field(default_factory=lambda: {"rope_type": "default", "rope_theta": 10000.0})
    tie_word_embeddings: bool = False
    attention_bias: bool = False   # q, k, v and o projections have biases
    o_proj_bias: bool = False
    mlp_bias: bool = False
    sliding_window: int = 0        # 0: every earlier key is visible
    layer_types: tuple[str, ...] = ()  # per layer "sliding_attention" | "full_attention"; () : all alike
    hidden_act: str = "silu"
    num_experts: int = 0           # > 0: each MLP is a mixture of this many SwiGLU experts (Mixtral)
    experts_per_token: int = 0     # the top-k experts each token is routed to
    raw: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)  # the config as read

    def is_sliding(self, layer: int) -> bool:
        """Whether layer `layer` attends over a sliding window of keys."""
        if not self.sliding_window:
            return False
        return not self.layer_types or self.layer_types[layer] == "sliding_attention"


def rope_parameters(config: dict[str, Any]) -> dict[str, Any]:
    """transformers 5's `rope_parameters` (rope_type, rope_theta, factor, ...) from either
    its own form or the older `rope_theta` + `rope_scaling` keys."""
    params = dict(config.get("rope_parameters") or {})
    if not params:
        params = dict(config.get("rope_scaling") or {})
        params.setdefault("rope_theta", config.get("rope_theta", 10000.0))
    params["rope_type"] = params.get("rope_type", params.pop("type", "default"))
    if params["rope_type"] == "su":
        params["rope_type"] = "longrope"
    return params


def require(config: dict[str, Any], key: str, where: str) -> Any:
    if key not in config:
        raise ModelError(f"{where}: the model config has no {key!r}")
    return config[key]
