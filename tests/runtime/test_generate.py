"""One-sequence generation over the compiled forward graph: greedy tokens equal
transformers' greedy generate, sampling is reproducible by seed, bad requests are
InputErrors. (The sampler and the streamed text: test_sampler.py, test_detokenizer.py.)"""

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

import ember
from ember.frontends.hf import load_pretrained
from ember.runtime.generate import SequenceGenerator

from ..frontends.hf.conftest import save_tiny


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny-llama")
    config = LlamaConfig(vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)
    reference = save_tiny(LlamaForCausalLM, config, path)
    model = load_pretrained(path, progress=False)
    return reference, model, ember.compile(model.graph(block_size=4))


def test_greedy_tokens_equal_transformers_greedy_generate(tiny):
    reference, model, compiled = tiny
    prompt = [5, 17, 3, 60, 22, 9, 41]
    result = SequenceGenerator(compiled, model.config, block_size=4, max_len=64).generate(prompt, max_tokens=20)
    with torch.no_grad():
        want = reference.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                                  max_new_tokens=20, do_sample=False, eos_token_id=None, pad_token_id=0)
    assert result.token_ids == want[0, len(prompt):].tolist()
    assert result.finish_reason == "length" and result.prompt_tokens == len(prompt)


def test_a_stop_token_ends_generation_and_the_cache_is_reused(tiny):
    _, model, compiled = tiny
    generator = SequenceGenerator(compiled, model.config, block_size=4, max_len=64)
    first = generator.generate([1, 2, 3], max_tokens=12)
    stop = first.token_ids[4]
    again = generator.generate([1, 2, 3], max_tokens=12, stop_ids={stop})  # the same cache, overwritten
    assert again.token_ids == first.token_ids[:first.token_ids.index(stop) + 1] and again.finish_reason == "stop"


def test_sampling_is_reproducible_by_seed(tiny):
    _, model, compiled = tiny
    generator = SequenceGenerator(compiled, model.config, block_size=4, max_len=64)
    runs = [generator.generate([4, 8, 15], max_tokens=16, temperature=1.5, top_p=0.9, seed=s).token_ids
            for s in (7, 7, 8)]
    assert runs[0] == runs[1] and runs[0] != runs[2]


@pytest.mark.parametrize("kwargs, message", [
    ({"prompt_ids": []}, "no tokens"),
    ({"prompt_ids": [1] * 60, "max_tokens": 10}, "exceed the 64 positions"),
    ({"prompt_ids": [1], "max_tokens": 4, "temperature": -1.0}, "temperature"),
    ({"prompt_ids": [1], "max_tokens": 4, "top_p": 0.0}, "top_p"),
])
def test_bad_requests_are_input_errors(tiny, kwargs, message):
    _, model, compiled = tiny
    generator = SequenceGenerator(compiled, model.config, block_size=4, max_len=64)
    with pytest.raises(ember.InputError, match=message):
        generator.generate(**kwargs)


@pytest.mark.slow
def test_ember_generate_answers_with_the_built_in_model(capsys):
    from ember.cli import main

    assert main(["generate", "What is the capital of France? One word.", "--max-tokens", "16"]) == 0
    out, err = capsys.readouterr()
    assert "Paris" in out
    assert "tokens/s decoding" in err
