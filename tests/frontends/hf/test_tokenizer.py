"""The tokenizer and chat template of a model folder and of the SmolLM2 GGUF."""

import pytest
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

import ember
from ember.frontends.hf import load_pretrained

from .conftest import save_tiny

TEMPLATE = "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}</s>{% endfor %}"


def test_folder_tokenizer_and_chat_template(tmp_path):
    save_tiny(LlamaForCausalLM, LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=24, num_hidden_layers=1,
                                            num_attention_heads=2, max_position_embeddings=16), tmp_path)
    vocab = {w: i for i, w in enumerate(["<unk>", "</s>", "hello", "world"])}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", eos_token="</s>",
                            chat_template=TEMPLATE).save_pretrained(tmp_path)
    tokenizer = load_pretrained(tmp_path, progress=False).tokenizer()
    assert tokenizer("hello world")["input_ids"] == [2, 3]
    chat = tokenizer.apply_chat_template([{"role": "user", "content": "hello"}], tokenize=False)
    assert chat == "<user>hello</s>"


def test_folder_without_tokenizer(tmp_path):
    save_tiny(LlamaForCausalLM, LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=24, num_hidden_layers=1,
                                            num_attention_heads=2, max_position_embeddings=16), tmp_path)
    with pytest.raises(ember.ModelError, match="cannot load its tokenizer"):
        load_pretrained(tmp_path, progress=False).tokenizer()


@pytest.mark.slow
def test_smollm2_gguf_tokenizer(smollm2_gguf):
    tokenizer = load_pretrained(smollm2_gguf, progress=False).tokenizer()
    chat = tokenizer.apply_chat_template([{"role": "user", "content": "What is 2+2?"}], tokenize=False,
                                         add_generation_prompt=True)
    assert "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n" in chat
    ids = tokenizer(chat)["input_ids"]
    assert ids.count(1) >= 2 and tokenizer.decode(ids) == chat  # <|im_start|> is token 1
