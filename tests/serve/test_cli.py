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


def start_serve(model_dir, *args):
    """`ember serve` in a subprocess on a free port; (process, port) once it serves."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
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
