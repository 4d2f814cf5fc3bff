"""Run the server: `ember serve` is `serve(model, host=..., port=...)`.

The engine is built first (minutes for a large model, ~15 s for the built-in SmolLM2),
then uvicorn serves the app on one event loop. The port is bound before the engine is
built (so a port in use fails at once) but only listened on once the server is ready.

SIGTERM or SIGINT (Ctrl-C) stops it gracefully: the listening socket closes, idle
connections close, requests in flight (streams too) run to their end for up to
`shutdown_timeout` seconds (then they are aborted), the engine thread stops, and the
process exits with status 0. A second Ctrl-C exits at once.
"""

from __future__ import annotations

import contextlib
import os
import socket
import sys
from collections.abc import Callable
from pathlib import Path

import uvicorn

from ..llm import AsyncLLM
from .app import create_app

BUILTIN_NAME = "SmolLM2-135M-Instruct"


def serve(model: str | os.PathLike | None = None, *, host: str = "127.0.0.1", port: int = 8000,
          model_name: str | None = None, api_key: str | None = None, max_queue: int = 256,
          shutdown_timeout: float = 30.0, log_level: str = "warning",
          on_ready: Callable[[str], None] | None = None, **engine_options) -> None:
    """Serve `model` (default: the built-in SmolLM2) until SIGTERM/SIGINT, as `model_name`
    (default: the folder's name, or the file's without its extension). `on_ready` is
    called with the base URL (http://host:port/v1) once requests are taken; port 0
    picks a free port. `engine_options` go to AsyncLLM (max_model_len, max_num_seqs,
    kv_cache_memory, target, ...)."""
    from .._builtin import default_llm

    path = Path(model) if model is not None else default_llm()
    sock = bind(host, port)
    try:
        llm = AsyncLLM(path, **engine_options)
    except BaseException:
        sock.close()
        raise
    try:
        if model_name is None:
            model_name = BUILTIN_NAME if model is None else path.stem if path.is_file() else path.name
        app = create_app(llm, model_name, api_key=api_key, max_queue=max_queue)
        config = uvicorn.Config(app, log_level=log_level, access_log=log_level in ("debug", "info", "trace"),
                                timeout_graceful_shutdown=shutdown_timeout)
        bound_host, bound_port = sock.getsockname()[:2]
        shown = f"[{bound_host}]" if ":" in bound_host else bound_host
        url = f"http://{shown}:{bound_port}/v1"
        ready = on_ready or (lambda url: _print_ready(url, model_name, api_key))
        _Server(config, lambda: ready(url)).run(sockets=[sock])
    finally:
        llm.shutdown()


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


def _print_ready(url: str, model_name: str, api_key: str | None) -> None:
    """The ready line, and how to call the server: curl, and the openai client."""
    key = "$EMBER_API_KEY" if api_key else "unused"
    auth = f" -H \"Authorization: Bearer {key}\"" if api_key else ""
    print(f"""ember: serving {model_name} at {url} (SIGTERM or Ctrl-C stops it)

  curl {url}/chat/completions -H "Content-Type: application/json"{auth} \\
    -d '{{"model": "{model_name}", "messages": [{{"role": "user", "content": "What is the capital of France?"}}]}}'

  python -c 'from openai import OpenAI; c = OpenAI(base_url="{url}", api_key="{key}"); print(c.chat.completions.create(model="{model_name}", messages=[{{"role": "user", "content": "Hi!"}}]).choices[0].message.content)'
""", file=sys.stderr, flush=True)


class _Server(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, on_ready: Callable[[], None]):
        super().__init__(config)
        self._on_ready = on_ready

    async def startup(self, sockets=None) -> None:
        await super().startup(sockets)
        if self.started and not self.should_exit:
            self._on_ready()

    @contextlib.contextmanager
    def capture_signals(self):
        # uvicorn re-raises a caught SIGTERM after its graceful shutdown, which kills the
        # process with that signal; the shutdown was orderly, so exit normally instead.
        with super().capture_signals():
            yield
            self._captured_signals.clear()
