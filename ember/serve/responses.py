"""Engine outputs as OpenAI's response objects (plain dicts, ready for JSON).

`CompletionFormat` and `ChatFormat` say how a choice, a stream chunk's choice and the
logprobs look on each endpoint; `Cursor` turns one choice's cumulative outputs into the
deltas a stream sends (its text only grows while the request runs: text that may yet be
a stop string is held back and comes in a later delta).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from ..llm import CompletionOutput, Logprob, RequestOutput


class TokenText:
    """Each token's own text, as logprobs show it (decoded once, then remembered)."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self._texts: dict[int, str] = {}

    def __call__(self, token_id: int) -> str:
        text = self._texts.get(token_id)
        if text is None:
            text = self._texts[token_id] = self.tokenizer.decode([token_id])
        return text


def _logprob(value: float) -> float:
    return value if math.isfinite(value) else -9999.0  # JSON has no -inf; OpenAI's floor


@dataclass
class Delta:
    text: str
    token_ids: list[int]
    logprobs: list[dict[int, Logprob]] | None
    finish_reason: str | None


@dataclass
class Cursor:
    """How much of one choice a stream has sent."""

    num_chars: int = 0
    num_tokens: int = 0
    num_token_chars: int = 0   # the length of the sent tokens' texts (completions' text_offset)
    done: bool = False
    reader: Any = None         # the choice's tool-call reader (tool_calls.Reader), if it has tools
    num_calls: int = 0         # tool calls sent

    def advance(self, output: CompletionOutput) -> Delta | None:
        """What is new in `output` since the last call; None if nothing is. Tokens whose
        text is held back are sent with the text when it comes."""
        if self.done:
            return None
        text = output.text[self.num_chars:]
        finish = output.finish_reason
        if not text and finish is None:
            return None
        end = len(output.token_ids)
        token_ids = output.token_ids[self.num_tokens:end]
        # the engine thread appends to the logprobs list; take the rows of these tokens only
        rows = None if output.logprobs is None else list(output.logprobs[self.num_tokens:end])
        self.num_chars, self.num_tokens, self.done = self.num_chars + len(text), end, finish is not None
        return Delta(text, token_ids, rows, finish)


class CompletionFormat:
    """/v1/completions: choices carry `text`; logprobs are OpenAI's legacy lists."""

    object = "text_completion"
    chunk_object = "text_completion"
    id_prefix = "cmpl-"

    def __init__(self, token_text: TokenText, num_logprobs: int | None):
        self.token_text, self.num_logprobs = token_text, num_logprobs

    def logprobs(self, token_ids: list[int], rows, cursor: Cursor | None = None) -> dict[str, Any] | None:
        if self.num_logprobs is None or rows is None:
            return None
        offset = cursor.num_token_chars if cursor is not None else 0
        tokens, token_logprobs, top, offsets = [], [], [], []
        for token, row in zip(token_ids, rows):
            text = self.token_text(token)
            tokens.append(text)
            token_logprobs.append(_logprob(row[token].logprob))
            # the chosen token and the k most likely (vLLM's and OpenAI's legacy form)
            top.append({self.token_text(t): _logprob(lp.logprob) for t, lp in row.items()})
            offsets.append(offset)
            offset += len(text)
        if cursor is not None:
            cursor.num_token_chars = offset
        return {"tokens": tokens, "token_logprobs": token_logprobs, "top_logprobs": top, "text_offset": offsets}

    def choice(self, index: int, output: CompletionOutput) -> dict[str, Any]:
        n = len(output.token_ids)
        rows = None if output.logprobs is None else output.logprobs[:n]
        return {"index": index, "text": output.text, "logprobs": self.logprobs(output.token_ids, rows),
                "finish_reason": output.finish_reason, "stop_reason": output.stop_reason}

    def chunk_choice(self, index: int, delta: Delta, cursor: Cursor) -> dict[str, Any]:
        return {"index": index, "text": delta.text, "logprobs": self.logprobs(delta.token_ids, delta.logprobs, cursor),
                "finish_reason": delta.finish_reason}

    def opening_choices(self, num_choices: int) -> list[dict[str, Any]]:
        return []


class ChatFormat:
    """/v1/chat/completions: choices carry a `message` (a `delta` in a stream); logprobs
    are a `content` list of {token, logprob, bytes, top_logprobs}. With `tools` (a
    tool_calls.ToolCalling), a choice's text is read for tool calls: they come as the
    message's `tool_calls` (a stream's `tool_calls` deltas, one per whole call) and the
    choice finishes with "tool_calls"."""

    object = "chat.completion"
    chunk_object = "chat.completion.chunk"
    id_prefix = "chatcmpl-"

    def __init__(self, token_text: TokenText, num_logprobs: int | None, tools=None):
        self.token_text, self.num_logprobs, self.tools = token_text, num_logprobs, tools

    def _entry(self, token: int, value: float) -> dict[str, Any]:
        text = self.token_text(token)
        return {"token": text, "logprob": _logprob(value), "bytes": list(text.encode("utf-8"))}

    def logprobs(self, token_ids: list[int], rows, cursor: Cursor | None = None) -> dict[str, Any] | None:
        if self.num_logprobs is None or rows is None:
            return None
        content = []
        for token, row in zip(token_ids, rows):
            top = sorted((lp.rank, t, lp.logprob) for t, lp in row.items() if lp.rank <= self.num_logprobs)
            content.append({**self._entry(token, row[token].logprob),
                            "top_logprobs": [self._entry(t, value) for _, t, value in top]})
        return {"content": content}

    def choice(self, index: int, output: CompletionOutput) -> dict[str, Any]:
        n = len(output.token_ids)
        rows = None if output.logprobs is None else output.logprobs[:n]
        message: dict[str, Any] = {"role": "assistant", "content": output.text}
        finish = output.finish_reason
        if self.tools is not None:
            content, calls = self.tools.reader().read(output.text)
            if calls:
                message = {"role": "assistant", "content": content or None,
                           "tool_calls": [c.as_dict() for c in calls]}
                finish = _tool_calls_finish(finish)
        return {"index": index, "message": message, "logprobs": self.logprobs(output.token_ids, rows),
                "finish_reason": finish, "stop_reason": output.stop_reason}

    def chunk_choice(self, index: int, delta: Delta, cursor: Cursor) -> dict[str, Any] | None:
        text, finish, message = delta.text, delta.finish_reason, {}
        if self.tools is not None:
            if cursor.reader is None:
                cursor.reader = self.tools.reader()
            text, calls = cursor.reader.feed(text)
            if finish is not None:
                tail, more = cursor.reader.finish()
                text, calls = text + tail, calls + more
            if calls:
                message["tool_calls"] = [{"index": cursor.num_calls + i, **c.as_dict()} for i, c in enumerate(calls)]
                cursor.num_calls += len(calls)
            if finish is not None and cursor.num_calls:
                finish = _tool_calls_finish(finish)
            if not text and not calls and finish is None and self.num_logprobs is None:
                return None  # all held back (it may be the start of a call)
        if text:
            message = {"content": text, **message}
        return {"index": index, "delta": message, "logprobs": self.logprobs(delta.token_ids, delta.logprobs, cursor),
                "finish_reason": finish}

    def opening_choices(self, num_choices: int) -> list[dict[str, Any]]:
        """A stream opens with the role of each choice, as OpenAI's does."""
        return [{"index": i, "delta": {"role": "assistant", "content": ""}, "logprobs": None, "finish_reason": None}
                for i in range(num_choices)]


def _tool_calls_finish(finish: str | None) -> str | None:
    """A choice that made tool calls and stopped (not cut at its length) finishes "tool_calls"."""
    return "tool_calls" if finish == "stop" else finish


def usage(outputs: list[RequestOutput]) -> dict[str, int]:
    """Token counts over a response's prompts: each prompt counted once, whatever its n."""
    prompt = sum(len(o.prompt_token_ids) for o in outputs)
    completion = sum(len(c.token_ids) for o in outputs for c in o.outputs)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}
