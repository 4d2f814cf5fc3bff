"""GPT-2 forward graphs against transformers (learned positions, LayerNorm, the fused
c_attn projection, GELU, the tied LM head): prefill and decode logits through the paged
cache; and what it refuses."""

import pytest
from transformers import GPT2Config, GPT2LMHeadModel

import ember
from ember.frontends.hf import load_pretrained

from .conftest import compare_logits, save_tiny

BASE = dict(vocab_size=96, n_embd=64, n_layer=3, n_head=4, n_positions=64)

CONFIGS = {
    "gelu_new": {},
    "exact_gelu_inner": dict(activation_function="gelu", n_inner=80),
    "untied": dict(tie_word_embeddings=False),
}


@pytest.mark.parametrize("name", list(CONFIGS))
def test_gpt2_logits_match_transformers(name, tmp_path):
    model = save_tiny(GPT2LMHeadModel, GPT2Config(**{**BASE, **CONFIGS[name]}), tmp_path)
    abs_err, rel_err = compare_logits(model, tmp_path, prefill=(9, 3, 6))
    print(f"gpt2 {name}: max abs {abs_err:.2e}, max rel {rel_err:.2e}")
    assert abs_err < 1e-4


def test_gpt2_options_it_does_not_take_are_model_errors(tmp_path):
    save_tiny(GPT2LMHeadModel, GPT2Config(**BASE, scale_attn_by_inverse_layer_idx=True), tmp_path)
    with pytest.raises(ember.ModelError, match="scale_attn_by_inverse_layer_idx"):
        load_pretrained(tmp_path, progress=False).graph(block_size=4)
