"""Which requests' tokens the next engine step computes.

There is no prefill or decode phase (vLLM v1): a request's `num_computed_tokens` (tokens
whose KV is in the cache) catches up with its `num_tokens` (prompt + outputs so far). Each
step hands out a budget of `max_num_batched_tokens`:

1. Running requests first, in order, each taking what it lacks up to what is left of the
   budget: 1 token for a decode, a chunk of a long prompt (chunked prefill), or the rest
   of one. When the pool runs out of blocks, the last running request (the latest
   admitted) is preempted by recompute: it gives back all its blocks, forgets its
   computed tokens and goes to the front of the waiting queue. If that is the request
   being scheduled, the step's running part ends there.
2. Then waiting requests, first come first served (preempted ones first), while fewer
   than `max_num_seqs` run and budget is left, but not in a step that preempted. A new
   request starts from its longest prefix of cached full blocks (see kv_pool), never all
   of its tokens: the last is always computed, to give logits. A waiting request that
   cannot get its blocks waits; admission never preempts.

A request that could never fit (longer than `max_model_len`, or more KV than the whole
pool) is refused by `add_request`, so a request running alone always fits and the oldest
running request always makes progress.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass

from ..errors import InputError
from .kv_pool import KVBlockPool
from .request import Request, RequestStatus, ScheduledRequest, SchedulerOutput


@dataclass
class SchedulerStats:
    num_preemptions: int = 0
    prefix_cache_queries: int = 0   # tokens looked up in the prefix cache, at admission
    prefix_cache_hits: int = 0      # of those, tokens whose KV came from the cache
    num_computed_tokens: int = 0    # tokens fed to the model, in all


class Scheduler:
    def __init__(self, pool: KVBlockPool, *, max_num_batched_tokens: int = 2048, max_num_seqs: int = 64,
                 max_model_len: int):
        if min(max_num_batched_tokens, max_num_seqs, max_model_len) < 1:
            raise InputError(f"Scheduler needs max_num_batched_tokens, max_num_seqs and max_model_len >= 1, got "
                             f"{max_num_batched_tokens}, {max_num_seqs} and {max_model_len}")
        self.pool = pool
        self.max_num_batched_tokens = max_num_batched_tokens
        self.max_num_seqs = max_num_seqs
        self.max_model_len = max_model_len
        self.waiting: deque[Request] = deque()
        self.running: list[Request] = []
        self.stats = SchedulerStats()
        self._requests: dict[str, Request] = {}     # waiting and running, by id
        self._finished_ids: list[str] = []          # since the last step

    @property
    def num_waiting(self) -> int:
        return len(self.waiting)

    @property
    def num_running(self) -> int:
        return len(self.running)

    def has_unfinished(self) -> bool:
        return bool(self._requests)

    def get_request(self, request_id: str) -> Request | None:
        """The waiting or running request with this id; None once it finished or if unknown."""
        return self._requests.get(request_id)

    def add_request(self, request: Request) -> None:
        """Queue a new request; InputError if its id is taken or it could never fit."""
        rid, params = request.request_id, request.sampling_params
        if rid in self._requests:
            raise InputError(f"request id {rid!r} is already in use")
        if request.status is not RequestStatus.WAITING or request.num_computed_tokens:
            raise InputError(f"request {rid!r} is {request.status.name} with {request.num_computed_tokens} "
                             f"computed tokens; a new request must be WAITING with none")
        num_prompt = request.num_prompt_tokens
        if num_prompt == 0:
            raise InputError(f"request {rid!r} has an empty prompt")
        if params.max_tokens is None:
            if num_prompt >= self.max_model_len:
                raise InputError(f"request {rid!r}: its prompt has {num_prompt} tokens, which leaves no room for "
                                 f"output in max_model_len {self.max_model_len}")
            max_len = self.max_model_len
        else:
            max_len = num_prompt + params.max_tokens
            if max_len > self.max_model_len:
                raise InputError(f"request {rid!r} needs {max_len} tokens (prompt {num_prompt} + max_tokens "
                                 f"{params.max_tokens}) but max_model_len is {self.max_model_len}")
        # The last sampled token is never fed to the model, so it needs no KV slot.
        num_blocks = self.pool.num_blocks_for(max_len - 1)
        if num_blocks > self.pool.num_blocks:
            raise InputError(f"request {rid!r} needs KV for up to {max_len - 1} tokens ({num_blocks} blocks of "
                             f"{self.pool.block_size}) but the KV cache has {self.pool.num_blocks} blocks")
        self._requests[rid] = request
        self.waiting.append(request)

    def schedule(self) -> SchedulerOutput:
        """Pick this step's requests and tokens, and allocate the blocks they need."""
        budget = self.max_num_batched_tokens
        scheduled: list[ScheduledRequest] = []
        preempted: list[str] = []
        i = 0
        while i < len(self.running) and budget > 0:
            request = self.running[i]
            num_new = min(request.num_tokens - request.num_computed_tokens, budget)
            while not self.pool.allocate(request.request_id, request.all_token_ids,
                                         request.num_computed_tokens + num_new):
                victim = self.running.pop()
                self._preempt(victim)
                preempted.append(victim.request_id)
                if victim is request:
                    break
            else:   # allocated (not preempted itself)
                scheduled.append(self._scheduled(request, num_new))
                budget -= num_new
                i += 1

        while self.waiting and budget > 0 and len(self.running) < self.max_num_seqs and not preempted:
            request = self.waiting[0]
            tokens = request.all_token_ids
            # prompt_logprobs needs logits at every prompt position, so nothing can be skipped.
            hits = self.pool.cached_prefix(tokens[:-1]) if request.sampling_params.prompt_logprobs is None else []
            num_cached = len(hits) * self.pool.block_size
            num_new = min(len(tokens) - num_cached, budget)
            if not self.pool.allocate(request.request_id, tokens, num_cached + num_new, cached=hits):
                break
            self.waiting.popleft()
            if request.status is RequestStatus.WAITING:
                request.num_cached_tokens = num_cached
            request.move(RequestStatus.RUNNING)
            request.num_computed_tokens = num_cached
            self.running.append(request)
            self.stats.prefix_cache_queries += len(tokens)
            self.stats.prefix_cache_hits += num_cached
            scheduled.append(self._scheduled(request, num_new))
            budget -= num_new

        num_batched = self.max_num_batched_tokens - budget
        self.stats.num_computed_tokens += num_batched
        finished, self._finished_ids = self._finished_ids, []
        return SchedulerOutput(scheduled, num_batched, preempted_ids=preempted, finished_ids=finished)

    def update_from_output(self, output: SchedulerOutput, sampled: dict[str, int]) -> list[Request]:
        """Advance the scheduled requests by what the step computed, append the sampled
        tokens (`sampled`: request id -> token, for each request scheduled with `sample`)
        and finish those that stop. Returns the requests that finished."""
        # Requests aborted since the step was scheduled are skipped.
        items = [item for item in output.scheduled if item.request.status is RequestStatus.RUNNING]
        missing = [item.request.request_id for item in items if item.sample and item.request.request_id not in sampled]
        if missing:
            raise InputError(f"no sampled token for requests {missing}, which this step was to sample")
        finished = []
        for item in items:
            request = item.request
            request.num_computed_tokens += len(item.token_ids)
            if not item.sample:
                continue
            token = sampled[request.request_id]
            request.output_token_ids.append(token)
            status = self._stop_status(request, token)
            if status is not None:
                self._finish(request, status)
                finished.append(request)
        return finished

    def finish_requests(self, request_ids: str | Iterable[str], status: RequestStatus) -> None:
        """Finish requests from outside (abort, a stop string): their blocks are freed and
        they leave the scheduler. Unknown or already finished ids are ignored."""
        if isinstance(request_ids, str):
            request_ids = [request_ids]
        for rid in request_ids:
            request = self._requests.get(rid)
            if request is not None:
                self._finish(request, status)

    def _scheduled(self, request: Request, num_new: int) -> ScheduledRequest:
        start = request.num_computed_tokens
        end = start + num_new
        return ScheduledRequest(request, request.all_token_ids[start:end], start,
                                list(self.pool.block_table(request.request_id)), sample=end == request.num_tokens)

    def _preempt(self, request: Request) -> None:
        request.move(RequestStatus.PREEMPTED)
        self.pool.free(request.request_id)
        request.num_computed_tokens = 0
        self.waiting.appendleft(request)
        self.stats.num_preemptions += 1

    def _finish(self, request: Request, status: RequestStatus) -> None:
        was = request.status
        request.move(status)   # raises InvalidTransition before anything changes
        if was is RequestStatus.RUNNING:
            self.running.remove(request)
        else:
            self.waiting.remove(request)
        self.pool.free(request.request_id)
        del self._requests[request.request_id]
        self._finished_ids.append(request.request_id)

    def _stop_status(self, request: Request, token: int) -> RequestStatus | None:
        params = request.sampling_params
        num_output = len(request.output_token_ids)
        if num_output >= params.min_tokens:
            if token in params.stop_token_ids:
                request.stop_reason = token
                return RequestStatus.FINISHED_STOPPED
            if token in request.eos_token_ids and not params.ignore_eos:
                return RequestStatus.FINISHED_STOPPED
        if params.max_tokens is not None and num_output >= params.max_tokens:
            return RequestStatus.FINISHED_LENGTH
        if request.num_tokens >= self.max_model_len:
            return RequestStatus.FINISHED_LENGTH
        return None
