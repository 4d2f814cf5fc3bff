"""A real uvicorn server on a free localhost port, in a background thread, over an
AsyncLLM of the tiny random-init Llama (tests/conftest.py): the tests talk to it
over HTTP with the official openai client or raw http.client."""

import http.client
import json
import re
import threading
import time

import pytest


MODEL = "tiny"
ENGINE = dict(block_size=4, kv_cache_memory=4 << 20, max_model_len=256, max_num_seqs=32, max_num_batched_tokens=256)


class LiveServer:
    """`create_app(...)` served by uvicorn in a thread until `stop()`."""

    def __init__(self, app):
        import uvicorn

        from ember.serve.server import bind

        sock = bind("127.0.0.1", 0)
        self.port = sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}/v1"
        self.app = app
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=5))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [sock]}, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            assert self.thread.is_alive() and time.monotonic() < deadline, "the server did not start"
            time.sleep(0.02)

    def stop(self):
        self.server.should_exit = True
        self.thread.join(timeout=30)

    # raw HTTP, for what the openai client will not send or does not show
    def request(self, method, path, body=None, headers=None):
        """(status, parsed JSON or text) of one request; `body`: bytes, str or a JSON value."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        if body is not None and not isinstance(body, (bytes, str)):
            body = json.dumps(body)
        conn.request(method, path, body, {"Content-Type": "application/json", **(headers or {})})
        response = conn.getresponse()
        text = response.read().decode()
        conn.close()
        try:
            return response.status, json.loads(text)
        except ValueError:
            return response.status, text

    def metrics(self) -> dict[str, float]:
        """The /metrics samples, by name with labels ('ember_x{k="v"}')."""
        status, text = self.request("GET", "/metrics")
        assert status == 200
        return {m[1]: float(m[2]) for m in re.finditer(r"^([^#\s][^\s]*) (\S+)$", text, flags=re.M)}


def _llm(folder, engine):
    from ember import AsyncLLM

    llm = AsyncLLM(folder, **engine)
    try:
        yield llm
    finally:
        llm.shutdown()


def _server(llm, name=MODEL):
    from ember.serve import create_app

    live = LiveServer(create_app(llm, name))
    try:
        yield live
    finally:
        live.stop()


@pytest.fixture(scope="session")
def llm(tiny_llm_dir):  # noqa: F811
    yield from _llm(tiny_llm_dir, ENGINE)


@pytest.fixture(scope="session")
def server(llm):
    yield from _server(llm)


# with room for tool prompts (ember's tool system prompt alone is ~250 tokens)
ROOMY = {**ENGINE, "max_model_len": 1024, "kv_cache_memory": 16 << 20}


@pytest.fixture(scope="session")
def roomy_llm(tiny_llm_dir):  # noqa: F811
    yield from _llm(tiny_llm_dir, ROOMY)


@pytest.fixture(scope="session")
def roomy_server(roomy_llm):
    yield from _server(roomy_llm)


@pytest.fixture
def client(server):
    import openai

    return openai.OpenAI(base_url=server.url, api_key="unused", max_retries=0, timeout=60)


def wait_until(condition, timeout=10.0, interval=0.05):
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(interval)
    return True
