"""What the LLM engine's parts say to each other about a request.

`SamplingParams` is what a user asks for; `Request` is the engine's record of one
sequence (its tokens, how many of them have KV in the cache, its state); the scheduler's
`SchedulerOutput` is the one thing the model runner reads.

A request moves through these states; any other move raises `InvalidTransition`:

    WAITING ──► RUNNING ──► FINISHED_STOPPED | FINISHED_LENGTH
       │          │  ▲
       │          ▼  │ (rescheduled; its KV is recomputed)
       │        PREEMPTED
       └──────────┴──────► FINISHED_ABORTED   (from any unfinished state)
"""

from __future__ import annotations

import enum
import json
import time
from dataclasses import dataclass, field
from typing import Any

from ..errors import EmberError, InputError


class InvalidTransition(EmberError):
    """A request was moved between two states that are not linked (see the module doc)."""


class RequestStatus(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    PREEMPTED = "preempted"
    FINISHED_STOPPED = "stop"      # a stop token or stop string
    FINISHED_LENGTH = "length"     # max_tokens, or the model's length
    FINISHED_ABORTED = "abort"

    @property
    def finished(self) -> bool:
        return self in _FINISHED


_FINISHED = {RequestStatus.FINISHED_STOPPED, RequestStatus.FINISHED_LENGTH, RequestStatus.FINISHED_ABORTED}
_MOVES = {
    RequestStatus.WAITING: {RequestStatus.RUNNING, RequestStatus.FINISHED_ABORTED},
    RequestStatus.RUNNING: {RequestStatus.PREEMPTED, *_FINISHED},
    RequestStatus.PREEMPTED: {RequestStatus.RUNNING, RequestStatus.FINISHED_ABORTED},
}


@dataclass
class StructuredOutputsParams:
    """What a request's output must be (vLLM's `structured_outputs`): exactly one of

    - `json`: a JSON schema (a dict, or its JSON text): the output is one JSON value it
      validates;
    - `json_object`: True: the output is any JSON object (OpenAI's `{"type": "json_object"}`);
    - `regex`: the whole output matches it;
    - `choice`: the output is one of these strings;
    - `grammar`: a context-free grammar the output is a sentence of, in EBNF (GBNF, as
      llama.cpp writes it) or Lark.

    The grammar engine (ember/runtime/structured_output.py) masks, at each step, the tokens
    that could not continue a valid output; the output ends at the model's end-of-sequence
    token once it is complete. A spec the engine cannot take is an InputError that names it.
    """

    json: str | dict | None = None
    regex: str | None = None
    choice: list[str] | None = None
    grammar: str | None = None
    json_object: bool | None = None

    KINDS = ("json", "json_object", "regex", "choice", "grammar")

    def __post_init__(self):
        given = [k for k in self.KINDS if getattr(self, k) not in (None, False)]
        if len(given) != 1:
            raise InputError("structured outputs take exactly one of json, json_object, regex, choice or grammar, "
                             f"got {given or 'none'}")
        checks = {
            "json": isinstance(self.json, (str, dict)),
            "json_object": self.json_object is True,
            "regex": isinstance(self.regex, str) and self.regex != "",
            "choice": (isinstance(self.choice, (list, tuple)) and len(self.choice) > 0
                       and all(isinstance(c, str) and c for c in self.choice)),
            "grammar": isinstance(self.grammar, str) and self.grammar.strip() != "",
        }
        if not checks[given[0]]:
            expected = {"json": "a JSON schema (a dict or its JSON text)", "json_object": "true",
                        "regex": "a non-empty regular expression", "choice": "a non-empty list of non-empty strings",
                        "grammar": "a non-empty EBNF or Lark grammar"}[given[0]]
            raise InputError(f"structured outputs: {given[0]} must be {expected}")
        if isinstance(self.json, str):
            try:
                self.json = json.loads(self.json)
            except ValueError as e:
                raise InputError(f"structured outputs: json is not valid JSON: {e}") from None
        if self.json is not None and not isinstance(self.json, (dict, bool)):
            raise InputError("structured outputs: json must be a JSON schema object")
        if self.choice is not None:
            self.choice = list(self.choice)

    @property
    def kind(self) -> str:
        return next(k for k in self.KINDS if getattr(self, k) not in (None, False))

    @property
    def spec(self) -> Any:
        return getattr(self, self.kind)

    def key(self) -> tuple[str, str]:
        """What identifies the grammar (the compile cache's key)."""
        spec = self.spec
        return self.kind, spec if isinstance(spec, str) else json.dumps(spec, sort_keys=True)


@dataclass
class SamplingParams:
    """How to pick each request's tokens (the names and meanings of vLLM's and OpenAI's).

    temperature 0 is greedy. top_k 0 (or -1) and top_p 1 and min_p 0 keep every token.
    `seed` makes a request's draws reproducible whatever batch it lands in. Generation
    stops at `max_tokens`, at the model's end-of-sequence token (unless `ignore_eos`), at
    any of `stop_token_ids`, or when the text gains any of the `stop` strings (which the
    text then ends before, unless `include_stop_str_in_output`). `logprobs` k returns the
    log-probability of each chosen token and the k most likely; `prompt_logprobs` k the
    same for every prompt token after the first. `n` samples share their prompt's KV blocks.
    `structured_outputs` (a StructuredOutputsParams, or a dict of its fields) constrains the
    output to a JSON schema, a regex, a choice or a grammar.
    """

    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    seed: int | None = None
    max_tokens: int | None = 16
    min_tokens: int = 0
    stop: list[str] | str | None = None
    stop_token_ids: list[int] | None = None
    include_stop_str_in_output: bool = False
    ignore_eos: bool = False
    logprobs: int | None = None
    prompt_logprobs: int | None = None
    skip_special_tokens: bool = True
    structured_outputs: StructuredOutputsParams | None = None

    def __post_init__(self):
        if isinstance(self.structured_outputs, dict):
            self.structured_outputs = StructuredOutputsParams(**self.structured_outputs)
        elif self.structured_outputs is not None and not isinstance(self.structured_outputs, StructuredOutputsParams):
            raise InputError("structured_outputs must be a StructuredOutputsParams or a dict of its fields, got "
                             f"{type(self.structured_outputs).__name__}")
        if isinstance(self.stop, str):
            self.stop = [self.stop]
        self.stop = list(self.stop or [])
        self.stop_token_ids = [int(t) for t in self.stop_token_ids or []]
        if self.top_k == -1:
            self.top_k = 0
        checks = [
            (isinstance(self.n, int) and self.n >= 1, f"n must be an integer >= 1, got {self.n!r}"),
            (self.temperature >= 0, f"temperature must be >= 0, got {self.temperature}"),
            (0 < self.top_p <= 1, f"top_p must be in (0, 1], got {self.top_p}"),
            (isinstance(self.top_k, int) and self.top_k >= 0, f"top_k must be -1, 0 or positive, got {self.top_k!r}"),
            (0 <= self.min_p <= 1, f"min_p must be in [0, 1], got {self.min_p}"),
            (self.repetition_penalty > 0, f"repetition_penalty must be > 0, got {self.repetition_penalty}"),
            (-2 <= self.presence_penalty <= 2, f"presence_penalty must be in [-2, 2], got {self.presence_penalty}"),
            (-2 <= self.frequency_penalty <= 2, f"frequency_penalty must be in [-2, 2], got {self.frequency_penalty}"),
            (self.max_tokens is None or self.max_tokens >= 1, f"max_tokens must be >= 1, got {self.max_tokens}"),
            (0 <= self.min_tokens and (self.max_tokens is None or self.min_tokens <= self.max_tokens),
             f"min_tokens must be in [0, max_tokens], got {self.min_tokens}"),
            (self.logprobs is None or self.logprobs >= 0, f"logprobs must be >= 0, got {self.logprobs}"),
            (self.prompt_logprobs is None or self.prompt_logprobs >= 0,
             f"prompt_logprobs must be >= 0, got {self.prompt_logprobs}"),
            (all(self.stop), "stop strings must not be empty"),
        ]
        for ok, message in checks:
            if not ok:
                raise InputError(message)

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


@dataclass(eq=False)
class Request:
    """One sequence the engine generates: its prompt, the tokens made so far, and how
    many of all of them have their KV in the cache (`num_computed_tokens`). A request
    with n > 1 samples is fanned out into n of these by the engine."""

    request_id: str
    prompt_token_ids: list[int]
    sampling_params: SamplingParams
    eos_token_ids: frozenset[int] = frozenset()
    arrival_time: float = field(default_factory=time.monotonic)
    output_token_ids: list[int] = field(default_factory=list)
    num_computed_tokens: int = 0
    num_cached_tokens: int = 0          # prompt tokens whose KV came from the prefix cache
    status: RequestStatus = RequestStatus.WAITING
    stop_reason: int | str | None = None  # the stop token id or stop string that ended it

    @property
    def all_token_ids(self) -> list[int]:
        return self.prompt_token_ids + self.output_token_ids

    @property
    def num_tokens(self) -> int:
        return len(self.prompt_token_ids) + len(self.output_token_ids)

    @property
    def num_prompt_tokens(self) -> int:
        return len(self.prompt_token_ids)

    @property
    def finished(self) -> bool:
        return self.status.finished

    def move(self, status: RequestStatus) -> None:
        """Change state; a move the diagram does not have raises InvalidTransition."""
        if status not in _MOVES.get(self.status, ()):
            raise InvalidTransition(f"request {self.request_id!r} cannot go from {self.status.name} to {status.name}")
        self.status = status


@dataclass(frozen=True)
class ScheduledRequest:
    """One request's share of a step: compute `token_ids` at positions start.., with the
    KV blocks `block_ids` (its whole block table, long enough for start + len(token_ids)).
    `sample`: this step computes the request's last known token, so the runner returns
    logits for it (and the engine samples the next token)."""

    request: Request
    token_ids: list[int]
    start: int
    block_ids: list[int]
    sample: bool


@dataclass(frozen=True)
class SchedulerOutput:
    """What one engine step computes: the scheduled requests in batch order (their
    tokens are flattened in this order), and what changed since the last step."""

    scheduled: list[ScheduledRequest]
    num_batched_tokens: int
    preempted_ids: list[str] = field(default_factory=list)   # lost their KV this step
    finished_ids: list[str] = field(default_factory=list)    # finished or aborted since the last step

    @property
    def empty(self) -> bool:
        return not self.scheduled
