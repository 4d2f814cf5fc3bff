"""Bad requests, API keys, overload and clients that go away, against a live server:
each bad request gets its 4xx with OpenAI's error body naming the field, and the server
goes on serving."""

import http.client
import json
import socket
import time

import openai
import pytest

from .conftest import MODEL, LiveServer, wait_until

CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"
HI = [{"role": "user", "content": "Hi"}]


def completion(**fields):
    return {"model": MODEL, "prompt": "hello", "max_tokens": 4, **fields}


def chat(**fields):
    return {"model": MODEL, "messages": HI, "max_tokens": 4, **fields}


LONG = "hello " * 300  # > max_model_len 256 tokens

BAD = [  # (id, path, body, status, param)
    ("malformed-json", COMPLETIONS, b'{"prompt": "hi",', 400, None),
    ("not-an-object", COMPLETIONS, b"[1, 2]", 400, None),
    ("empty-body", CHAT, b"", 400, None),
    ("no-prompt", COMPLETIONS, {"model": MODEL}, 400, "prompt"),
    ("no-messages", CHAT, {"model": MODEL}, 400, "messages"),
    ("empty-messages", CHAT, chat(messages=[]), 400, "messages"),
    ("unknown-model", COMPLETIONS, completion(model="gpt-9"), 404, "model"),
    ("unknown-model-chat", CHAT, chat(model="gpt-9"), 404, "model"),
    ("prompt-too-long", COMPLETIONS, completion(prompt=LONG), 400, "prompt"),
    ("messages-too-long", CHAT, chat(messages=[{"role": "user", "content": LONG}]), 400, "messages"),
    ("max-tokens-cannot-fit", COMPLETIONS, completion(max_tokens=300), 400, "max_tokens"),
    ("max-tokens-cannot-fit-chat", CHAT, chat(max_tokens=250), 400, "max_tokens"),
    ("max-completion-tokens-cannot-fit", CHAT, chat(max_completion_tokens=250), 400, "max_completion_tokens"),
    ("max-tokens-zero", COMPLETIONS, completion(max_tokens=0), 400, "max_tokens"),
    ("n-zero", COMPLETIONS, completion(n=0), 400, "n"),
    ("n-too-large", CHAT, chat(n=129), 400, "n"),
    ("top-logprobs-too-large", CHAT, chat(logprobs=True, top_logprobs=21), 400, "top_logprobs"),
    ("top-logprobs-negative", CHAT, chat(logprobs=True, top_logprobs=-1), 400, "top_logprobs"),
    ("top-logprobs-without-logprobs", CHAT, chat(top_logprobs=2), 400, "top_logprobs"),
    ("logprobs-too-large", COMPLETIONS, completion(logprobs=21), 400, "logprobs"),
    ("negative-temperature", COMPLETIONS, completion(temperature=-0.5), 400, "temperature"),
    ("top-p-zero", CHAT, chat(top_p=0), 400, "top_p"),
    ("penalty-out-of-range", CHAT, chat(presence_penalty=3), 400, "presence_penalty"),
    ("temperature-a-string", COMPLETIONS, completion(temperature="hot"), 400, "temperature"),
    ("max-tokens-a-string", CHAT, chat(max_tokens="ten"), 400, "max_tokens"),
    ("n-a-bool", COMPLETIONS, completion(n=True), 400, "n"),
    ("prompt-a-number", COMPLETIONS, completion(prompt=5), 400, "prompt"),
    ("messages-a-string", CHAT, chat(messages="Hi"), 400, "messages"),
    ("message-without-role", CHAT, chat(messages=[{"content": "Hi"}]), 400, "messages.0.role"),
    ("content-a-number", CHAT, chat(messages=[{"role": "user", "content": 7}]), 400, "messages.0.content"),
    ("image-content", CHAT, chat(messages=[{"role": "user", "content": [{"type": "image_url"}]}]), 400,
     "messages.0.content"),
    ("stop-a-number", COMPLETIONS, completion(stop=3), 400, "stop"),
    ("stop-empty", COMPLETIONS, completion(stop=[""]), 400, "stop"),
    ("token-outside-vocabulary", COMPLETIONS, completion(prompt=[1, 10**9]), 400, "prompt"),
    ("empty-prompt", COMPLETIONS, completion(prompt=""), 400, "prompt"),
    ("seed-too-large", COMPLETIONS, completion(seed=2**64), 400, "seed"),
    ("stream-a-string", COMPLETIONS, completion(stream="yes"), 400, "stream"),
    ("streamed-bad-request", COMPLETIONS, completion(max_tokens=300, stream=True), 400, "max_tokens"),
    ("echo", COMPLETIONS, completion(echo=True), 400, "echo"),
    ("logit-bias", COMPLETIONS, completion(logit_bias={"50": 10}), 400, "logit_bias"),
    ("tool-without-name", CHAT, chat(tools=[{"type": "function", "function": {"description": "f"}}]), 400,
     "tools.0.function.name"),
    ("tool-choice-unknown", CHAT, chat(tools=[{"type": "function", "function": {"name": "f"}}],
                                       tool_choice={"type": "function", "function": {"name": "g"}}), 400,
     "tool_choice.function.name"),
    ("tool-parameters-bad-schema", CHAT, chat(tools=[{"type": "function", "function": {
        "name": "f", "parameters": {"type": "objekt"}}}], tool_choice="required"), 400, "tools"),
    ("schema-bad-type", CHAT, chat(response_format={"type": "json_schema", "json_schema": {
        "name": "x", "schema": {"type": "strnig"}}}), 400, "response_format.json_schema.schema"),
    ("schema-missing", CHAT, chat(response_format={"type": "json_schema", "json_schema": {"name": "x"}}), 400,
     "response_format.json_schema.schema"),
    ("response-format-unknown", CHAT, chat(response_format={"type": "yaml"}), 400, "response_format.type"),
    ("regex-unclosed", COMPLETIONS, completion(structured_outputs={"regex": "[a-z(\\d+"}), 400,
     "structured_outputs"),
    ("grammar-undefined-rule", COMPLETIONS, completion(structured_outputs={"grammar": "root ::= undefined"}), 400,
     "structured_outputs"),
    ("two-constraints", CHAT, chat(response_format={"type": "json_object"}, structured_outputs={"regex": "a+"}), 400,
     "structured_outputs"),
    ("choice-empty", COMPLETIONS, completion(guided_choice=[]), 400, "guided_choice"),
    ("min-tokens-over-max", COMPLETIONS, completion(min_tokens=9), 400, "min_tokens"),
]


@pytest.mark.parametrize("path,body,status,param", [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_request_gets_an_openai_error(server, path, body, status, param):
    got, answer = server.request("POST", path, body)
    assert got == status, answer
    error = answer["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "invalid_request_error" and error["message"]
    assert error["param"] == param, error
    if param is not None:
        assert param.split(".")[0] in error["message"] or status == 404


def test_serving_goes_on_after_bad_requests(server, client):
    for _, path, body, _, _ in BAD[:12]:
        server.request("POST", path, body)
    out = client.completions.create(model=MODEL, prompt="hello", max_tokens=3, extra_body={"ignore_eos": True})
    assert out.usage.completion_tokens == 3
    metrics = server.metrics()
    assert metrics["ember_num_requests_pending"] == 0 and metrics["ember_kv_cache_blocks_used"] == 0


def test_the_openai_client_sees_the_errors(client):
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=MODEL, messages=HI, temperature=-1)
    assert e.value.body["param"] == "temperature"
    with pytest.raises(openai.NotFoundError) as e:
        client.completions.create(model="nope", prompt="hi")
    assert e.value.body["code"] == "model_not_found"
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model=MODEL, prompt="hi", max_tokens=1000, stream=True)
    assert e.value.body["code"] == "context_length_exceeded"


def test_unknown_route_and_method(server):
    status, body = server.request("GET", "/v1/nothing")
    assert status == 404 and body["error"]["code"] == "not_found"
    status, body = server.request("GET", COMPLETIONS)
    assert status == 405 and body["error"]["message"]


def test_extra_fields_are_ignored(server):
    status, body = server.request("POST", CHAT, chat(user="someone", metadata={"a": 1}, service_tier="auto",
                                                     parallel_tool_calls=False, logprobs=None, n=None))
    assert status == 200 and body["choices"][0]["message"]["role"] == "assistant"


@pytest.fixture(scope="module")
def keyed(llm):
    from ember.serve import create_app

    live = LiveServer(create_app(llm, MODEL, api_key="s3cret"))
    yield live
    live.stop()


def test_api_key(keyed):
    client = openai.OpenAI(base_url=keyed.url, api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as e:
        client.models.list()
    assert e.value.status_code == 401 and e.value.body["code"] == "invalid_api_key"
    for headers in ({}, {"Authorization": "s3cret"}, {"Authorization": "Bearer s3cret2"}):
        status, body = keyed.request("POST", CHAT, chat(), headers)
        assert status == 401 and body["error"]["type"] == "invalid_request_error"
    client = openai.OpenAI(base_url=keyed.url, api_key="s3cret", max_retries=0)
    assert client.chat.completions.create(model=MODEL, messages=HI, max_tokens=2).choices
    assert keyed.request("GET", "/health")[0] == 200 and keyed.request("GET", "/metrics")[0] == 200


def open_stream(live, path, body):
    """A streaming request on a raw connection, its first event read; (connection, response)."""
    conn = http.client.HTTPConnection("127.0.0.1", live.port, timeout=60)
    conn.request("POST", path, json.dumps({**body, "stream": True}), {"Content-Type": "application/json"})
    response = conn.getresponse()
    assert response.status == 200
    assert response.readline().startswith(b"data: ")
    return conn, response


def hang_up(conn):
    conn.sock.shutdown(socket.SHUT_RDWR)
    conn.close()


def test_full_queue_answers_503_at_once(llm):
    from ember.serve import create_app

    live = LiveServer(create_app(llm, MODEL, max_queue=0))   # room for max_num_seqs (32) sequences
    try:
        conn, _ = open_stream(live, COMPLETIONS, completion(n=32, max_tokens=200, ignore_eos=True))
        start = time.monotonic()
        status, body = live.request("POST", COMPLETIONS, completion())
        assert status == 503 and time.monotonic() - start < 2
        assert body["error"]["code"] == "server_overloaded"
        assert live.metrics()["ember_requests_rejected_total"] == 1
        hang_up(conn)
        assert wait_until(lambda: live.request("POST", COMPLETIONS, completion())[0] == 200)
    finally:
        live.stop()


def test_client_gone_mid_stream_frees_its_blocks(server):
    aborted = 'ember_completions_finished_total{finish_reason="abort"}'
    before = server.metrics()
    conn, response = open_stream(server, CHAT, chat(max_tokens=200, ignore_eos=True))
    for _ in range(4):
        response.readline()
    assert server.metrics()["ember_kv_cache_blocks_used"] > 0
    hang_up(conn)
    assert wait_until(lambda: server.metrics()["ember_kv_cache_blocks_used"] == 0)
    after = server.metrics()
    assert after[aborted] == before.get(aborted, 0) + 1
    assert after["ember_num_requests_running"] == 0 and after["ember_num_requests_pending"] == 0
    assert after["ember_generation_tokens_total"] - before["ember_generation_tokens_total"] < 200


def test_client_gone_before_a_whole_answer_frees_its_blocks(server):
    aborted = 'ember_completions_finished_total{finish_reason="abort"}'
    before = server.metrics().get(aborted, 0)
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
    conn.request("POST", COMPLETIONS, json.dumps(completion(n=4, max_tokens=240, ignore_eos=True)),
                 {"Content-Type": "application/json"})
    assert wait_until(lambda: server.metrics()["ember_kv_cache_blocks_used"] > 0)
    hang_up(conn)
    assert wait_until(lambda: server.metrics()["ember_kv_cache_blocks_used"] == 0)
    assert server.metrics()[aborted] == before + 4
    assert server.metrics()["ember_num_requests_pending"] == 0


def test_a_model_failure_is_a_500_and_serving_goes_on(server, llm, monkeypatch):
    errors = 'ember_completions_finished_total{finish_reason="error"}'
    before = server.metrics().get(errors, 0)
    runner = llm.engine.runner
    monkeypatch.setattr(runner, "execute", lambda out: (_ for _ in ()).throw(RuntimeError("boom")))
    status, body = server.request("POST", COMPLETIONS, completion())
    assert status == 500 and body["error"]["type"] == "server_error" and "boom" in body["error"]["message"]
    status, text = server.request("POST", CHAT, chat(stream=True))
    events = [line[6:] for line in text.splitlines() if line.startswith("data: ")]
    assert status == 200 and events[-1] == "[DONE]"
    assert "boom" in json.loads(events[-2])["error"]["message"]
    monkeypatch.undo()
    assert server.request("POST", COMPLETIONS, completion())[0] == 200
    metrics = server.metrics()
    assert metrics[errors] == before + 2
    assert metrics["ember_kv_cache_blocks_used"] == 0 and metrics["ember_num_requests_pending"] == 0
