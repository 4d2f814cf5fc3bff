"""Llama-family forward graphs against transformers: prefill and step-by-step decode
logits through the paged KV cache, several sequences of different lengths in one
flattened batch, within 1e-4 in float32, across GQA ratios, tied and untied
embeddings, biases, rotary scalings and Mistral's sliding window."""

import pytest
from transformers import LlamaConfig, LlamaForCausalLM, MistralConfig, MistralForCausalLM

from .conftest import compare_logits, save_tiny

BASE = dict(vocab_size=96, hidden_size=64, intermediate_size=112, num_hidden_layers=2, num_attention_heads=4,
            max_position_embeddings=64)

CONFIGS = {
    "mha_untied": dict(num_key_value_heads=4),
    "gqa2_tied": dict(num_key_value_heads=2, tie_word_embeddings=True),
    "gqa4_biases": dict(num_key_value_heads=1, attention_bias=True, mlp_bias=True),
    "head_dim_24": dict(num_key_value_heads=2, head_dim=24),
    "rope_linear": dict(num_key_value_heads=2, rope_parameters={"rope_type": "linear", "factor": 2.0,
                                                                "rope_theta": 500.0}),
    "rope_dynamic": dict(num_key_value_heads=2, rope_parameters={"rope_type": "dynamic", "factor": 2.0,
                                                                 "rope_theta": 10000.0}),
    "rope_llama3": dict(num_key_value_heads=2, rope_parameters={
        "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
        "original_max_position_embeddings": 16, "rope_theta": 10000.0}),
    "rope_yarn": dict(num_key_value_heads=2, rope_parameters={
        "rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 16, "rope_theta": 10000.0}),
}


@pytest.mark.parametrize("name", list(CONFIGS))
def test_llama_logits_match_transformers(name, tmp_path):
    model = save_tiny(LlamaForCausalLM, LlamaConfig(**{**BASE, **CONFIGS[name]}), tmp_path)
    abs_err, rel_err = compare_logits(model, tmp_path)
    print(f"llama {name}: max abs {abs_err:.2e}, max rel {rel_err:.2e}")
    assert abs_err < 1e-4


def test_llama_reference_interpreter_matches_too(tmp_path):
    model = save_tiny(LlamaForCausalLM, LlamaConfig(**{**BASE, "num_key_value_heads": 2}), tmp_path)
    abs_err, _ = compare_logits(model, tmp_path, compiled=False, steps=2)
    assert abs_err < 1e-4


def test_mistral_sliding_window(tmp_path):
    config = MistralConfig(**{**BASE, "num_key_value_heads": 2, "sliding_window": 4})
    model = save_tiny(MistralForCausalLM, config, tmp_path)
    abs_err, rel_err = compare_logits(model, tmp_path, prefill=(9, 2, 6), steps=4)
    print(f"mistral sliding_window=4: max abs {abs_err:.2e}, max rel {rel_err:.2e}")
    assert abs_err < 1e-4


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_half_precision_llama_on_the_cpu_target(dtype, tmp_path):
    """dtype float16 / bfloat16 on the cpu target: every node on kernels (linear layers on
    torch's 16-bit GEMMs, norms in float32, the paged-attention kernel of that element
    type), within the 16-bit rounding of transformers' float32 logits."""
    model = save_tiny(LlamaForCausalLM, LlamaConfig(**{**BASE, "num_key_value_heads": 2}), tmp_path)
    abs_err, rel_err = compare_logits(model, tmp_path, dtype=dtype)
    print(f"cpu {dtype}: max abs {abs_err:.2e}, max rel {rel_err:.2e}")
    assert rel_err < 3e-2
