"""`ember chat`: a conversation in the terminal, each answer streamed as it decodes.

One line of stdin is one user message (so piped stdin works: `printf 'Hi\\n' | ember chat`).
`/help` lists the commands: `/reset` forgets the conversation so far (and says so), `/exit`
(or `/quit`, or end of input) ends it. Commands answer on stderr, so stdout holds the
model's answers alone.
The model is a local one (compiled here, like `ember generate`) or, with `--url`, the one
an `ember serve` (or any OpenAI-compatible server) serves. When the conversation no longer
fits the model's context, its oldest turns are dropped.
"""

from __future__ import annotations

import json
import re
import sys
import urllib.error
import urllib.request
from collections.abc import Iterable, Iterator
from typing import TextIO

from .errors import EmberError, InputError


class TooLong(Exception):
    """The conversation does not fit the model's context."""


class LocalChat:
    """Answers from an LLMEngine in this process."""

    def __init__(self, engine, params):
        self.engine, self.params = engine, params
        self._ids = 0

    def reply(self, messages: list[dict]) -> Iterator[str]:
        from dataclasses import replace

        from .llm import _chat_prompt

        prompt = _chat_prompt(self.engine.tokenizer, messages)
        num_prompt = len(prompt["prompt_token_ids"])
        room = self.engine.max_model_len - num_prompt
        if room < 1:
            raise TooLong(f"{num_prompt} tokens, max_model_len {self.engine.max_model_len}")
        params = replace(self.params, max_tokens=min(self.params.max_tokens, room))
        self._ids += 1
        for delta, _ in self.engine.stream(f"chat-{self._ids}", prompt, params):
            yield delta


class RemoteChat:
    """Answers from an OpenAI-compatible server's /chat/completions, streamed."""

    def __init__(self, url: str, api_key: str | None, params: dict):
        self.url, self.api_key, self.params = url.rstrip("/"), api_key, params
        self.model = self._request("GET", "/models")["data"][0]["id"]

    def reply(self, messages: list[dict]) -> Iterator[str]:
        body = {"model": self.model, "messages": messages, "stream": True, **self.params}
        try:
            response = self._open("POST", "/chat/completions", body)
        except _ServerError as e:
            if e.code == "context_length_exceeded":
                raise TooLong(str(e)) from None
            raise
        with response:
            for raw in response:
                line = raw.decode("utf-8").strip()
                if not line.startswith("data:"):
                    continue
                data = line[len("data:"):].strip()
                if data == "[DONE]":
                    return
                event = json.loads(data)
                if "error" in event:
                    raise EmberError(f"the server: {event['error'].get('message')}")
                for choice in event.get("choices", []):
                    yield choice.get("delta", {}).get("content") or ""

    def _request(self, method: str, path: str, body: dict | None = None) -> dict:
        with self._open(method, path, body) as response:
            return json.load(response)

    def _open(self, method: str, path: str, body: dict | None):
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.url + path, data=data, headers=headers, method=method)
        try:
            return urllib.request.urlopen(request, timeout=600)
        except urllib.error.HTTPError as e:
            try:
                error = json.load(e).get("error", {})
            except (ValueError, AttributeError):
                error = {}
            raise _ServerError(f"{self.url + path}: HTTP {e.code}: {error.get('message') or e.reason}",
                               error.get("code")) from None


class _ServerError(EmberError):
    def __init__(self, message: str, code: str | None):
        super().__init__(message)
        self.code = code


def lines(stdin: TextIO, prompt: str | None) -> Iterator[str]:
    """stdin's lines; before each, `prompt` on stderr (for a terminal)."""
    while True:
        if prompt:
            print(prompt, end="", file=sys.stderr, flush=True)
        line = stdin.readline()
        if not line:
            return
        yield line


COMMANDS = {
    "/help": "list these commands",
    "/reset": "forget the conversation so far (a --system message stays)",
    "/exit": "end the chat (also /quit, or Ctrl-D)",
}


def help_text() -> str:
    return "commands:\n" + "\n".join(f"  {name:<7} {what}" for name, what in COMMANDS.items())


def converse(session, user_lines: Iterable[str], out: TextIO, *, system: str | None = None,
             notes: TextIO | None = None) -> int:
    """Answer each line (commands answer on `notes`, default stderr); returns how many
    were answered."""
    notes = notes or sys.stderr
    opening = [{"role": "system", "content": system}] if system else []
    history = list(opening)
    answered = 0
    for line in user_lines:
        text = line.strip()
        if not text:
            continue
        if text in ("/exit", "/quit"):
            break
        if text == "/help":
            print(help_text(), file=notes, flush=True)
            continue
        if text == "/reset":
            forgotten = (len(history) - len(opening)) // 2
            history = list(opening)
            print(f"ember: conversation reset ({forgotten} exchange{'s' * (forgotten != 1)} forgotten)",
                  file=notes, flush=True)
            continue
        if re.fullmatch(r"/[a-z]+", text):  # a command word, not a message that starts with a path
            print(f"ember: unknown command {text} (/help lists the commands)", file=notes, flush=True)
            continue
        history.append({"role": "user", "content": text})
        while True:
            try:
                answer = []
                for delta in session.reply(history):
                    out.write(delta)
                    out.flush()
                    answer.append(delta)
                break
            except TooLong as e:
                if len(history) - len(opening) <= 1:  # the message alone is too long
                    history.pop()
                    print(f"ember: that message does not fit the model's context ({e})", file=sys.stderr)
                    answer = None
                    break
                del history[len(opening):len(opening) + 2]  # the oldest exchange
            except KeyboardInterrupt:
                out.write(" [interrupted]")
                break
        out.write("\n")
        out.flush()
        if answer is not None:
            history.append({"role": "assistant", "content": "".join(answer)})
            answered += 1
    return answered


def check_model_can_chat(tokenizer) -> None:
    if not getattr(tokenizer, "chat_template", None):
        raise InputError("this model's tokenizer has no chat template: use `ember generate --raw` for plain prompts")
