"""all-MiniLM-L6-v2, exported by torch.onnx.export, through ember vs onnxruntime."""

import numpy as np
import onnx
import pytest

import ember
from ember import _builtin

ort = pytest.importorskip("onnxruntime")

SENTENCES = [
    ["The quick brown fox jumps over the lazy dog."],
    _builtin.SAMPLE_SENTENCES,
    ["A man is playing a guitar on stage.", "Someone performs music with an instrument.",
     "How do I bake sourdough bread at home?"],
]


@pytest.fixture(scope="module")
def compiled(minilm_onnx):
    return ember.compile(str(minilm_onnx))


@pytest.fixture(scope="module")
def session(minilm_onnx):
    return ort.InferenceSession(str(minilm_onnx), providers=["CPUExecutionProvider"])


def test_signature_is_symbolic(compiled):
    assert [i.name for i in compiled.inputs] == list(_builtin.INPUT_NAMES)
    for info in compiled.inputs:
        assert info.dtype is ember.DType.int64
        assert [str(d) for d in info.shape] == ["batch", "seq"]
    (out,) = compiled.outputs
    assert str(out.shape[0]) == "batch" and out.shape[-1] == 384


@pytest.mark.parametrize("sentences", SENTENCES, ids=["one", "sample", "three"])
def test_matches_onnxruntime(compiled, session, sentences):
    feeds = _builtin.tokenize(sentences)
    (ours,) = compiled.run(feeds).values()
    (theirs,) = session.run(None, feeds)
    assert ours.shape == theirs.shape == (len(sentences), feeds["input_ids"].shape[1], 384)
    # outputs reach |5|; two fp32 GEMM libraries (oneDNN, MLAS) summing in different orders
    # differ by up to ~7e-5 here, as numpy's reference and onnxruntime do (5e-5)
    np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-4)


def test_embeddings_rank_similar_sentences(compiled):
    sentences = SENTENCES[2]
    feeds = _builtin.tokenize(sentences)
    (hidden,) = compiled.run(feeds).values()
    emb = _builtin.mean_pool(hidden, feeds["attention_mask"])
    sim = emb @ emb.T
    assert sim[0, 1] > sim[0, 2] + 0.2


def test_inference_session_is_a_drop_in(minilm_onnx, session):
    feeds = _builtin.tokenize(SENTENCES[1])
    sess = ember.InferenceSession(str(minilm_onnx), providers=["CPUExecutionProvider"])
    assert [i.name for i in sess.get_inputs()] == [i.name for i in session.get_inputs()]
    assert [i.type for i in sess.get_inputs()] == [i.type for i in session.get_inputs()]
    assert [i.shape for i in sess.get_inputs()] == [i.shape for i in session.get_inputs()]
    (ours,) = sess.run(None, feeds)
    (theirs,) = session.run(None, feeds)
    # outputs reach |5|; two fp32 GEMM libraries (oneDNN, MLAS) summing in different orders
    # differ by up to ~7e-5 here, as numpy's reference and onnxruntime do (5e-5)
    np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-4)


def test_o2_matches_the_unoptimized_reference(minilm_onnx, compiled):
    reference = ember.compile(str(minilm_onnx), opt_level=0)
    # opt level 0 keeps the exported graph's nodes (669 from torch 2.13's exporter, 620 from 2.11's)
    assert compiled.stats.num_nodes < reference.stats.num_nodes == len(onnx.load(minilm_onnx).graph.node)
    feeds = _builtin.tokenize(_builtin.SAMPLE_SENTENCES)
    (ours,) = compiled.run(feeds).values()
    (ref,) = reference.run(feeds).values()
    np.testing.assert_allclose(ours, ref, rtol=1e-4, atol=1e-4)  # fusions reorder float math


def test_o2_fuses_every_layer(compiled):
    """Issue 3's figures: 6 attentions, 13 layer norms (12 with the residual), 6 GELUs
    (each now the epilogue of its FFN's first ember.Linear); 4 ember.Linear a layer (q, k
    and v in one, fuse_qkv)."""
    hist = compiled.stats.op_histogram
    assert hist["ember.Attention"] == 6
    assert hist["ember.SkipLayerNorm"] + hist["LayerNormalization"] == 13 and hist["ember.SkipLayerNorm"] == 12
    gelus = [n for n in compiled.graph.nodes if n.op == "ember.Linear" and n.attrs.get("activation") == "gelu"]
    assert "Gelu" not in hist and len(gelus) == 6 and hist["ember.Linear"] == 24
    assert compiled.stats.num_nodes <= 150
