"""Embeddings and reranking (#25): encoders compiled by ember and run the way
sentence-transformers runs them — tokenized (truncated to the model's max_seq_length, a
named prompt in front where asked), the transformer on ember's kernels, its token vectors
pooled (cls, mean, max, mean_sqrt_len, lasttoken: the folder's) and L2-normalized where the
folder has a Normalize module; a cross-encoder's (query, document) pairs scored through its
activation, as CrossEncoder.predict scores them.

    encoder = ember.Encoder()                      # the built-in all-MiniLM-L6-v2
    encoder = ember.Encoder("path/to/folder")      # a sentence-transformers or transformers folder, an .onnx file
    vectors = encoder.embed(["A sentence.", "Another one."])   # float32 [2, dim]
    scores = encoder.score("a query", ["doc one", "doc two"])  # cross-encoder: its scores; else cosines
    ranked = encoder.rerank("a query", ["doc one", "doc two"]) # [(index, score)], best first

A BERT-class transformer in safetensors (BERT, RoBERTa, XLM-RoBERTa: most embedding models and
rerankers) is built straight into ember's IR over packed rows (`frontends/hf/bert.py`): a
batch's rows one after another, each attending to its own tokens, so a batch of mixed lengths
costs its real tokens and holds at most `max_batch_tokens` of them (and `batch_size` rows).
Other encoders (ONNX files, decoders used as embedders) are compiled from ONNX, and their
inputs run in batches of similar length (sorted, then put back in order), each batch padded
to its longest and holding at most `max_batch_tokens` padded tokens.

`AsyncEncoder` (what the server sits on) batches many callers' inputs together on one
worker thread: while a batch runs, new requests queue, and the next batch takes all of them.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import queue
import threading
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import InputError, UnsupportedError
from .frontends.hf.bert import build_packed_encoder, max_positions, packed_feeds, position_offset, unsupported
from .frontends.hf.encoder import EncoderConfig, export_onnx, is_encoder, read_encoder, read_sentence_transformer

# (is_encoder is the server's: serve/ talks to this layer, not to the frontends)
__all__ = ["Encoder", "AsyncEncoder", "Row", "is_encoder", "normalized", "query_cosines", "pool", "EmbeddingOutput",
           "EmbeddingRequestOutput", "ScoringOutput", "ScoringRequestOutput"]

# tokens a batch holds at most (padded ones included where rows are padded: its rows times its
# longest). A batch's activations then
# stay in the L3 cache between its layers' kernels (MiniLM's GELU output at 2,048 tokens is
# 12.6 MB): the 2,000-sentence benchmark's batches of 2,048 and 3,072 tokens ran 12% faster
# than batches of 8,192 (whose 50 MB stream to memory) and 15% faster than of 512 (a 2-core
# AMD EPYC Zen 3, L3 32 MB)
DEFAULT_BATCH_TOKENS = 2048
DEFAULT_BATCH_SIZE = 256      # rows a batch holds at most


@dataclass
class Row:
    """One input, tokenized: its ids and token types, and how many leading tokens (a prompt's)
    the pool leaves out."""

    ids: list[int]
    type_ids: list[int] | None = None
    skip: int = 0


class Encoder:
    """An encoder: `model` a sentence-transformers folder, a transformers folder of a
    BERT-class model or a cross-encoder, or an ONNX file with tokenizer.json beside it (None:
    the built-in MiniLM). `max_seq_length` overrides the model's; `target` ("cpu", "cuda") and
    `intra_op_threads` as ember.compile's; `max_batch_tokens` and `batch_size` bound a batch
    (tokens, rows)."""

    def __init__(self, model: str | os.PathLike | None = None, *, max_seq_length: int | None = None,
                 target: str = "cpu", intra_op_threads: int | None = None,
                 max_batch_tokens: int = DEFAULT_BATCH_TOKENS, batch_size: int = DEFAULT_BATCH_SIZE):
        from tokenizers import Tokenizer

        from . import api
        from ._builtin import cache_dir, minilm_dir

        if max_batch_tokens < 1 or batch_size < 1:
            raise InputError(f"max_batch_tokens and batch_size must be at least 1, not {max_batch_tokens}, {batch_size}")
        api.check_target(target)  # (before anything loads)
        self.config: EncoderConfig = (read_encoder(model) if model is not None
                                      else read_sentence_transformer(minilm_dir()))
        self.name = ("all-MiniLM-L6-v2" if model is None else self.config.onnx_file.stem if Path(model).is_file()
                     else self.config.folder.name)  # (the API's name of the model: ember serve's default)
        self.task = self.config.task
        self.max_seq_length = max_seq_length or self.config.max_seq_length
        self.max_batch_tokens, self.batch_size = max_batch_tokens, batch_size
        # packed rows where the transformer is one ember builds (else an ONNX export, padded rows)
        self.packed = self.config.onnx_file is None and unsupported(self.config.transformer, self.task) is None
        if self.packed:
            self._offset = position_offset(self.config.transformer)
            self._positions = max_positions(self.config.transformer)
            self.compiled = api.compile(build_packed_encoder(self.config.transformer, self.task), target=target,
                                        intra_op_threads=intra_op_threads)
        else:
            self.compiled = api.compile(str(export_onnx(self.config, cache_dir() / "encoders")), target=target,
                                        intra_op_threads=intra_op_threads)
        self._inputs = [i.name for i in self.compiled.inputs]
        names = [o.name for o in self.compiled.outputs]
        self._output = self.config.output_name if self.config.output_name in names else names[0]
        self.tokenizer = Tokenizer.from_file(str(self.config.tokenizer_file))
        self.tokenizer.no_padding()
        self.tokenizer.no_truncation()
        self._truncating: dict[int, Tokenizer] = {}  # by limit: copies that truncate there
        self._chat = None  # (render, the template's closing ids) for a chat-templated encoder, once needed
        shape = next(o.shape for o in self.compiled.outputs if o.name == self._output)
        self.dimension = 1 if self.task == "score" else int(shape[-1])
        if self.task == "embed" and not isinstance(shape[-1], int):
            raise UnsupportedError(f"{self.name}: its output {self._output!r} has no fixed width ({shape})")
        self.vocab_size = self.tokenizer.get_vocab_size()

    # -- the offline API ---------------------------------------------------------------------------
    def embed(self, texts: str | list[str], *, prompt_name: str | None = None, prompt: str | None = None,
              normalize: bool | None = None, batch_size: int | None = None) -> np.ndarray:
        """float32 [len(texts), dimension] (one text: [dimension]): each text's embedding.
        `prompt` (or the folder's prompt `prompt_name`, else its default prompt) goes in front
        of every text; `normalize` None: as the folder says; `batch_size`: rows a batch holds
        at most (default: the encoder's)."""
        single = isinstance(texts, str)
        texts = _texts(texts, "embed")
        self._needs("embed")
        if batch_size is not None and batch_size < 1:
            raise InputError(f"batch_size must be at least 1, not {batch_size}")
        rows = self.tokenize(texts, prompt=self.prompt(prompt_name, prompt))
        out = self.pool_rows(rows, batch_size)
        if normalize if normalize is not None else self.config.normalize:
            out = normalized(out)
        return out[0] if single else out

    def score(self, query: str, documents: str | list[str], *, batch_size: int | None = None) -> np.ndarray:
        """float32 [len(documents)] (one document: a scalar array): how well each document
        answers `query` — a cross-encoder's score of the pair, else the cosine of their
        embeddings."""
        single = isinstance(documents, str)
        if not isinstance(query, str):
            raise InputError("score() takes a query string and a string or a non-empty list of strings")
        documents = _texts(documents, "score")
        if self.task == "score":
            scores = self.score_rows(self.tokenize_pairs([query] * len(documents), documents), batch_size)
        else:
            scores = query_cosines(self.pool_rows(self.tokenize([query, *documents]), batch_size))
        return scores[0] if single else scores

    def rerank(self, query: str, documents: list[str], *, top_n: int | None = None) -> list[tuple[int, float]]:
        """(document index, score) of the `top_n` best documents (None: all), best first."""
        scores = np.atleast_1d(self.score(query, documents))
        return [(int(i), float(scores[i])) for i in np.argsort(-scores, kind="stable")[:top_n]]

    # -- the parts (the server's) -------------------------------------------------------------------
    def prompt(self, prompt_name: str | None, prompt: str | None) -> str:
        """The text put in front of each input: `prompt`, else the folder's prompt `prompt_name`
        (else its default prompt's), else none."""
        if prompt is not None:
            return prompt
        name = prompt_name if prompt_name is not None else self.config.default_prompt_name
        if name is None:
            return ""
        if name not in self.config.prompts:
            raise InputError(f"prompt_name {name!r} is not one of the model's prompts "
                             f"({', '.join(self.config.prompts) or 'none'})")
        return self.config.prompts[name]

    def tokenize(self, texts: list[str], *, prompt: str = "", truncate: int | None = -1) -> list[Row]:
        """Each text (after `prompt`) as a Row. `truncate`: the most tokens a row keeps (-1: the
        model's max_seq_length; None: all, for the caller to check)."""
        if self.config.do_lower_case:
            texts, prompt = [t.lower() for t in texts], prompt.lower()
        if self.config.chat_template:
            return self._chat_rows(texts, prompt, truncate)
        encodings = self._tokenizer(truncate).encode_batch([prompt + t for t in texts])
        skip = 0
        if prompt and not self.config.include_prompt:  # the prompt's tokens, less the closing special token
            skip = max(0, len(self.tokenizer.encode(prompt)) - 1)
        return [Row(e.ids, e.type_ids, skip) for e in encodings]

    def _chat_rows(self, texts: list[str], prompt: str, truncate: int | None) -> list[Row]:
        """Texts as sentence-transformers 6 renders them for a folder of the 'message' modality:
        each a user message of the chat template (no generation prompt), and where truncated,
        the template's closing tokens put back after the cut (its `restore_suffix`)."""
        if prompt:
            raise UnsupportedError(f"{self.name} renders its inputs through a chat template: ember takes no prompt "
                                   "for it yet")
        if self._chat is None:
            from transformers import AutoTokenizer

            hf = AutoTokenizer.from_pretrained(self.config.transformer)
            render = lambda t: hf.apply_chat_template([{"role": "user", "content": t}], tokenize=False,  # noqa: E731
                                                      add_generation_prompt=False)
            a, b = (self.tokenizer.encode(render(t), add_special_tokens=False).ids for t in ("0", "1 2 3 4"))
            n = 0
            while n < min(len(a), len(b)) and a[-1 - n] == b[-1 - n]:
                n += 1
            self._chat = (render, a[len(a) - n:] if n else [])
        render, suffix = self._chat
        limit = self._limit(truncate)
        rows = []
        for e in self.tokenizer.encode_batch([render(t) for t in texts], add_special_tokens=False):
            ids = e.ids
            if limit is not None and len(ids) > limit:
                ids = (ids[:max(0, limit - len(suffix))] + suffix)[:limit]
            rows.append(Row(ids, [0] * len(ids)))
        return rows

    def tokenize_pairs(self, queries: list[str], documents: list[str], *, truncate: int | None = -1) -> list[Row]:
        """(query, document) pairs as one row each, the way a cross-encoder reads them (truncated
        longest first, as transformers' tokenizers truncate pairs)."""
        if self.config.do_lower_case:
            queries, documents = [q.lower() for q in queries], [d.lower() for d in documents]
        encodings = self._tokenizer(truncate).encode_batch(list(zip(queries, documents)))
        return [Row(e.ids, e.type_ids) for e in encodings]

    def _limit(self, truncate: int | None) -> int | None:
        """The most tokens a row keeps: -1 the model's max_seq_length, None all."""
        return self.max_seq_length if truncate == -1 else truncate

    def _tokenizer(self, truncate: int | None):
        limit = self._limit(truncate)
        if limit is None:
            return self.tokenizer
        tokenizer = self._truncating.get(limit)
        if tokenizer is None:
            from tokenizers import Tokenizer

            tokenizer = Tokenizer.from_str(self.tokenizer.to_str())
            tokenizer.enable_truncation(limit)
            if len(self._truncating) < 64:  # (the server's requests choose the limits)
                self._truncating[limit] = tokenizer
        return tokenizer

    def pool_rows(self, rows: list[Row], batch_size: int | None = None) -> np.ndarray:
        """float32 [len(rows), dimension]: the rows' pooled token vectors (not normalized)."""
        self._needs("embed")
        return self._forward(rows, batch_size)

    def score_rows(self, rows: list[Row], batch_size: int | None = None) -> np.ndarray:
        """float32 [len(rows)]: a cross-encoder's scores of its rows (pairs), activated."""
        self._needs("score")
        return self.activate(self._forward(rows, batch_size))

    def activate(self, logits: np.ndarray) -> np.ndarray:
        """A cross-encoder's logits through its activation (sigmoid, or none)."""
        return (1.0 / (1.0 + np.exp(-logits))).astype(np.float32) if self.config.activation == "sigmoid" else logits

    def _needs(self, task: str) -> None:
        if task != self.task:
            what = {"embed": "an embedding model", "score": "a cross-encoder"}
            raise UnsupportedError(f"{self.name} is {what[self.task]}: it does not {task}"
                                   + (" (score() ranks with it)" if self.task == "score" else ""))

    def _forward(self, rows: list[Row], batch_size: int | None = None) -> np.ndarray:
        """The model on `rows`, sorted by length into batches within the token budget, put back
        in order: pooled vectors [n, dimension], or a cross-encoder's logits [n]."""
        n = len(rows)
        out = np.empty((n, self.dimension) if self.task == "embed" else (n,), np.float32)
        most = batch_size or self.batch_size
        start = 0
        if self.packed:  # in order, each batch up to the token budget (a longer row alone)
            while start < n:
                end, tokens = start, 0
                while end < n and end - start < most and (end == start or tokens + len(rows[end].ids)
                                                          <= self.max_batch_tokens):
                    tokens += len(rows[end].ids)
                    end += 1
                out[start:end] = self._packed_batch(rows[start:end])
                start = end
            return out
        order = sorted(range(n), key=lambda i: -len(rows[i].ids))
        while start < n:
            width = max(1, len(rows[order[start]].ids))
            batch = order[start:start + max(1, min(most, self.max_batch_tokens // width))]
            out[batch] = self._batch([rows[i] for i in batch])
            start += len(batch)
        return out

    def _batch(self, rows: list[Row]) -> np.ndarray:
        width = max(len(r.ids) for r in rows)
        if width == 0:
            raise InputError("an input has no tokens")
        feeds = {name: np.zeros((len(rows), width), np.int64) for name in self._inputs}
        for i, r in enumerate(rows):
            n = len(r.ids)
            feeds["input_ids"][i, :n] = r.ids
            feeds["attention_mask"][i, :n] = 1
            if "token_type_ids" in feeds and r.type_ids is not None:
                feeds["token_type_ids"][i, :n] = r.type_ids
        result = np.asarray(self.compiled.run(feeds)[self._output], np.float32)
        if self.task == "score":
            return result.reshape(len(rows), -1)[:, 0]
        mask = feeds["attention_mask"].astype(np.float32)
        for i, r in enumerate(rows):
            mask[i, :r.skip] = 0
        return pool(result, mask, self.config.pooling)

    def _packed_batch(self, rows: list[Row]) -> np.ndarray:
        if any(not r.ids for r in rows):
            raise InputError("an input has no tokens")
        longest = max(len(r.ids) for r in rows)
        if longest > self._positions:
            raise InputError(f"an input of {longest} tokens is longer than {self.name}'s {self._positions} positions")
        feeds = packed_feeds([(r.ids, r.type_ids) for r in rows], self._offset, "token_type_ids" in self._inputs)
        result = np.asarray(self.compiled.run(feeds)[self._output], np.float32)[0]
        if self.task == "score":
            return result[:, 0]
        return pool_packed(result, feeds["starts"], np.array([r.skip for r in rows], np.int64), self.config.pooling)


def normalized(x: np.ndarray) -> np.ndarray:
    """Rows of x scaled to unit length (a zero row stays zero)."""
    return (x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)).astype(np.float32)


def query_cosines(vectors: np.ndarray) -> np.ndarray:
    """The cosine of each row of vectors[1:] (documents) with vectors[0] (the query)."""
    unit = normalized(vectors)
    return unit[1:] @ unit[0]


def _texts(texts, what: str) -> list[str]:
    texts = [texts] if isinstance(texts, str) else list(texts)
    if not texts or any(not isinstance(t, str) for t in texts):
        raise InputError(f"{what}() takes a string or a non-empty list of strings")
    return texts


def pool(hidden: np.ndarray, mask: np.ndarray, mode: str) -> np.ndarray:
    """Token vectors hidden [B, S, H] pooled under mask [B, S] (1 where a token counts) as
    sentence-transformers' Pooling module does in `mode`."""
    m = mask[..., None]
    if mode == "cls":
        return hidden[:, 0].copy()
    if mode == "max":
        return np.where(m > 0, hidden, np.float32(-1e9)).max(axis=1)
    if mode == "lasttoken":  # the last token under the mask (right padding)
        last = np.maximum(mask.shape[1] - 1 - np.argmax(mask[:, ::-1] > 0, axis=1), 0)
        return hidden[np.arange(hidden.shape[0]), last].copy()
    return _average((hidden * m).sum(axis=1), np.maximum(m.sum(axis=1), 1e-9), mode)


def _average(summed: np.ndarray, count: np.ndarray, mode: str) -> np.ndarray:
    """Rows' sums of token vectors over `count` tokens each, pooled as `mode` says (the
    modes that average); an InputError for a mode no pool has."""
    if mode == "mean":
        return summed / count
    if mode == "mean_sqrt_len":
        return summed / np.sqrt(count)
    raise InputError(f"pooling mode {mode!r} is not one of cls, mean, max, mean_sqrt_len, lasttoken")


def pool_packed(hidden: np.ndarray, starts: np.ndarray, skips: np.ndarray, mode: str) -> np.ndarray:
    """Token vectors hidden [T, H] of rows packed one after another (row b: tokens starts[b]
    to starts[b + 1], none empty) pooled as `pool` pools padded rows, the first skips[b]
    tokens of row b left out of it (a prompt's)."""
    first, ends = starts[:-1], starts[1:]
    if mode == "cls":
        return hidden[first].copy()
    if mode == "lasttoken":
        return hidden[ends - 1].copy()
    counted = np.ones(len(hidden), np.float32)  # 1 where a token counts: 0 over each row's skipped prefix
    if skips.any():
        skipped = np.minimum(skips, ends - first)
        counted[np.repeat(first - np.cumsum(np.r_[0, skipped[:-1]]), skipped) + np.arange(skipped.sum())] = 0
    if mode == "max":
        return np.maximum.reduceat(np.where(counted[:, None] > 0, hidden, np.float32(-1e9)), first, axis=0)
    return _average(np.add.reduceat(hidden * counted[:, None], first, axis=0),
                    np.maximum(np.add.reduceat(counted, first), 1e-9)[:, None], mode)


# -- many callers at once ------------------------------------------------------------------------
@dataclass
class _Job:
    rows: list[Row]
    future: concurrent.futures.Future = field(default_factory=concurrent.futures.Future)


class AsyncEncoder:
    """An Encoder shared by many asyncio callers (the server): `await pool_rows(rows)` /
    `await score_rows(rows)` queue the rows for one worker thread, which runs everything
    queued together, in batches by the token budget. A batch that fails is run again job by
    job, so that only the job at fault gets the error."""

    MAX_ROWS_PER_RUN = 4096  # what one run of the worker takes from the queue at most

    def __init__(self, model: str | os.PathLike | None = None, **options):
        self.encoder = model if isinstance(model, Encoder) else Encoder(model, **options)
        self._queue: queue.Queue[_Job | None] = queue.Queue()
        self._stopped = False
        self.runs = self.jobs = 0  # the worker's runs, and the jobs they took (jobs / runs: how much it batched)
        self._thread = threading.Thread(target=self._loop, name="ember-encoder", daemon=True)
        self._thread.start()

    @property
    def is_running(self) -> bool:
        return not self._stopped and self._thread.is_alive()

    async def pool_rows(self, rows: list[Row]) -> np.ndarray:
        self.encoder._needs("embed")
        return await self._submit(rows)

    async def score_rows(self, rows: list[Row]) -> np.ndarray:
        self.encoder._needs("score")
        return self.encoder.activate(await self._submit(rows))

    async def _submit(self, rows: list[Row]) -> np.ndarray:
        if self._stopped:
            raise InputError("the encoder has stopped")
        job = _Job(list(rows))
        self._queue.put(job)
        return await asyncio.wrap_future(job.future)

    def shutdown(self) -> None:
        self._stopped = True
        self._queue.put(None)
        self._thread.join(timeout=30)

    def _loop(self) -> None:
        while True:
            job = self._queue.get()
            if job is None:
                break
            jobs, count = [job], len(job.rows)
            while count < self.MAX_ROWS_PER_RUN:
                try:
                    more = self._queue.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    self._queue.put(None)  # (stop after this run)
                    break
                jobs.append(more)
                count += len(more.rows)
            jobs = [j for j in jobs if j.future.set_running_or_notify_cancel()]
            self.runs, self.jobs = self.runs + 1, self.jobs + len(jobs)
            self._run(jobs)
        while True:  # stopped: what is still queued fails
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                return
            if job is not None and job.future.set_running_or_notify_cancel():
                job.future.set_exception(InputError("the encoder has stopped"))

    def _run(self, jobs: list[_Job]) -> None:
        try:
            out = self.encoder._forward([r for j in jobs for r in j.rows])
        except BaseException as e:  # noqa: BLE001 - handed to the callers
            if len(jobs) > 1:
                for j in jobs:
                    self._run([j])
            else:
                jobs[0].future.set_exception(e)
            return
        start = 0
        for j in jobs:
            j.future.set_result(out[start:start + len(j.rows)])
            start += len(j.rows)


# -- vLLM's result shapes (LLM.embed, LLM.score) --------------------------------------------------
@dataclass
class EmbeddingOutput:
    embedding: list[float]

    @property
    def hidden_size(self) -> int:
        return len(self.embedding)


@dataclass
class EmbeddingRequestOutput:
    request_id: str
    outputs: EmbeddingOutput
    prompt_token_ids: list[int]
    finished: bool = True


@dataclass
class ScoringOutput:
    score: float


@dataclass
class ScoringRequestOutput:
    request_id: str
    outputs: ScoringOutput
    prompt_token_ids: list[int]
    finished: bool = True


def embed_outputs(encoder: Encoder, items: list) -> list[EmbeddingRequestOutput]:
    """LLM.embed: each prompt (a string, token ids, or a {"prompt" | "prompt_token_ids"} dict)
    embedded as the model says (normalized where it has a Normalize module)."""
    if not items:
        raise InputError("embed() takes a prompt or a non-empty list of them")
    rows: list[Row | None] = [None] * len(items)
    texts = {}
    for i, item in enumerate(items):
        if isinstance(item, dict):
            item = item.get("prompt_token_ids", item.get("prompt"))
        if isinstance(item, str):
            texts[i] = item
        elif isinstance(item, (list, tuple)) and item and all(isinstance(t, int) for t in item):
            rows[i] = Row(list(item))
        else:
            raise InputError(f"prompt {i} is not a string, a non-empty list of token ids or a dict of one")
    for i, row in zip(texts, encoder.tokenize(list(texts.values())) if texts else []):
        rows[i] = row
    vectors = encoder.pool_rows(rows)
    if encoder.config.normalize:
        vectors = normalized(vectors)
    return [EmbeddingRequestOutput(str(i), EmbeddingOutput(v.tolist()), r.ids)
            for i, (v, r) in enumerate(zip(vectors, rows))]


def score_outputs(encoder: Encoder, text_1, text_2) -> list[ScoringRequestOutput]:
    """LLM.score: `text_1` one string against each of `text_2`'s (one or a list), or two
    lists of the same length pair by pair."""
    firsts = [text_1] if isinstance(text_1, str) else list(text_1)
    seconds = [text_2] if isinstance(text_2, str) else list(text_2)
    if len(firsts) == 1:
        firsts = firsts * len(seconds)
    if not seconds or len(firsts) != len(seconds) or not all(isinstance(t, str) for t in firsts + seconds):
        raise InputError("score() takes a string or a list of them against a string or a list of them "
                         f"(one against many, or two lists of the same length; got {len(firsts)} and {len(seconds)})")
    if encoder.task == "score":
        rows = encoder.tokenize_pairs(firsts, seconds)
        scores = encoder.score_rows(rows)
        ids = [r.ids for r in rows]
    else:
        a, b = encoder.tokenize(firsts), encoder.tokenize(seconds)
        vectors = normalized(encoder.pool_rows(a + b))
        scores = (vectors[:len(a)] * vectors[len(a):]).sum(-1)
        ids = [x.ids + y.ids for x, y in zip(a, b)]
    return [ScoringRequestOutput(str(i), ScoringOutput(float(s)), t) for i, (s, t) in enumerate(zip(scores, ids))]
