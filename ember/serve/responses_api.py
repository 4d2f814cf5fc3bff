"""OpenAI's Responses API (/v1/responses) over a chat request's outputs: the response
object, and the events of a streamed one, in OpenAI's order.

    fmt = ResponseFormat(body, model_name, tools, num_prompt_tokens)
    fmt.response(final_output)               # the whole response object
    fmt.opening(); fmt.advance(output)...    # a stream: lists of events, each a dict with its `type`

A stream: `response.created`, `response.in_progress`; for text, a message item
(`response.output_item.added`, `response.content_part.added`, `response.output_text.delta`...,
`response.output_text.done`, `response.content_part.done`, `response.output_item.done`);
for each tool call once it is whole (tool_calls.py), a function_call item
(`response.output_item.added`, `response.function_call_arguments.delta`,
`response.function_call_arguments.done`, `response.output_item.done`); then
`response.completed` (or `response.incomplete` at max_output_tokens, `response.failed` on an
error) carrying the whole response. Every event has a `sequence_number`.
"""

from __future__ import annotations

import secrets
import time
from typing import Any

from ..llm import RequestOutput
from .protocol import APIError, ResponsesRequest

# the chat request's field -> the Responses request's, for the errors of one run as chat
_RENAMED = [("messages", "input"), ("response_format.json_schema.schema", "text.format.schema"),
            ("response_format", "text.format"), ("max_completion_tokens", "max_output_tokens")]


def renamed(e: APIError) -> APIError:
    """An error of the chat request a Responses request ran as, naming the Responses field."""
    if e.param is None:
        return e
    for chat, ours in _RENAMED:
        if e.param == chat or e.param.startswith(chat + "."):
            param = ours + e.param[len(chat):]
            return APIError(e.status, e.message.replace(f"'{chat}", f"'{ours}"), param=param, code=e.code,
                            type=e.type, headers=e.headers)
    return e


class ResponseFormat:
    def __init__(self, body: ResponsesRequest, model: str, tools, num_prompt_tokens: int):
        self.body, self.model, self.tools, self.num_prompt_tokens = body, model, tools, num_prompt_tokens
        self.id = f"resp_{secrets.token_hex(16)}"
        self.created = int(time.time())
        # a stream's state
        self._sequence = 0
        self._items: list[dict[str, Any]] = []      # output items so far (done or open)
        self._open: dict[str, Any] | None = None    # the message item text is going into
        self._chars = 0
        self._reader = tools.reader() if tools is not None else None

    # -- the response object ----------------------------------------------------------------
    def _object(self, status: str, output: list[dict], out: RequestOutput | None, error: dict | None = None,
                incomplete: str | None = None) -> dict[str, Any]:
        body = self.body
        tokens = len(out.outputs[0].token_ids) if out is not None else 0
        fmt = (body.text or {}).get("format") or {"type": "text"}
        return {
            "id": self.id, "object": "response", "created_at": self.created, "status": status, "model": self.model,
            "output": output, "error": error,
            "incomplete_details": {"reason": incomplete} if incomplete else None,
            "instructions": body.instructions, "max_output_tokens": body.max_output_tokens,
            "parallel_tool_calls": body.parallel_tool_calls is not False,
            "temperature": body.temperature, "top_p": body.top_p, "text": {"format": fmt},
            "tool_choice": body.tool_choice or ("auto" if body.tools else "none"), "tools": body.tools or [],
            "metadata": {}, "store": False,
            "usage": None if out is None else {
                "input_tokens": self.num_prompt_tokens, "output_tokens": tokens,
                "total_tokens": self.num_prompt_tokens + tokens,
                "input_tokens_details": {"cached_tokens": out.num_cached_tokens},
                "output_tokens_details": {"reasoning_tokens": 0}},
        }

    @staticmethod
    def _message(text: str, status: str = "completed") -> dict[str, Any]:
        return {"type": "message", "id": f"msg_{secrets.token_hex(16)}", "status": status, "role": "assistant",
                "content": [{"type": "output_text", "text": text, "annotations": []}]}

    @staticmethod
    def _call(call) -> dict[str, Any]:
        return {"type": "function_call", "id": f"fc_{secrets.token_hex(16)}", "call_id": call.id, "name": call.name,
                "arguments": call.arguments, "status": "completed"}

    def _ending(self, out: RequestOutput) -> tuple[str, str | None]:
        reason = out.outputs[0].finish_reason
        return ("incomplete", "max_output_tokens") if reason == "length" else ("completed", None)

    def response(self, out: RequestOutput) -> dict[str, Any]:
        """The whole response of a finished output."""
        text = out.outputs[0].text
        content, calls = self.tools.reader().read(text) if self.tools is not None else (text, [])
        output = ([self._message(content)] if content or not calls else []) + [self._call(c) for c in calls]
        status, incomplete = self._ending(out)
        return self._object(status, output, out, incomplete=incomplete)

    # -- a stream -----------------------------------------------------------------------------
    def _event(self, kind: str, **fields) -> dict[str, Any]:
        self._sequence += 1
        return {"type": kind, "sequence_number": self._sequence - 1, **fields}

    def opening(self) -> list[dict[str, Any]]:
        head = self._object("in_progress", [], None)
        return [self._event("response.created", response=head), self._event("response.in_progress", response=head)]

    def advance(self, out: RequestOutput) -> list[dict[str, Any]]:
        """The events for what `out` (cumulative) adds; the closing ones once it finished."""
        c = out.outputs[0]
        delta, self._chars = c.text[self._chars:], len(c.text)
        events: list[dict[str, Any]] = []
        calls = []
        if self._reader is not None:
            delta, calls = self._reader.feed(delta)
            if c.finish_reason is not None:
                tail, more = self._reader.finish()
                delta, calls = delta + tail, calls + more
        if delta:
            events += self._text(delta)
        for call in calls:
            events += self._close_message()
            item = self._call(call)
            index = len(self._items)
            self._items.append(item)
            events += [self._event("response.output_item.added", output_index=index, item={**item, "arguments": "",
                                                                                           "status": "in_progress"}),
                       self._event("response.function_call_arguments.delta", item_id=item["id"], output_index=index,
                                   delta=call.arguments),
                       self._event("response.function_call_arguments.done", item_id=item["id"], output_index=index,
                                   arguments=call.arguments),
                       self._event("response.output_item.done", output_index=index, item=item)]
        if c.finish_reason is not None:
            if not self._items:  # an empty answer is still a message
                events += self._text("")
            events += self._close_message()
            status, incomplete = self._ending(out)
            kind = "response.completed" if status == "completed" else "response.incomplete"
            events.append(self._event(kind, response=self._object(status, self._items, out, incomplete=incomplete)))
        return events

    def _text(self, delta: str) -> list[dict[str, Any]]:
        events = []
        if self._open is None:
            self._open = self._message("", status="in_progress")
            index = len(self._items)
            self._items.append(self._open)
            events += [self._event("response.output_item.added", output_index=index,
                                   item={**self._open, "content": []}),
                       self._event("response.content_part.added", item_id=self._open["id"], output_index=index,
                                   content_index=0, part={"type": "output_text", "text": "", "annotations": []})]
        part = self._open["content"][0]
        part["text"] += delta
        if delta:
            events.append(self._event("response.output_text.delta", item_id=self._open["id"],
                                      output_index=len(self._items) - 1, content_index=0, delta=delta))
        return events

    def _close_message(self) -> list[dict[str, Any]]:
        if self._open is None:
            return []
        item, self._open = self._open, None
        item["status"] = "completed"
        index = self._items.index(item)
        part = item["content"][0]
        return [self._event("response.output_text.done", item_id=item["id"], output_index=index, content_index=0,
                            text=part["text"]),
                self._event("response.content_part.done", item_id=item["id"], output_index=index, content_index=0,
                            part=part),
                self._event("response.output_item.done", output_index=index, item=item)]

    def failed(self, error: APIError) -> dict[str, Any]:
        """The last event of a stream that an error ended."""
        return self._event("response.failed", response=self._object(
            "failed", self._items, None, error={"code": error.code or "server_error", "message": error.message}))
