"""Llama and the families that share its decoder: Llama 1-3, SmolLM2, Mistral (sliding
window attention). Grouped-query attention, every rotary scaling of `rope`, tied
embeddings, and attention/MLP biases where the config asks for them."""

from __future__ import annotations

from typing import Any

from ...errors import ModelError
from .config import ModelConfig, require, rope_parameters
from .decoder import build_decoder, tensor_parallel_plan
from .registry import Architecture, register_architecture


def config_from_hf(d: dict[str, Any], family: str = "llama") -> ModelConfig:
    where = f"{family} config"
    hidden, heads = require(d, "hidden_size", where), require(d, "num_attention_heads", where)
    return ModelConfig(
        family=family,
        vocab_size=require(d, "vocab_size", where),
        hidden_size=hidden,
        intermediate_size=require(d, "intermediate_size", where),
        num_layers=require(d, "num_hidden_layers", where),
        num_heads=heads,
        num_kv_heads=d.get("num_key_value_heads") or heads,
        head_dim=d.get("head_dim") or hidden // heads,
        max_position_embeddings=d.get("max_position_embeddings", 2048),
        rms_norm_eps=d.get("rms_norm_eps", 1e-6),
        rope=rope_parameters(d),
        tie_word_embeddings=bool(d.get("tie_word_embeddings", False)),
        attention_bias=bool(d.get("attention_bias", False)),
        o_proj_bias=bool(d.get("attention_bias", False)),
        mlp_bias=bool(d.get("mlp_bias", False)),
        sliding_window=d.get("sliding_window") or 0,
        hidden_act=d.get("hidden_act", "silu"),
        raw=d,
    )


def config_from_gguf(meta: dict[str, Any], tensor_names: list[str], family: str = "llama") -> ModelConfig:
    """The config llama.cpp's converter recorded as `llama.*` (`qwen2.*`, ...) metadata."""
    a = meta["general.architecture"]
    if "rope_freqs.weight" in tensor_names:
        raise ModelError("GGUF: per-frequency rope factors (rope_freqs.weight, Llama 3.1 scaling) are not "
                         "supported yet")

    def key(name, default=None):
        value = meta.get(f"{a}.{name}", default)
        if value is None:
            raise ModelError(f"GGUF metadata has no {a}.{name}")
        return value

    hidden, heads = int(key("embedding_length")), int(key("attention.head_count"))
    vocab = meta.get(f"{a}.vocab_size") or len(meta.get("tokenizer.ggml.tokens") or [])
    rope: dict[str, Any] = {"rope_type": "default", "rope_theta": float(key("rope.freq_base", 10000.0))}
    scaling = meta.get(f"{a}.rope.scaling.type")
    if scaling in ("linear", "yarn"):
        rope.update(rope_type=scaling, factor=float(key("rope.scaling.factor")))
        if scaling == "yarn":
            rope["original_max_position_embeddings"] = int(key("rope.scaling.original_context_length"))
    return ModelConfig(
        family=family,
        vocab_size=int(vocab),
        hidden_size=hidden,
        intermediate_size=int(key("feed_forward_length")),
        num_layers=int(key("block_count")),
        num_heads=heads,
        num_kv_heads=int(key("attention.head_count_kv", heads)),
        head_dim=int(meta.get(f"{a}.attention.key_length") or meta.get(f"{a}.rope.dimension_count")
                     or hidden // heads),
        max_position_embeddings=int(key("context_length")),
        rms_norm_eps=float(key("attention.layer_norm_rms_epsilon", 1e-5)),
        rope=rope,
        tie_word_embeddings="output.weight" not in tensor_names,
        attention_bias="blk.0.attn_q.bias" in tensor_names,
        o_proj_bias="blk.0.attn_output.bias" in tensor_names,
        mlp_bias="blk.0.ffn_up.bias" in tensor_names,
        sliding_window=int(meta.get(f"{a}.attention.sliding_window") or 0),
        raw=meta,
    )


LLAMA = register_architecture(Architecture(
    family="llama",
    architectures=("LlamaForCausalLM", "MistralForCausalLM"),
    model_types=("llama", "mistral"),
    config_from_hf=config_from_hf,
    build=build_decoder,
    tensor_parallel_plan=tensor_parallel_plan,
    gguf_arch="llama",
    config_from_gguf=config_from_gguf,
    gguf_permuted={"self_attn.q_proj.weight": "num_heads", "self_attn.q_proj.bias": "num_heads",
                   "self_attn.k_proj.weight": "num_kv_heads", "self_attn.k_proj.bias": "num_kv_heads"},
))
