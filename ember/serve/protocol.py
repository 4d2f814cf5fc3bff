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
from typing import Annotated, Any

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


def _json_arguments(text: str, i: int, j: int) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        param = f"messages.{i}.tool_calls.{j}.function.arguments"
        raise APIError(400, f"'{param}' is not valid JSON", param=param) from None


# -- turning pydantic's errors into one that names the field --------------------------------
_EXPECTED = {
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
