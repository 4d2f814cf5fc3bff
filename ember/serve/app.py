"""The OpenAI-compatible HTTP API over an `AsyncLLM`.

    app = create_app(ember.AsyncLLM(), "SmolLM2-135M-Instruct", api_key=None, max_queue=256,
                     default_max_tokens=1024)
    uvicorn.run(app)                     # or `ember serve`, which also stops gracefully
    await end_requests(app, "...")       # end every open request with an error (a server stopping)

Routes: `GET /v1/models`, `POST /v1/completions`, `POST /v1/chat/completions` (both
streamed as server-sent events with `"stream": true`; chat with tools, protocol.py and
tool_calls.py), `POST /v1/responses` (OpenAI's Responses API, run as the chat request it
amounts to: responses_api.py), `GET /health`, `GET /metrics`.
With `api_key`, the /v1 routes need `Authorization: Bearer <api_key>`.

Notes:

1. Every error is OpenAI's body, `{"error": {"message", "type", "param", "code"}}`: 400
   for a bad request (naming the field in `param`), 401 for a wrong API key, 404 for an
   unknown model or route, 503 when the server is full or stopping, 500 if the model fails.
2. The server checks what it can before it queues anything (the body, the model, each
   prompt's length against max_model_len and max_tokens), so a bad request is a 400
   even when streamed; a model failure during a stream is an `error` event, then
   `[DONE]`.
3. The queue is bounded: the server admits at most `max_num_seqs + max_queue` sequences
   (a request counts n for each of its prompts) and answers 503 at once past that. A
   request is always admitted when nothing else is, however large.
4. A client that goes away aborts its requests (streamed or not): the engine stops them
   and frees their KV blocks at its next step.
5. A chat request without max_tokens generates at most `default_max_tokens` (or up to
   max_model_len, if less room is left): with no bound, a sampled answer that never says
   EOS runs to the context limit (8,155 tokens, 13 minutes, for the ready banner's old
   curl line). /v1/completions keeps OpenAI's default of 16.
6. `end_requests` (the server stopping after its shutdown timeout) ends every open
   request as a model failure would, with OpenAI's error: a 503 body, or for a stream a
   final `error` event, then `[DONE]`; new requests get a 503 from then on.
7. Each prompt is one engine request (`<response id>-<i>`); a response's choices are
   numbered prompt by prompt: choice `i * n + j` is sample j of prompt i.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import secrets
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import aclosing
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.exceptions import HTTPException as StarletteHTTPException

from .. import __version__
from ..errors import EmberError, InputError
from ..llm import AsyncLLM, RequestOutput, SamplingParams, _chat_prompt
from .metrics import ServerMetrics
from . import responses_api
from ..embeddings import AsyncEncoder
from .embeddings_api import EncoderService
from .protocol import (APIError, ChatCompletionRequest, CompletionRequest, DetokenizeRequest, EmbeddingRequest,
                       RerankRequest, ResponsesRequest, TokenizeRequest, parse)
from .responses import ChatFormat, CompletionFormat, Cursor, TokenText, usage
from .tool_calls import ToolCalling, check_parser, hermes_history, parser_for_template


DEFAULT_MAX_TOKENS = 1024


def create_app(llm: AsyncLLM | None, model_name: str | None, *, api_key: str | None = None, max_queue: int = 256,
               default_max_tokens: int | None = DEFAULT_MAX_TOKENS, tool_call_parser: str | None = None,
               encoder: AsyncEncoder | None = None, encoder_name: str | None = None) -> FastAPI:
    """An ASGI app serving `llm` as the model `model_name`, and `encoder` (an AsyncEncoder,
    embeddings_api.py's routes) as `encoder_name` (default: its folder's name); either may be
    None, not both. The caller owns `llm` and `encoder` (and shuts them down); several apps
    may share them. `default_max_tokens` bounds a chat request that sets no max_tokens
    (None: up to max_model_len, OpenAI's rule). `tool_call_parser` (one of
    tool_calls.PARSERS; None: the one the chat template's format needs) reads tool calls
    out of answers to requests with tools."""
    check_parser(tool_call_parser)
    if llm is None and encoder is None:
        raise InputError("create_app serves an LLM, an encoder or both: it was given neither")
    if max_queue < 0:
        raise InputError(f"max_queue must be >= 0, got {max_queue}")
    pending: list[Callable[[], int]] = []
    metrics = ServerMetrics(llm, lambda: sum(p() for p in pending))
    server = None
    if llm is not None:
        server = _Server(llm, model_name, api_key, max_queue, default_max_tokens, tool_call_parser, metrics)
        pending.append(lambda: server.num_pending)
    encoders = None
    if encoder is not None:
        encoders = EncoderService(encoder, encoder_name or encoder.encoder.name, max_queue + 32, metrics)
        if server is not None and encoders.name == server.model_name:
            raise InputError(f"the LLM and the encoder are both named {encoders.name!r}: give them different names")
    app = FastAPI(title="ember", version=__version__, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.server = server

    def authorize(request: Request) -> None:
        _authorize(request, api_key)

    def generative(request: Request) -> _Server:
        authorize(request)
        if server is None:
            raise APIError(404, f"{request.url.path} needs a generative model, and this server serves only the "
                           f"encoder {encoders.name!r} (`ember serve LLM --embedding-model ENCODER` serves both)",
                           code="model_not_found")
        return server

    def encoding(request: Request, model: str | None) -> EncoderService:
        """The encoder routes' service (their callers have authorized the request)."""
        if encoders is None:
            raise APIError(404, f"{request.url.path} needs an embedding model or a cross-encoder, and this server "
                           f"serves only {server.model_name!r}: start it with --embedding-model ENCODER",
                           code="model_not_found")
        encoders.check_model(model, server.model_name if server is not None else None)
        return encoders

    def cards() -> list[dict[str, Any]]:
        return [c.model_card() for c in (server, encoders) if c is not None]

    @app.exception_handler(APIError)
    async def api_error(request: Request, e: APIError):
        return JSONResponse(e.body(), e.status, headers=e.headers)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, e: StarletteHTTPException):
        code = {404: "not_found", 405: "method_not_allowed"}.get(e.status_code)
        message = f"{request.method} {request.url.path}: {e.detail}"
        return JSONResponse(APIError(e.status_code, message, code=code).body(), e.status_code)

    @app.exception_handler(Exception)
    async def internal_error(request: Request, e: Exception):
        body = APIError(500, f"internal error: {type(e).__name__}: {e}", type="server_error").body()
        return JSONResponse(body, 500)

    @app.get("/health")
    async def health():
        if llm is not None and not llm.is_running:
            return JSONResponse({"status": "the engine has stopped"}, 503)
        if encoder is not None and not encoder.is_running:
            return JSONResponse({"status": "the encoder has stopped"}, 503)
        return {"status": "ok"}

    @app.get("/metrics")
    async def render_metrics():
        return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/models")
    async def models(request: Request):
        authorize(request)
        return {"object": "list", "data": cards()}

    @app.get("/v1/models/{model:path}")
    async def model(request: Request, model: str):
        authorize(request)
        card = next((c for c in cards() if c["id"] == model), None)
        if card is None:
            served = ", ".join(repr(c["id"]) for c in cards())
            raise APIError(404, f"the model {model!r} does not exist: this server serves {served}",
                           param="model", code="model_not_found")
        return card

    @app.post("/v1/completions")
    async def completions(request: Request):
        return await generative(request).completions(request)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        return await generative(request).chat_completions(request)

    @app.post("/v1/responses")
    async def responses(request: Request):
        return await generative(request).responses(request)

    @app.post("/v1/embeddings")
    async def embeddings(request: Request):
        authorize(request)
        body = parse(EmbeddingRequest, await request.body())
        return await encoding(request, body.model).embeddings(body)

    async def rerank(request: Request):
        authorize(request)
        body = parse(RerankRequest, await request.body())
        return await encoding(request, body.model).rerank(body)

    for path in ("/v1/rerank", "/rerank", "/v2/rerank"):  # (vLLM's, Jina's and Cohere's paths)
        app.post(path)(rerank)

    def names_encoder(request: Request, model: str | None) -> bool:
        """Whether a tokenizer route's `model` is the encoder (or the encoder is all there is)."""
        if encoders is None or (server is not None and model != encoders.name):
            return False
        encoding(request, model)
        return True

    @app.post("/tokenize")
    async def tokenize(request: Request):
        authorize(request)
        body = parse(TokenizeRequest, await request.body())
        if names_encoder(request, body.model):
            return await asyncio.to_thread(_tokenize_encoder, encoders, body)
        return await generative(request).tokenize(body)

    @app.post("/detokenize")
    async def detokenize(request: Request):
        authorize(request)
        body = parse(DetokenizeRequest, await request.body())
        if names_encoder(request, body.model):
            tokenizer, vocab = encoders.model.tokenizer, encoders.model.vocab_size
        else:
            target = generative(request)
            target.check_model(body.model)
            tokenizer, vocab = target.llm.tokenizer, target.vocab_size
        bad = next((t for t in body.tokens if not 0 <= t < vocab), None)
        if bad is not None:
            raise APIError(400, f"token id {bad} in 'tokens' is outside the vocabulary [0, {vocab})", param="tokens")
        return {"prompt": tokenizer.decode(body.tokens)}

    return app


def _tokenize_encoder(encoders: EncoderService, body: TokenizeRequest) -> dict[str, Any]:
    """/tokenize with the encoder's tokenizer: its special tokens added unless the request says not."""
    if body.prompt is None or body.messages is not None:
        raise APIError(400, f"the encoder {encoders.name!r} tokenizes a 'prompt' (it has no chat template)",
                       param="prompt")
    encoding = encoders.model.tokenizer.encode(body.prompt, add_special_tokens=body.add_special_tokens)
    out = {"count": len(encoding.ids), "max_model_len": encoders.model.max_seq_length, "tokens": encoding.ids}
    if body.return_token_strs:
        out["token_strs"] = encoding.tokens
    return out


async def end_requests(app: FastAPI, message: str) -> int:
    """End every request `app` has open with OpenAI's error (503, `server_shutting_down`:
    a JSON body, or a stream's last `error` event then `[DONE]`) and refuse new ones with
    it; returns how many engine requests were ended (an encoder's requests finish on their own)."""
    server = app.state.server
    return 0 if server is None else await server.end_requests(message)


def _authorize(request: Request, api_key: str | None) -> None:
    if api_key is None:
        return
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not secrets.compare_digest(token.strip().encode(), api_key.encode()):
        raise APIError(401, "invalid or missing API key: send the header 'Authorization: Bearer <key>'",
                       code="invalid_api_key")


class ServerStopping(EmberError):
    """The server ended a request because it is stopping (raised into its output stream)."""


class _Server:
    def __init__(self, llm: AsyncLLM, model_name: str, api_key: str | None, max_queue: int,
                 default_max_tokens: int | None, tool_call_parser: str | None, metrics: ServerMetrics):
        if default_max_tokens is not None and default_max_tokens < 1:
            raise InputError(f"default_max_tokens must be at least 1, got {default_max_tokens}")
        self.llm, self.model_name, self.api_key = llm, model_name, api_key
        self.default_max_tokens, self.tool_call_parser = default_max_tokens, tool_call_parser
        self.in_flight: set[str] = set()      # engine request ids, for end_requests
        self.stopping: str | None = None      # why, once end_requests has run
        engine = llm.engine  # its fixed facts only; all traffic goes through llm
        self.max_model_len, self.vocab_size = engine.max_model_len, engine.vocab_size
        self.max_pending = engine.options.max_num_seqs + max_queue
        self.num_pending = 0
        self.created = int(time.time())
        self.token_text = TokenText(llm.tokenizer)
        self.metrics = metrics

    # -- checks -----------------------------------------------------------------------------
    def authorize(self, request: Request) -> None:
        _authorize(request, self.api_key)

    def check_model(self, model: str | None) -> None:
        if model is not None and model != self.model_name:
            raise APIError(404, f"the model {model!r} does not exist: this server serves {self.model_name!r}",
                           param="model", code="model_not_found")

    def model_card(self) -> dict[str, Any]:
        return {"id": self.model_name, "object": "model", "created": self.created, "owned_by": "ember",
                "max_model_len": self.max_model_len}

    def prompt_ids(self, prompt: str | list[int], param: str) -> list[int]:
        if isinstance(prompt, str):
            ids = self.llm.tokenizer.encode(prompt)
        else:
            ids = list(prompt)
            bad = next((t for t in ids if not 0 <= t < self.vocab_size), None)
            if bad is not None:
                raise APIError(400, f"token id {bad} in '{param}' is outside the vocabulary [0, {self.vocab_size})",
                               param=param)
        if not ids:
            raise APIError(400, f"'{param}' has no tokens", param=param)
        return ids

    def check_length(self, ids: list[int], max_tokens: int | None, prompt_param: str, max_param: str) -> None:
        n, limit = len(ids), self.max_model_len
        if n >= limit:
            raise APIError(400, f"the prompt ('{prompt_param}') has {n} tokens, which leaves no room for output in "
                           f"this model's max_model_len of {limit}", param=prompt_param, code="context_length_exceeded")
        if max_tokens is not None and n + max_tokens > limit:
            raise APIError(400, f"'{max_param}' is too large: the prompt has {n} tokens and max_model_len is "
                           f"{limit}, so at most {limit - n} can be generated, not {max_tokens}",
                           param=max_param, code="context_length_exceeded")

    def admit(self, cost: int) -> Callable[[], None]:
        """Take `cost` sequences' room in the queue; returns the function that gives it back."""
        if not self.llm.is_running:
            raise APIError(503, "the engine has stopped", type="server_error", code="engine_stopped")
        if self.stopping is not None:
            raise _stopping_error(ServerStopping(self.stopping))
        if self.num_pending and self.num_pending + cost > self.max_pending:
            self.metrics.rejected.inc()
            raise APIError(503, f"the server is full ({self.num_pending} sequences in flight, at most "
                           f"{self.max_pending}): retry later", type="server_error", code="server_overloaded",
                           headers={"Retry-After": "1"})
        self.num_pending += cost
        released = False

        def release() -> None:
            nonlocal released
            if not released:
                released = True
                self.num_pending -= cost

        return release

    # -- the endpoints ----------------------------------------------------------------------
    async def tokenize(self, body) -> dict[str, Any]:
        """/tokenize (vLLM's): a prompt's tokens, or chat messages' through the chat template."""
        self.check_model(body.model)
        tokenizer = self.llm.tokenizer
        if (body.prompt is None) == (body.messages is None):
            raise APIError(400, "give one of 'prompt' and 'messages'", param="prompt")
        if body.prompt is not None:
            ids = tokenizer.encode(body.prompt, add_special_tokens=body.add_special_tokens)
        else:
            conversation = ChatCompletionRequest(messages=body.messages).conversation()
            try:
                text = tokenizer.apply_chat_template(conversation, add_generation_prompt=body.add_generation_prompt,
                                                     tokenize=False)
            except Exception as e:  # (no template, or one that refuses these messages)
                raise APIError(400, f"the chat template failed on these messages: {e}", param="messages") from None
            ids = tokenizer.encode(text, add_special_tokens=False)
        out = {"count": len(ids), "max_model_len": self.max_model_len, "tokens": ids}
        if body.return_token_strs:
            out["token_strs"] = tokenizer.convert_ids_to_tokens(ids)
        return out

    async def completions(self, request: Request):
        self.authorize(request)
        body = parse(CompletionRequest, await request.body())
        body.check_supported()
        self.check_model(body.model)
        prompts = [self.prompt_ids(p, "prompt") for p in body.prompts()]
        max_tokens = 16 if body.max_tokens is None else body.max_tokens   # OpenAI's default
        for ids in prompts:
            self.check_length(ids, max_tokens, "prompt", "max_tokens")
        params = _sampling_params(body, max_tokens, body.logprobs)
        await self.constrain(params, *body.structured())
        fmt = CompletionFormat(self.token_text, body.logprobs)
        return await self._respond(request, fmt, prompts, params, bool(body.stream), body.include_usage)

    async def chat_completions(self, request: Request):
        self.authorize(request)
        body = parse(ChatCompletionRequest, await request.body())
        ids, params, tools, num_logprobs = await self._chat(body)
        fmt = ChatFormat(self.token_text, num_logprobs, tools)
        return await self._respond(request, fmt, [ids], params, bool(body.stream), body.include_usage)

    async def responses(self, request: Request):
        """/v1/responses: run as the chat request it amounts to; errors name its own fields."""
        self.authorize(request)
        body = parse(ResponsesRequest, await request.body())
        try:
            chat = body.as_chat()
            ids, params, tools, _ = await self._chat(chat)
        except APIError as e:
            raise responses_api.renamed(e) from None
        release = self.admit(params.n)
        fmt = responses_api.ResponseFormat(body, self.model_name, tools, len(ids))
        outputs = self._outputs(fmt.id, [ids], params)
        if body.stream:
            return _EventStream(self._response_events(fmt, outputs), on_close=release)
        finals = await self._finals(request, outputs, 1, release)
        if finals is None:  # the client went away: its requests are aborted; nobody reads this
            return Response(status_code=499)
        return JSONResponse(fmt.response(finals[0]))

    async def _response_events(self, fmt, outputs) -> AsyncIterator[str]:
        try:
            for event in fmt.opening():
                yield _named_event(event)
            async with aclosing(outputs):
                async for _, out in outputs:
                    for event in fmt.advance(out):
                        yield _named_event(event)
        except EmberError as e:
            yield _named_event(fmt.failed(self._api_error(e)))

    async def _chat(self, body: ChatCompletionRequest):
        """A chat request's prompt ids, sampling params (its grammar compiled), tool calling
        and logprobs count; an APIError for what is wrong with it."""
        body.check_supported()
        self.check_model(body.model)
        conversation = body.conversation()
        tokenizer = self.llm.tokenizer
        tools = ToolCalling.from_request(body.tools, body.tool_choice, body.parallel_tool_calls, tokenizer,
                                         self.tool_call_parser)
        if tools is not None:
            conversation = tools.messages(conversation)
        elif parser_for_template(getattr(tokenizer, "chat_template", None)) is None:
            conversation = hermes_history(conversation)   # past tool calls, in the text ember's prompt taught
        try:
            ids = _chat_prompt(tokenizer, conversation, tools=tools and tools.template_tools())["prompt_token_ids"]
        except InputError as e:
            raise APIError(400, str(e), param="messages") from None
        except Exception as e:  # the template itself refused (a role it does not know, ...)
            raise APIError(400, f"the chat template failed on these messages: {e}", param="messages") from None
        if not ids:
            raise APIError(400, "'messages' make an empty prompt", param="messages")
        max_tokens = body.max_completion_tokens if body.max_completion_tokens is not None else body.max_tokens
        self.check_length(ids, max_tokens, "messages", body.max_tokens_param)
        if max_tokens is None and self.default_max_tokens is not None:
            max_tokens = min(self.default_max_tokens, self.max_model_len - len(ids))
        num_logprobs = (body.top_logprobs or 0) if body.logprobs else None
        params = _sampling_params(body, max_tokens, num_logprobs)
        structured, param = body.structured()
        forced = tools.constraint() if tools is not None else None
        if forced is not None:
            if structured is not None:
                raise APIError(400, f"'tool_choice' {tools.choice!r} and '{param}' both constrain the output: give one",
                               param=param)
            structured, param = forced, "tools"
        if tools is not None and tools.keeps_special_tokens:
            params = dataclasses.replace(params, skip_special_tokens=False)
        await self.constrain(params, structured, param)
        return ids, params, tools, num_logprobs

    async def constrain(self, params: SamplingParams, structured, param: str | None) -> None:
        """Put `structured` (from the field `param`) on `params`, its grammar compiled now
        (off the event loop; cached), so that one the engine cannot take is a 400 naming it."""
        if structured is None:
            return
        params.structured_outputs = structured
        try:
            await self.llm.prepare(params)
        except InputError as e:
            raise APIError(400, f"'{param}': {e}", param=param) from None

    async def _respond(self, request: Request, fmt, prompts: list[list[int]], params: SamplingParams,
                       stream: bool, include_usage: bool):
        release = self.admit(len(prompts) * params.n)
        response_id = f"{fmt.id_prefix}{uuid.uuid4().hex}"
        head = {"id": response_id, "object": fmt.chunk_object if stream else fmt.object,
                "created": int(time.time()), "model": self.model_name}
        outputs = self._outputs(response_id, prompts, params)
        if stream:
            events = self._events(fmt, head, outputs, len(prompts), params.n, include_usage)
            return _EventStream(events, on_close=release)
        finals = await self._finals(request, outputs, len(prompts), release)
        if finals is None:  # the client went away: its requests are aborted; nobody reads this
            return Response(status_code=499)
        choices = [fmt.choice(i * params.n + c.index, c) for i, out in enumerate(finals) for c in out.outputs]
        return JSONResponse({**head, "choices": choices, "usage": usage(finals)})

    async def _finals(self, request: Request, outputs, num_prompts: int, release: Callable[[], None]
                      ) -> list[RequestOutput] | None:
        """Each prompt's final output (None if the client went away first); an APIError if
        the requests failed. The request's room in the queue is given back either way."""
        try:
            return await _unless_disconnected(request, _last_outputs(outputs, num_prompts))
        except EmberError as e:
            raise self._api_error(e) from None
        finally:
            release()

    def _api_error(self, e: EmberError) -> APIError:
        """OpenAI's error for a request that ended in `e`: 503 when the server is stopping,
        400 for a bad request, else the model's failure (_model_error)."""
        if isinstance(e, ServerStopping):
            return _stopping_error(e)
        if isinstance(e, InputError):
            return APIError(400, str(e))
        return self._model_error(e)

    def _model_error(self, e: EmberError) -> APIError:
        """A request the model failed: 500, or 503 where the engine has stopped (a
        tensor-parallel worker died or hung: the server is going down)."""
        if not self.llm.is_running:
            return APIError(503, str(e), type="server_error", code="engine_stopped")
        return APIError(500, str(e), type="server_error")

    async def _events(self, fmt, head: dict, outputs: AsyncIterator[tuple[int, RequestOutput]],
                      num_prompts: int, n: int, include_usage: bool) -> AsyncIterator[str]:
        """The stream's server-sent events: a chunk for each choice each time it gains text
        or finishes, then (include_usage) a chunk with the usage, then [DONE]."""
        extra = {"usage": None} if include_usage else {}
        cursors = [Cursor() for _ in range(num_prompts * n)]
        finals: list[RequestOutput | None] = [None] * num_prompts
        opening = fmt.opening_choices(num_prompts * n)
        if opening:
            yield _event({**head, "choices": opening, **extra})
        try:
            async with aclosing(outputs):
                async for i, out in outputs:
                    finals[i] = out
                    for c in out.outputs:
                        index = i * n + c.index
                        delta = cursors[index].advance(c)
                        choice = None if delta is None else fmt.chunk_choice(index, delta, cursors[index])
                        if choice is not None:
                            yield _event({**head, "choices": [choice], **extra})
            if include_usage:
                yield _event({**head, "choices": [], "usage": usage(finals)})
        except EmberError as e:
            yield _event(self._api_error(e).body())
        yield "data: [DONE]\n\n"

    async def _outputs(self, response_id: str, prompts: list[list[int]],
                       params: SamplingParams) -> AsyncIterator[tuple[int, RequestOutput]]:
        """(prompt index, cumulative output) as each prompt's request gains tokens."""
        streams = [self._request(f"{response_id}-{i}", ids, params) for i, ids in enumerate(prompts)]
        async with aclosing(_merge(streams)) as merged:
            async for item in merged:
                yield item

    async def _request(self, request_id: str, ids: list[int], params: SamplingParams) -> AsyncIterator[RequestOutput]:
        """One engine request's outputs; counted in the metrics when it ends, however it ends."""
        last, outcome = None, "ok"
        # no await between joining in_flight and generate() queueing the request, so an
        # end_requests that sees this id aborts it after the engine has it
        self.in_flight.add(request_id)
        try:
            if self.stopping is not None:
                raise ServerStopping(self.stopping)
            async with aclosing(self.llm.generate({"prompt_token_ids": ids}, params, request_id)) as stream:
                async for out in stream:
                    last = out
                    yield out
        except InputError:
            outcome = "refused"  # before it was queued: nothing to count
            raise
        except EmberError:
            outcome = "error"
            raise
        finally:
            self.in_flight.discard(request_id)
            if outcome != "refused":
                self.metrics.observe(len(ids), params.n, last, error=outcome == "error")

    async def end_requests(self, message: str) -> int:
        self.stopping = message
        ids = list(self.in_flight)
        # all queued at once: the engine thread takes them together between two steps
        await asyncio.gather(*(self.llm.abort(request_id, ServerStopping(message)) for request_id in ids))
        return len(ids)


def _stopping_error(e: ServerStopping) -> APIError:
    return APIError(503, str(e), type="server_error", code="server_shutting_down")


def _sampling_params(body, max_tokens: int | None, logprobs: int | None) -> SamplingParams:
    try:
        return body.sampling_params(max_tokens, logprobs)
    except InputError as e:  # a combination SamplingParams refuses (its message names the field)
        raise APIError(400, str(e), param=str(e).split(" ", 1)[0]) from None


def _event(payload: dict) -> str:
    return f"data: {json.dumps(payload, ensure_ascii=False, separators=(',', ':'))}\n\n"


def _named_event(payload: dict) -> str:
    """A Responses API event: `event: <type>` then its data."""
    return f"event: {payload['type']}\n{_event(payload)}"


async def _merge(streams: list[AsyncIterator[RequestOutput]]) -> AsyncIterator[tuple[int, RequestOutput]]:
    """Items of several streams as they come, as (stream index, item). Closing the merge
    closes every stream; the first error ends it."""
    if len(streams) == 1:
        async with aclosing(streams[0]) as stream:
            async for item in stream:
                yield 0, item
        return
    queue: asyncio.Queue = asyncio.Queue()
    done = object()

    async def pump(i: int, stream) -> None:
        try:
            async with aclosing(stream):
                async for item in stream:
                    await queue.put((i, item))
        except Exception as e:
            await queue.put((i, e))
        finally:
            queue.put_nowait((i, done))

    tasks = [asyncio.ensure_future(pump(i, s)) for i, s in enumerate(streams)]
    try:
        remaining = len(tasks)
        while remaining:
            i, item = await queue.get()
            if item is done:
                remaining -= 1
            elif isinstance(item, BaseException):
                raise item
            else:
                yield i, item
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def _last_outputs(outputs: AsyncIterator[tuple[int, RequestOutput]], num_prompts: int) -> list[RequestOutput]:
    finals: list[RequestOutput | None] = [None] * num_prompts
    async with aclosing(outputs):
        async for i, out in outputs:
            finals[i] = out
    return finals


async def _unless_disconnected(request: Request, work):
    """`await work`, unless the client disconnects first: then cancel it and return None."""
    task = asyncio.ensure_future(work)
    watch = asyncio.ensure_future(_disconnected(request))
    try:
        await asyncio.wait({task, watch}, return_when=asyncio.FIRST_COMPLETED)
    except BaseException:  # this handler was cancelled (the server is stopping)
        task.cancel()
        raise
    finally:
        watch.cancel()
    if task.done():
        return task.result()
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    return None


async def _disconnected(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


class _EventStream(StreamingResponse):
    """Server-sent events; when the response ends, however it ends (the client gone, the
    server stopping), the event generator is closed (its requests aborted) and
    `on_close` gives back the request's room in the queue."""

    def __init__(self, events: AsyncIterator[str], on_close: Callable[[], None]):
        super().__init__(events, media_type="text/event-stream",
                         headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        self._events, self._on_close = events, on_close

    async def __call__(self, scope, receive, send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            try:
                await self._events.aclose()
            finally:
                self._on_close()
