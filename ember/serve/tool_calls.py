"""Tool calling for /v1/chat/completions: how the tools reach the model, and how its
answer becomes `tool_calls`.

    tools = ToolCalling.from_request(body.tools, body.tool_choice, parallel, tokenizer, parser_name)
    messages = tools.messages(conversation)          # the tools in the prompt, past calls re-rendered
    params.structured_outputs = tools.constraint()   # for "required" and a named function
    reader = tools.reader()                          # one per choice
    content, calls = reader.feed(text_delta)         # streamed: any chunks, in order
    content, calls = reader.finish()

`tool_choice`:

- "none": no tools in the prompt, nothing parsed: a plain answer.
- "auto" (the default with tools): the model decides; its text is read by a parser for
  the format its chat template speaks (`PARSERS`: Hermes-style `<tool_call>` JSON,
  Llama 3's JSON, Mistral's `[TOOL_CALLS]`), or the one `--tool-call-parser` names.
- "required": the output is constrained (the grammar engine) to a JSON array of one or
  more calls `{"name": ..., "parameters": {...}}`, each name one of the tools and its
  parameters valid against that tool's schema (at most one call unless
  `parallel_tool_calls`).
- {"type": "function", "function": {"name": F}}: the output is constrained to F's
  arguments, a JSON object valid against its `parameters`.

A chat template that knows no tools (its source never mentions them, as SmolLM2's) gets
them from a system prompt ember writes in the Hermes format, and its parser is Hermes';
past assistant tool calls and `role: "tool"` results are then re-rendered as Hermes text
(`<tool_call>` in the assistant's turn, `<tool_response>` in a user turn), so the
conversation reads the same way to the model.

Notes:

1. A reader emits a call only once it is whole (its closing marker or the end of the
   output), in one delta carrying the id, the name and all the arguments; the content
   around calls streams as it comes, except text that may be the start of a marker,
   which waits until it is known not to be. So any split of the same text into chunks
   gives the same content and the same calls as the whole text.
2. A call whose JSON does not parse is left in the content, as the model wrote it:
   nothing is lost.
"""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass
from typing import Any

from ..errors import InputError
from ..llm import StructuredOutputsParams
from .protocol import APIError


@dataclass
class ToolCall:
    name: str
    arguments: str   # JSON text of an object
    id: str = ""

    def __post_init__(self):
        self.id = self.id or f"call_{secrets.token_hex(12)}"

    def as_dict(self) -> dict[str, Any]:
        return {"id": self.id, "type": "function", "function": {"name": self.name, "arguments": self.arguments}}


def _arguments(value: Any) -> str | None:
    """A call's arguments as OpenAI sends them (JSON text of an object); None if not an object."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            return None
    return json.dumps(value, ensure_ascii=False) if isinstance(value, dict) else None


def _call(obj: Any, arguments_key: str = "arguments") -> ToolCall | None:
    if not isinstance(obj, dict) or not isinstance(obj.get("name"), str):
        return None
    args = _arguments(obj.get(arguments_key, obj.get("parameters", obj.get("arguments", {}))))
    return None if args is None else ToolCall(obj["name"], args)


def _held_prefix(text: str, marker: str) -> int:
    """How many characters at the end of `text` could be the start of `marker`."""
    for n in range(min(len(marker) - 1, len(text)), 0, -1):
        if marker.startswith(text[-n:]):
            return n
    return 0


class Reader:
    """Turns one choice's output text, chunk by chunk, into content and tool calls."""

    def feed(self, text: str) -> tuple[str, list[ToolCall]]:
        raise NotImplementedError

    def finish(self) -> tuple[str, list[ToolCall]]:
        raise NotImplementedError

    def read(self, text: str) -> tuple[str, list[ToolCall]]:
        """A whole output at once (the same result as any chunking of it)."""
        content, calls = self.feed(text)
        tail, more = self.finish()
        return content + tail, calls + more


class HermesReader(Reader):
    """`<tool_call>{"name": ..., "arguments": {...}}</tool_call>`, any number, text around them."""

    START, END = "<tool_call>", "</tool_call>"

    def __init__(self):
        self._buffer, self._inside = "", False

    def feed(self, text: str) -> tuple[str, list[ToolCall]]:
        self._buffer += text
        content, calls = [], []
        while True:
            if not self._inside:
                at = self._buffer.find(self.START)
                if at < 0:
                    keep = _held_prefix(self._buffer, self.START)
                    content.append(self._buffer[:len(self._buffer) - keep])
                    self._buffer = self._buffer[len(self._buffer) - keep:]
                    break
                content.append(self._buffer[:at])
                self._buffer, self._inside = self._buffer[at:], True
            end = self._buffer.find(self.END)
            if end < 0:
                break
            block = self._buffer[:end + len(self.END)]
            self._buffer, self._inside = self._buffer[end + len(self.END):], False
            call = self._parse(block[len(self.START):-len(self.END)])
            if call is None:
                content.append(block)
            else:
                calls.append(call)
        return "".join(content), calls

    @staticmethod
    def _parse(body: str) -> ToolCall | None:
        try:
            return _call(json.loads(body))
        except ValueError:
            return None

    def finish(self) -> tuple[str, list[ToolCall]]:
        rest, self._buffer = self._buffer, ""
        if self._inside:  # the output ended inside a call (no closing tag before EOS)
            self._inside = False
            call = self._parse(rest[len(self.START):])
            if call is not None:
                return "", [call]
        return rest, []


class _WholeOutputReader(Reader):
    """Formats whose calls take the rest of the output: content streams until `marker` (or,
    with `leading_json`, an output that opens with `{` or `[`); from there everything is
    held and read as calls at the end."""

    marker = ""
    leading_json = False

    def __init__(self):
        self._buffer, self._calls_from, self._started = "", None, False

    def feed(self, text: str) -> tuple[str, list[ToolCall]]:
        self._buffer += text
        if self._calls_from is not None:
            return "", []
        if not self._started:
            stripped = self._buffer.lstrip()
            if not stripped:
                return "", []
            self._started = True
            if self.leading_json and stripped[0] in "{[":
                self._calls_from = 0
                return "", []
        at = self._buffer.find(self.marker) if self.marker else -1
        if at >= 0:
            content, self._buffer, self._calls_from = self._buffer[:at], self._buffer[at:], 0
            return content, []
        keep = _held_prefix(self._buffer, self.marker) if self.marker else 0
        content, self._buffer = self._buffer[:len(self._buffer) - keep], self._buffer[len(self._buffer) - keep:]
        return content, []

    def finish(self) -> tuple[str, list[ToolCall]]:
        rest, self._buffer = self._buffer, ""
        if self._calls_from is None:
            return rest, []
        calls = self._parse(rest.removeprefix(self.marker).strip()) if rest.strip() else []
        return ("", calls) if calls else (rest, [])

    def _parse(self, text: str) -> list[ToolCall]:
        raise NotImplementedError


class Llama3JsonReader(_WholeOutputReader):
    """Llama 3.x: `{"name": ..., "parameters": {...}}` as the whole answer (after
    `<|python_tag|>` when special tokens are kept), several separated by `;`."""

    marker = "<|python_tag|>"
    leading_json = True

    def _parse(self, text: str) -> list[ToolCall]:
        calls, decoder, i = [], json.JSONDecoder(), 0
        while i < len(text):
            try:
                obj, i = decoder.raw_decode(text, i)
            except ValueError:
                return []
            items = obj if isinstance(obj, list) else [obj]
            for item in items:
                call = _call(item, "parameters")
                if call is None:
                    return []
                calls.append(call)
            while i < len(text) and text[i] in " \t\r\n;":
                i += 1
        return calls


class MistralReader(_WholeOutputReader):
    """Mistral: `[TOOL_CALLS][{"name": ..., "arguments": {...}}, ...]` (the marker is a
    special token: this parser keeps special tokens in the text)."""

    marker = "[TOOL_CALLS]"
    keeps_special_tokens = True

    def _parse(self, text: str) -> list[ToolCall]:
        try:
            obj = json.loads(text)
        except ValueError:
            return []
        calls = [_call(item) for item in (obj if isinstance(obj, list) else [obj])]
        return [] if None in calls else calls


class RequiredReader(Reader):
    """tool_choice "required": the output is a JSON array of {"name", "parameters"} (the
    grammar engine made it so); each call is emitted as soon as its object closes."""

    def __init__(self):
        self._buffer, self._at = "", 0
        self._decoder = json.JSONDecoder()

    def feed(self, text: str) -> tuple[str, list[ToolCall]]:
        self._buffer += text
        calls = []
        while True:
            i = self._at
            while i < len(self._buffer) and self._buffer[i] in " \t\r\n[,":
                i += 1
            try:
                obj, end = self._decoder.raw_decode(self._buffer, i)
            except ValueError:
                break
            call = _call(obj, "parameters")
            if call is None:
                break
            calls.append(call)
            self._at = end
        return "", calls

    def finish(self) -> tuple[str, list[ToolCall]]:
        return "", []


class NamedReader(Reader):
    """A named tool_choice: the whole output is that function's arguments."""

    def __init__(self, name: str):
        self.name, self._buffer = name, ""

    def feed(self, text: str) -> tuple[str, list[ToolCall]]:
        self._buffer += text
        return "", []

    def finish(self) -> tuple[str, list[ToolCall]]:
        args = _arguments(self._buffer)
        return ("", [ToolCall(self.name, args)]) if args is not None else (self._buffer, [])


PARSERS: dict[str, type[Reader]] = {"hermes": HermesReader, "llama3_json": Llama3JsonReader,
                                    "mistral": MistralReader}


def check_parser(name: str | None) -> None:
    """InputError unless `name` is None (the template's format) or one of PARSERS."""
    if name is not None and name not in PARSERS:
        raise InputError(f"unknown tool-call parser {name!r}; the parsers are {', '.join(PARSERS)}")


def parser_for_template(template: str | None) -> str | None:
    """The parser a chat template's tool-call format needs; None when the template knows
    no tools (ember then writes them into a system prompt, in Hermes' format)."""
    template = template or ""
    if "<tool_call>" in template:
        return "hermes"
    if "[TOOL_CALLS]" in template:
        return "mistral"
    if "<|python_tag|>" in template or "ipython" in template:
        return "llama3_json"
    return "hermes" if "tools" in template else None


SYSTEM_PROMPT = (
    "You are a function calling AI model. You are provided with function signatures within <tools></tools> XML tags. "
    "You may call one or more functions to assist with the user query. Don't make assumptions about what values to "
    "plug into functions. Here are the available tools:\n<tools>\n{tools}\n</tools>\n"
    "For each function call, return a JSON object with the function name and arguments within <tool_call></tool_call> "
    "XML tags:\n<tool_call>\n{{\"name\": <function-name>, \"arguments\": <args-json-object>}}\n</tool_call>")


class ToolCalling:
    """One chat request's tools, its choice among them, and how its output is read."""

    def __init__(self, tools: list[dict], choice: str | dict, parallel: bool, parser: str | None,
                 template_knows_tools: bool):
        self.tools, self.choice, self.parallel = tools, choice, parallel
        self.parser, self.template_knows_tools = parser, template_knows_tools

    @classmethod
    def from_request(cls, tools: list | None, tool_choice: Any, parallel_tool_calls: bool | None, tokenizer,
                     parser: str | None = None) -> ToolCalling | None:
        """The request's tool calling (None without tools, or with tool_choice "none");
        an APIError (400) naming the field for a malformed tool or choice. `parser`: the
        server's (checked when it started: check_parser); None: the template's."""
        if tool_choice is None:
            tool_choice = "auto" if tools else "none"
        if isinstance(tool_choice, str):
            if tool_choice not in ("none", "auto", "required"):
                raise APIError(400, f"'tool_choice' must be none, auto, required or a named function, got "
                               f"{tool_choice!r}", param="tool_choice")
        elif not (isinstance(tool_choice, dict) and tool_choice.get("type") == "function"
                  and isinstance(tool_choice.get("function"), dict)
                  and isinstance(tool_choice["function"].get("name"), str)):
            raise APIError(400, "'tool_choice' must be none, auto, required or "
                           '{"type": "function", "function": {"name": ...}}', param="tool_choice")
        if not tools:
            if tool_choice not in ("none", "auto"):
                raise APIError(400, "'tool_choice' needs 'tools'", param="tool_choice")
            return None
        checked = [_check_tool(t, i) for i, t in enumerate(tools)]
        if isinstance(tool_choice, dict):
            name = tool_choice["function"]["name"]
            if name not in {t["function"]["name"] for t in checked}:
                raise APIError(400, f"'tool_choice' names the function {name!r}, which is not in 'tools'",
                               param="tool_choice.function.name")
        if tool_choice == "none":
            return None
        template = getattr(tokenizer, "chat_template", None)
        template_parser = parser_for_template(template if isinstance(template, str) else None)
        return cls(checked, tool_choice, parallel_tool_calls is not False, parser or template_parser or "hermes",
                   template_parser is not None)

    @property
    def keeps_special_tokens(self) -> bool:
        return self.choice == "auto" and getattr(PARSERS[self.parser], "keeps_special_tokens", False)

    # -- the prompt -------------------------------------------------------------------------
    def template_tools(self) -> list[dict] | None:
        """The `tools` argument of the chat template (None: they are in ember's system prompt)."""
        return self.tools if self.template_knows_tools else None

    def messages(self, conversation: list[dict]) -> list[dict]:
        """The conversation as the template gets it: with ember's system prompt of the tools
        where the template knows none, and past calls and results in Hermes' text there."""
        if self.template_knows_tools:
            return conversation
        tools = "\n".join(json.dumps(t, ensure_ascii=False) for t in self.tools)
        prompt = SYSTEM_PROMPT.format(tools=tools)
        out = [dict(m) for m in conversation]
        if out and out[0].get("role") == "system":
            out[0]["content"] = f"{out[0].get('content') or ''}\n\n{prompt}".lstrip()
        else:
            out.insert(0, {"role": "system", "content": prompt})
        return hermes_history(out)

    # -- the output -------------------------------------------------------------------------
    def constraint(self) -> StructuredOutputsParams | None:
        """What "required" and a named function constrain the output to (None for auto)."""
        if isinstance(self.choice, dict):
            name = self.choice["function"]["name"]
            tool = next(t for t in self.tools if t["function"]["name"] == name)
            return StructuredOutputsParams(json=_parameters(tool))
        if self.choice == "required":
            calls = [{"type": "object", "properties": {"name": {"type": "string", "enum": [t["function"]["name"]]},
                                                       "parameters": _parameters(t)},
                      "required": ["name", "parameters"], "additionalProperties": False} for t in self.tools]
            schema = {"type": "array", "minItems": 1, "items": calls[0] if len(calls) == 1 else {"anyOf": calls}}
            if not self.parallel:
                schema["maxItems"] = 1
            return StructuredOutputsParams(json=schema)
        return None

    def reader(self) -> Reader:
        if isinstance(self.choice, dict):
            return NamedReader(self.choice["function"]["name"])
        if self.choice == "required":
            return RequiredReader()
        return PARSERS[self.parser]()


def _parameters(tool: dict) -> dict:
    return tool["function"].get("parameters") or {"type": "object", "properties": {}}


def _check_tool(tool: Any, i: int) -> dict:
    where = f"tools.{i}"
    if not isinstance(tool, dict) or tool.get("type", "function") != "function":
        raise APIError(400, f"'{where}' must be {{\"type\": \"function\", \"function\": {{...}}}}", param=where)
    function = tool.get("function")
    if not isinstance(function, dict) or not isinstance(function.get("name"), str) or not function["name"]:
        raise APIError(400, f"'{where}.function.name' is required", param=f"{where}.function.name")
    parameters = function.get("parameters")
    if parameters is not None and not isinstance(parameters, dict):
        raise APIError(400, f"'{where}.function.parameters' must be a JSON schema object",
                       param=f"{where}.function.parameters")
    return {"type": "function", "function": function}


def hermes_history(conversation: list[dict]) -> list[dict]:
    """Past tool calls and results as Hermes text, for a template that knows no tools: an
    assistant's `tool_calls` become `<tool_call>` blocks in its content, a `tool` message a
    user turn holding `<tool_response>`."""
    out = []
    for m in conversation:
        if m.get("role") == "assistant" and m.get("tool_calls"):
            calls = [{"name": c["function"]["name"], "arguments": c["function"]["arguments"]} for c in m["tool_calls"]]
            blocks = [f"<tool_call>\n{json.dumps(c, ensure_ascii=False)}\n</tool_call>" for c in calls]
            text = "\n".join(([m["content"]] if m.get("content") else []) + blocks)
            out.append({"role": "assistant", "content": text})
        elif m.get("role") == "tool":
            response = f"<tool_response>\n{m.get('content') or ''}\n</tool_response>"
            if out and out[-1]["role"] == "user" and out[-1].get("_tool_responses"):
                out[-1]["content"] += "\n" + response
            else:
                out.append({"role": "user", "content": response, "_tool_responses": True})
        else:
            out.append(m)
    return [{k: v for k, v in m.items() if k != "_tool_responses"} for m in out]
