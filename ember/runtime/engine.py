"""The LLM engine: requests in, tokens out, one `step()` at a time.

    engine = LLMEngine(compiled, tokenizer, vocab_size=..., eos_token_ids={2})
    engine.add_request("a", prompt_token_ids, SamplingParams(max_tokens=32))
    while engine.has_unfinished():
        for output in engine.step(): ...       # RequestOutput, cumulative

A step asks the scheduler what to compute (a `SchedulerOutput`), has the model runner run
the compiled forward graph over it, samples a token for every request whose known tokens
are all computed, hands the tokens back to the scheduler (which stops requests on token
ids and lengths) and then to each request's detokenizer (which stops them on stop
strings). Every finish — stop, length, abort, error — frees the request's KV blocks.

A request with `structured_outputs` gets a grammar state per sample
(structured_output.py); each step computes the constrained samples' token masks on a
worker thread while the model runs, and the sampler applies them.

A request with n > 1 samples is fanned out into n sequences (ids `<id>:<i>`, seeds
seed + i) whose prompts share KV blocks through the prefix cache; its `RequestOutput`
holds the n completions and is finished when all are.
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace

import torch

from ..errors import EmberError, ExecutionError, InputError
from .detokenizer import IncrementalDetokenizer
from .kv_pool import KVBlockPool
from .model_runner import ModelRunner
from .request import Request, RequestStatus, SamplingParams
from .sampler import Logprob, Sampler, SamplingState, prompt_logprobs
from .scheduler import Scheduler
from .structured_output import Grammars


@dataclass(frozen=True)
class EngineOptions:
    """How the engine runs. `kv_cache_memory`: bytes of KV cache (default 2 GiB; the
    block count follows from the model's layers, heads and `block_size`), resident from
    the start (model_runner.py: `_resident_zeros`)."""

    block_size: int = 16
    kv_cache_memory: int = 2 << 30
    max_num_batched_tokens: int = 2048
    max_num_seqs: int = 64
    max_model_len: int | None = None
    enable_prefix_caching: bool = True
    enforce_eager: bool = False  # a device target: no static plans or CUDA graphs for decode steps

    def __post_init__(self):
        for name in ("block_size", "kv_cache_memory", "max_num_batched_tokens", "max_num_seqs"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise InputError(f"engine option {name} must be a positive integer, got {getattr(self, name)!r}")


GRAPH_CAPTURE_BUDGET_S = 30.0  # start-up time for CUDA graphs of decode steps (model_runner.py)


class StepError(ExecutionError):
    """The model failed in a step; `request_ids` are the requests it aborted."""

    def __init__(self, message: str, request_ids: list[str]):
        super().__init__(message)
        self.request_ids = request_ids


@dataclass(frozen=True)
class EngineStats:
    """The engine's load at one moment (what a server's metrics show). Sequences, not
    requests: a request with n samples counts n. The prefix-cache numbers are totals of
    prompt tokens looked up at admission and of those found in the cache."""

    num_running: int
    num_waiting: int
    num_kv_blocks: int
    num_free_kv_blocks: int
    prefix_cache_queries: int
    prefix_cache_hits: int
    num_preemptions: int


@dataclass
class RequestMetrics:
    """Times (time.monotonic) of a request's arrival, first and last token and finish."""

    arrival_time: float
    first_token_time: float | None = None
    last_token_time: float | None = None
    finished_time: float | None = None
    num_generated_tokens: int = 0

    @property
    def time_to_first_token(self) -> float | None:
        return None if self.first_token_time is None else self.first_token_time - self.arrival_time

    @property
    def time_per_output_token(self) -> float:
        """Decoding time over the tokens after the first (nan with fewer than two)."""
        if self.num_generated_tokens < 2:
            return math.nan
        return (self.last_token_time - self.first_token_time) / (self.num_generated_tokens - 1)


@dataclass
class CompletionOutput:
    """One of a request's n samples. While it runs, `text` is what may be shown so far:
    text that may yet turn out to be a stop string or half a character is held back."""

    index: int
    text: str
    token_ids: list[int]
    logprobs: list[dict[int, Logprob]] | None
    finish_reason: str | None      # "stop", "length", "abort", or None while running
    stop_reason: int | str | None = None


@dataclass
class RequestOutput:
    request_id: str
    prompt: str | None
    prompt_token_ids: list[int]
    prompt_logprobs: list[dict[int, Logprob] | None] | None
    outputs: list[CompletionOutput]
    finished: bool
    metrics: RequestMetrics
    num_cached_tokens: int = 0


@dataclass
class _Sequence:
    """The engine's state of one of a request's samples."""

    request: Request
    index: int
    sampling: SamplingState
    detokenizer: IncrementalDetokenizer
    logprobs: list[dict[int, Logprob]] | None


@dataclass
class _Parent:
    request_id: str
    prompt: str | None
    prompt_token_ids: list[int]
    params: SamplingParams
    metrics: RequestMetrics
    sequences: list[_Sequence] = field(default_factory=list)
    prompt_logprobs: list[dict[int, Logprob] | None] | None = None
    error: BaseException | None = None

    @property
    def finished(self) -> bool:
        return all(s.request.finished for s in self.sequences)

    def output(self) -> RequestOutput:
        outs = [CompletionOutput(s.index, s.detokenizer.shown, list(s.request.output_token_ids), s.logprobs,
                                 s.request.status.value if s.request.finished else None, s.request.stop_reason)
                for s in self.sequences]
        cached = min((s.request.num_cached_tokens for s in self.sequences), default=0)
        return RequestOutput(self.request_id, self.prompt, self.prompt_token_ids, self.prompt_logprobs, outs,
                             self.finished, self.metrics, cached)


class LLMEngine:
    """Continuous batching over `compiled`, an LLM's forward graph (see
    ember/runtime/model_runner.py for its inputs), with `tokenizer` (a transformers
    tokenizer) for text in and out."""

    def __init__(self, compiled, tokenizer, *, vocab_size: int, eos_token_ids=(), max_model_len: int,
                 options: EngineOptions = EngineOptions(), group=None):
        self.tokenizer, self.vocab_size, self.options = tokenizer, vocab_size, options
        self.eos_token_ids = frozenset(int(t) for t in eos_token_ids)
        num_blocks = self.num_blocks(compiled, options)
        self.max_model_len = min(max_model_len, num_blocks * options.block_size)
        self.runner = ModelRunner(compiled, num_blocks, max_num_seqs=options.max_num_seqs,
                                  max_model_len=self.max_model_len, enforce_eager=options.enforce_eager,
                                  group=group)
        self.runner.capture(GRAPH_CAPTURE_BUDGET_S)
        if self.runner.block_size != options.block_size:
            raise InputError(f"the graph was built for KV blocks of {self.runner.block_size} tokens, "
                             f"the engine's block_size is {options.block_size}")
        self.pool = KVBlockPool(num_blocks, options.block_size, enable_prefix_caching=options.enable_prefix_caching)
        self.scheduler = Scheduler(self.pool, max_num_batched_tokens=options.max_num_batched_tokens,
                                   max_num_seqs=options.max_num_seqs, max_model_len=self.max_model_len)
        self.sampler = Sampler()
        self.grammars = Grammars(tokenizer, vocab_size, self.eos_token_ids)
        self._mask_worker: ThreadPoolExecutor | None = None   # started by the first constrained step
        self._masks_overlap: bool | None = None  # whether masks are computed while the model runs (_start_masks)
        self._parents: dict[str, _Parent] = {}
        self._sequences: dict[str, tuple[_Parent, _Sequence]] = {}
        self._ids = itertools.count()

    @staticmethod
    def num_blocks(compiled, options: EngineOptions) -> int:
        """The KV-cache blocks `options.kv_cache_memory` holds for `compiled` (a
        tensor-parallel rank's: its shard's KV heads)."""
        per_block = ModelRunner.bytes_per_block(compiled)
        if options.kv_cache_memory < per_block:
            raise InputError(f"kv_cache_memory {options.kv_cache_memory} bytes holds no block "
                             f"(one block of {options.block_size} tokens takes {per_block} bytes)")
        return options.kv_cache_memory // per_block

    # -- requests -------------------------------------------------------------------------
    def add_request(self, request_id: str | None, prompt: str | list[int] | dict,
                    params: SamplingParams | None = None) -> str:
        """Queue a request; returns its id. `prompt`: text, token ids, or a dict with
        "prompt" or "prompt_token_ids". Raises InputError for a bad prompt or one too
        long for the model or the KV cache."""
        params = params or SamplingParams()
        request_id = str(next(self._ids)) if request_id is None else str(request_id)
        if request_id in self._parents:
            raise InputError(f"request id {request_id!r} is already in use")
        if self.failed is not None:
            raise self.failed
        text, ids = self._prompt(prompt)
        parent = _Parent(request_id, text, ids, params, RequestMetrics(time.monotonic()))
        children = []
        for i in range(params.n):
            child = params if params.n == 1 else replace(params, n=1, seed=None if params.seed is None
                                                         else params.seed + i)
            rid = request_id if params.n == 1 else f"{request_id}:{i}"
            request = Request(rid, list(ids), child, self.eos_token_ids, parent.metrics.arrival_time)
            grammar = None if child.structured_outputs is None else self.grammars.state(child.structured_outputs)
            state = SamplingState(child, ids, self.eos_token_ids, grammar)
            detok = IncrementalDetokenizer(self.tokenizer, ids, child)
            children.append(_Sequence(request, i, state, detok, [] if child.logprobs is not None else None))
        if any(seq.request.request_id in self._sequences for seq in children):
            raise InputError(f"request id {request_id!r} clashes with a sample of another request")
        added = []
        for seq in children:  # all or none: the scheduler checks each against the model and pool
            try:
                self.scheduler.add_request(seq.request)
            except EmberError:
                self.scheduler.finish_requests(added, RequestStatus.FINISHED_ABORTED)
                raise
            added.append(seq.request.request_id)
        parent.sequences = children
        self._parents[request_id] = parent
        for seq in children:
            self._sequences[seq.request.request_id] = (parent, seq)
        return request_id

    def _prompt(self, prompt) -> tuple[str | None, list[int]]:
        if isinstance(prompt, dict):
            if "prompt_token_ids" in prompt:
                prompt = list(prompt["prompt_token_ids"])
            elif "prompt" in prompt:
                prompt = prompt["prompt"]
            else:
                raise InputError("a prompt dict needs 'prompt' or 'prompt_token_ids'")
        if isinstance(prompt, str):
            ids = self.tokenizer.encode(prompt)
            text = prompt
        else:
            try:
                ids = [int(t) for t in prompt]
            except (TypeError, ValueError):
                raise InputError(f"a prompt is text or a list of token ids, got {type(prompt).__name__}") from None
            text = None
        if not ids:
            raise InputError("the prompt has no tokens")
        bad = [t for t in ids if not 0 <= t < self.vocab_size]
        if bad:
            raise InputError(f"prompt token id {bad[0]} is outside the vocabulary [0, {self.vocab_size})")
        return text, ids

    def abort_request(self, request_ids: str | list[str]) -> None:
        """Stop requests (unknown or finished ids are ignored) and free their blocks."""
        for rid in [request_ids] if isinstance(request_ids, str) else request_ids:
            parent = self._parents.pop(rid, None)
            if parent is None:
                continue
            ids = [s.request.request_id for s in parent.sequences]
            self.scheduler.finish_requests(ids, RequestStatus.FINISHED_ABORTED)
            for sid in ids:
                self._sequences.pop(sid, None)

    def stream(self, request_id: str, prompt, params: SamplingParams | None = None
               ) -> Iterator[tuple[str, RequestOutput]]:
        """Add a request and step the engine until nothing is left, yielding each new piece
        of the request's (first sample's) text with the output it came in. Closing the
        iterator early aborts the request. For one request at a time (`ember generate`,
        `ember chat`); batches go through `step`."""
        self.add_request(request_id, prompt, params)
        shown = 0
        try:
            while self.has_unfinished():
                for out in self.step():
                    if out.request_id == request_id:
                        text = out.outputs[0].text
                        yield text[shown:], out
                        shown = len(text)
        finally:
            self.abort_request(request_id)  # a no-op once it finished

    def has_unfinished(self) -> bool:
        return bool(self._parents)

    @property
    def failed(self) -> ExecutionError | None:
        """Why the engine cannot run any more steps (a tensor-parallel worker died or hung),
        or None."""
        group = self.runner.group
        return None if group is None or group.failed is None else group.error()

    def close(self) -> None:
        """Stop the tensor-parallel workers, if any (they exit; nothing is left behind)."""
        if self.runner.group is not None:
            self.runner.group.shutdown()
        if self._mask_worker is not None:
            self._mask_worker.shutdown(wait=False)

    @property
    def num_unfinished(self) -> int:
        return len(self._parents)

    def stats(self) -> EngineStats:
        scheduler, pool = self.scheduler, self.pool
        return EngineStats(scheduler.num_running, scheduler.num_waiting, pool.num_blocks, pool.num_free_blocks,
                           scheduler.stats.prefix_cache_queries, scheduler.stats.prefix_cache_hits,
                           scheduler.stats.num_preemptions)

    # -- a step ---------------------------------------------------------------------------
    def step(self) -> list[RequestOutput]:
        """Run one step; returns the outputs of the requests that gained tokens or
        finished in it (cumulative: each holds all of its text so far). If the model
        fails, the step's requests are aborted (their blocks freed) and an
        ExecutionError names them; the other requests go on."""
        out = self.scheduler.schedule()
        if out.empty:
            return []
        try:
            masks = self._start_masks(out)
            result = self.runner.execute(out)
            logits = result.logits
            rows, sequences = [], []
            for s in out.scheduled:
                rid = s.request.request_id
                if rid in result.sample_rows and rid in self._sequences:
                    rows.append(result.sample_rows[rid])
                    sequences.append(self._sequences[rid])
            token_mask = self._token_mask(masks, sequences)
            sampled = self.sampler.sample(logits[rows], [seq.sampling for _, seq in sequences],
                                          token_mask) if rows else None
            for rid, (start, prompt_rows) in result.prompt_rows.items():
                self._prompt_logprobs(rid, start, logits[prompt_rows])
        except Exception as e:
            if self.failed is not None:  # nothing can run again: every request ends with the error
                failed = sorted(self._parents)
                self.abort_request(failed)
                raise StepError(f"{self.failed} (requests {failed} ended)", failed) from e
            failed = sorted({self._sequences[s.request.request_id][0].request_id for s in out.scheduled
                             if s.request.request_id in self._sequences})
            self.abort_request(failed)
            raise StepError(f"the model step failed for requests {failed}: {e}", failed) from e
        now = time.monotonic()
        tokens = {seq.request.request_id: tok for (_, seq), tok in zip(sequences, sampled.token_ids)} if rows else {}
        self.scheduler.update_from_output(out, tokens)
        touched: dict[str, _Parent] = {}
        for i, (parent, seq) in enumerate(sequences):  # the sampler has recorded the tokens in their states
            request, token = seq.request, tokens[seq.request.request_id]
            if seq.logprobs is not None:
                seq.logprobs.append(sampled.logprobs[i])
            stopped_on_token = request.status is RequestStatus.FINISHED_STOPPED
            seq.detokenizer.update(token, stop_terminated=stopped_on_token)
            if seq.detokenizer.stop_reason is not None and not request.finished:
                request.stop_reason = seq.detokenizer.stop_reason
                self.scheduler.finish_requests([request.request_id], RequestStatus.FINISHED_STOPPED)
            elif request.finished and not stopped_on_token:
                seq.detokenizer.flush()
            elif not request.finished and seq.sampling.grammar is not None and seq.sampling.grammar.terminated:
                # the grammar's output is complete and nothing may follow (this token is its last)
                self.scheduler.finish_requests([request.request_id], RequestStatus.FINISHED_STOPPED)
                seq.detokenizer.flush()
            m = parent.metrics
            m.first_token_time = m.first_token_time or now
            m.last_token_time = now
            m.num_generated_tokens += 1
            touched[parent.request_id] = parent
        outputs = []
        for parent in touched.values():
            if parent.finished:
                parent.metrics.finished_time = now
                del self._parents[parent.request_id]
                for s in parent.sequences:
                    self._sequences.pop(s.request.request_id, None)
            outputs.append(parent.output())
        return outputs

    def _start_masks(self, out) -> tuple[list[str], Future] | None:
        """Start computing the token masks of the step's constrained samples: on the mask
        worker while the model runs where a core is free for it, else here, before the model
        runs (on 2 cores whose 2 kernel threads the model keeps busy, a third busy thread
        stalls them at every barrier: #6's workload with a JSON schema on every request ran
        27% slower than plain overlapped, 5.5% computed first). (their ids, the future of their masks)."""
        ids, states = [], []
        for s in out.scheduled:
            entry = self._sequences.get(s.request.request_id)
            if s.sample and entry is not None and entry[1].sampling.grammar is not None:
                ids.append(s.request.request_id)
                states.append(entry[1].sampling.grammar)
        if not ids:
            return None
        if self._masks_overlap is None:
            from ._torch import available_cores, threads

            self._masks_overlap = self.runner.device is not None or available_cores() > threads()
        if not self._masks_overlap:
            done: Future = Future()
            done.set_result(self.grammars.fill(states))
            return ids, done
        if self._mask_worker is None:
            self._mask_worker = ThreadPoolExecutor(1, thread_name_prefix="ember-grammar")
        return ids, self._mask_worker.submit(self.grammars.fill, states)

    @staticmethod
    def _token_mask(masks: tuple[list[str], Future] | None, sequences: list) -> tuple[list[int], torch.Tensor] | None:
        """The sampler's token_mask: the rows of `sequences` that have a mask, and their masks."""
        if masks is None:
            return None
        ids, future = masks
        bitmask = future.result()
        where = {rid: i for i, rid in enumerate(ids)}
        rows = [(row, where[seq.request.request_id]) for row, (_, seq) in enumerate(sequences)
                if seq.request.request_id in where]
        if not rows:
            return None
        if len(rows) != len(ids) or any(r != m for r, m in rows):
            bitmask = bitmask[[m for _, m in rows]]
        return [r for r, _ in rows], bitmask

    def _prompt_logprobs(self, rid: str, start: int, logits: torch.Tensor) -> None:
        parent, seq = self._sequences[rid]
        if seq.index != 0:
            return
        ids = parent.prompt_token_ids
        if parent.prompt_logprobs is None:
            parent.prompt_logprobs = [None]  # the first prompt token has no logprob
        if len(parent.prompt_logprobs) != start + 1:  # recomputed after a preemption: have them
            return
        # row j holds the logits after token start+j, which predict token start+j+1
        count = min(len(logits), len(ids) - 1 - start)
        if count > 0:
            parent.prompt_logprobs += prompt_logprobs(logits[:count], ids[start + 1:start + 1 + count],
                                                      parent.params.prompt_logprobs)
