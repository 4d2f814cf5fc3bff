"""Mixtral forward graphs against transformers (top-k routing over SwiGLU experts, GQA):
prefill and decode logits through the paged cache."""

import pytest
from transformers import MixtralConfig, MixtralForCausalLM

from .conftest import compare_logits, save_tiny

BASE = dict(vocab_size=96, hidden_size=64, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=64, num_local_experts=4, num_experts_per_tok=2)

CONFIGS = {"top2_of_4": {}, "top1_of_3": dict(num_local_experts=3, num_experts_per_tok=1),
           "top3_of_5_sliding": dict(num_local_experts=5, num_experts_per_tok=3, sliding_window=4)}


@pytest.mark.parametrize("name", list(CONFIGS))
def test_mixtral_logits_match_transformers(name, tmp_path):
    model = save_tiny(MixtralForCausalLM, MixtralConfig(**{**BASE, **CONFIGS[name]}), tmp_path)
    abs_err, rel_err = compare_logits(model, tmp_path, prefill=(9, 3, 6))
    print(f"mixtral {name}: max abs {abs_err:.2e}, max rel {rel_err:.2e}")
    assert abs_err < 1e-4
