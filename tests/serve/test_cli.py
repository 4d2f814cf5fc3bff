"""`ember serve` as a process (SIGTERM stops it gracefully) and `ember chat` (piped
stdin, a local model or a server); the built-in SmolLM2 served, in the slow suite."""

import http.client
import io
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from ember.cli import main

from .conftest import ENGINE, MODEL, LiveServer, wait_until

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("command", ["serve", "chat"])
def test_help_has_examples(command, capsys):
    assert main([command, "--help"]) == 0
    out = capsys.readouterr().out
    assert "examples:" in out and f"ember {command}" in out


def start_serve(model_dir, *args, env=None):
    """`ember serve` in a subprocess on a free port; (process, port) once it serves."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    process = subprocess.Popen([sys.executable, "-m", "ember.cli", "serve", str(model_dir), "--port", "0", *args],
                               stderr=subprocess.PIPE, text=True, env=env)
    lines = []

    def read():
        for line in process.stderr:
            lines.append(line)

    threading.Thread(target=read, daemon=True).start()
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        found = [re.search(r"serving .* at http://127\.0\.0\.1:(\d+)/v1", line) for line in lines]
        if any(found):
            return process, int(next(m for m in found if m)[1]), lines
        time.sleep(0.05)
    process.kill()
    raise AssertionError("ember serve did not start:\n" + "".join(lines))


def metrics(port) -> dict[str, float]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request("GET", "/metrics")
    text = conn.getresponse().read().decode()
    return {m[1]: float(m[2]) for m in re.finditer(r"^([^#\s][^\s]*) (\S+)$", text, flags=re.M)}


def refuses_connections(port) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return False
    except OSError:
        return True


def test_sigterm_finishes_requests_in_flight_then_exits(tiny_llm_dir):
    process, port, stderr = start_serve(tiny_llm_dir, "--kv-cache-memory", "4M", "--max-model-len", "1024")
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        body = {"prompt": "hello", "max_tokens": 900, "ignore_eos": True, "stream": True,
                "stream_options": {"include_usage": True}}
        conn.request("POST", "/v1/completions", json.dumps(body), {"Content-Type": "application/json"})
        response = conn.getresponse()
        assert response.status == 200 and response.readline().startswith(b"data: ")
        process.send_signal(signal.SIGTERM)
        assert wait_until(lambda: refuses_connections(port), timeout=5)  # no new connections
        assert process.poll() is None                                   # while the stream goes on
        events = [line[6:] for line in response.read().decode().splitlines() if line.startswith("data: ")]
        assert events[-1] == "[DONE]"
        assert json.loads(events[-2])["usage"]["completion_tokens"] == 900
        assert process.wait(timeout=60) == 0, "".join(stderr)
        assert "Traceback" not in "".join(stderr)
    finally:
        if process.poll() is None:
            process.kill()


def test_serve_on_the_cuda_target_in_bfloat16(tiny_llm_dir):
    """`ember serve --target cuda --dtype bfloat16` (without a GPU, in Triton's
    interpreter): the official client's chat completion, then a graceful stop."""
    import openai
    import torch

    env = {} if torch.cuda.is_available() else {"TRITON_INTERPRET": "1"}
    process, port, stderr = start_serve(tiny_llm_dir, "--target", "cuda", "--dtype", "bfloat16", "--block-size", "4",
                                        "--kv-cache-memory", "4M", "--max-model-len", "256", env=env)
    try:
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", max_retries=0, timeout=120)
        reply = client.chat.completions.create(model=Path(tiny_llm_dir).name, max_tokens=5,
                                               messages=[{"role": "user", "content": "Hi!"}])
        assert reply.usage.completion_tokens == 5 and reply.choices[0].message.content
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 0, "".join(stderr)
        assert "for cuda" in "".join(stderr) and "Traceback" not in "".join(stderr)
    finally:
        if process.poll() is None:
            process.kill()


def test_sigterm_past_the_shutdown_timeout_ends_each_request_with_an_error(tiny_llm_dir):
    """Requests still running when --shutdown-timeout passes end with OpenAI's error: a
    503 JSON body, or a stream's `error` event then [DONE]; the log has no traceback."""
    import openai

    process, port, stderr = start_serve(tiny_llm_dir, "--kv-cache-memory", "4M", "--max-model-len", "1024",
                                        "--shutdown-timeout", "0.5")
    url = f"http://127.0.0.1:{port}/v1"
    body = {"prompt": "hello", "max_tokens": 1000, "ignore_eos": True}
    results = {}

    def raw(name, stream):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        conn.request("POST", "/v1/completions", json.dumps({**body, "stream": stream}),
                     {"Content-Type": "application/json"})
        response = conn.getresponse()
        results[name] = response.status, response.getheader("Content-Type"), response.read().decode()

    def client(name, stream):
        c = openai.OpenAI(base_url=url, api_key="unused", max_retries=0, timeout=60)
        try:
            out = c.completions.create(model=tiny_llm_dir.name, prompt="hello", max_tokens=1000, stream=stream,
                                       extra_body={"ignore_eos": True})
            results[name] = [chunk.choices[0].text for chunk in out] if stream else out
        except openai.APIError as e:
            results[name] = e

    threads = [threading.Thread(target=raw, args=("raw stream", True)),
               threading.Thread(target=raw, args=("raw whole", False)),
               threading.Thread(target=client, args=("client stream", True)),
               threading.Thread(target=client, args=("client whole", False))]
    try:
        for t in threads:
            t.start()
        pending = 'ember_num_requests_pending'
        assert wait_until(lambda: metrics(port).get(pending) == 4, timeout=30)
        process.send_signal(signal.SIGTERM)
        for t in threads:
            t.join(timeout=60)
        assert process.wait(timeout=60) == 0, "".join(stderr)
    finally:
        if process.poll() is None:
            process.kill()
    log = "".join(stderr)
    assert "Traceback" not in log and "ERROR" not in log, log

    status, content_type, text = results["raw whole"]
    assert status == 503 and content_type == "application/json", text
    error = json.loads(text)["error"]
    assert error["code"] == "server_shutting_down" and "shutdown timeout of 0.5 s" in error["message"]

    status, content_type, text = results["raw stream"]
    assert status == 200 and content_type.startswith("text/event-stream")
    events = [line[6:] for line in text.splitlines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]" and len(events) > 2, events[-3:]
    assert json.loads(events[-2])["error"]["code"] == "server_shutting_down"
    assert all("choices" in json.loads(e) for e in events[:-2])   # it was streaming tokens till then

    for name in ("client whole", "client stream"):
        assert isinstance(results[name], openai.APIError), (name, results[name])
        assert "shutdown timeout" in results[name].message
    assert isinstance(results["client whole"], openai.APIStatusError) and results["client whole"].status_code == 503


def test_the_ready_banners_commands_answer_quickly(tiny_llm_dir):
    """The banner's curl and openai lines, run as printed, get an answer of at most their
    max_tokens (the tiny random model never says EOS: without one they would run on to
    the default limit); what the python line imports is in the `serve` extra."""
    process, port, stderr = start_serve(tiny_llm_dir, "--kv-cache-memory", "4M", "--max-model-len", "1024",
                                        "--default-max-tokens", "500")
    try:
        banner = "".join(stderr)
        curl = re.search(r"^  (curl .*?'\n)", banner, flags=re.M | re.S)[1]
        python = re.search(r"^  python (-c '.*')$", banner, flags=re.M)[1]
        max_tokens = int(re.search(r'"max_tokens": (\d+)', curl)[1])
        assert max_tokens <= 100 and f"max_tokens={max_tokens}" in python
        answer = json.loads(subprocess.run(["bash", "-c", curl], capture_output=True, text=True, timeout=60,
                                           check=True).stdout)
        assert 0 < answer["usage"]["completion_tokens"] <= max_tokens, answer
        printed = subprocess.run(f"{sys.executable} {python}", shell=True, capture_output=True, text=True,
                                 timeout=60)
        assert printed.returncode == 0 and printed.stdout, printed.stderr  # the tiny model's text may be blank
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=60)

    import tomllib

    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    serve_extra = {re.match(r"[\w.-]+", req)[0].lower() for req in extras["serve"]}
    imported = set(re.findall(r"from (\w+) import", python))
    assert imported == {"openai"} and imported <= serve_extra


def test_serve_help_names_the_default_max_tokens(capsys):
    assert main(["serve", "--help"]) == 0
    assert re.search(r"--default-max-tokens N\s.*default: 1024", " ".join(capsys.readouterr().out.split()))


def test_serve_refuses_a_negative_default_max_tokens(capsys):
    assert main(["serve", "--default-max-tokens", "-1"]) == 2
    assert "--default-max-tokens must be 0 (no default) or more, got -1" in capsys.readouterr().err


def _post(port, path, body):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    conn.request("POST", path, json.dumps(body), {"Content-Type": "application/json"})
    response = conn.getresponse()
    return response.status, json.loads(response.read())


def test_serve_an_encoder_alone_and_beside_an_llm(tiny_llm_dir, tiny_cross_encoder, tiny_bert):
    """`ember serve CROSS_ENCODER` serves the rerank routes alone (its banner shows how to call
    them); `ember serve LLM --embedding-model ENCODER` serves both; SIGTERM stops either."""
    folder, st = tiny_cross_encoder
    process, port, stderr = start_serve(folder)
    try:
        assert "/rerank" in "".join(stderr)
        status, body = _post(port, "/v1/rerank", {"query": "a cat", "documents": ["a dog", "a kitten", "rain"]})
        assert status == 200 and [r["index"] for r in body["results"]] == \
            [r["corpus_id"] for r in st.rank("a cat", ["a dog", "a kitten", "rain"])]
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 0, "".join(stderr)
    finally:
        if process.poll() is None:
            process.kill()
    process, port, stderr = start_serve(tiny_llm_dir, "--embedding-model", str(tiny_bert),
                                        "--served-embedding-model-name", "bert", "--max-model-len", "64")
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        conn.request("GET", "/v1/models")
        assert {m["id"] for m in json.loads(conn.getresponse().read())["data"]} == {tiny_llm_dir.name, "bert"}
        status, body = _post(port, "/v1/embeddings", {"model": "bert", "input": ["a", "b c"]})
        assert status == 200 and len(body["data"]) == 2 and len(body["data"][0]["embedding"]) == 32
        status, body = _post(port, "/v1/completions", {"prompt": "hi", "max_tokens": 2})
        assert status == 200 and body["usage"]["completion_tokens"] == 2
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 0, "".join(stderr)
        assert "Traceback" not in "".join(stderr)
    finally:
        if process.poll() is None:
            process.kill()


def test_serve_refuses_llm_options_for_an_encoder(tiny_bert, capsys):
    assert main(["serve", str(tiny_bert), "--max-num-seqs", "4"]) == 2
    assert "is an encoder: the LLM options ['max_num_seqs'] do not apply to it" in capsys.readouterr().err
    assert main(["serve", str(tiny_bert), "--embedding-model", str(tiny_bert)]) == 2
    assert "is an encoder already" in capsys.readouterr().err


def test_serve_reports_a_port_in_use(tiny_llm_dir, capsys):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["serve", str(tiny_llm_dir), "--port", str(port)]) == 2
    assert f"cannot listen on 127.0.0.1:{port}" in capsys.readouterr().err


def test_chat_with_piped_stdin(tiny_llm_dir, monkeypatch, capsys):
    monkeypatch.setattr(sys, "stdin", io.StringIO("Hello!\n\nWhat is a compiler?\n/exit\nnot read\n"))
    assert main(["chat", str(tiny_llm_dir), "--max-tokens", "4", "--kv-cache-memory", "1M"]) == 0
    captured = capsys.readouterr()
    assert captured.out.count("\n") >= 2 and "error" not in captured.err


def test_chat_knows_help_and_confirms_reset(tiny_llm_dir, monkeypatch, capsys):
    from ember import _chat

    lines = "/help\nHello!\nAnd again?\n/reset\n/reset\n/frobnicate\n/usr/bin is a folder\n/exit\nnot read\n"
    monkeypatch.setattr(sys, "stdin", io.StringIO(lines))
    assert main(["chat", str(tiny_llm_dir), "--max-tokens", "3", "--kv-cache-memory", "1M"]) == 0
    captured = capsys.readouterr()
    assert _chat.help_text() in captured.err
    for command in ("/help", "/reset", "/exit"):
        assert re.search(rf"^  {command} +\w", captured.err, flags=re.M), command
    assert "ember: conversation reset (2 exchanges forgotten)" in captured.err
    assert "ember: conversation reset (0 exchanges forgotten)" in captured.err
    assert "ember: unknown command /frobnicate (/help lists the commands)" in captured.err
    assert "commands:" not in captured.out and "reset" not in captured.out


def test_chat_commands_are_not_sent_and_reset_forgets():
    from ember import _chat

    class Echo:
        def __init__(self):
            self.seen = []

        def reply(self, messages):
            self.seen.append([m["content"] for m in messages])
            yield f"answer {len(self.seen)}"

    session, out, notes = Echo(), io.StringIO(), io.StringIO()
    lines = ["/help\n", "Hello!\n", "/reset\n", "/nope\n", "/usr/bin?\n", "/exit\n", "not read\n"]
    assert _chat.converse(session, lines, out, system="Be brief.", notes=notes) == 2
    assert session.seen == [["Be brief.", "Hello!"], ["Be brief.", "/usr/bin?"]]
    assert out.getvalue() == "answer 1\nanswer 2\n"
    assert notes.getvalue() == (_chat.help_text() + "\nember: conversation reset (1 exchange forgotten)\n"
                                "ember: unknown command /nope (/help lists the commands)\n")


def test_chat_trims_a_conversation_that_outgrows_the_context(tiny_llm_dir):
    from ember import _chat
    from ember.llm import build_engine
    from ember.runtime.request import SamplingParams

    engine = build_engine(tiny_llm_dir, **{**ENGINE, "max_model_len": 96})
    session = _chat.LocalChat(engine, SamplingParams(temperature=0, max_tokens=8, ignore_eos=True))
    out = io.StringIO()
    lines = [f"message number {i} is here with some words\n" for i in range(8)] + ["too long " * 100 + "\n"]
    assert _chat.converse(session, lines, out, system="Be brief.") == 8
    assert engine.pool.num_free_blocks == engine.pool.num_blocks and not engine.has_unfinished()


def test_chat_with_a_server(server, monkeypatch, capsys):
    finished = 'ember_completions_finished_total{finish_reason="length"}'
    before = server.metrics().get(finished, 0)
    monkeypatch.setattr(sys, "stdin", io.StringIO("Hello!\n/reset\nAgain\n/quit\nnot read\n"))
    assert main(["chat", "--url", server.url, "--max-tokens", "3", "--seed", "1"]) == 0
    assert server.metrics()[finished] == before + 2
    assert capsys.readouterr().out.count("\n") >= 2


def test_chat_reports_a_server_that_is_not_there(capsys):
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    assert main(["chat", "--url", f"http://127.0.0.1:{port}/v1"]) == 2
    assert "ember: error:" in capsys.readouterr().err


@pytest.mark.slow
def test_smollm2_served_answers_a_question():
    import openai

    from ember import AsyncLLM
    from ember.serve import create_app

    llm = AsyncLLM(kv_cache_memory=256 << 20)
    live = LiveServer(create_app(llm, MODEL))
    try:
        client = openai.OpenAI(base_url=live.url, api_key="unused", max_retries=0, timeout=120)
        out = client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "What is the capital of France?"}],
            max_tokens=32, temperature=0)
        assert "Paris" in out.choices[0].message.content
        assert out.choices[0].finish_reason in ("stop", "length")
        streamed = "".join(c.choices[0].delta.content or "" for c in client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "What is the capital of France?"}],
            max_tokens=32, temperature=0, stream=True))
        assert streamed == out.choices[0].message.content
    finally:
        live.stop()
        llm.shutdown()


def test_tensor_parallel_serve_answers_503_and_exits_when_a_worker_dies(tiny_llm_dir):
    """`ember serve --tensor-parallel-size 2`: it answers like one process; when its worker
    is killed mid-generation, the request in flight gets a 503, the server exits without a
    traceback, and no process is left behind."""
    import openai

    process, port, stderr = start_serve(tiny_llm_dir, "--tensor-parallel-size", "2", "--kv-cache-memory", "4M",
                                        "--max-model-len", "1024", env={"EMBER_TP_TIMEOUT": "5"})
    url = f"http://127.0.0.1:{port}/v1"
    c = openai.OpenAI(base_url=url, api_key="unused", max_retries=0, timeout=60)
    try:
        out = c.completions.create(model=tiny_llm_dir.name, prompt="hello", max_tokens=8, temperature=0)
        assert out.usage.completion_tokens == 8
        workers = subprocess.run(["pgrep", "-P", str(process.pid), "-f", "ember._tensor_parallel"],
                                 capture_output=True, text=True).stdout.split()
        assert len(workers) == 1
        result = {}

        def long_request():
            try:
                c.completions.create(model=tiny_llm_dir.name, prompt="hello", max_tokens=1000,
                                     extra_body={"ignore_eos": True})
            except openai.APIError as e:
                result["error"] = e

        thread = threading.Thread(target=long_request)
        thread.start()
        assert wait_until(lambda: metrics(port).get("ember_num_requests_pending") == 1, timeout=30)
        start = time.monotonic()
        os.kill(int(workers[0]), signal.SIGKILL)
        thread.join(timeout=30)
        assert process.wait(timeout=30) != 0
        assert time.monotonic() - start < 30
    finally:
        if process.poll() is None:
            process.kill()
    error = result["error"]
    assert isinstance(error, openai.APIStatusError) and error.status_code == 503, error
    assert "worker rank 1 died" in error.message
    log = "".join(stderr)
    assert "Traceback" not in log, log
    assert "worker rank 1 died" in log
    assert not subprocess.run(["pgrep", "-f", f'"parent": {process.pid}'], capture_output=True).stdout
