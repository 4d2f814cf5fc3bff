"""The OpenAI-compatible API through the official openai client against a live server:
completions and chat, whole and streamed, usage, n, stop strings, seeds, logprobs, many
concurrent streams."""

import asyncio

import pytest

from .conftest import MODEL, wait_until

IGNORE_EOS = {"ignore_eos": True}


def chat_prompt_len(llm, messages):
    from ember.llm import _chat_prompt

    return len(_chat_prompt(llm.tokenizer, messages)["prompt_token_ids"])


def test_health_and_models(server, client):
    assert server.request("GET", "/health") == (200, {"status": "ok"})
    models = client.models.list().data
    assert [m.id for m in models] == [MODEL] and models[0].owned_by == "ember"
    assert client.models.retrieve(MODEL).id == MODEL


def test_completion_text_and_usage(client, llm):
    prompt = "The quick brown fox"
    out = client.completions.create(model=MODEL, prompt=prompt, max_tokens=7, temperature=0, extra_body=IGNORE_EOS)
    assert out.object == "text_completion" and out.model == MODEL and out.id.startswith("cmpl-")
    (choice,) = out.choices
    assert choice.index == 0 and choice.finish_reason == "length" and choice.text
    assert out.usage.prompt_tokens == len(llm.tokenizer.encode(prompt))
    assert out.usage.completion_tokens == 7
    assert out.usage.total_tokens == out.usage.prompt_tokens + 7


def test_completion_stream_equals_whole(client):
    kwargs = dict(model=MODEL, prompt="Once upon a time", max_tokens=12, temperature=0, extra_body=IGNORE_EOS)
    whole = client.completions.create(**kwargs)
    chunks = list(client.completions.create(**kwargs, stream=True, stream_options={"include_usage": True}))
    *deltas, last = chunks
    assert "".join(c.choices[0].text for c in deltas) == whole.choices[0].text
    assert [c.choices[0].finish_reason for c in deltas][-1] == "length"
    assert all(c.choices[0].finish_reason is None for c in deltas[:-1])
    assert all(c.usage is None for c in deltas)
    assert last.choices == [] and last.usage == whole.usage
    assert len({c.id for c in chunks}) == 1


def test_chat_whole_and_streamed(client, llm):
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello!"}]
    kwargs = dict(model=MODEL, messages=messages, max_tokens=9, temperature=0, extra_body=IGNORE_EOS)
    whole = client.chat.completions.create(**kwargs)
    assert whole.object == "chat.completion" and whole.id.startswith("chatcmpl-")
    (choice,) = whole.choices
    assert choice.message.role == "assistant" and choice.finish_reason == "length"
    assert whole.usage.prompt_tokens == chat_prompt_len(llm, messages)
    assert whole.usage.completion_tokens == 9

    chunks = list(client.chat.completions.create(**kwargs, stream=True, stream_options={"include_usage": True}))
    assert chunks[0].object == "chat.completion.chunk"
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == choice.message.content
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].choices == [] and chunks[-1].usage == whole.usage


def test_chat_max_completion_tokens_wins(client):
    out = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Hi"}], max_tokens=20,
                                         max_completion_tokens=3, extra_body=IGNORE_EOS)
    assert out.usage.completion_tokens == 3


def test_n_samples(client):
    kwargs = dict(model=MODEL, prompt="hello", max_tokens=6, n=3, temperature=1.0, seed=11, extra_body=IGNORE_EOS)
    whole = client.completions.create(**kwargs)
    assert sorted(c.index for c in whole.choices) == [0, 1, 2]
    assert all(c.finish_reason == "length" for c in whole.choices)
    assert whole.usage.completion_tokens == 18 and whole.usage.prompt_tokens == 1

    texts, finishes = {}, {}
    for chunk in client.completions.create(**kwargs, stream=True):
        for c in chunk.choices:
            texts[c.index] = texts.get(c.index, "") + c.text
            if c.finish_reason:
                finishes[c.index] = c.finish_reason
    assert texts == {c.index: c.text for c in whole.choices}  # seeded: the stream draws the same
    assert finishes == {0: "length", 1: "length", 2: "length"}

    chat = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Hi"}], n=3,
                                          max_tokens=4, extra_body=IGNORE_EOS)
    assert sorted(c.index for c in chat.choices) == [0, 1, 2] and chat.usage.completion_tokens == 12


def test_several_prompts(client, llm):
    prompts = ["hello", "The quick brown fox"]
    out = client.completions.create(model=MODEL, prompt=prompts, max_tokens=3, n=2, temperature=0,
                                    extra_body=IGNORE_EOS)
    assert sorted(c.index for c in out.choices) == [0, 1, 2, 3]
    alone = [client.completions.create(model=MODEL, prompt=p, max_tokens=3, temperature=0,
                                       extra_body=IGNORE_EOS).choices[0].text for p in prompts]
    by_index = {c.index: c.text for c in out.choices}
    assert [by_index[0], by_index[1], by_index[2], by_index[3]] == [alone[0], alone[0], alone[1], alone[1]]
    assert out.usage.prompt_tokens == sum(len(llm.tokenizer.encode(p)) for p in prompts)
    ids = client.completions.create(model=MODEL, prompt=[[1000, 2000, 3000]], max_tokens=2, extra_body=IGNORE_EOS)
    assert ids.usage.prompt_tokens == 3


def test_stop_strings(client):
    kwargs = dict(model=MODEL, prompt="Once upon a time", max_tokens=16, temperature=0, extra_body=IGNORE_EOS)
    text = client.completions.create(**kwargs).choices[0].text
    # a two-character piece of the text that first occurs after its start
    stop = next(text[k:k + 2] for k in range(1, len(text) - 1) if text.find(text[k:k + 2]) > 0)
    cut = text[:text.find(stop)]
    out = client.completions.create(**kwargs, stop=[stop, "never seen"])
    assert out.choices[0].text == cut and out.choices[0].finish_reason == "stop"
    streamed = list(client.completions.create(**kwargs, stop=stop, stream=True))
    assert "".join(c.choices[0].text for c in streamed) == cut
    assert streamed[-1].choices[0].finish_reason == "stop"


def test_seeded_sampling_is_reproducible(client):
    def sample(seed, **extra):
        return client.completions.create(model=MODEL, prompt="hello", max_tokens=8, temperature=1.0, seed=seed,
                                         extra_body=IGNORE_EOS, **extra).choices[0].text

    assert sample(3) == sample(3) == "".join(
        c.choices[0].text for c in client.completions.create(model=MODEL, prompt="hello", max_tokens=8,
                                                             temperature=1.0, seed=3, stream=True,
                                                             extra_body=IGNORE_EOS))
    assert len({sample(seed) for seed in range(6)}) > 1


def test_extras_reach_the_sampler(client):
    greedy = client.completions.create(model=MODEL, prompt="hello", max_tokens=5, temperature=0,
                                       extra_body=IGNORE_EOS).choices[0].text
    top1 = client.completions.create(model=MODEL, prompt="hello", max_tokens=5, temperature=1.0, seed=5,
                                     extra_body={"top_k": 1, "ignore_eos": True}).choices[0].text
    assert top1 == greedy  # top_k 1 is greedy whatever the temperature
    penalized = client.completions.create(model=MODEL, prompt="hello", max_tokens=5, temperature=0,
                                          extra_body={"repetition_penalty": 100.0, "ignore_eos": True})
    assert penalized.choices[0].text != greedy  # the tiny model repeats one token; the penalty forbids it


def test_completion_logprobs(client):
    out = client.completions.create(model=MODEL, prompt="hello", max_tokens=5, temperature=0, logprobs=3,
                                    extra_body=IGNORE_EOS)
    lp = out.choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == len(lp.text_offset) == 5
    for token, value, top in zip(lp.tokens, lp.token_logprobs, lp.top_logprobs):
        assert 3 <= len(top) <= 4 and top[token] == value  # the chosen one and the 3 most likely
        assert value == pytest.approx(max(top.values()))   # greedy chose the most likely
    assert lp.text_offset == [sum(len(t) for t in lp.tokens[:i]) for i in range(5)]
    chunks = list(client.completions.create(model=MODEL, prompt="hello", max_tokens=5, temperature=0, logprobs=3,
                                            stream=True, extra_body=IGNORE_EOS))
    assert [t for c in chunks for t in c.choices[0].logprobs.tokens] == lp.tokens
    assert [o for c in chunks for o in c.choices[0].logprobs.text_offset] == lp.text_offset


def test_chat_logprobs(client):
    kwargs = dict(model=MODEL, messages=[{"role": "user", "content": "Hi"}], max_tokens=4, temperature=0,
                  logprobs=True, top_logprobs=2, extra_body=IGNORE_EOS)
    content = client.chat.completions.create(**kwargs).choices[0].logprobs.content
    assert len(content) == 4
    for entry in content:
        assert len(entry.top_logprobs) == 2
        assert entry.top_logprobs[0].logprob >= entry.top_logprobs[1].logprob
        assert entry.top_logprobs[0].token == entry.token and entry.bytes == list(entry.token.encode())
    streamed = [e for c in client.chat.completions.create(**kwargs, stream=True)
                if c.choices and c.choices[0].logprobs for e in c.choices[0].logprobs.content]
    assert [e.token for e in streamed] == [e.token for e in content]
    plain = client.chat.completions.create(**{**kwargs, "logprobs": None, "top_logprobs": None})
    assert plain.choices[0].logprobs is None


def test_64_concurrent_streams(server):
    import openai

    lengths = [3 + i % 17 for i in range(64)]

    async def one(client, i):
        stream = await client.completions.create(
            model=MODEL, prompt=f"Request number {i} says", max_tokens=lengths[i], temperature=1.0, seed=i,
            stream=True, stream_options={"include_usage": True}, extra_body=IGNORE_EOS)
        text, finish, usage = "", None, None
        async for chunk in stream:
            if chunk.choices:
                text += chunk.choices[0].text
                finish = chunk.choices[0].finish_reason or finish
            else:
                usage = chunk.usage
        return text, finish, usage

    async def main():
        async with openai.AsyncOpenAI(base_url=server.url, api_key="unused", max_retries=0, timeout=120) as client:
            return await asyncio.gather(*(one(client, i) for i in range(64)))

    results = asyncio.run(main())
    assert len(results) == 64
    for i, (text, finish, usage) in enumerate(results):
        assert finish == "length" and usage.completion_tokens == lengths[i], i
    assert wait_until(lambda: server.metrics()["ember_kv_cache_blocks_used"] == 0)
    metrics = server.metrics()
    assert metrics["ember_num_requests_running"] == metrics["ember_num_requests_waiting"] == 0
    assert metrics["ember_num_requests_pending"] == 0


def test_metrics_count_tokens_and_latency(server, client):
    before = server.metrics()
    out = client.completions.create(model=MODEL, prompt="The quick brown fox", max_tokens=5, extra_body=IGNORE_EOS)
    assert wait_until(lambda: server.metrics()["ember_time_to_first_token_seconds_count"]
                      == before["ember_time_to_first_token_seconds_count"] + 1)
    after = server.metrics()
    assert after["ember_prompt_tokens_total"] - before["ember_prompt_tokens_total"] == out.usage.prompt_tokens
    assert after["ember_generation_tokens_total"] - before["ember_generation_tokens_total"] == 5
    key = 'ember_completions_finished_total{finish_reason="length"}'
    assert after[key] - before.get(key, 0) == 1
    for name in ("ember_time_per_output_token_seconds_count", "ember_e2e_request_latency_seconds_count"):
        assert after[name] == before[name] + 1
    assert after["ember_kv_cache_blocks_total"] > 0
    assert 0 <= after["ember_prefix_cache_hit_rate"] <= 1
    # the same prompt again: its full blocks come from the prefix cache
    client.completions.create(model=MODEL, prompt="The quick brown fox " * 8, max_tokens=1)
    client.completions.create(model=MODEL, prompt="The quick brown fox " * 8, max_tokens=1)
    assert server.metrics()["ember_prefix_cache_hits_total"] > after["ember_prefix_cache_hits_total"]


def test_the_python_examples_in_docs_run(roomy_llm, capsys):
    """docs/serve.md's python examples, in order, against a live server of the tiny model
    (one with room for the tool example's prompt), serving it as the built-in model's name."""
    import re
    from pathlib import Path

    from .conftest import _server

    page = Path(__file__).resolve().parents[2] / "docs" / "serve.md"
    examples = re.findall(r"```python\n(.*?)```", page.read_text(), flags=re.S)
    assert len(examples) == 3
    serving = _server(roomy_llm, "SmolLM2-135M-Instruct")
    live = next(serving)
    namespace: dict = {}
    try:
        for i, example in enumerate(examples):
            exec(compile(example.replace("http://127.0.0.1:8000/v1", live.url), f"docs/serve.md example {i + 1}",
                         "exec"), namespace)
    finally:
        serving.close()
    out = capsys.readouterr().out
    assert "CompletionUsage(completion_tokens=16" in out
    assert re.search(r"^\d{3}-\d{4}$", out, flags=re.M) and "tool_calls=None" in out


def test_chat_without_max_tokens_stops_at_the_default(llm):
    """A chat request that sets no max_tokens ends after default_max_tokens (or what is left
    of max_model_len), not at the context limit; one that sets it gets what it asked for."""
    import openai

    from ember.serve import create_app

    from .conftest import LiveServer

    messages = [{"role": "user", "content": "Tell me a long story."}]
    room = llm.engine.max_model_len - chat_prompt_len(llm, messages)
    for default, expected in ((5, 5), (None, room), (10 * room, room)):
        live = LiveServer(create_app(llm, MODEL, default_max_tokens=default))
        try:
            client = openai.OpenAI(base_url=live.url, api_key="unused", max_retries=0, timeout=60)
            out = client.chat.completions.create(model=MODEL, messages=messages, extra_body=IGNORE_EOS)
            assert out.usage.completion_tokens == expected and out.choices[0].finish_reason == "length"
            asked = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=7,
                                                   extra_body=IGNORE_EOS)
            assert asked.usage.completion_tokens == 7
        finally:
            live.stop()


def test_default_max_tokens_must_be_positive(llm):
    from ember import InputError
    from ember.serve import create_app

    with pytest.raises(InputError, match="default_max_tokens must be at least 1, got 0"):
        create_app(llm, MODEL, default_max_tokens=0)
