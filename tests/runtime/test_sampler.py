"""The sampler: greedy is the argmax; each filter keeps what its definition keeps (a numpy
reference on random logits); draws follow the distribution; penalties are the formulas;
logprobs are the raw model's; min_tokens holds stop tokens back; and a seeded request
draws the same tokens in any batch."""

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import ember
from ember.runtime.request import SamplingParams
from ember.runtime.sampler import Sampler, SamplingState, apply_penalties, prompt_logprobs


def states(*params: SamplingParams, prompt=(0,), eos=()) -> list[SamplingState]:
    return [SamplingState(p, list(prompt), eos) for p in params]


def sample(logits, *params: SamplingParams, **kwargs) -> list[int]:
    return Sampler().sample(logits, states(*params, **kwargs)).token_ids


def random_logits(rows: int, vocab: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(rows, vocab, generator=torch.Generator().manual_seed(seed)) * 3


def counts_of(probs: list[float], draws: int, **params) -> np.ndarray:
    """How often each token is drawn by `draws` requests (seeds 0..) over logits log(probs)."""
    logits = torch.tensor(probs).log().expand(draws, -1)
    tokens = sample(logits, *(SamplingParams(seed=s, **params) for s in range(draws)))
    return np.bincount(tokens, minlength=len(probs))


def test_greedy_is_the_argmax():
    logits = random_logits(8, 100)
    assert sample(logits, *[SamplingParams(temperature=0)] * 8) == logits.argmax(-1).tolist()


@pytest.mark.parametrize("params", [dict(temperature=1e-3), dict(top_k=1), dict(top_p=1e-6), dict(min_p=0.999)],
                         ids=["temperature-1e-3", "top_k-1", "top_p-tiny", "min_p-0.999"])
def test_filters_that_keep_only_the_top_token_are_greedy(params):
    logits = random_logits(16, 100, seed=1)
    logits[torch.arange(16), logits.argmax(-1)] += 1  # the top token is 1 ahead, so temperature 1e-3 is exact
    assert sample(logits, *(SamplingParams(seed=s, **params) for s in range(16))) == logits.argmax(-1).tolist()


def test_the_caller_logits_are_not_changed():
    logits = random_logits(3, 20)
    before = logits.clone()
    sample(logits, SamplingParams(min_p=0.1, top_k=5, top_p=0.5, repetition_penalty=1.5),
           SamplingParams(temperature=0, frequency_penalty=1.0, min_tokens=2), SamplingParams(), eos=[3])
    assert torch.equal(logits, before)


def test_the_logits_must_have_a_row_per_request():
    with pytest.raises(ember.InputError, match=r"expected logits \[2, vocab\] for 2 requests, got \[3, 10\]"):
        sample(torch.zeros(3, 10), SamplingParams(), SamplingParams())


# -- the distribution -----------------------------------------------------------------------
PROBS = [0.1, 0.2, 0.3, 0.4]


@pytest.mark.parametrize("params, expected", [
    ({}, PROBS),
    ({"temperature": 2.0}, np.sqrt(PROBS) / np.sqrt(PROBS).sum()),   # softmax(log p / 2) ∝ sqrt(p)
    ({"top_k": 2}, [0, 0, 3 / 7, 4 / 7]),
    ({"top_p": 0.75}, [0, 2 / 9, 3 / 9, 4 / 9]),                     # 0.4 + 0.3 < 0.75: 0.2 is needed
    ({"min_p": 0.6}, [0, 0, 3 / 7, 4 / 7]),                          # keeps p >= 0.6 * 0.4
], ids=["plain", "temperature", "top_k", "top_p", "min_p"])
def test_draws_follow_the_distribution(params, expected):
    draws = 4000
    counts = counts_of(PROBS, draws, **params)
    expected = np.asarray(expected, float)
    assert (counts[expected == 0] == 0).all()
    kept = expected > 0
    chi2 = (((counts[kept] - draws * expected[kept]) ** 2) / (draws * expected[kept])).sum()
    assert chi2 < 18.5, (counts, chi2)   # chi-square, <= 3 degrees of freedom, p = 0.0003


def test_min_p_never_draws_a_token_below_the_threshold():
    counts = counts_of([0.5, 0.3, 0.15, 0.05], 4000, min_p=0.2)   # threshold 0.1
    assert counts[3] == 0 and counts[2] > 400


def allowed(logits: np.ndarray, p: SamplingParams, slack: float = 1e-4) -> set[int]:
    """The tokens a definition-by-definition reference keeps (with a little slack at the
    top_p and min_p boundaries, where float32 and float64 may disagree; ties with the
    last token kept are kept, as the sampler does)."""
    x = logits.astype(np.float64) / p.temperature
    keep = np.ones(len(x), bool)
    probs = np.exp(x - x.max()) / np.exp(x - x.max()).sum()
    keep &= probs >= (p.min_p - slack) * probs.max()
    if p.top_k:
        keep &= x >= np.sort(np.where(keep, x, -np.inf))[::-1][min(p.top_k, len(x)) - 1]
    if p.top_p < 1:
        order = [i for i in np.argsort(-x, kind="stable") if keep[i]]
        mass = probs[order] / probs[order].sum()
        last = order[int(np.searchsorted(np.cumsum(mass), p.top_p - slack))]
        keep &= probs >= probs[last] * (1 - 1e-6)  # ties with the last one kept (as float32 sees them) too
    return {int(i) for i in np.flatnonzero(keep)}


@settings(max_examples=40, deadline=None)
@given(st.lists(st.floats(-8, 8), min_size=2, max_size=40, unique=True), st.floats(0.3, 3),
       st.sampled_from([0.0, 0.05, 0.3]), st.sampled_from([0, 1, 3, 10]), st.sampled_from([1.0, 0.9, 0.5, 0.1]))
def test_every_draw_is_a_token_the_filters_keep(logits, temperature, min_p, top_k, top_p):
    params = SamplingParams(temperature=temperature, min_p=min_p, top_k=top_k, top_p=top_p)
    rows = 64
    tokens = sample(torch.tensor(logits).expand(rows, -1),
                    *(SamplingParams(**{**vars(params), "seed": s}) for s in range(rows)))
    assert set(tokens) <= allowed(np.asarray(logits, np.float32), params)


def test_top_p_wider_than_the_candidates_it_looks_at_first():
    """A nucleus of ~1840 tokens (more than the 128 most likely that top_p looks at
    first) beside a narrow one in the same batch: each keeps exactly its own tokens."""
    vocab, rows = 4096, 200
    wide = -torch.arange(vocab) * 1e-4             # mass of the first n: (1 - e^(-n/1e4)) / (1 - e^(-0.4096))
    narrow = -torch.arange(vocab) * 0.1
    logits = torch.stack([wide, narrow] * (rows // 2))
    tokens = sample(logits, *(SamplingParams(top_p=0.5, seed=s) for s in range(rows)))
    limit = {"wide": len(allowed(wide.numpy(), SamplingParams(top_p=0.5), slack=0)),
             "narrow": len(allowed(narrow.numpy(), SamplingParams(top_p=0.5), slack=0))}
    assert limit["wide"] == 1840 and limit["narrow"] == 7
    assert max(tokens[::2]) < limit["wide"] and max(tokens[1::2]) < limit["narrow"]
    assert max(tokens[::2]) > 1024   # kept past the candidates


# -- seeds -------------------------------------------------------------------------------------
def test_a_seeded_request_draws_the_same_tokens_in_any_batch():
    """The same request alone, then among others in different orders and batch sizes:
    the same tokens step after step (its logits are the same; the batch is not)."""
    vocab, steps = 50, 40
    target = SamplingParams(temperature=0.9, top_p=0.95, top_k=30, repetition_penalty=1.2, seed=1234)
    others = [SamplingParams(temperature=0), SamplingParams(seed=5), SamplingParams(min_p=0.1),
              SamplingParams(top_p=0.5, frequency_penalty=0.5), SamplingParams(top_k=3, min_tokens=5)]

    def run(batch_sizes: list[int], position_seed: int) -> list[int]:
        place = torch.Generator().manual_seed(position_seed)
        mine = SamplingState(target, [1, 2, 3])
        pool = [SamplingState(p, [4]) for p in others]
        made = []
        for step in range(steps):
            size = batch_sizes[step % len(batch_sizes)]
            batch = pool[:size - 1]
            at = int(torch.randint(size, (1,), generator=place))
            batch.insert(at, mine)
            logits = random_logits(size, vocab, seed=1000 + step)  # the other rows: noise
            logits[at] = random_logits(1, vocab, seed=step)[0]
            made.append(Sampler().sample(logits, batch).token_ids[at])
        return made

    alone = run([1], 0)
    assert len(set(alone)) > 5
    assert run([6, 3, 2], 1) == alone
    assert run([2, 6], 2) == alone


def test_seeds_choose_the_draws():
    logits = torch.zeros(1, 1000)
    draws = {seed: [sample(logits, SamplingParams(seed=seed))[0] for _ in range(3)] for seed in (1, 2, None)}
    assert len({tuple(d) for d in draws.values()}) == 3


def test_a_request_draws_from_its_own_generator_step_after_step():
    state = SamplingState(SamplingParams(seed=9), [0])
    logits = torch.zeros(1, 1000)
    tokens = [Sampler().sample(logits, [state]).token_ids[0] for _ in range(5)]
    assert len(set(tokens)) == 5 and state.num_output_tokens == 5


def test_greedy_and_drawn_rows_in_one_batch():
    logits = random_logits(4, 60, seed=3)
    mixed = [SamplingParams(temperature=0), SamplingParams(seed=1), SamplingParams(temperature=0),
             SamplingParams(seed=2, top_k=10)]
    tokens = sample(logits, *mixed)
    assert tokens[0] == logits[0].argmax() and tokens[2] == logits[2].argmax()
    assert tokens[1] == sample(logits[1:2], mixed[1])[0] and tokens[3] == sample(logits[3:4], mixed[3])[0]


# -- penalties and min_tokens ------------------------------------------------------------------
def test_penalties_are_the_formulas():
    logits = torch.tensor([[1.0, 2.0, -1.0, 4.0, 0.5]] * 4)
    rows = states(SamplingParams(repetition_penalty=2.0),
                  SamplingParams(frequency_penalty=0.5, presence_penalty=0.25),
                  SamplingParams(repetition_penalty=2.0, frequency_penalty=0.5, presence_penalty=0.25),
                  SamplingParams(), prompt=[1, 2])
    for state in rows:
        for token in (2, 3, 3):
            state.append(token)
    out = apply_penalties(logits, rows)
    # repetition: prompt+output tokens {1, 2, 3}; a positive logit / 2, a negative one * 2
    assert out[0].tolist() == [1.0, 1.0, -2.0, 2.0, 0.5]
    # frequency/presence: output counts {2: 1, 3: 2}; logit -= 0.5 * count + 0.25
    assert out[1].tolist() == [1.0, 2.0, -1.0 - 0.75, 4.0 - 1.25, 0.5]
    assert out[2].tolist() == [1.0, 1.0, -2.0 - 0.75, 2.0 - 1.25, 0.5]
    assert out[3].tolist() == logits[3].tolist()

    rows[1].append(0)   # counts are brought up to date at the next step
    assert apply_penalties(logits, rows)[1].tolist() == [1.0 - 0.75, 2.0, -1.75, 2.75, 0.5]


def test_a_penalty_steers_the_greedy_choice():
    state = SamplingState(SamplingParams(temperature=0, presence_penalty=2.0), [0])
    logits = torch.tensor([[0.0, 3.0, 2.5, 2.0]])
    tokens = [Sampler().sample(logits, [state]).token_ids[0] for _ in range(4)]
    assert tokens == [1, 2, 3, 1]    # each token, once made, loses 2


def test_min_tokens_masks_eos_and_stop_tokens():
    logits = torch.tensor([[0.0, 1.0, 5.0, 4.0, 3.0]])   # eos 2, then stop token 3, most likely
    for params, expected in [
        (SamplingParams(temperature=0, min_tokens=3, stop_token_ids=[3]), [4, 4, 4, 2]),
        (SamplingParams(temperature=0, min_tokens=2, stop_token_ids=[3], ignore_eos=True), [2, 2, 2]),
        (SamplingParams(min_tokens=3, stop_token_ids=[3], seed=0), None),
    ]:
        state = SamplingState(params, [0], eos_token_ids=[2])
        tokens = [Sampler().sample(logits, [state]).token_ids[0] for _ in range(expected and len(expected) or 3)]
        if expected:
            assert tokens == expected
        else:
            assert not {2, 3} & set(tokens)


# -- logprobs --------------------------------------------------------------------------------
def test_logprobs_are_the_raw_log_softmax_with_ranks():
    logits = random_logits(3, 50, seed=4)
    params = [SamplingParams(logprobs=5, temperature=0.5, top_k=3, repetition_penalty=1.5, seed=0),
              SamplingParams(logprobs=0, seed=1), SamplingParams()]
    out = Sampler().sample(logits, states(*params, prompt=logits[0].argsort()[-3:].tolist()))
    raw = torch.log_softmax(logits, -1)
    first, second, third = out.logprobs
    token = out.token_ids[0]
    assert list(first)[0] == token
    assert first[token].logprob == pytest.approx(raw[0, token].item())
    assert first[token].rank == 1 + int((raw[0] > raw[0, token]).sum())
    top = raw[0].topk(5)
    for rank, (lp, i) in enumerate(zip(top.values.tolist(), top.indices.tolist()), 1):
        assert first[i].logprob == pytest.approx(lp) and (first[i].rank == rank or i == token)
    assert set(first) == {token, *top.indices.tolist()}
    assert list(second) == [out.token_ids[1]]
    assert second[out.token_ids[1]].logprob == pytest.approx(raw[1, out.token_ids[1]].item())
    assert third is None


def test_no_logprobs_unless_asked():
    assert Sampler().sample(random_logits(2, 10), states(SamplingParams(), SamplingParams())).logprobs is None


def test_prompt_logprobs():
    prompt = [3, 7, 1, 1, 9]
    logits = random_logits(len(prompt) - 1, 12, seed=5)   # position j predicts prompt[j + 1]
    rows = prompt_logprobs(logits, prompt[1:], 2)
    raw = torch.log_softmax(logits, -1)
    assert len(rows) == 4
    for j, row in enumerate(rows):
        token = prompt[j + 1]
        assert list(row)[0] == token and row[token].logprob == pytest.approx(raw[j, token].item())
        assert row[token].rank == 1 + int((raw[j] > raw[j, token]).sum())
        best = raw[j].topk(2).indices.tolist()
        assert set(row) == {token, *best} and row[best[0]].rank == 1
        assert math.isclose(row[best[1]].logprob, raw[j, best[1]].item(), rel_tol=1e-6)


def pack(allowed: torch.Tensor) -> torch.Tensor:
    """bool [rows, vocab] -> the grammar engines' int32 bitmask (bit t % 32 of word t // 32)."""
    rows, vocab = allowed.shape
    words = (vocab + 31) // 32
    padded = torch.zeros(rows, words * 32, dtype=torch.int64)
    padded[:, :vocab] = allowed.long()
    packed = (padded.view(rows, words, 32) << torch.arange(32)).sum(-1)
    return torch.where(packed >= 2**31, packed - 2**32, packed).to(torch.int32)


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 6), st.integers(2, 100), st.data())
def test_a_token_mask_leaves_only_allowed_tokens(rows, vocab, data):
    """Rows with a mask (any subset, any allowed set) draw and argmax only allowed tokens;
    rows without one are untouched; logprobs stay the raw model's."""
    from hypothesis import event

    logits = random_logits(rows, vocab, seed=data.draw(st.integers(0, 99)))
    masked = sorted(data.draw(st.sets(st.integers(0, rows - 1), min_size=1)))
    allowed = torch.zeros(len(masked), vocab, dtype=torch.bool)
    for i in range(len(masked)):
        allowed[i, data.draw(st.lists(st.integers(0, vocab - 1), min_size=1, max_size=vocab))] = True
    params = [SamplingParams(temperature=data.draw(st.sampled_from([0, 1.0])), seed=r, logprobs=1)
              for r in range(rows)]
    out = Sampler().sample(logits, states(*params), token_mask=(masked, pack(allowed)))
    free = Sampler().sample(logits, states(*params))
    for i, row in enumerate(masked):
        assert allowed[i, out.token_ids[row]], (row, out.token_ids[row])
        if not allowed[i, free.token_ids[row]]:
            event("the mask changed a token")
    for row in set(range(rows)) - set(masked):
        assert out.token_ids[row] == free.token_ids[row]
    raw = torch.log_softmax(logits, -1)
    for row in range(rows):
        token = out.token_ids[row]
        assert math.isclose(out.logprobs[row][token].logprob, raw[row, token].item(), rel_tol=1e-5, abs_tol=1e-5)


def test_a_grammar_row_ignores_min_tokens():
    """min_tokens holds stop tokens back, except where a grammar says the output may end."""

    class Ended:
        def accept(self, token):
            return True

    p = SamplingParams(temperature=0, min_tokens=5)
    logits = torch.zeros(1, 8)
    logits[0, 3] = 5.0  # eos is the argmax
    plain = SamplingState(p, [0], [3])
    constrained = SamplingState(p, [0], [3], grammar=Ended())
    assert Sampler().sample(logits, [plain]).token_ids != [3]
    only_eos = pack(torch.tensor([[False, False, False, True, False, False, False, False]]))
    assert Sampler().sample(logits, [constrained], token_mask=([0], only_eos)).token_ids == [3]
