"""Accuracy gates of quantization (#22) on the built-in SmolLM2-135M-Instruct GGUF: its
perplexity on a fixed local text (ember.testing.accuracy: standard-library docstrings)
with the file's Q4_1 blocks kept (activations quantized to int8 on the fly, as llama.cpp
does) within 5% of the same weights dequantized to float32, and with those float32
weights quantized to int8 (q8_0, the head float) within 1% of float32."""

import pytest

import ember
from ember._builtin import default_llm
from ember.testing.accuracy import evaluation_text, perplexity

TOKENS = 2048


@pytest.fixture(scope="module")
def tokens():
    llm = ember.LLM(default_llm(), quantization="none", max_model_len=1024, kv_cache_memory=128 << 20)
    ids = llm.engine.tokenizer.encode(evaluation_text())
    assert len(ids) >= TOKENS, len(ids)
    return llm, ids[:TOKENS]


@pytest.mark.slow
def test_quantized_perplexity_gates(tokens):
    f32, ids = tokens
    base = perplexity(f32, ids)
    options = {"max_model_len": 1024, "kv_cache_memory": 128 << 20}
    q4 = perplexity(ember.LLM(default_llm(), **options), ids)
    int8 = perplexity(ember.LLM(default_llm(), quantization="int8", **options), ids)
    print(f"SmolLM2 perplexity on {len(ids)} tokens: float32 {base:.4f}, Q4_1 kept {q4:.4f} "
          f"({q4 / base - 1:+.2%}), int8 {int8:.4f} ({int8 / base - 1:+.2%})")
    assert 1 < base < 100  # a model that reads the text at all
    assert q4 <= 1.05 * base
    assert int8 <= 1.01 * base
