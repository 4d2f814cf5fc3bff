"""The server's encoder routes (#25): `/v1/embeddings` (OpenAI's shape) and `/v1/rerank`,
`/rerank`, `/v2/rerank` (Cohere's and Jina's), over an `AsyncEncoder`.

1. Inputs are tokenized on worker threads (`asyncio.to_thread`), off the event loop, and
   checked before anything is queued: an empty input, a token id outside the vocabulary,
   too many inputs, or an input longer than the model's limit (unless the request says
   `truncate_prompt_tokens`: -1 for the model's limit, or a number of tokens) is a 400 that
   names it.
2. The encoder's worker thread runs every request queued while the last batch ran together,
   in batches by a token budget (embeddings.AsyncEncoder).
3. `encoding_format: "base64"` is the float32 little-endian bytes of each vector, base64
   encoded (what the openai client asks for by default, and decodes); `dimensions` keeps a
   vector's first ones, renormalized (Matryoshka models).
4. Reranking with a cross-encoder scores each (query, document) pair; with an embedding
   model, the cosine of their embeddings.
"""

from __future__ import annotations

import asyncio
import base64
import time
import uuid
from typing import Any

import numpy as np

from ..embeddings import AsyncEncoder, Row, normalized, query_cosines
from ..errors import EmberError, InputError
from .protocol import APIError, EmbeddingRequest, RerankRequest


class EncoderService:
    """The encoder routes' work for one AsyncEncoder served as `name`; `max_pending` bounds the
    requests it holds at once (503 past it)."""

    def __init__(self, encoder: AsyncEncoder, name: str, max_pending: int, metrics):
        self.encoder, self.name, self.max_pending, self.metrics = encoder, name, max_pending, metrics
        self.model = encoder.encoder
        self.created = int(time.time())
        self.num_pending = 0

    def model_card(self) -> dict[str, Any]:
        return {"id": self.name, "object": "model", "created": self.created, "owned_by": "ember",
                "max_model_len": self.model.max_seq_length,
                "task": "embed" if self.model.task == "embed" else "score"}

    def check_model(self, model: str | None, other: str | None) -> None:
        if model is None or model == self.name:
            return
        if model == other:
            raise APIError(400, f"{model!r} is a generative model: this route needs the encoder {self.name!r}",
                           param="model", code="model_not_supported")
        raise APIError(404, f"the model {model!r} does not exist: this server's encoder is {self.name!r}",
                       param="model", code="model_not_found")

    # -- /v1/embeddings --------------------------------------------------------------------------
    async def embeddings(self, body: EmbeddingRequest) -> dict[str, Any]:
        if self.model.task != "embed":
            raise APIError(400, f"{self.name!r} is a cross-encoder: it reranks (/v1/rerank) and has no embeddings",
                           param="model", code="model_not_supported")
        inputs = body.inputs()
        width = self.model.dimension
        if body.dimensions is not None and body.dimensions > width:
            raise APIError(400, f"'dimensions' is {body.dimensions}, more than this model's {width}",
                           param="dimensions")
        rows = await asyncio.to_thread(self._rows, inputs, body.truncate_prompt_tokens)
        vectors = await self._run(self.encoder.pool_rows, rows)
        if self.model.config.normalize:
            vectors = normalized(vectors)
        if body.dimensions is not None and body.dimensions < width:
            vectors = normalized(vectors[:, :body.dimensions])
        tokens = sum(len(r.ids) for r in rows)
        self.metrics.observe_encoder("embeddings", len(rows), tokens)
        as_base64 = body.encoding_format == "base64"
        data = [{"object": "embedding", "index": i,
                 "embedding": base64.b64encode(v.astype("<f4").tobytes()).decode() if as_base64 else v.tolist()}
                for i, v in enumerate(vectors)]
        return {"object": "list", "data": data, "model": self.name,
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}

    def _rows(self, inputs: list[str | list[int]], truncate: int | None) -> list[Row]:
        """Each input as a row (a worker thread's work: tokenizing)."""
        limit = self._limit(truncate)
        texts = [(i, t) for i, t in enumerate(inputs) if isinstance(t, str)]
        rows: list[Row | None] = [None] * len(inputs)
        if texts:
            for (i, _), row in zip(texts, self.model.tokenize([t for _, t in texts], truncate=limit)):
                rows[i] = row
        vocab = self.model.vocab_size
        for i, item in enumerate(inputs):
            if isinstance(item, str):
                continue
            bad = next((t for t in item if not 0 <= t < vocab), None)
            if bad is not None:
                raise APIError(400, f"token id {bad} in 'input.{i}' is outside the vocabulary [0, {vocab})",
                               param="input")
            rows[i] = Row(list(item[:limit]) if limit is not None else list(item))
        self._check_lengths(rows, "input")
        return rows

    def _limit(self, truncate: int | None) -> int | None:
        """The tokens an input keeps: None (all: too long is refused after), or where to truncate."""
        most = self.model.max_seq_length
        if truncate is None:
            return None
        if truncate == -1:
            return most
        if truncate == 0:
            raise APIError(400, "'truncate_prompt_tokens' must be -1 (the model's limit) or at least 1",
                           param="truncate_prompt_tokens")
        if most is not None and truncate > most:
            raise APIError(400, f"'truncate_prompt_tokens' is {truncate}, more than this model's limit of {most} tokens",
                           param="truncate_prompt_tokens")
        return truncate

    def _check_lengths(self, rows: list[Row], param: str) -> None:
        most = self.model.max_seq_length
        for i, row in enumerate(rows):
            if most is not None and len(row.ids) > most:
                raise APIError(400, f"'{param}.{i}' has {len(row.ids)} tokens, more than this model's limit of "
                               f"{most}: shorten it, or send \"truncate_prompt_tokens\": -1 to truncate it there",
                               param=param, code="context_length_exceeded")
            if not row.ids:
                raise APIError(400, f"'{param}.{i}' has no tokens", param=param)

    # -- /v1/rerank ------------------------------------------------------------------------------
    async def rerank(self, body: RerankRequest) -> dict[str, Any]:
        documents = body.texts()
        limit = self._limit(body.truncate_prompt_tokens)
        if self.model.task == "score":
            rows = await asyncio.to_thread(self.model.tokenize_pairs, [body.query] * len(documents), documents,
                                           truncate=limit)
            self._check_lengths(rows, "documents")
            scores = await self._run(self.encoder.score_rows, rows)
        else:
            rows = await asyncio.to_thread(self.model.tokenize, [body.query, *documents], truncate=limit)
            self._check_lengths(rows[1:], "documents")
            if self.model.max_seq_length is not None and len(rows[0].ids) > self.model.max_seq_length:
                raise APIError(400, f"'query' has {len(rows[0].ids)} tokens, more than this model's limit of "
                               f"{self.model.max_seq_length}", param="query", code="context_length_exceeded")
            scores = query_cosines(await self._run(self.encoder.pool_rows, rows))
        tokens = sum(len(r.ids) for r in rows)
        self.metrics.observe_encoder("rerank", len(documents), tokens)
        order = np.argsort(-scores, kind="stable")[:body.top_n]
        keep = body.return_documents is not False
        results = [{"index": int(i), **({"document": {"text": documents[i]}} if keep else {}),
                    "relevance_score": float(scores[i])} for i in order]
        return {"id": f"rerank-{uuid.uuid4().hex}", "model": self.name, "results": results,
                "usage": {"total_tokens": tokens}}

    async def _run(self, work, rows: list[Row]) -> np.ndarray:
        if not self.encoder.is_running:
            raise APIError(503, "the encoder has stopped", type="server_error", code="engine_stopped")
        if self.num_pending >= self.max_pending > 0:
            self.metrics.rejected.inc()
            raise APIError(503, f"the server is full ({self.num_pending} encoder requests in flight, at most "
                           f"{self.max_pending}): retry later", type="server_error", code="server_overloaded",
                           headers={"Retry-After": "1"})
        self.num_pending += 1
        try:
            return await work(rows)
        except InputError as e:
            raise APIError(400, str(e)) from None
        except EmberError as e:
            raise APIError(500, str(e), type="server_error") from None
        finally:
            self.num_pending -= 1
