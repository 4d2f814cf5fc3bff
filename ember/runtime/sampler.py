"""The next token of every request in a batch, from its row of logits and its own
`SamplingParams` (vLLM's and OpenAI's meanings; see ember/runtime/request.py).

    state = SamplingState(params, prompt_token_ids, eos_token_ids)   # once per request
    out = Sampler().sample(logits, [state, ...])                      # each step; row i is states[i]
    out.token_ids, out.logprobs

One step, as vLLM v1 orders it:

1. Logprobs (rows that ask) are the log-softmax of the raw logits, before anything
   below: what the model said, not what the sampler made of it (vLLM's "raw_logprobs").
2. Structured outputs: the rows with a grammar get -inf at every token their grammar's
   bitmask (ember/runtime/structured_output.py; computed while the model ran) forbids.
   min_tokens: until a request has that many outputs, its stop tokens (eos unless
   ignore_eos, and stop_token_ids) are -inf — except in a row with a grammar, whose
   bitmask alone says when the output may end.
3. Penalties (`apply_penalties`): repetition over prompt + output tokens (HF: a positive
   logit is divided by the penalty, a negative one multiplied), then frequency and
   presence over output tokens (OpenAI: logit -= frequency * count + presence * (count > 0)).
4. Greedy rows (temperature 0) take the argmax.
5. The other rows: logits / temperature; min_p drops tokens whose probability is below
   min_p times the top one's; top_k keeps the k largest; top_p keeps the smallest set of
   most likely tokens whose mass reaches top_p (the top token always); then one draw
   from the softmax.

Notes:

1. A request's draws depend only on its own logits and its own `torch.Generator`, so a
   seeded request makes the same tokens in any batch, in any row. Each row draws by
   inverse CDF: one uniform number from its generator (on the CPU, whatever device the
   logits are on), then one batched float64 cumsum and searchsorted for all rows. One
   number per row per step, where an exponential race would draw vocab-many.
2. Each filter runs only over the rows that use it, and sorts as little as it can:
   top_k is a topk; top_p looks for its nucleus among a row's 128 most likely tokens and
   sorts only the rows whose nucleus is wider. Penalty tensors only for rows with
   penalties; greedy rows are one argmax.
3. top_k, min_p and top_p each drop tokens below a threshold, so a token that ties with
   the last one kept is kept too (the set is the same in any order of the vocabulary).
4. Penalties need each request's output token counts: a dense int32 [vocab] tensor per
   request that uses them, built at its first step on the logits' device and updated
   with the tokens sampled since, so a step costs O(1) per request, not O(its length).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import torch

from ..errors import InputError
from .request import SamplingParams

_NUCLEUS_CANDIDATES = 128  # top_p looks for its tokens among this many first (see _top_p)


@dataclass
class Logprob:
    """One token's log-probability at a position, and its rank there (1 = the most likely)."""

    logprob: float
    rank: int
    decoded_token: str | None = None


@dataclass
class SamplerOutput:
    """One step's tokens, row by row. `logprobs` (None when no row asked for them) holds,
    per row, {token id: Logprob} for the chosen token first, then the row's
    `params.logprobs` most likely tokens; None for the rows that did not ask."""

    token_ids: list[int]
    logprobs: list[dict[int, Logprob] | None] | None = None


class SamplingState:
    """What sampling one request needs across its steps: its params, its own random
    generator (seeded by `params.seed`, else randomly), the stop tokens that min_tokens
    holds back, and what the penalties count. `Sampler.sample` records each token it
    picks (`append`)."""

    def __init__(self, params: SamplingParams, prompt_token_ids: Sequence[int], eos_token_ids: Iterable[int] = (),
                 grammar=None):
        self.params = params
        self.grammar = grammar   # a structured_output.GrammarState, which each token advances
        self.generator = torch.Generator()
        if params.seed is None:
            self.generator.seed()
        else:
            self.generator.manual_seed(params.seed)
        self.num_output_tokens = 0
        stops = set(params.stop_token_ids) | (set() if params.ignore_eos else set(eos_token_ids))
        self.min_tokens_stop_ids = sorted(stops) if params.min_tokens else []
        self.uses_penalties = (params.repetition_penalty != 1 or params.presence_penalty != 0
                               or params.frequency_penalty != 0)
        self._prompt_ids = sorted(set(prompt_token_ids)) if self.uses_penalties else []
        self._prompt_mask: torch.Tensor | None = None   # bool [vocab], built at the first step
        self._counts: torch.Tensor | None = None        # int32 [vocab] output token counts
        self._uncounted: list[int] = []                 # outputs since _counts was last updated

    def append(self, token_id: int) -> None:
        """Record an output token."""
        self.num_output_tokens += 1
        if self.grammar is not None:
            self.grammar.accept(token_id)
        if self.uses_penalties:
            self._uncounted.append(token_id)

    @property
    def masks_stop_tokens(self) -> bool:
        return (self.num_output_tokens < self.params.min_tokens and bool(self.min_tokens_stop_ids)
                and self.grammar is None)

    def penalty_tensors(self, vocab_size: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """(prompt token mask bool [vocab], output token counts int32 [vocab])."""
        if self._counts is None:
            self._prompt_mask = torch.zeros(vocab_size, dtype=torch.bool, device=device)
            self._prompt_mask[torch.tensor(self._prompt_ids, dtype=torch.long, device=device)] = True
            self._counts = torch.zeros(vocab_size, dtype=torch.int32, device=device)
        if self._uncounted:
            ids = torch.tensor(self._uncounted, dtype=torch.long, device=device)
            self._counts.index_put_((ids,), torch.ones_like(ids, dtype=torch.int32), accumulate=True)
            self._uncounted.clear()
        return self._prompt_mask, self._counts


class Sampler:
    """Picks the next token of each row of a batch's logits (see the module doc)."""

    def sample(self, logits: torch.Tensor, states: Sequence[SamplingState],
               token_mask: tuple[list[int], torch.Tensor] | None = None) -> SamplerOutput:
        """`token_mask` (rows, bitmask int32 [len(rows), ceil(vocab / 32)]): the grammar
        rows' allowed tokens, bit t % 32 of word t // 32 (structured_output.py)."""
        if logits.dim() != 2 or logits.shape[0] != len(states):
            raise InputError(f"sampler: expected logits [{len(states)}, vocab] for {len(states)} requests, "
                             f"got {list(logits.shape)}")
        logits = logits.float()
        asked = [i for i, s in enumerate(states) if s.params.logprobs is not None]
        raw_logprobs = torch.log_softmax(logits[asked], dim=-1) if asked else None
        if token_mask is not None and token_mask[0]:
            logits = apply_token_bitmask(logits, *token_mask)
        logits = apply_penalties(_mask_stop_tokens(logits, states), states)

        tokens = logits.argmax(dim=-1)   # the greedy rows' (one pass, cheaper than picking them out)
        drawn = [i for i, s in enumerate(states) if not s.params.greedy]
        if drawn:
            tokens[drawn] = _draw(logits[drawn] if len(drawn) < len(states) else logits, [states[i] for i in drawn])

        token_ids = tokens.tolist()
        for state, token in zip(states, token_ids):
            state.append(token)
        if raw_logprobs is None:
            return SamplerOutput(token_ids)
        per_row: list[dict[int, Logprob] | None] = [None] * len(states)
        rows = logprob_dicts(raw_logprobs, tokens[asked], [states[i].params.logprobs for i in asked])
        for i, row in zip(asked, rows):
            per_row[i] = row
        return SamplerOutput(token_ids, per_row)


def prompt_logprobs(logits: torch.Tensor, next_token_ids: Sequence[int], num_logprobs: int) -> list[dict[int, Logprob]]:
    """The logprobs of prompt tokens: row j of `logits` [P, vocab] is the model's output at
    one prompt position and `next_token_ids[j]` the prompt token that follows it (so a
    whole prompt's rows give every token after the first). Each position: {token id:
    Logprob}, that token first, then the `num_logprobs` most likely."""
    if logits.dim() != 2 or logits.shape[0] != len(next_token_ids):
        raise InputError(f"prompt_logprobs: expected logits [{len(next_token_ids)}, vocab] for "
                         f"{len(next_token_ids)} prompt tokens, got {list(logits.shape)}")
    tokens = torch.tensor(next_token_ids, dtype=torch.long, device=logits.device)
    return logprob_dicts(torch.log_softmax(logits.float(), dim=-1), tokens, [num_logprobs] * len(next_token_ids))


def logprob_dicts(logprobs: torch.Tensor, token_ids: torch.Tensor, num_logprobs: Sequence[int]
                  ) -> list[dict[int, Logprob]]:
    """Per row of `logprobs` [R, vocab]: {token: Logprob} for token_ids[r] (its rank: 1 +
    the number of tokens more likely), then the row's num_logprobs[r] most likely."""
    chosen = logprobs.gather(1, token_ids[:, None]).squeeze(1)
    ranks = (logprobs > chosen[:, None]).sum(dim=-1) + 1
    k = min(max(num_logprobs, default=0), logprobs.shape[1])
    top_values, top_ids = logprobs.topk(k, dim=-1)
    rows = []
    for token, value, rank, n, values, ids in zip(token_ids.tolist(), chosen.tolist(), ranks.tolist(), num_logprobs,
                                                  top_values.tolist(), top_ids.tolist()):
        row = {token: Logprob(value, rank)}
        for j in range(min(n, k)):
            row.setdefault(ids[j], Logprob(values[j], j + 1))
        rows.append(row)
    return rows


def apply_token_bitmask(logits: torch.Tensor, rows: list[int], bitmask: torch.Tensor) -> torch.Tensor:
    """`logits` (a new tensor) with -inf at the tokens of its `rows` whose bit in
    `bitmask` (int32 [len(rows), words], bit t % 32 of word t // 32) is 0.

    Branch-free: each byte of the mask looks up its 8 tokens' biases (0 or -inf) in a
    256-row table, and the biases are added (1.6 ms for 64 rows of 49k tokens here, where
    a masked_fill of the unpacked bits took 8-12: its branches mispredict)."""
    vocab, device = logits.shape[1], logits.device
    table = _BIAS_TABLES.get(device)
    if table is None:
        bits = (torch.arange(256)[:, None] >> torch.arange(8)) & 1
        table = _BIAS_TABLES[device] = torch.where(bits == 1, 0.0, -torch.inf).to(device)
    # little-endian words: byte k of word w holds tokens 32w + 8k .. 32w + 8k + 7
    bytes_ = bitmask.contiguous().to(device).view(torch.uint8).long()
    bias = torch.nn.functional.embedding(bytes_, table).view(len(rows), -1)[:, :vocab]
    if rows == list(range(logits.shape[0])):
        return logits + bias
    logits = logits.clone()
    logits[rows] += bias
    return logits


_BIAS_TABLES: dict[torch.device, torch.Tensor] = {}


def apply_penalties(logits: torch.Tensor, states: Sequence[SamplingState]) -> torch.Tensor:
    """`logits` [N, vocab] with each row's repetition, frequency and presence penalties
    applied (see the module doc); a new tensor when any row has them, else `logits`."""
    rows = [i for i, s in enumerate(states) if s.uses_penalties]
    if not rows:
        return logits
    vocab, device = logits.shape[1], logits.device
    masks, counts = zip(*(states[i].penalty_tensors(vocab, device) for i in rows))
    counts = torch.stack(counts).float()
    seen = torch.stack(masks) | (counts > 0)
    params = [states[i].params for i in rows]
    repetition, frequency, presence = (torch.tensor([getattr(p, name) for p in params], device=device)[:, None]
                                       for name in ("repetition_penalty", "frequency_penalty", "presence_penalty"))
    x = logits[rows]
    x = torch.where(seen, torch.where(x > 0, x / repetition, x * repetition), x)
    x = x - frequency * counts - presence * (counts > 0)
    logits = logits.clone()
    logits[rows] = x
    return logits


def _mask_stop_tokens(logits: torch.Tensor, states: Sequence[SamplingState]) -> torch.Tensor:
    """min_tokens: -inf at the stop tokens of the rows that have not made enough tokens yet."""
    rows, cols = [], []
    for i, s in enumerate(states):
        if s.masks_stop_tokens:
            rows += [i] * len(s.min_tokens_stop_ids)
            cols += s.min_tokens_stop_ids
    if not rows:
        return logits
    logits = logits.clone()
    logits[rows, cols] = -torch.inf
    return logits


def _draw(logits: torch.Tensor, states: Sequence[SamplingState]) -> torch.Tensor:
    """One token per row of `logits` (a new tensor, one row per state, none greedy)."""
    device, vocab = logits.device, logits.shape[1]
    params = [s.params for s in states]
    x = logits / torch.tensor([p.temperature for p in params], device=device)[:, None]
    _filter(x, _min_p, {i: p.min_p for i, p in enumerate(params) if p.min_p > 0})
    _filter(x, _top_k, {i: min(p.top_k, vocab) for i, p in enumerate(params) if p.top_k > 0})
    _filter(x, _top_p, {i: p.top_p for i, p in enumerate(params) if p.top_p < 1})
    cdf = torch.softmax(x, dim=-1).double().cumsum(dim=-1)
    uniform = torch.cat([torch.rand(1, generator=s.generator, dtype=torch.float64) for s in states]).to(device)
    target = (uniform * cdf[:, -1])[:, None]
    return torch.searchsorted(cdf, target, right=True).squeeze(1).clamp_(max=vocab - 1)


def _filter(x: torch.Tensor, apply: Callable[[torch.Tensor, torch.Tensor], None], values: dict[int, float]) -> None:
    """`apply(rows, their values)` in place over the rows of x that `values` names."""
    if not values:
        return
    rows, column = list(values), torch.tensor(list(values.values()), device=x.device)
    if len(rows) == x.shape[0]:
        apply(x, column)
    else:
        sub = x[rows]
        apply(sub, column)
        x[rows] = sub


def _min_p(x: torch.Tensor, min_p: torch.Tensor) -> None:
    probs = torch.softmax(x, dim=-1)
    x.masked_fill_(probs < min_p[:, None] * probs.amax(dim=-1, keepdim=True), -torch.inf)


def _top_k(x: torch.Tensor, k: torch.Tensor) -> None:
    kth = x.topk(int(k.max()), dim=-1).values.gather(1, (k - 1)[:, None])
    x.masked_fill_(x < kth, -torch.inf)


def _top_p(x: torch.Tensor, top_p: torch.Tensor) -> None:
    """Drop the tokens less likely than the last of each row's nucleus. The nucleus is
    looked for among the row's _NUCLEUS_CANDIDATES most likely tokens (a topk, not a
    sort); a row whose candidates hold less than top_p of the mass sorts its whole row."""
    probs = torch.softmax(x, dim=-1)
    candidates = probs.topk(min(_NUCLEUS_CANDIDATES, x.shape[1]), dim=-1).values
    wide = candidates.sum(dim=-1) < top_p
    smallest = torch.empty_like(top_p)[:, None]
    smallest[~wide] = _smallest_kept(candidates[~wide], top_p[~wide])
    if wide.any():
        smallest[wide] = _smallest_kept(probs[wide].sort(dim=-1, descending=True).values, top_p[wide])
    x.masked_fill_(probs < smallest, -torch.inf)


def _smallest_kept(sorted_probs: torch.Tensor, top_p: torch.Tensor) -> torch.Tensor:
    """[R, 1]: the probability of the last token of each row's nucleus, given the row's
    probabilities in descending order: the tokens kept are those whose predecessors'
    mass is still below top_p (so always the first)."""
    kept = (sorted_probs.cumsum(dim=-1) - sorted_probs < top_p[:, None]).sum(dim=-1, keepdim=True)
    return sorted_probs.gather(1, kept - 1)
