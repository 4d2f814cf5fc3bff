"""Run the server: `ember serve` is `serve(model, host=..., port=...)`.

The engine is built first (minutes for a large model, ~15 s for the built-in SmolLM2),
then uvicorn serves the app on one event loop. The port is bound before the engine is
built (so a port in use fails at once) but only listened on once the server is ready.

SIGTERM or SIGINT (Ctrl-C) stops it gracefully: the listening socket closes, idle
connections close, requests in flight (streams too) run to their end for up to
`shutdown_timeout` seconds, the engine thread stops, and the process exits with status
0. A second Ctrl-C exits at once. Requests still open at the timeout are ended by the
app itself (`end_requests`: OpenAI's 503 error body, or a stream's `error` event then
`[DONE]`), and uvicorn is given a few seconds more to send those: left to uvicorn's own
timeout, they were cancelled mid-way (a plain-text 500, a stream with no end and a
traceback in the log for each).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import sys
from collections.abc import Callable
from pathlib import Path

import uvicorn

from ..errors import InputError
from ..llm import AsyncLLM
from .app import DEFAULT_MAX_TOKENS, create_app, end_requests
from .tool_calls import check_parser

BUILTIN_NAME = "SmolLM2-135M-Instruct"
# after end_requests, how long the ended requests get to send their error (then uvicorn
# cancels what is left)
_GRACE_AFTER_ENDING = 5.0


def serve(model: str | os.PathLike | None = None, *, host: str = "127.0.0.1", port: int = 8000,
          model_name: str | None = None, api_key: str | None = None, max_queue: int = 256,
          shutdown_timeout: float = 30.0, log_level: str = "warning",
          default_max_tokens: int | None = DEFAULT_MAX_TOKENS, tool_call_parser: str | None = None,
          on_ready: Callable[[str], None] | None = None, embedding_model: str | os.PathLike | None = None,
          embedding_model_name: str | None = None, **engine_options) -> None:
    """Serve `model` (default: the built-in SmolLM2) until SIGTERM/SIGINT, as `model_name`
    (default: the folder's name, or the file's without its extension). `model` may be an
    encoder (a sentence-transformers folder, a cross-encoder, an .onnx encoder): then the
    server has /v1/embeddings and the rerank routes only. `embedding_model` serves one beside
    the LLM, as `embedding_model_name` (default: its folder's name). `on_ready` is
    called with the base URL (http://host:port/v1) once requests are taken; port 0
    picks a free port. `default_max_tokens` bounds a chat request that sets no
    max_tokens (None: up to max_model_len). `tool_call_parser`: how answers to requests with
    tools are read (tool_calls.PARSERS; default: the chat template's format). `engine_options` go to AsyncLLM
    (max_model_len, max_num_seqs, kv_cache_memory, target, ...); `target` and `intra_op_threads` to the encoder
    too."""
    from .._builtin import default_llm
    from ..embeddings import AsyncEncoder, is_encoder

    check_parser(tool_call_parser)  # before the model loads
    path = Path(model) if model is not None else default_llm()
    alone = model is not None and is_encoder(path)
    if alone and embedding_model is not None:
        raise InputError(f"{model} is an encoder already: --embedding-model adds an encoder to an LLM")
    extra = sorted(k for k, v in engine_options.items()
                   if k not in ("intra_op_threads", "target") and (k, v) != ("tensor_parallel_size", 1))
    if alone and extra:
        raise InputError(f"{model} is an encoder: the LLM options {extra} do not apply to it")
    sock = bind(host, port)
    llm = encoder = None
    try:
        encoder_options = {k: v for k, v in engine_options.items() if k in ("intra_op_threads", "target")}
        if alone:
            encoder = AsyncEncoder(path, **encoder_options)
        else:
            llm = AsyncLLM(path, **engine_options)
            if embedding_model is not None:
                encoder = AsyncEncoder(embedding_model, **encoder_options)
        if model_name is None:
            model_name = BUILTIN_NAME if model is None else path.stem if path.is_file() else path.name
        if alone:
            model_name, embedding_model_name = None, model_name
        app = create_app(llm, model_name, api_key=api_key, max_queue=max_queue,
                         default_max_tokens=default_max_tokens, tool_call_parser=tool_call_parser,
                         encoder=encoder, encoder_name=embedding_model_name)
        encoder_name = embedding_model_name or (encoder.encoder.name if encoder is not None else None)
        config = uvicorn.Config(app, log_level=log_level, access_log=log_level in ("debug", "info", "trace"),
                                timeout_graceful_shutdown=shutdown_timeout + _GRACE_AFTER_ENDING)
        bound_host, bound_port = sock.getsockname()[:2]
        shown = f"[{bound_host}]" if ":" in bound_host else bound_host
        url = f"http://{shown}:{bound_port}/v1"
        ready = on_ready or (lambda url: _print_ready(url, model_name, api_key, encoder_name))
        server = _Server(config, lambda: ready(url), shutdown_timeout, llm)
        server.run(sockets=[sock])
        if server.engine_failure is not None:  # the server stopped because the engine did
            raise server.engine_failure
    finally:
        sock.close()  # (once uvicorn has served, closed already: closing again does nothing)
        for part in (llm, encoder):
            if part is not None:
                part.shutdown()


def bind(host: str, port: int) -> socket.socket:
    """A socket bound to host:port, not yet listening (connections are refused until the
    server listens, instead of waiting in the backlog while the model loads)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise OSError(e.errno, f"cannot listen on {host}:{port}: {e.strerror}") from None
    return sock


def _print_ready(url: str, model_name: str | None, api_key: str | None, encoder_name: str | None = None) -> None:
    """The ready line, and how to call the server: curl, and the openai client. Both set
    max_tokens, so they answer in seconds whatever the model samples."""
    key = "$EMBER_API_KEY" if api_key else "unused"
    auth = f" -H \"Authorization: Bearer {key}\"" if api_key else ""
    if encoder_name is not None:
        print(f"""ember: serving {encoder_name} (embeddings, reranking) at {url}

  curl {url}/embeddings -H "Content-Type: application/json"{auth} -d '{{"model": "{encoder_name}", "input": ["A sentence."]}}'
  curl {url}/rerank -H "Content-Type: application/json"{auth} -d '{{"model": "{encoder_name}", "query": "a cat", "documents": ["a dog", "a kitten"]}}'
""", file=sys.stderr, flush=True)
    if model_name is None:
        print("ember: SIGTERM or Ctrl-C stops it", file=sys.stderr, flush=True)
        return
    print(f"""ember: serving {model_name} at {url} (SIGTERM or Ctrl-C stops it)

  curl {url}/chat/completions -H "Content-Type: application/json"{auth} \\
    -d '{{"model": "{model_name}", "messages": [{{"role": "user", "content": "What is the capital of France?"}}], "max_tokens": 64}}'

  python -c 'from openai import OpenAI; c = OpenAI(base_url="{url}", api_key="{key}"); print(c.chat.completions.create(model="{model_name}", messages=[{{"role": "user", "content": "Hi!"}}], max_tokens=64).choices[0].message.content)'
""", file=sys.stderr, flush=True)


class _Server(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, on_ready: Callable[[], None], shutdown_timeout: float, llm):
        super().__init__(config)
        self._on_ready = on_ready
        self._shutdown_timeout = shutdown_timeout
        self._llm = llm
        self.engine_failure = None  # why the engine stopped under the server, if it did

    async def on_tick(self, counter: int) -> bool:
        # an engine that can no longer run (a tensor-parallel worker died or hung) stops the
        # server: requests in flight have their error, new ones a 503, then it exits
        if self.engine_failure is None and self._llm is not None and self._llm.engine.failed is not None:
            self.engine_failure = self._llm.engine.failed
            print(f"ember: {self.engine_failure}; stopping the server", file=sys.stderr, flush=True)
            return True
        return await super().on_tick(counter)

    async def startup(self, sockets=None) -> None:
        await super().startup(sockets)
        if self.started and not self.should_exit:
            self._on_ready()

    async def shutdown(self, sockets=None) -> None:
        # uvicorn waits for the requests in flight up to its own timeout (ours plus a
        # grace); at ours, the app ends them with an error they can still send
        tasks: list[asyncio.Task] = []   # holds the task, which the loop only references weakly
        ending = asyncio.get_running_loop().call_later(
            self._shutdown_timeout, lambda: tasks.append(asyncio.ensure_future(self._end_requests())))
        try:
            await super().shutdown(sockets)
        finally:
            ending.cancel()

    async def _end_requests(self) -> None:
        await end_requests(self.config.app, f"the server is shutting down: the request did not finish within "
                                            f"the shutdown timeout of {self._shutdown_timeout:g} s")

    @contextlib.contextmanager
    def capture_signals(self):
        # uvicorn re-raises a caught SIGTERM after its graceful shutdown, which kills the
        # process with that signal; the shutdown was orderly, so exit normally instead.
        with super().capture_signals():
            yield
            self._captured_signals.clear()
