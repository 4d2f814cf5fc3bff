"""The encoder routes (#25) on a live server: /v1/embeddings with the official openai client
(base64, as it asks by default, and float), token-id inputs, `dimensions`, truncation and the
4xx cases; /v1/rerank (and /rerank, /v2/rerank) against sentence-transformers' CrossEncoder;
an LLM and an encoder served together, and an encoder alone; /tokenize; 32 concurrent
clients batched together by the encoder's worker."""

import base64
import concurrent.futures

import numpy as np
import pytest

from tests.serve.conftest import MODEL, LiveServer

ENCODER = "all-MiniLM-L6-v2"
TEXTS = ["A man is playing a guitar.", "Someone plays an instrument.", "It will rain tomorrow in the north.", "hi"]


@pytest.fixture(scope="module")
def minilm():
    from ember.embeddings import AsyncEncoder

    encoder = AsyncEncoder()
    yield encoder
    encoder.shutdown()


@pytest.fixture(scope="module")
def both(llm, minilm):
    """The tiny LLM and MiniLM, served together."""
    from ember.serve import create_app

    live = LiveServer(create_app(llm, MODEL, encoder=minilm, encoder_name=ENCODER))
    yield live
    live.stop()


@pytest.fixture(scope="module")
def reranker(tiny_cross_encoder):
    """The tiny cross-encoder served alone."""
    from ember.embeddings import AsyncEncoder
    from ember.serve import create_app

    encoder = AsyncEncoder(tiny_cross_encoder[0])
    live = LiveServer(create_app(None, None, encoder=encoder, encoder_name="reranker"))
    yield live, tiny_cross_encoder[1]
    live.stop()
    encoder.shutdown()


def _client(live):
    import openai

    return openai.OpenAI(base_url=live.url, api_key="unused", max_retries=0, timeout=60)


def test_openai_client_embeddings_equal_the_offline_ones(both, minilm):
    """embeddings.create (the client asks for base64 and decodes it) equals Encoder.embed,
    and so does encoding_format float; usage counts the tokens; token-id inputs embed as given."""
    client = _client(both)
    want = minilm.encoder.embed(TEXTS)
    got = client.embeddings.create(model=ENCODER, input=TEXTS)
    assert [d.index for d in got.data] == list(range(len(TEXTS))) and got.model == ENCODER
    np.testing.assert_allclose([d.embedding for d in got.data], want, atol=1e-5)
    tokens = sum(len(r.ids) for r in minilm.encoder.tokenize(TEXTS))
    assert got.usage.prompt_tokens == got.usage.total_tokens == tokens
    as_float = client.embeddings.create(model=ENCODER, input=TEXTS, encoding_format="float")
    assert [d.embedding for d in as_float.data] == [d.embedding for d in got.data]
    status, raw = both.request("POST", "/v1/embeddings", {"input": "hi", "encoding_format": "base64"})
    assert status == 200
    decoded = np.frombuffer(base64.b64decode(raw["data"][0]["embedding"]), "<f4")
    np.testing.assert_allclose(decoded, want[3], atol=1e-6)
    ids = minilm.encoder.tokenize(["hi"])[0].ids
    by_ids = client.embeddings.create(model=ENCODER, input=[ids, ids])
    np.testing.assert_allclose(by_ids.data[1].embedding, want[3], atol=1e-5)


def test_dimensions_truncate_and_renormalize(both, minilm):
    client = _client(both)
    full = minilm.encoder.embed(TEXTS[:2])
    got = np.array([d.embedding for d in client.embeddings.create(model=ENCODER, input=TEXTS[:2], dimensions=64).data])
    assert got.shape == (2, 64)
    np.testing.assert_allclose(got, full[:, :64] / np.linalg.norm(full[:, :64], axis=1, keepdims=True), atol=1e-5)


def test_long_inputs_are_refused_or_truncated_as_asked(both, minilm):
    long = "Compilers turn programs into machine code. " * 60
    status, body = both.request("POST", "/v1/embeddings", {"input": ["ok", long]})
    assert status == 400 and body["error"]["code"] == "context_length_exceeded"
    assert "'input.1' has" in body["error"]["message"] and "limit of 256" in body["error"]["message"]
    status, body = both.request("POST", "/v1/embeddings", {"input": long, "truncate_prompt_tokens": -1})
    assert status == 200 and body["usage"]["prompt_tokens"] == 256
    np.testing.assert_allclose(body["data"][0]["embedding"], minilm.encoder.embed(long), atol=1e-5)
    status, body = both.request("POST", "/v1/embeddings", {"input": long, "truncate_prompt_tokens": 16})
    assert status == 200 and body["usage"]["prompt_tokens"] == 16


@pytest.mark.parametrize("body, status, says", [
    ({"input": ""}, 400, "'input' is empty"),
    ({"input": []}, 400, "'input' must not be empty"),
    ({"input": ["a", ""]}, 400, "'input.1' is empty"),
    ({"input": [[1, 2], [10**9]]}, 400, "token id 1000000000 in 'input.1' is outside the vocabulary"),
    ({"input": "a", "dimensions": 385}, 400, "more than this model's 384"),
    ({"input": "a", "dimensions": 0}, 400, "'dimensions'"),
    ({"input": "a", "encoding_format": "int8"}, 400, "'encoding_format'"),
    ({"input": "a", "truncate_prompt_tokens": 300}, 400, "more than this model's limit of 256"),
    ({"input": ["a"] * 2049}, 400, "more than the 2048"),
    ({"input": 3}, 400, "'input' must be a string, a list of strings"),
    ({"input": "a", "model": "nope"}, 404, "the model 'nope' does not exist"),
    ({"input": "a", "model": MODEL}, 400, "is a generative model"),
])
def test_bad_embedding_requests_are_4xx_and_serving_goes_on(both, body, status, says):
    got, answer = both.request("POST", "/v1/embeddings", body)
    assert got == status and says in answer["error"]["message"], answer
    assert both.request("POST", "/v1/embeddings", {"input": "still here"})[0] == 200


def test_rerank_orders_as_the_cross_encoder(reranker):
    """/v1/rerank, /rerank and /v2/rerank: the documents by the cross-encoder's score, best
    first, as CrossEncoder.rank orders them; top_n, return_documents, {"text"} documents."""
    live, st = reranker
    query = "How do compilers make programs fast?"
    documents = ["Compilers optimize code with passes such as inlining.", "I like cats.", "It will rain.", "hi",
                 "Fast programs come from good algorithms, and compilers help."]
    want = st.rank(query, documents)
    for path in ("/v1/rerank", "/rerank", "/v2/rerank"):
        status, body = live.request("POST", path, {"model": "reranker", "query": query, "documents": documents})
        assert status == 200 and body["model"] == "reranker", body
        assert [r["index"] for r in body["results"]] == [w["corpus_id"] for w in want]
        np.testing.assert_allclose([r["relevance_score"] for r in body["results"]], [w["score"] for w in want],
                                   atol=2e-5)
        assert body["results"][0]["document"]["text"] == documents[want[0]["corpus_id"]]
        assert body["usage"]["total_tokens"] > len(documents)
    status, body = live.request("POST", "/v1/rerank", {"query": query, "top_n": 2, "return_documents": False,
                                                       "documents": [{"text": d} for d in documents]})
    assert status == 200 and [r["index"] for r in body["results"]] == [w["corpus_id"] for w in want[:2]]
    assert "document" not in body["results"][0]
    for bad, says in [({"query": query, "documents": []}, "'documents' must not be empty"),
                      ({"query": "", "documents": ["a"]}, "'query' is empty"),
                      ({"query": query, "documents": ["a", ""]}, "'documents.1' is empty"),
                      ({"query": query, "documents": [3]}, "'documents.0' must be a list of strings"),
                      ({"query": query, "documents": ["a"], "top_n": 0}, "'top_n'")]:
        status, body = live.request("POST", "/v1/rerank", bad)
        assert status == 400 and says in body["error"]["message"], body


def test_rerank_with_an_embedding_model_uses_cosines(both, minilm):
    status, body = both.request("POST", "/v1/rerank", {"model": ENCODER, "query": TEXTS[0], "documents": TEXTS[1:]})
    vectors = minilm.encoder.embed(TEXTS)
    scores = vectors[1:] @ vectors[0]
    assert status == 200 and [r["index"] for r in body["results"]] == list(np.argsort(-scores))
    np.testing.assert_allclose([r["relevance_score"] for r in body["results"]], np.sort(scores)[::-1], atol=1e-5)


def test_models_routes_and_tokenize_serve_both(both, server, reranker):
    """/v1/models lists the LLM and the encoder; a route the server has no model for is a 404
    that says what it serves; /tokenize and /detokenize take either model's tokenizer."""
    client = _client(both)
    assert {m.id for m in client.models.list().data} == {MODEL, ENCODER}
    assert client.models.retrieve(ENCODER).id == ENCODER
    assert client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Hi"}],
                                          max_tokens=2).choices[0].message is not None
    live, _ = reranker
    status, body = live.request("POST", "/v1/chat/completions", {"messages": [{"role": "user", "content": "Hi"}]})
    assert status == 404 and "serves only the encoder 'reranker'" in body["error"]["message"]
    status, body = live.request("POST", "/v1/embeddings", {"input": "a"})
    assert status == 400 and "is a cross-encoder" in body["error"]["message"]
    status, body = server.request("POST", "/v1/embeddings", {"input": "a"})
    assert status == 404 and "--embedding-model" in body["error"]["message"]

    status, body = both.request("POST", "/tokenize", {"model": ENCODER, "prompt": "hi there", "return_token_strs": True})
    assert status == 200 and body["tokens"] == [101, 7632, 2045, 102] and body["token_strs"][0] == "[CLS]"
    assert body["count"] == 4 and body["max_model_len"] == 256
    status, body = both.request("POST", "/tokenize", {"prompt": "hi there", "add_special_tokens": False})
    assert status == 200 and body["max_model_len"] == 256 and body["count"] == len(body["tokens"]) > 0
    assert both.request("POST", "/detokenize", {"tokens": body["tokens"]})[1] == {"prompt": "hi there"}
    status, chat = both.request("POST", "/tokenize", {"messages": [{"role": "user", "content": "hi there"}]})
    assert status == 200 and chat["count"] > body["count"]
    status, bad = both.request("POST", "/detokenize", {"model": ENCODER, "tokens": [10**8]})
    assert status == 400 and "outside the vocabulary" in bad["error"]["message"]


def test_32_concurrent_clients_are_batched_together(both, minilm):
    """32 clients at once, each its own texts: every answer equals the offline embedding of
    its texts, and what queued while a batch ran went into one run. (The first run is held
    until the other 31 requests have queued, so that this does not depend on the machine's
    speed: then exactly 2 runs take the 32.) The metrics count the inputs."""
    import threading
    import time

    client = _client(both)
    texts = [[f"client {c} sentence {i}: " + "word " * ((c * 7 + i * 3) % 40) for i in range(4)] for c in range(32)]
    before = (minilm.runs, minilm.jobs, both.metrics().get('ember_encoder_inputs_total{route="embeddings"}', 0))
    forward, held = minilm.encoder._forward, threading.Event()

    def hold_the_first_run(rows, batch_size=None):
        if not held.is_set():
            held.set()
            deadline = time.monotonic() + 30
            while minilm._queue.qsize() < 31 and time.monotonic() < deadline:
                time.sleep(0.01)
        return forward(rows, batch_size)

    minilm.encoder._forward = hold_the_first_run
    try:
        with concurrent.futures.ThreadPoolExecutor(32) as pool:
            answers = list(pool.map(lambda t: client.embeddings.create(model=ENCODER, input=t), texts))
    finally:
        del minilm.encoder._forward
    for t, answer in zip(texts, answers):
        np.testing.assert_allclose([d.embedding for d in answer.data], minilm.encoder.embed(t), atol=1e-5)
    runs, jobs = minilm.runs - before[0], minilm.jobs - before[1]
    assert (runs, jobs) == (2, 32)
    assert both.metrics()['ember_encoder_inputs_total{route="embeddings"}'] - before[2] == 32 * 4


def test_api_key_guards_the_encoder_routes(minilm):
    """With an API key, the encoder routes (and the generative ones a server of an encoder
    alone has not) answer 401 without it."""
    from ember.serve import create_app

    live = LiveServer(create_app(None, None, encoder=minilm, api_key="s3cret"))
    try:
        for path, body in [("/v1/embeddings", {"input": "a"}), ("/v1/rerank", {"query": "a", "documents": ["b"]}),
                           ("/v1/chat/completions", {"messages": []})]:
            status, answer = live.request("POST", path, body)
            assert status == 401 and answer["error"]["code"] == "invalid_api_key"
        status, answer = live.request("POST", "/v1/embeddings", {"input": "a"}, {"Authorization": "Bearer s3cret"})
        assert status == 200 and answer["model"] == ENCODER
    finally:
        live.stop()
