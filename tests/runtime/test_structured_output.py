"""Structured outputs in the engine (offline `LLM`, tiny random Llama with SmolLM2's
tokenizer): every sample of a random model follows its grammar, with n > 1, beside plain
requests, through preemption; masks are computed on the mask worker while the model runs,
or first on the engine's thread where no core is free for the worker;
grammars are compiled once; a spec the engine cannot take is an InputError before anything
is queued."""

import asyncio
import json
import re
import threading

import jsonschema
import pytest

from ember import SamplingParams, StructuredOutputsParams
from ember.errors import InputError

from .test_engine import BLOCK, make_llm, prompts

SCHEMA = {"type": "object", "properties": {"ok": {"type": "boolean"}, "n": {"type": "integer", "minimum": 0,
                                                                             "maximum": 99},
                                           "tag": {"enum": ["x", "y"]}},
          "required": ["ok", "n", "tag"], "additionalProperties": False}


@pytest.fixture(scope="module")
def llm(tiny_llm_dir):
    return make_llm(tiny_llm_dir)


def constrained(spec, **kwargs):
    return SamplingParams(**{"temperature": 1.0, "max_tokens": 60, "structured_outputs": spec, **kwargs})


@pytest.mark.parametrize("overlap", [True, False])
def test_samples_follow_their_grammar_beside_plain_requests(llm, overlap):
    """With the masks computed on the mask worker while the model runs (where a core is free
    for it), and on the engine's thread before the model runs (where the kernels' threads
    take every core)."""
    spied = []
    grammars = llm.engine.grammars
    fill = grammars.fill

    def spy(states):
        spied.append((threading.current_thread().name, len(states)))
        return fill(states)

    grammars.fill = spy
    chosen = llm.engine._masks_overlap
    llm.engine._masks_overlap = overlap
    try:
        ps = [{"prompt_token_ids": p} for p in prompts(4, seed=9)]
        params = [constrained({"json": SCHEMA}, n=3), SamplingParams(temperature=0, max_tokens=10, ignore_eos=True),
                  constrained({"regex": r"[a-c]{2}\d"}, n=2), constrained({"choice": ["yes", "no", "maybe"]})]
        outs = llm.generate(ps, params, use_tqdm=False)
    finally:
        grammars.fill = fill
        llm.engine._masks_overlap = chosen
    for c in outs[0].outputs:
        assert c.finish_reason == "stop"
        jsonschema.validate(json.loads(c.text), SCHEMA)
    assert len(outs[1].outputs[0].token_ids) == 10
    assert all(re.fullmatch(r"[a-c]{2}\d", c.text) for c in outs[2].outputs)
    assert outs[3].outputs[0].text in ("yes", "no", "maybe")
    assert spied and all(name.startswith("ember-grammar") == overlap for name, _ in spied)
    assert max(n for _, n in spied) >= 5   # one fill for the step's constrained samples together
    assert not llm.engine.has_unfinished()


def test_the_masks_overlap_the_model_only_where_a_core_is_free(tiny_llm_dir, monkeypatch):
    """The engine decides once, at its first constrained step: masks beside the model where
    the process has more cores than the kernels' threads, else computed first."""
    from ember.runtime import _torch

    for cores, want in ((2, False), (3, True)):
        engine = make_llm(tiny_llm_dir).engine
        monkeypatch.setattr(_torch, "available_cores", lambda: cores)
        monkeypatch.setattr(_torch, "threads", lambda: 2)
        engine.add_request("a", {"prompt_token_ids": prompts(1, seed=5)[0]}, constrained({"regex": "[ab]{3}"}))
        while engine.has_unfinished():
            engine.step()
        assert engine._masks_overlap is want


def test_a_plain_request_is_the_same_beside_constrained_ones(llm):
    p = {"prompt_token_ids": prompts(1, seed=3)[0]}
    plain = SamplingParams(temperature=0, max_tokens=12, ignore_eos=True)
    alone = llm.generate([p], plain, use_tqdm=False)[0].outputs[0].token_ids
    mixed = llm.generate([p, p], [plain, constrained({"json_object": True})], use_tqdm=False)
    assert mixed[0].outputs[0].token_ids == alone


def test_preempted_constrained_requests_stay_valid(tiny_llm_dir):
    per_block = 2 * 2 * BLOCK * 2 * 16 * 4
    small = make_llm(tiny_llm_dir, kv_cache_memory=24 * per_block, max_model_len=96)
    ps = [{"prompt_token_ids": p} for p in prompts(6, seed=4, low=18, high=22)]
    outs = small.generate(ps, constrained({"json": SCHEMA}, max_tokens=40), use_tqdm=False)
    assert small.engine.scheduler.stats.num_preemptions > 0
    for o in outs:
        c = o.outputs[0]
        if c.finish_reason == "stop":
            jsonschema.validate(json.loads(c.text), SCHEMA)
        else:
            assert c.finish_reason == "length" and c.text.startswith('{"ok":')


def test_grammars_compile_once(llm):
    grammars = llm.engine.grammars
    spec = StructuredOutputsParams(regex=r"\d{4}")
    first = grammars.compile(spec)
    assert grammars.compile(StructuredOutputsParams(regex=r"\d{4}")) is first
    assert grammars.compile(StructuredOutputsParams(json={"type": "object"})) is \
        grammars.compile(StructuredOutputsParams(json='{"type":"object"}'))


@pytest.mark.parametrize("spec,message", [
    ({"json": {"type": "strnig"}}, "strnig"),
    ({"regex": "a(b"}, "unclosed group"),
    ({"grammar": "root ::= undefined"}, "undefined"),
    ({"grammar": "start: nothing"}, "nothing"),
])
def test_a_spec_the_engine_cannot_take_is_refused_before_queueing(llm, spec, message):
    with pytest.raises(InputError, match=message):
        llm.generate("hello", constrained(spec), use_tqdm=False)
    assert not llm.engine.has_unfinished() and llm.engine.pool.num_free_blocks == llm.engine.pool.num_blocks


@pytest.mark.parametrize("fields,message", [
    ({}, "exactly one of"),
    ({"regex": "a", "choice": ["b"]}, "exactly one of"),
    ({"choice": []}, "non-empty list"),
    ({"choice": ["a", ""]}, "non-empty list"),
    ({"json": "{not json"}, "not valid JSON"),
    ({"json": [1, 2]}, "JSON schema"),
    ({"grammar": "  "}, "non-empty EBNF or Lark"),
    ({"json_object": False}, "exactly one of"),
])
def test_params_are_checked(fields, message):
    with pytest.raises(InputError, match=message):
        StructuredOutputsParams(**fields)
    with pytest.raises(InputError):
        SamplingParams(structured_outputs=fields)


def test_async_prepare_refuses_a_bad_spec(tiny_llm_dir):
    from ember import AsyncLLM

    llm = AsyncLLM(tiny_llm_dir, block_size=BLOCK, kv_cache_memory=1 << 20, max_model_len=128)
    try:
        async def main():
            with pytest.raises(InputError, match="strnig"):
                async for _ in llm.generate("hi", constrained({"json": {"type": "strnig"}})):
                    pass
            outs = [o async for o in llm.generate("hi", constrained({"choice": ["a", "b"]}))]
            return outs[-1]

        last = asyncio.run(main())
        assert last.finished and last.outputs[0].text in ("a", "b")
    finally:
        llm.shutdown()
