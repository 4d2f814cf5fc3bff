"""Qwen2 forward graphs against transformers (q/k/v biases, GQA, tied embeddings, the
sliding window on the upper layers): prefill and decode logits through the paged cache."""

import pytest
from transformers import Qwen2Config, Qwen2ForCausalLM

from .conftest import compare_logits, save_tiny

BASE = dict(vocab_size=96, hidden_size=64, intermediate_size=112, num_hidden_layers=3, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=64)

CONFIGS = {
    "gqa2": {},
    "tied_mha": dict(num_key_value_heads=4, tie_word_embeddings=True),
    "sliding_window": dict(use_sliding_window=True, sliding_window=4, max_window_layers=1),
}


@pytest.mark.parametrize("name", list(CONFIGS))
def test_qwen2_logits_match_transformers(name, tmp_path):
    model = save_tiny(Qwen2ForCausalLM, Qwen2Config(**{**BASE, **CONFIGS[name]}), tmp_path)
    abs_err, rel_err = compare_logits(model, tmp_path, prefill=(9, 3, 6))
    print(f"qwen2 {name}: max abs {abs_err:.2e}, max rel {rel_err:.2e}")
    assert abs_err < 1e-4
