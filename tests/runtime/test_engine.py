"""The LLM engine end to end on a tiny random-init Llama with a real tokenizer: continuous
batching, chunked prefill, prefix caching, preemption, seeded sampling, the request
lifecycle, and the LLM / AsyncLLM APIs."""

import asyncio

import ml_dtypes
import numpy as np
import pytest

import ember
from ember import LLM, AsyncLLM, SamplingParams
from ember.errors import InputError
from ember.runtime.engine import StepError
from ember.runtime.model_runner import ModelRunner

BLOCK = 4


def make_llm(folder, **options):
    defaults = dict(block_size=BLOCK, kv_cache_memory=1024 * 256, max_num_batched_tokens=64, max_num_seqs=16,
                    max_model_len=512)
    return LLM(folder, **{**defaults, **options})


def prompts(n, seed=0, low=3, high=40):
    rng = np.random.default_rng(seed)
    return [rng.integers(1000, 40000, int(k)).tolist() for k in rng.integers(low, high, n)]


def greedy(max_tokens):
    return SamplingParams(temperature=0, max_tokens=max_tokens, ignore_eos=True)


def tokens(outputs):
    return [o.outputs[0].token_ids for o in outputs]


def assert_pool_free(engine):
    engine.pool.check()
    assert engine.pool.num_free_blocks == engine.pool.num_blocks
    assert not engine.has_unfinished()


@pytest.fixture(scope="module")
def llm(tiny_llm_dir):
    return make_llm(tiny_llm_dir)


@pytest.fixture(scope="module")
def alone(llm):
    """Each request's greedy tokens run on its own (cached per prompt and length)."""
    cache = {}

    def run(prompt, max_tokens):
        key = (tuple(prompt), max_tokens)
        if key not in cache:
            cache[key] = tokens(llm.generate([{"prompt_token_ids": prompt}], greedy(max_tokens), use_tqdm=False))[0]
        return cache[key]

    return run


def test_batch_of_mixed_lengths_equals_each_alone(llm, alone):
    ps, lengths = prompts(6, seed=1), [5, 12, 1, 20, 7, 9]
    outs = llm.generate([{"prompt_token_ids": p} for p in ps], [greedy(n) for n in lengths], use_tqdm=False)
    assert tokens(outs) == [alone(p, n) for p, n in zip(ps, lengths)]
    assert [len(t) for t in tokens(outs)] == lengths
    assert all(o.outputs[0].finish_reason == "length" for o in outs)
    assert_pool_free(llm.engine)


def test_greedy_tokens_equal_transformers_greedy_generate(llm, tiny_llm_dir):
    import torch
    from transformers import AutoModelForCausalLM

    reference = AutoModelForCausalLM.from_pretrained(tiny_llm_dir, dtype=torch.float32).eval()
    for prompt in prompts(3, seed=20):
        with torch.no_grad():
            want = reference.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                                      max_new_tokens=16, do_sample=False, eos_token_id=None, pad_token_id=0)
        got = llm.generate([{"prompt_token_ids": prompt}], greedy(16), use_tqdm=False)[0]
        assert got.outputs[0].token_ids == want[0, len(prompt):].tolist()
        assert got.outputs[0].text == llm.tokenizer.decode(got.outputs[0].token_ids, skip_special_tokens=True)


def test_chunked_prefill_gives_the_same_tokens(tiny_llm_dir, alone):
    small = make_llm(tiny_llm_dir, max_num_batched_tokens=8)  # every prompt here is prefilled in chunks
    ps = prompts(4, seed=2, low=20, high=60)
    outs = small.generate([{"prompt_token_ids": p} for p in ps], greedy(6), use_tqdm=False)
    assert tokens(outs) == [alone(p, 6) for p in ps]


def test_prefix_cache_hit_skips_the_shared_prompt(tiny_llm_dir):
    llm = make_llm(tiny_llm_dir)
    cold = make_llm(tiny_llm_dir, enable_prefix_caching=False)
    shared = prompts(1, seed=3, low=33, high=34)[0]          # 33 tokens: 8 full blocks
    first, second = shared + [1234, 2345], shared + [3456]
    llm.generate([{"prompt_token_ids": first}], greedy(4), use_tqdm=False)
    stats = llm.engine.scheduler.stats
    hits, computed = stats.prefix_cache_hits, stats.num_computed_tokens
    out = llm.generate([{"prompt_token_ids": second}], greedy(4), use_tqdm=False)
    assert stats.prefix_cache_hits - hits == 32
    assert out[0].num_cached_tokens == 32
    # the 2 prompt tokens after the shared blocks, then 3 decode steps (the 4th token is not fed back)
    assert stats.num_computed_tokens - computed == (len(second) - 32) + 3
    assert tokens(out) == tokens(cold.generate([{"prompt_token_ids": second}], greedy(4), use_tqdm=False))
    assert cold.engine.scheduler.stats.prefix_cache_hits == 0


def test_a_pool_too_small_for_all_requests_preempts_and_still_finishes(tiny_llm_dir, alone):
    per_block = 2 * 2 * BLOCK * 2 * 16 * 4   # layers * (k, v) * tokens * kv heads * head dim * float32
    small = make_llm(tiny_llm_dir, kv_cache_memory=24 * per_block, max_model_len=96)
    assert small.engine.pool.num_blocks == 24
    ps = prompts(6, seed=4, low=18, high=22)
    outs = small.generate([{"prompt_token_ids": p} for p in ps], greedy(20), use_tqdm=False)
    assert small.engine.scheduler.stats.num_preemptions > 0
    assert tokens(outs) == [alone(p, 20) for p in ps]
    assert_pool_free(small.engine)


def test_seeded_sampling_does_not_depend_on_the_batch(llm):
    target = {"prompt_token_ids": prompts(1, seed=5)[0]}
    params = SamplingParams(temperature=0.9, top_p=0.95, top_k=50, seed=1234, max_tokens=12, ignore_eos=True)
    alone = tokens(llm.generate([target], params, use_tqdm=False))[0]
    others = [{"prompt_token_ids": p} for p in prompts(5, seed=6)]
    mixed = [SamplingParams(temperature=1.0, max_tokens=8, ignore_eos=True), greedy(10),
             SamplingParams(temperature=0.5, seed=9, max_tokens=15, ignore_eos=True), greedy(3),
             SamplingParams(temperature=1.3, max_tokens=5, ignore_eos=True)]
    for order in ([0, 1, 2], [2, 0], [4, 3, 1, 0]):
        batch = [others[i] for i in order] + [target]
        outs = llm.generate(batch, [mixed[i] for i in order] + [params], use_tqdm=False)
        assert tokens(outs)[-1] == alone
    unseeded = SamplingParams(temperature=5.0, max_tokens=12, ignore_eos=True)  # the tiny model is peaked
    draws = {tuple(t) for t in tokens(llm.generate([target] * 4, unseeded, use_tqdm=False))}
    assert len(draws) > 1  # without a seed, samples differ


def test_n_samples_share_their_prompt_blocks(llm):
    stats = llm.engine.scheduler.stats
    hits = stats.prefix_cache_hits
    prompt = prompts(1, seed=7, low=30, high=31)[0]          # 7 full blocks
    out = llm.generate([{"prompt_token_ids": prompt}], SamplingParams(n=3, temperature=5.0, seed=5, max_tokens=8,
                                                                       ignore_eos=True), use_tqdm=False)[0]
    assert [o.index for o in out.outputs] == [0, 1, 2]
    assert len({tuple(o.token_ids) for o in out.outputs}) > 1
    assert stats.prefix_cache_hits - hits >= 2 * 28
    assert_pool_free(llm.engine)


def test_stops_finish_reasons_and_logprobs(llm):
    prompt = {"prompt_token_ids": prompts(1, seed=8)[0]}
    free = tokens(llm.generate([prompt], greedy(10), use_tqdm=False))[0]
    out = llm.generate([prompt], SamplingParams(temperature=0, max_tokens=10, stop_token_ids=[free[3]]),
                       use_tqdm=False)[0].outputs[0]
    first = free.index(free[3])
    assert out.token_ids == free[:first + 1] and out.finish_reason == "stop" and out.stop_reason == free[3]

    text = llm.generate([prompt], greedy(10), use_tqdm=False)[0].outputs[0].text
    stop = text[len(text) // 2:len(text) // 2 + 3]
    if stop.strip():
        out = llm.generate([prompt], SamplingParams(temperature=0, max_tokens=10, ignore_eos=True, stop=[stop]),
                           use_tqdm=False)[0].outputs[0]
        assert out.finish_reason == "stop" and out.stop_reason == stop
        assert out.text == text[:text.index(stop)]

    out = llm.generate([prompt], SamplingParams(temperature=0, max_tokens=4, ignore_eos=True, logprobs=3,
                                                prompt_logprobs=2), use_tqdm=False)[0]
    sample = out.outputs[0]
    assert len(sample.logprobs) == 4
    for token, position in zip(sample.token_ids, sample.logprobs):
        assert token in position and position[token].rank == 1      # greedy: the top token
        assert len(position) == 3
    n = len(prompt["prompt_token_ids"])
    assert len(out.prompt_logprobs) == n and out.prompt_logprobs[0] is None
    for token, position in zip(prompt["prompt_token_ids"][1:], out.prompt_logprobs[1:]):
        assert token in position and all(lp.logprob <= 0 for lp in position.values())


def test_chat_uses_the_template(llm):
    out = llm.chat([{"role": "user", "content": "Hello there"}], greedy(5), use_tqdm=False)[0]
    template = llm.tokenizer.apply_chat_template([{"role": "user", "content": "Hello there"}],
                                                 add_generation_prompt=True, tokenize=False)
    assert out.prompt_token_ids == llm.tokenizer.encode(template, add_special_tokens=False)
    assert len(out.outputs[0].token_ids) == 5 and isinstance(out.outputs[0].text, str)


def test_bad_requests_are_refused_and_leave_nothing_behind(llm):
    engine = llm.engine
    with pytest.raises(InputError, match="outside the vocabulary"):
        llm.generate([{"prompt_token_ids": [1, 2, 10**7]}], use_tqdm=False)
    with pytest.raises(InputError, match="512"):
        llm.generate([{"prompt_token_ids": [5] * 600}], use_tqdm=False)
    with pytest.raises(InputError, match="no tokens"):
        llm.generate([{"prompt_token_ids": []}], use_tqdm=False)
    with pytest.raises(InputError, match="top_p"):
        SamplingParams(top_p=1.5)
    with pytest.raises(InputError, match="2 prompts but 1"):
        llm.generate(["a", "b"], [greedy(2)], use_tqdm=False)
    with pytest.raises(InputError, match="unknown engine option"):
        LLM(None, max_seqs=3)
    assert_pool_free(engine)


def test_a_request_id_that_clashes_is_refused_and_the_other_request_goes_on(llm, alone):
    engine, p = llm.engine, prompts(1, seed=17)[0]
    engine.add_request("r", {"prompt_token_ids": p}, SamplingParams(n=2, temperature=0, max_tokens=4, ignore_eos=True))
    for rid in ("r", "r:1"):
        with pytest.raises(InputError, match="r"):
            engine.add_request(rid, {"prompt_token_ids": p}, greedy(4))
    done = []
    while engine.has_unfinished():
        done += [o for o in engine.step() if o.finished]
    assert [o.request_id for o in done] == ["r"]
    assert [s.token_ids for s in done[0].outputs] == [alone(p, 4)] * 2
    assert_pool_free(engine)


def test_aborting_100_in_flight_requests_frees_every_block(llm):
    engine, rng = llm.engine, np.random.default_rng(11)
    ids = [engine.add_request(None, {"prompt_token_ids": p}, greedy(int(rng.integers(5, 40))))
           for p in prompts(130, seed=12, low=5, high=60)]
    aborted = set()
    while len(aborted) < 100:
        engine.step()
        live = [i for i in ids if i in engine._parents and i not in aborted]
        for i in rng.choice(live, size=min(len(live), int(rng.integers(1, 8))), replace=False):
            engine.abort_request(str(i))
            aborted.add(str(i))
        engine.pool.check()
    while engine.has_unfinished():
        engine.step()
    assert_pool_free(engine)


def test_a_failing_step_aborts_its_requests_and_the_engine_goes_on(llm, alone, monkeypatch):
    engine = llm.engine
    engine.add_request("doomed", {"prompt_token_ids": prompts(1, seed=13)[0]}, greedy(5))
    real = engine.runner.execute
    monkeypatch.setattr(engine.runner, "execute", lambda out: (_ for _ in ()).throw(RuntimeError("boom")))
    with pytest.raises(StepError, match="boom") as info:
        engine.step()
    assert info.value.request_ids == ["doomed"]
    monkeypatch.setattr(engine.runner, "execute", real)
    assert_pool_free(engine)
    p = prompts(1, seed=14)[0]
    assert tokens(llm.generate([{"prompt_token_ids": p}], greedy(4), use_tqdm=False))[0] == alone(p, 4)


def test_async_llm_streams_aborts_and_keeps_serving(tiny_llm_dir, alone):
    llm = AsyncLLM(tiny_llm_dir, block_size=BLOCK, kv_cache_memory=1024 * 256, max_model_len=512)

    async def collect(prompt, n, rid):
        seen = []
        async for out in llm.generate({"prompt_token_ids": prompt}, greedy(n), request_id=rid):
            seen.append(list(out.outputs[0].token_ids))
        return seen

    async def abort_early(prompt):
        async for out in llm.generate({"prompt_token_ids": prompt}, greedy(200), request_id="quitter"):
            if len(out.outputs[0].token_ids) >= 3:
                break  # closing the stream aborts the request

    async def bad():
        with pytest.raises(InputError):
            async for _ in llm.generate({"prompt_token_ids": [10**8]}):
                pass

    async def main():
        ps = prompts(3, seed=15)
        results = await asyncio.gather(collect(ps[0], 6, "a"), collect(ps[1], 9, "b"), abort_early(ps[2]), bad())
        return ps, results

    try:
        ps, results = asyncio.run(main())
        for p, n, seen in zip(ps, (6, 9), results):
            assert seen[-1] == alone(p, n)
            assert all(seen[i] == seen[-1][:len(seen[i])] for i in range(len(seen)))  # each extends the last
        for _ in range(100):  # the abort is a command the engine thread takes between steps
            if not llm.engine.has_unfinished():
                break
            asyncio.run(asyncio.sleep(0.02))
        assert_pool_free(llm.engine)
    finally:
        llm.shutdown()


def test_async_abort_ends_the_stream_and_a_slow_reader_gets_the_newest_output(tiny_llm_dir):
    llm = AsyncLLM(tiny_llm_dir, block_size=BLOCK, kv_cache_memory=1024 * 256, max_model_len=512)

    async def main():
        seen = []
        async for out in llm.generate({"prompt_token_ids": prompts(1, seed=16)[0]}, greedy(300), request_id="x"):
            seen.append(len(out.outputs[0].token_ids))
            if len(seen) == 1:
                # a slow reader: the engine's steps meanwhile (at least 3, however fast the
                # machine decodes) collapse into one output
                request = llm.engine.scheduler.get_request("x")
                while request is not None and len(request.output_token_ids) < seen[0] + 3:
                    await asyncio.sleep(0.001)
            else:
                await llm.abort("x")
        return seen

    try:
        seen = asyncio.run(asyncio.wait_for(main(), 30))
        assert len(seen) == 2 and seen[-1] < 300  # it ended at the abort, without a finished output
        assert seen[1] - seen[0] > 1              # the newest output, not the next step's
        assert_pool_free(llm.engine)
    finally:
        llm.shutdown()


def test_stream_yields_the_text_piece_by_piece_and_closing_it_aborts(llm, alone):
    p = prompts(1, seed=18)[0]
    pieces = list(llm.engine.stream("s", {"prompt_token_ids": p}, greedy(6)))
    assert "".join(delta for delta, _ in pieces) == pieces[-1][1].outputs[0].text
    assert pieces[-1][1].finished and pieces[-1][1].outputs[0].token_ids == alone(p, 6)
    stream = llm.engine.stream("t", {"prompt_token_ids": p}, greedy(200))
    next(stream)
    stream.close()
    assert_pool_free(llm.engine)


def test_public_names():
    assert ember.LLM is LLM and ember.AsyncLLM is AsyncLLM and ember.SamplingParams is SamplingParams


def test_async_abort_with_an_error_raises_it_in_the_stream(tiny_llm_dir):
    """abort(id, error): the request stops, its blocks are freed, and its iterator raises
    `error` (how a stopping server ends what is still running)."""
    from ember import ExecutionError

    llm = AsyncLLM(tiny_llm_dir, block_size=BLOCK, kv_cache_memory=1024 * 256, max_model_len=512)

    async def main():
        seen = 0
        with pytest.raises(ExecutionError, match="the server is stopping"):
            async for out in llm.generate({"prompt_token_ids": prompts(1, seed=17)[0]}, greedy(300),
                                          request_id="x"):
                seen = len(out.outputs[0].token_ids)
                await llm.abort("x", ExecutionError("the server is stopping"))
        return seen

    try:
        assert 0 < asyncio.run(asyncio.wait_for(main(), 30)) < 300
        assert_pool_free(llm.engine)
    finally:
        llm.shutdown()


def _rss_mib() -> float:
    with open("/proc/self/statm") as f:
        import os

        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def test_the_kv_cache_is_resident_from_the_start(tiny_llm_dir):
    """The cache the budget names is taken when the engine starts (every page resident),
    so resident memory does not climb toward the budget as traffic first touches its
    blocks (SmolLM2's soak: 2.05 -> 2.69 GB over 500 requests with np.zeros' lazy
    pages); it holds zeros and takes writes."""
    from ember.runtime.model_runner import _resident_zeros

    before = _rss_mib()
    cache = _resident_zeros((64, 1024, 256), np.float32)  # 64 MiB
    assert _rss_mib() - before > 60
    assert cache.flags.writeable and not cache.any()
    cache[3, 2, 1] = 5.0
    assert cache.sum() == 5.0
    llm = make_llm(tiny_llm_dir, kv_cache_memory=16 << 20)
    caches = llm.engine.runner.caches
    assert sum(c.nbytes for c in caches.values()) > 15 << 20
    assert all(not c.any() for c in caches.values())
    import mmap

    def owner(a):
        while isinstance(a, np.ndarray):
            a = a.base
        return a.obj if isinstance(a, memoryview) else a

    assert all(isinstance(owner(c), mmap.mmap) for c in caches.values())  # populated mappings


@pytest.mark.parametrize("name, dtype, times", [("float16", np.float16, 2), ("fp8", ml_dtypes.float8_e4m3fn, 4),
                                                 ("float8_e4m3fn", ml_dtypes.float8_e4m3fn, 4),
                                                 ("int8", np.int8, 64 / 20)])
def test_a_kv_cache_of_its_own_type_in_a_float32_model(tiny_llm_dir, llm, name, dtype, times):
    """LLM(kv_cache_dtype="float16" | "fp8" | "int8"): the caches float16, float8 e4m3fn or
    int8 (2, 4 or 3.2 times the blocks in the same memory: an int8 row of the tiny model's 16
    values holds its 4-byte scale too), the model float32, attention on the kernel built
    for that pair (no fallback, no torch path), and the greedy tokens of the float32 cache's
    engine: rounding keys and values moves the tiny model's logits by far less than the gaps
    between its top tokens. A type ember keeps no cache in is a clear error."""
    from ember.runtime import externs_paged

    other = make_llm(tiny_llm_dir, kv_cache_dtype=name)
    runner = other.engine.runner
    assert runner.compiled.stats.fallback_nodes == []
    assert all(c.dtype == dtype for c in runner.caches.values())
    assert ModelRunner.bytes_per_block(llm.engine.runner.compiled) == times * ModelRunner.bytes_per_block(runner.compiled)
    assert 0 <= other.engine.pool.num_blocks - int(times * llm.engine.pool.num_blocks) <= times
    assert f"paged_attention-float32-{np.dtype(dtype).name.replace('_', '')}" in runner.compiled.program.libraries
    calls = []
    original = externs_paged.gathered
    externs_paged.gathered = lambda *a: calls.append(a) or original(*a)
    try:
        batch = prompts(6, seed=11)
        got = tokens(other.generate([{"prompt_token_ids": p} for p in batch], greedy(8), use_tqdm=False))
    finally:
        externs_paged.gathered = original
    assert calls == []
    want = tokens(llm.generate([{"prompt_token_ids": p} for p in batch], greedy(8), use_tqdm=False))
    assert got == want
    with pytest.raises(InputError, match="kv_cache_dtype 'int3' is not one ember keeps a KV cache in"):
        make_llm(tiny_llm_dir, kv_cache_dtype="int3")


def test_a_bfloat16_engine_on_the_cpu(tiny_llm_dir):
    """LLM(dtype="bfloat16"): its caches and logits bfloat16 (handed to the sampler through
    their bits), no node on the reference."""
    llm = make_llm(tiny_llm_dir, dtype="bfloat16")
    assert llm.engine.runner.compiled.stats.fallback_nodes == []
    assert all(c.dtype == ml_dtypes.bfloat16 for c in llm.engine.runner.caches.values())
    out = llm.generate([{"prompt_token_ids": prompts(1, seed=4)[0]}], greedy(5), use_tqdm=False)[0]
    assert len(out.outputs[0].token_ids) == 5
