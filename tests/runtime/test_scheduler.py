"""The scheduler with its block pool: token budgets, chunked prefill, prefix hits,
preemption, stops, aborts; and a hypothesis state machine that drives random mixes of
all of these against a shadow model of what KV each cache slot holds."""

import random
from collections import Counter

import pytest
from hypothesis import settings, strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from ember.errors import InputError
from ember.runtime.kv_pool import KVBlockPool
from ember.runtime.request import InvalidTransition, Request, RequestStatus, SamplingParams
from ember.runtime.scheduler import Scheduler

S = RequestStatus


def make(num_blocks=64, block_size=4, **kwargs):
    kwargs = {"max_num_batched_tokens": 64, "max_num_seqs": 8, "max_model_len": 256, **kwargs}
    return Scheduler(KVBlockPool(num_blocks, block_size), **kwargs)


def request(rid, prompt, eos=(), **params):
    params.setdefault("max_tokens", 4)
    return Request(rid, list(prompt), SamplingParams(**params), eos_token_ids=frozenset(eos))


def step(scheduler, token=7):
    """One engine step that samples `token` for every request that asks."""
    out = scheduler.schedule()
    finished = scheduler.update_from_output(out, {s.request.request_id: token for s in out.scheduled if s.sample})
    scheduler.pool.check()
    return out, finished


def shares(out):
    return {s.request.request_id: (s.start, len(s.token_ids), s.sample) for s in out.scheduled}


def run(scheduler, max_steps=1000):
    for _ in range(max_steps):
        if not scheduler.has_unfinished():
            return
        step(scheduler)
    raise AssertionError("requests still unfinished")


def test_long_prompt_is_prefilled_in_chunks_within_the_budget():
    sch = make(max_num_batched_tokens=16)
    r = request("a", range(50), max_tokens=2)
    sch.add_request(r)
    seen = [shares(step(sch)[0])["a"] for _ in range(4)]
    assert seen == [(0, 16, False), (16, 16, False), (32, 16, False), (48, 2, True)]
    assert r.num_computed_tokens == 50 and r.output_token_ids == [7]
    assert len(sch.pool.block_table("a")) == 13      # ceil(50 / 4)
    out, finished = step(sch)
    assert shares(out) == {"a": (50, 1, True)} and finished == [r] and r.status is S.FINISHED_LENGTH
    assert sch.pool.num_free_blocks == 64 and not sch.has_unfinished()


def test_decode_and_prefill_share_a_step():
    sch = make(max_num_batched_tokens=10)
    sch.add_request(request("a", range(5)))
    assert shares(step(sch)[0]) == {"a": (0, 5, True)}
    sch.add_request(request("b", range(100, 120)))
    out, _ = step(sch)
    assert shares(out) == {"a": (5, 1, True), "b": (0, 9, False)} and out.num_batched_tokens == 10
    assert shares(step(sch)[0]) == {"a": (6, 1, True), "b": (9, 9, False)}
    assert shares(step(sch)[0]) == {"a": (7, 1, True), "b": (18, 2, True)}


def test_prompt_shared_with_a_finished_request_skips_its_cached_blocks():
    sch = make(block_size=4)
    prompt = list(range(30))
    sch.add_request(request("a", prompt, max_tokens=1))
    run(sch)
    assert sch.pool.num_free_blocks == 64
    computed_before = sch.stats.num_computed_tokens
    b = request("b", prompt[:22] + [99, 98, 97])           # 5 full blocks shared
    sch.add_request(b)
    out, _ = step(sch)
    assert b.num_cached_tokens == 20 and shares(out) == {"b": (20, 5, True)}
    assert out.scheduled[0].token_ids == [20, 21, 99, 98, 97]
    assert sch.stats.num_computed_tokens - computed_before == 5
    assert (sch.stats.prefix_cache_queries, sch.stats.prefix_cache_hits) == (30 + 25, 20)


def test_a_whole_prompt_hit_still_computes_the_last_token():
    sch = make(block_size=4)
    sch.add_request(request("a", range(13), max_tokens=1))
    run(sch)
    sch.add_request(b := request("b", range(13)))         # 3 full blocks, 1 token beyond
    assert shares(step(sch)[0]) == {"b": (12, 1, True)} and b.num_cached_tokens == 12
    # A prompt of whole blocks recomputes its last block rather than write into a shared one.
    sch.add_request(c := request("c", range(12)))
    out, _ = step(sch)
    assert shares(out)["c"] == (8, 4, True) and c.num_cached_tokens == 8
    assert sch.pool.block_table("c")[2] not in sch.pool.block_table("b")


def test_same_prompt_twice_in_one_step_shares_blocks():
    sch = make(block_size=4)
    prompt = list(range(18))
    sch.add_request(request("a", prompt))
    sch.add_request(request("b", prompt))
    out, _ = step(sch)
    assert shares(out) == {"a": (0, 18, True), "b": (16, 2, True)}
    a, b = sch.pool.block_table("a"), sch.pool.block_table("b")
    assert a[:4] == b[:4] and a[4] != b[4]
    assert [sch.pool.blocks[i].ref_count for i in a] == [2, 2, 2, 2, 1]
    assert sch.stats.prefix_cache_hits == 16
    run(sch)
    assert sch.pool.num_free_blocks == 64


def test_a_pool_too_small_for_all_preempts_and_still_finishes_every_request():
    sch = make(num_blocks=8, block_size=4, max_num_batched_tokens=32)
    requests = [request(f"r{i}", [i] * 9, max_tokens=12) for i in range(4)]   # up to 20 tokens = 5 blocks each
    for r in requests:
        sch.add_request(r)
    preempted = []
    for _ in range(200):
        if not sch.has_unfinished():
            break
        out, _ = step(sch)
        preempted += out.preempted_ids
        assert sum(len(sch.pool.block_table(r.request_id)) for r in sch.running) + sch.pool.num_free_blocks == 8
    assert sch.stats.num_preemptions == len(preempted) > 0
    assert all(r.status is S.FINISHED_LENGTH and r.output_token_ids == [7] * 12 for r in requests)
    assert sch.pool.num_free_blocks == 8


def test_preempted_request_goes_to_the_front_and_is_reported():
    sch = make(num_blocks=4, block_size=2, max_num_batched_tokens=8)
    a, b = request("a", [1, 2, 3, 4], max_tokens=5), request("b", [5, 6, 7, 8], max_tokens=5)
    sch.add_request(a)
    sch.add_request(b)
    sch.add_request(c := request("c", [9]))
    step(sch)                                         # a and b hold 2 blocks each; c waits
    out, _ = step(sch)                                # a needs a third: b is preempted
    assert out.preempted_ids == ["b"] and shares(out) == {"a": (4, 1, True)}
    assert b.status is S.PREEMPTED and b.num_computed_tokens == 0 and sch.pool.block_table("b") == []
    assert list(sch.waiting) == [b, c] and b.output_token_ids == [7]
    assert shares(step(sch)[0]) == {"a": (5, 1, True)}     # b needs 2 blocks, 1 is free: c waits behind it
    step(sch)
    out, finished = step(sch)
    assert finished == [a] and out.preempted_ids == []
    out, _ = step(sch)
    assert out.finished_ids == ["a"] and shares(out) == {"b": (0, 5, True), "c": (0, 1, True)}
    assert b.status is S.RUNNING


def test_aborting_100_random_requests_in_flight_frees_every_block():
    rng = random.Random(0)
    sch = make(num_blocks=24, block_size=4, max_num_batched_tokens=48, max_num_seqs=12)
    for i in range(100):
        sch.add_request(request(f"r{i}", rng.choices(range(3), k=rng.randint(1, 30)), max_tokens=rng.randint(1, 40)))
    for _ in range(40):
        step(sch, token=rng.randrange(5))
        statuses = Counter(sch.get_request(f"r{i}").status for i in range(100) if sch.get_request(f"r{i}"))
        if statuses.keys() >= {S.WAITING, S.RUNNING, S.PREEMPTED}:
            break
    assert statuses.keys() >= {S.WAITING, S.RUNNING, S.PREEMPTED}, statuses
    ids = [f"r{i}" for i in range(100)]
    rng.shuffle(ids)
    for rid in ids:
        r = sch.get_request(rid)
        sch.finish_requests([rid], S.FINISHED_ABORTED)
        assert r is None or r.status is S.FINISHED_ABORTED
        sch.pool.check()
    assert not sch.has_unfinished() and sch.num_waiting == sch.num_running == 0
    assert sch.pool.num_free_blocks == 24 and sch.pool.usage == 0
    assert sch.schedule().empty


def test_stops_on_tokens_eos_min_tokens_and_model_length():
    def outcome(token, eos=(), prompt=(1,), max_model_len=256, **params):
        sch = make(max_model_len=max_model_len)
        sch.add_request(r := request("r", prompt, eos=eos, **params))
        for _ in range(50):
            if not sch.has_unfinished():
                break
            step(sch, token)
        return r.status, r.stop_reason, len(r.output_token_ids)

    assert outcome(5, stop_token_ids=[5]) == (S.FINISHED_STOPPED, 5, 1)
    assert outcome(5, eos={5}) == (S.FINISHED_STOPPED, None, 1)
    assert outcome(5, eos={5}, ignore_eos=True, max_tokens=3) == (S.FINISHED_LENGTH, None, 3)
    assert outcome(5, eos={5}, stop_token_ids=[5], min_tokens=2, max_tokens=6) == (S.FINISHED_STOPPED, 5, 2)
    assert outcome(5, max_tokens=None, prompt=range(10), max_model_len=14) == (S.FINISHED_LENGTH, None, 4)


def test_finish_requests_stop_string_abort_and_unknown_ids():
    sch = make()
    for rid in "abc":
        sch.add_request(request(rid, [1, 2]))
    step(sch)
    a, b = sch.get_request("a"), sch.get_request("b")
    sch.finish_requests("a", S.FINISHED_STOPPED)
    sch.finish_requests(["b", "nope", "a"], S.FINISHED_ABORTED)
    assert (a.status, b.status) == (S.FINISHED_STOPPED, S.FINISHED_ABORTED)
    assert sch.get_request("a") is None and sch.num_running == 1
    out = sch.schedule()
    assert out.finished_ids == ["a", "b"] and shares(out) == {"c": (2, 1, True)}
    assert sch.schedule().finished_ids == []


def test_invalid_transitions_raise_and_change_nothing():
    r = request("r", [1])
    with pytest.raises(InvalidTransition, match="WAITING to FINISHED_STOPPED"):
        r.move(S.FINISHED_STOPPED)
    with pytest.raises(InvalidTransition):
        r.move(S.PREEMPTED)
    sch = make()
    sch.add_request(r)
    with pytest.raises(InvalidTransition, match="'r' cannot go from WAITING to FINISHED_LENGTH"):
        sch.finish_requests(["r"], S.FINISHED_LENGTH)
    assert sch.get_request("r") is r and list(sch.waiting) == [r]
    step(sch)
    with pytest.raises(InvalidTransition, match="RUNNING to WAITING"):
        sch.finish_requests(["r"], S.WAITING)
    sch.finish_requests(["r"], S.FINISHED_ABORTED)
    with pytest.raises(InvalidTransition, match="FINISHED_ABORTED to RUNNING"):
        r.move(S.RUNNING)


def test_requests_that_can_never_fit_are_refused_with_the_sizes():
    sch = make(num_blocks=4, block_size=4, max_model_len=20)
    with pytest.raises(InputError, match=r"needs 21 tokens \(prompt 13 \+ max_tokens 8\) but max_model_len is 20"):
        sch.add_request(request("a", range(13), max_tokens=8))
    with pytest.raises(InputError, match=r"up to 17 tokens \(5 blocks of 4\) but the KV cache has 4 blocks"):
        sch.add_request(request("b", range(10), max_tokens=8))
    with pytest.raises(InputError, match="no room for output in max_model_len 20"):
        sch.add_request(request("c", range(20), max_tokens=None))
    with pytest.raises(InputError, match="up to 19 tokens"):
        sch.add_request(request("d", range(5), max_tokens=None))
    sch.add_request(e := request("e", range(10), max_tokens=7))   # 16 tokens of KV: exactly the pool
    with pytest.raises(InputError, match="'e' is already in use"):
        sch.add_request(request("e", [1]))
    run(sch)
    assert e.status is S.FINISHED_LENGTH and len(e.output_token_ids) == 7
    assert not sch.has_unfinished()


def test_a_request_aborted_mid_step_is_left_alone_by_the_update():
    sch = make()
    sch.add_request(r := request("r", [1, 2, 3]))
    out = sch.schedule()
    sch.finish_requests(["r"], S.FINISHED_ABORTED)
    assert sch.update_from_output(out, {"r": 5}) == []
    assert r.output_token_ids == [] and r.num_computed_tokens == 0 and sch.pool.num_free_blocks == 64


def test_a_step_without_a_token_it_was_to_sample_is_refused_before_any_change():
    sch = make()
    sch.add_request(a := request("a", [1, 2]))
    sch.add_request(b := request("b", [3, 4]))
    out = sch.schedule()
    with pytest.raises(InputError, match=r"no sampled token for requests \['b'\]"):
        sch.update_from_output(out, {"a": 5})
    assert a.num_computed_tokens == b.num_computed_tokens == 0 and a.output_token_ids == []


def test_prompt_logprobs_needs_every_prompt_position_so_no_prefix_hit():
    sch = make(block_size=4)
    sch.add_request(request("a", range(10), max_tokens=1))
    run(sch)
    sch.add_request(b := request("b", range(10), prompt_logprobs=2))
    assert shares(step(sch)[0]) == {"b": (0, 10, True)} and b.num_cached_tokens == 0


def test_max_num_seqs_caps_the_running_set():
    sch = make(max_num_seqs=2)
    for i in range(3):
        sch.add_request(request(f"r{i}", [i], max_tokens=2))
    assert set(shares(step(sch)[0])) == {"r0", "r1"} and sch.num_waiting == 1
    step(sch)
    assert set(shares(step(sch)[0])) == {"r2"}


# ---- the state machine ------------------------------------------------------

MAX_MODEL_LEN = 24
EOS, STOP = 3, 2     # prompts draw from 0..2, sampled tokens from 0..7
# Prompts start with a cut of one of these, so they share prefixes, and blocks of equal
# tokens recur at many positions (which only the hash chain tells apart).
BASES = [[2] * 14, [0, 1] * 7, [0, 1, 2, 2, 1, 0, 0, 0, 1, 1, 2, 2, 0, 2]]


class SchedulerMachine(RuleBasedStateMachine):
    """Random adds, steps, aborts and stop-string finishes on a small pool. A shadow
    model records, for each cache slot, the token prefix whose KV the runner wrote
    there, so a prefix hit on anything but an identical prefix shows as a wrong slot."""

    @initialize(block_size=st.sampled_from([1, 2, 3, 4]), capacity=st.integers(6, 40), budget=st.integers(1, 20),
                 max_num_seqs=st.integers(1, 4), caching=st.booleans())
    def setup(self, block_size, capacity, budget, max_num_seqs, caching):
        self.pool = KVBlockPool(-(-capacity // block_size), block_size, enable_prefix_caching=caching)
        self.scheduler = Scheduler(self.pool, max_num_batched_tokens=budget, max_num_seqs=max_num_seqs,
                                   max_model_len=MAX_MODEL_LEN)
        self.slots: dict[tuple[int, int], tuple[int, ...]] = {}   # (block, offset) -> prefix written there
        self.finished_since: list[str] = []
        self.num_added = 0

    def ready(self):
        return hasattr(self, "scheduler")

    def holds_its_prefix(self, req, num_tokens, block_ids):
        size, tokens = self.pool.block_size, tuple(req.all_token_ids)
        for p in range(num_tokens):
            written = self.slots.get((block_ids[p // size], p % size))
            assert written == tokens[:p + 1], f"{req.request_id} position {p}: slot holds {written}, not {tokens}"

    @precondition(ready)
    @rule(base=st.sampled_from(BASES), cut=st.integers(0, 14), tail=st.lists(st.integers(0, 2), max_size=6),
          max_tokens=st.integers(1, 8), min_tokens=st.integers(0, 8), ignore_eos=st.booleans(), stop=st.booleans(),
          copies=st.integers(1, 3))
    def add(self, base, cut, tail, max_tokens, min_tokens, ignore_eos, stop, copies):
        """`copies` requests of one prompt: how the engine fans out n > 1 samples."""
        prompt = base[:cut] + tail or [1]
        params = SamplingParams(max_tokens=max_tokens, min_tokens=min(min_tokens, max_tokens), ignore_eos=ignore_eos,
                                stop_token_ids=[STOP] if stop else None)
        max_len = len(prompt) + max_tokens
        fits = max_len <= MAX_MODEL_LEN and self.pool.num_blocks_for(max_len - 1) <= self.pool.num_blocks
        for _ in range(copies):
            req = Request(f"r{self.num_added}", prompt, params, eos_token_ids=frozenset({EOS}))
            self.num_added += 1
            if fits:
                self.scheduler.add_request(req)
            else:
                with pytest.raises(InputError):
                    self.scheduler.add_request(req)

    @precondition(ready)
    @rule(data=st.data(), count=st.integers(1, 3))
    def steps(self, data, count):
        for _ in range(count):
            self.step(lambda: data.draw(st.integers(0, 7)))

    def step(self, draw_token):
        out = self.scheduler.schedule()
        sch, size = self.scheduler, self.pool.block_size
        assert out.finished_ids == self.finished_since
        self.finished_since = []
        assert out.num_batched_tokens == sum(len(s.token_ids) for s in out.scheduled) <= sch.max_num_batched_tokens
        assert len({s.request.request_id for s in out.scheduled}) == len(out.scheduled)
        for rid in out.preempted_ids:
            assert sch.get_request(rid).status is S.PREEMPTED and sch.pool.block_table(rid) == []
        for s in out.scheduled:
            req, end = s.request, s.start + len(s.token_ids)
            assert req.status is S.RUNNING and s.start == req.num_computed_tokens and s.token_ids
            assert s.token_ids == req.all_token_ids[s.start:end] and s.sample == (end == req.num_tokens)
            assert len(s.block_ids) >= self.pool.num_blocks_for(end)
            for p in range(s.start, end):           # the runner writes this step's KV...
                self.slots[(s.block_ids[p // size], p % size)] = tuple(req.all_token_ids[:p + 1])
        for s in out.scheduled:                     # ...then attention reads every earlier position
            self.holds_its_prefix(s.request, s.start + len(s.token_ids), s.block_ids)
        sampled = {s.request.request_id: draw_token() for s in out.scheduled if s.sample}
        for req in sch.update_from_output(out, sampled):
            self.check_finished(req)
            self.finished_since.append(req.request_id)

    def check_finished(self, req):
        params, out = req.sampling_params, req.output_token_ids
        assert sch_free_of(self.scheduler, req)
        if req.status is S.FINISHED_LENGTH:
            assert len(out) == params.max_tokens or req.num_tokens == MAX_MODEL_LEN
        else:
            assert req.status is S.FINISHED_STOPPED and len(out) >= params.min_tokens
            assert out[-1] in params.stop_token_ids or (out[-1] == EOS and not params.ignore_eos)
        assert len(out) <= params.max_tokens

    @precondition(ready)
    @rule(data=st.data(), status=st.sampled_from([S.FINISHED_ABORTED, S.FINISHED_STOPPED]))
    def finish(self, data, status):
        sch = self.scheduler
        pickable = sch.running if status is S.FINISHED_STOPPED else sch.running + list(sch.waiting)
        if not pickable:
            sch.finish_requests(["unknown"], status)
            return
        req = data.draw(st.sampled_from(pickable))
        sch.finish_requests([req.request_id], status)
        assert req.status is status and sch_free_of(sch, req)
        self.finished_since.append(req.request_id)

    @precondition(ready)
    @rule()
    def run_to_completion(self):
        sch = self.scheduler
        # The oldest running request computes >= 1 token a step and is never preempted.
        bound = sum(r.num_prompt_tokens + r.sampling_params.max_tokens for r in [*sch.running, *sch.waiting]) + 1
        for _ in range(bound):
            if not sch.has_unfinished():
                break
            self.step(lambda: 0)
            self.consistent()
        assert not sch.has_unfinished()

    @invariant()
    def consistent(self):
        if not self.ready():
            return
        sch, pool = self.scheduler, self.pool
        pool.check()
        assert len(sch.running) <= sch.max_num_seqs
        assert sch.has_unfinished() == bool(sch.num_waiting + sch.num_running)
        assert all(sch.get_request(r.request_id) is r for r in [*sch.running, *sch.waiting])
        holders = Counter()
        for req in sch.running:
            assert req.status is S.RUNNING
            table = pool.block_table(req.request_id)
            assert len(table) >= pool.num_blocks_for(req.num_computed_tokens)
            holders.update(table)
            self.holds_its_prefix(req, req.num_computed_tokens, table)
        for req in sch.waiting:
            assert req.status in (S.WAITING, S.PREEMPTED) and pool.block_table(req.request_id) == []
            assert req.num_computed_tokens == 0
        # Every held block is held by a running request, as many times as its ref count.
        assert holders == Counter({b.block_id: b.ref_count for b in pool.blocks if b.ref_count})
        assert pool.num_free_blocks == pool.num_blocks - len(holders)
        if not sch.has_unfinished():
            assert pool.num_free_blocks == pool.num_blocks


def sch_free_of(scheduler, req):
    return scheduler.get_request(req.request_id) is None and scheduler.pool.block_table(req.request_id) == []


SchedulerMachine.TestCase.settings = settings(max_examples=200, stateful_step_count=50, deadline=None)
test_scheduler_state_machine = SchedulerMachine.TestCase
