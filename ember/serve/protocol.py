"""The request bodies the server takes: OpenAI's field names, validated by pydantic.

Fields an OpenAI client may send that ember does not use (`user`, `metadata`, ...) are
ignored, not refused. A field of the wrong type or out of range is an `APIError` (HTTP
400) that names it; so is a feature ember does not have (`echo`, `suffix`, a
`logit_bias`), rather than being silently dropped. Past OpenAI's fields, vLLM's
sampling extras are accepted: `top_k`, `min_p`, `repetition_penalty`, `ignore_eos`,
`min_tokens`, `stop_token_ids`, `include_stop_str_in_output`, `skip_special_tokens`, and
its `structured_outputs` ({"json" | "regex" | "choice" | "grammar" | "json_object": ...};
the older `guided_json`, `guided_regex`, `guided_choice`, `guided_grammar` too), next to
OpenAI's `response_format` (`json_object`, `json_schema`).

Validation is strict: JSON `"0.5"` is not a number and `true` is not an integer.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ..errors import InputError
from ..llm import SamplingParams, StructuredOutputsParams

MAX_N = 128           # OpenAI's bound on n
MAX_LOGPROBS = 20     # on top_logprobs (chat) and logprobs (completions)
_INT64 = Field(ge=-(2**63), le=2**63 - 1 - MAX_N)  # a seed, plus n - 1 for the n samples


class APIError(Exception):
    """An error the client caused (or an overloaded server), as OpenAI reports it."""

    def __init__(self, status: int, message: str, *, param: str | None = None, code: str | None = None,
                 type: str = "invalid_request_error", headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.type = status, message, param, code, type
        self.headers = headers

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)


class StreamOptions(_Body):
    include_usage: bool | None = None


class _SamplingBody(_Body):
    """The fields both endpoints share. None means "not given" (clients send explicit nulls)."""

    model: str | None = None
    n: Annotated[int | None, Field(ge=1, le=MAX_N)] = None
    temperature: Annotated[float | None, Field(ge=0, le=2)] = None
    top_p: Annotated[float | None, Field(gt=0, le=1)] = None
    presence_penalty: Annotated[float | None, Field(ge=-2, le=2)] = None
    frequency_penalty: Annotated[float | None, Field(ge=-2, le=2)] = None
    seed: Annotated[int | None, _INT64] = None
    stop: str | list[str] | None = None
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    logit_bias: dict[str, float] | None = None
    # vLLM's extras
    top_k: Annotated[int | None, Field(ge=-1)] = None
    min_p: Annotated[float | None, Field(ge=0, le=1)] = None
    repetition_penalty: Annotated[float | None, Field(gt=0)] = None
    ignore_eos: bool | None = None
    min_tokens: Annotated[int | None, Field(ge=0)] = None
    stop_token_ids: list[int] | None = None
    include_stop_str_in_output: bool | None = None
    skip_special_tokens: bool | None = None
    structured_outputs: dict[str, Any] | None = None
    guided_json: dict[str, Any] | str | None = None
    guided_regex: str | None = None
    guided_choice: list[str] | None = None
    guided_grammar: str | None = None
    response_format: dict[str, Any] | None = None

    @property
    def include_usage(self) -> bool:
        return bool(self.stream and self.stream_options and self.stream_options.include_usage)

    def check_supported(self) -> None:
        if self.logit_bias:
            raise APIError(400, "logit_bias is not supported", param="logit_bias")
        if isinstance(self.stop, list) and not all(self.stop) or self.stop == "":
            raise APIError(400, "stop strings must not be empty", param="stop")

    def structured(self) -> tuple[StructuredOutputsParams | None, str | None]:
        """What the output is constrained to, and the field that said so (None, None: free)."""
        asked = []
        if self.response_format is not None:
            kind = self.response_format.get("type")
            if kind == "json_object":
                asked.append(("response_format", {"json_object": True}))
            elif kind == "json_schema":
                spec = self.response_format.get("json_schema")
                if not isinstance(spec, dict) or "schema" not in spec:
                    raise APIError(400, "'response_format.json_schema.schema' is required for type json_schema",
                                   param="response_format.json_schema.schema")
                asked.append(("response_format.json_schema.schema", {"json": spec["schema"]}))
            elif kind != "text":
                raise APIError(400, f"'response_format.type' must be text, json_object or json_schema, got {kind!r}",
                               param="response_format.type")
        if self.structured_outputs is not None:
            asked.append(("structured_outputs", {k: v for k, v in self.structured_outputs.items()
                                                 if k in StructuredOutputsParams.KINDS}))
        for name in ("json", "regex", "choice", "grammar"):
            if getattr(self, f"guided_{name}") is not None:
                asked.append((f"guided_{name}", {name: getattr(self, f"guided_{name}")}))
        if not asked:
            return None, None
        if len(asked) > 1:
            raise APIError(400, f"'{asked[1][0]}' and '{asked[0][0]}' both constrain the output: give one",
                           param=asked[1][0])
        param, fields = asked[0]
        try:
            return StructuredOutputsParams(**fields), param
        except (InputError, TypeError) as e:
            raise APIError(400, f"'{param}': {e}", param=param) from None

    def sampling_params(self, max_tokens: int | None, logprobs: int | None) -> SamplingParams:
        given = {name: getattr(self, name) for name in (
            "n", "temperature", "top_p", "presence_penalty", "frequency_penalty", "seed", "stop", "top_k",
            "min_p", "repetition_penalty", "ignore_eos", "min_tokens", "stop_token_ids",
            "include_stop_str_in_output", "skip_special_tokens")}
        given = {k: v for k, v in given.items() if v is not None}
        if max_tokens is not None and given.get("min_tokens", 0) > max_tokens:
            raise APIError(400, f"min_tokens ({given['min_tokens']}) must not exceed max_tokens ({max_tokens})",
                           param="min_tokens")
        return SamplingParams(**given, max_tokens=max_tokens, logprobs=logprobs)


class CompletionRequest(_SamplingBody):
    prompt: str | list[str] | list[int] | list[list[int]]
    max_tokens: Annotated[int | None, Field(ge=1)] = None
    logprobs: Annotated[int | None, Field(ge=0, le=MAX_LOGPROBS)] = None
    echo: bool | None = None
    best_of: int | None = None
    suffix: str | None = None

    def check_supported(self) -> None:
        super().check_supported()
        if self.echo:
            raise APIError(400, "echo is not supported", param="echo")
        if self.suffix:
            raise APIError(400, "suffix is not supported", param="suffix")
        if self.best_of is not None and self.best_of != (self.n or 1):
            raise APIError(400, "best_of other than n is not supported", param="best_of")

    def prompts(self) -> list[str | list[int]]:
        """The prompts, each a text or token ids (OpenAI allows one or a list of either)."""
        prompt = self.prompt
        if isinstance(prompt, str) or (prompt and isinstance(prompt[0], int)):
            return [prompt]
        if not prompt:
            raise APIError(400, "prompt must not be empty", param="prompt")
        return list(prompt)


class ContentPart(_Body):
    type: str
    text: str | None = None


class FunctionCall(_Body):
    name: str
    arguments: str


class MessageToolCall(_Body):
    id: str | None = None
    type: str = "function"
    function: FunctionCall


class ChatMessage(_Body):
    role: str
    content: str | list[ContentPart] | None = None
    tool_calls: list[MessageToolCall] | None = None
    tool_call_id: str | None = None
    name: str | None = None

    def text(self, index: int) -> str:
        if self.content is None or isinstance(self.content, str):
            return self.content or ""
        for part in self.content:
            if part.type != "text" or part.text is None:
                raise APIError(400, f"'messages.{index}.content': content parts of type {part.type!r} are not "
                               "supported (only text)",
                               param=f"messages.{index}.content")
        return "".join(part.text for part in self.content)


class ChatCompletionRequest(_SamplingBody):
    messages: Annotated[list[ChatMessage], Field(min_length=1)]
    max_tokens: Annotated[int | None, Field(ge=1)] = None
    max_completion_tokens: Annotated[int | None, Field(ge=1)] = None
    logprobs: bool | None = None
    top_logprobs: Annotated[int | None, Field(ge=0, le=MAX_LOGPROBS)] = None
    tools: list[Any] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None

    def check_supported(self) -> None:
        super().check_supported()
        if self.top_logprobs is not None and not self.logprobs:
            raise APIError(400, "top_logprobs needs logprobs: true", param="top_logprobs")

    def conversation(self) -> list[dict[str, Any]]:
        """The messages as a chat template takes them: text content; an assistant's
        tool_calls with their arguments as objects (templates write them out as JSON)."""
        out = []
        for i, m in enumerate(self.messages):
            message: dict[str, Any] = {"role": m.role, "content": m.text(i)}
            if m.tool_calls:
                message["tool_calls"] = [{"id": c.id, "type": c.type, "function": {
                    "name": c.function.name, "arguments": _json_arguments(c.function.arguments, i, j)}}
                    for j, c in enumerate(m.tool_calls)]
            for name in ("tool_call_id", "name"):
                if getattr(m, name) is not None:
                    message[name] = getattr(m, name)
            out.append(message)
        return out

    @property
    def max_tokens_param(self) -> str:
        return "max_completion_tokens" if self.max_completion_tokens is not None else "max_tokens"


class ResponsesRequest(_Body):
    """OpenAI's /v1/responses body, as far as ember serves it: `input` (text, or message,
    function_call and function_call_output items), `instructions`, function `tools`,
    `tool_choice`, `parallel_tool_calls`, `text.format` (text, json_object, json_schema),
    `max_output_tokens`, sampling fields and `stream`. It runs as the chat request
    `as_chat` makes of it."""

    model: str | None = None
    input: str | list[dict[str, Any]]
    instructions: str | None = None
    tools: list[Any] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    text: dict[str, Any] | None = None
    max_output_tokens: Annotated[int | None, Field(ge=1)] = None
    temperature: Annotated[float | None, Field(ge=0, le=2)] = None
    top_p: Annotated[float | None, Field(gt=0, le=1)] = None
    seed: Annotated[int | None, _INT64] = None
    stream: bool | None = None
    previous_response_id: str | None = None

    def as_chat(self) -> ChatCompletionRequest:
        if self.previous_response_id is not None:
            raise APIError(400, "'previous_response_id' is not supported: ember keeps no responses; send the "
                           "conversation in 'input'", param="previous_response_id")
        chat: dict[str, Any] = {"messages": self._messages()}
        for name in ("model", "parallel_tool_calls", "temperature", "top_p", "seed", "stream"):
            if getattr(self, name) is not None:
                chat[name] = getattr(self, name)
        if self.max_output_tokens is not None:
            chat["max_completion_tokens"] = self.max_output_tokens
        if self.tools is not None:
            chat["tools"] = [self._tool(t, i) for i, t in enumerate(self.tools)]
        if isinstance(self.tool_choice, dict) and self.tool_choice.get("type") == "function":
            chat["tool_choice"] = {"type": "function", "function": {"name": self.tool_choice.get("name")}}
        elif self.tool_choice is not None:
            chat["tool_choice"] = self.tool_choice
        fmt = (self.text or {}).get("format")
        if fmt is not None:
            if not isinstance(fmt, dict) or fmt.get("type") not in ("text", "json_object", "json_schema"):
                raise APIError(400, "'text.format.type' must be text, json_object or json_schema",
                               param="text.format.type")
            if fmt["type"] == "json_schema":
                if "schema" not in fmt:
                    raise APIError(400, "'text.format.schema' is required for type json_schema",
                                   param="text.format.schema")
                chat["response_format"] = {"type": "json_schema", "json_schema": {
                    "name": fmt.get("name", "output"), "schema": fmt["schema"], "strict": fmt.get("strict")}}
            else:
                chat["response_format"] = {"type": fmt["type"]}
        try:
            return ChatCompletionRequest.model_validate(chat)
        except ValidationError as e:
            raise _api_error(e.errors()[0]) from None

    def _messages(self) -> list[dict[str, Any]]:
        messages: list[dict[str, Any]] = []
        if self.instructions:
            messages.append({"role": "system", "content": self.instructions})
        if isinstance(self.input, str):
            return messages + [{"role": "user", "content": self.input}]
        for i, item in enumerate(self.input):
            kind = item.get("type", "message")
            if kind == "message" and "role" in item:
                role = {"developer": "system"}.get(item["role"], item["role"])
                messages.append({"role": role, "content": _input_text(item.get("content"), i)})
            elif kind == "function_call":
                call = {"id": item.get("call_id"), "type": "function",
                        "function": {"name": item.get("name"), "arguments": item.get("arguments", "{}")}}
                if messages and messages[-1]["role"] == "assistant" and messages[-1].get("tool_calls"):
                    messages[-1]["tool_calls"].append(call)
                else:
                    messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
            elif kind == "function_call_output":
                output = item.get("output")
                messages.append({"role": "tool", "tool_call_id": item.get("call_id"),
                                 "content": output if isinstance(output, str) else json.dumps(output)})
            else:
                raise APIError(400, f"'input.{i}': items of type {kind!r} are not supported (message, function_call, "
                               "function_call_output)", param=f"input.{i}")
        return messages

    @staticmethod
    def _tool(tool: Any, i: int) -> dict[str, Any]:
        if not isinstance(tool, dict) or tool.get("type") != "function":
            kind = tool.get("type") if isinstance(tool, dict) else None
            raise APIError(400, f"'tools.{i}': only function tools are supported, got {kind!r}", param=f"tools.{i}")
        function = {k: tool[k] for k in ("name", "description", "parameters") if k in tool}
        return {"type": "function", "function": function}


def _input_text(content: Any, i: int) -> str:
    if content is None or isinstance(content, str):
        return content or ""
    if isinstance(content, list) and all(isinstance(p, dict) and p.get("type") in ("input_text", "output_text", "text")
                                         and isinstance(p.get("text"), str) for p in content):
        return "".join(p["text"] for p in content)
    raise APIError(400, f"'input.{i}.content' must be text or text parts (input_text, output_text)",
                   param=f"input.{i}.content")


def _json_arguments(text: str, i: int, j: int) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        param = f"messages.{i}.tool_calls.{j}.function.arguments"
        raise APIError(400, f"'{param}' is not valid JSON", param=param) from None


# -- turning pydantic's errors into one that names the field --------------------------------
MAX_EMBEDDING_INPUTS = 2048  # OpenAI's bound on /v1/embeddings' inputs in one request
MAX_RERANK_DOCUMENTS = 1000  # Cohere's


class EmbeddingRequest(_Body):
    """/v1/embeddings (OpenAI's): `input` a string, strings, token ids or lists of them;
    `encoding_format` float or base64; `dimensions` (Matryoshka: the first ones, renormalized);
    vLLM's `truncate_prompt_tokens` (-1: the model's limit) truncates instead of refusing."""

    model: str | None = None
    input: str | list[str] | list[int] | list[list[int]]
    encoding_format: Literal["float", "base64"] | None = None
    dimensions: Annotated[int | None, Field(ge=1)] = None
    truncate_prompt_tokens: Annotated[int | None, Field(ge=-1)] = None

    def inputs(self) -> list[str | list[int]]:
        given = self.input
        items = [given] if isinstance(given, str) or (given and isinstance(given[0], int)) else list(given)
        if not items:
            raise APIError(400, "'input' must not be empty", param="input")
        if len(items) > MAX_EMBEDDING_INPUTS:
            raise APIError(400, f"'input' has {len(items)} items, more than the {MAX_EMBEDDING_INPUTS} one request "
                           "may hold", param="input")
        for i, item in enumerate(items):
            if not item:
                where = "input" if isinstance(given, str) else f"input.{i}"
                raise APIError(400, f"'{where}' is empty: an embedding needs at least one token", param="input")
        return items


class RerankDocument(_Body):
    text: str


class RerankRequest(_Body):
    """/v1/rerank, /rerank, /v2/rerank (Cohere's and Jina's shape): the `documents` scored
    against `query`, best first; `top_n` of them; `return_documents` (default true) echoes
    each one's text."""

    model: str | None = None
    query: str
    documents: list[str | RerankDocument]
    top_n: Annotated[int | None, Field(ge=1)] = None
    return_documents: bool | None = None
    truncate_prompt_tokens: Annotated[int | None, Field(ge=-1)] = None

    def texts(self) -> list[str]:
        if not self.query:
            raise APIError(400, "'query' is empty", param="query")
        if not self.documents:
            raise APIError(400, "'documents' must not be empty", param="documents")
        if len(self.documents) > MAX_RERANK_DOCUMENTS:
            raise APIError(400, f"'documents' has {len(self.documents)} items, more than the {MAX_RERANK_DOCUMENTS} "
                           "one request may hold", param="documents")
        texts = [d if isinstance(d, str) else d.text for d in self.documents]
        empty = next((i for i, t in enumerate(texts) if not t), None)
        if empty is not None:
            raise APIError(400, f"'documents.{empty}' is empty", param=f"documents.{empty}")
        return texts


class TokenizeRequest(_Body):
    """/tokenize (vLLM's): a `prompt`, or chat `messages` through the chat template."""

    model: str | None = None
    prompt: str | None = None
    messages: Annotated[list[ChatMessage] | None, Field(min_length=1)] = None
    add_special_tokens: bool = True
    add_generation_prompt: bool = True
    return_token_strs: bool = False


class DetokenizeRequest(_Body):
    model: str | None = None
    tokens: list[int]


_EXPECTED = {
    "input": "a string, a list of strings, a list of token ids or a list of lists of token ids",
    "documents": "a list of strings or of {\"text\": string} objects",
    "prompt": "a string, a list of strings, a list of token ids or a list of lists of token ids",
    "stop": "a string or a list of strings",
    "content": "a string or a list of content parts",
}


def parse(model: type[_Body], body: bytes) -> _Body:
    """The request body as `model`; an APIError (400) naming the first bad field."""
    try:
        return model.model_validate_json(body)
    except ValidationError as e:
        raise _api_error(e.errors()[0]) from None


def _api_error(error: dict) -> APIError:
    kind, loc = error["type"], error["loc"]
    if kind == "json_invalid":
        return APIError(400, f"the request body is not valid JSON: {error['msg'].removeprefix('Invalid JSON: ')}")
    if not loc:
        return APIError(400, "the request body must be a JSON object")
    # a union's errors carry the member they tried ("str", "list[int]", "ContentPart"): not a field
    fields = [str(p) for p in loc if isinstance(p, int) or ("[" not in p and p not in ("str", "int", "float", "bool")
                                                            and not p[:1].isupper())]
    param = ".".join(fields)
    last = next((f for f in reversed(fields) if not f.isdigit()), param)
    if kind == "missing":
        return APIError(400, f"'{param}' is required", param=param)
    if last in _EXPECTED and kind.endswith("_type"):
        return APIError(400, f"'{param}' must be {_EXPECTED[last]}", param=param)
    given = error.get("input")
    shown = "" if isinstance(given, (dict, list)) else f", got {given!r}"
    return APIError(400, f"'{param}': {error['msg'][0].lower()}{error['msg'][1:]}{shown}", param=param)
