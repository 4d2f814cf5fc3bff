"""Structured outputs and tool calls through the official openai client against a live
server over the tiny random Llama: whatever a random model samples at temperature 1.0,
the grammar engine keeps it valid (JSON schemas, regexes, choices, grammars, tool calls),
streamed or not, mixed in one batch with plain requests."""

import ast
import asyncio
import json
import re

import jsonschema
import openai
import pytest

from .conftest import MODEL


@pytest.fixture(scope="module")
def llm(roomy_llm):
    return roomy_llm


@pytest.fixture(scope="module")
def server(roomy_server):
    return roomy_server


PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 12},
        "role": {"type": "string", "enum": ["admin", "user", "guest"]},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
        # (a "number" is left to the built-in model's check, tests/models/test_structured_outputs.py: JSON
        # numbers have no length bound, and a random model writes "10.000..." until max_tokens)
        "score": {"type": "integer", "minimum": -50, "maximum": 50},
        "active": {"type": "boolean"},
        "address": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 10},
                                                     "zip": {"type": "string", "pattern": "^[0-9]{5}$"}},
                    "required": ["city", "zip"], "additionalProperties": False},
        "tags": {"type": "array", "items": {"type": "string", "maxLength": 6}, "minItems": 1, "maxItems": 3},
    },
    "required": ["name", "role", "age", "score", "active", "address", "tags"],
    "additionalProperties": False,
}
HI = [{"role": "user", "content": "Tell me about someone."}]


def schema_format(schema, name="person"):
    return {"type": "json_schema", "json_schema": {"name": name, "schema": schema, "strict": True}}


def test_json_schema_n4_at_temperature_1_always_validates(client):
    out = client.chat.completions.create(model=MODEL, messages=HI, n=4, temperature=1.0, max_tokens=190,
                                         response_format=schema_format(PERSON))
    assert len(out.choices) == 4
    for choice in out.choices:
        assert choice.finish_reason == "stop", choice.message.content
        jsonschema.validate(json.loads(choice.message.content), PERSON)
    # the grammar did the work: the same seed without it is not JSON at all
    free = client.chat.completions.create(model=MODEL, messages=HI, temperature=1.0, max_tokens=40, seed=3)
    with pytest.raises(ValueError):
        json.loads(free.choices[0].message.content)


def test_json_schema_streamed_equals_whole(client):
    kwargs = dict(model=MODEL, messages=HI, temperature=1.0, seed=11, max_tokens=190,
                  response_format=schema_format(PERSON))
    whole = client.chat.completions.create(**kwargs).choices[0].message.content
    streamed = "".join(c.choices[0].delta.content or "" for c in client.chat.completions.create(**kwargs, stream=True)
                       if c.choices)
    assert streamed == whole
    jsonschema.validate(json.loads(whole), PERSON)


def test_json_object(client):
    for seed in range(3):
        out = client.chat.completions.create(model=MODEL, messages=HI, temperature=1.0, seed=seed, max_tokens=200,
                                             response_format={"type": "json_object"})
        choice = out.choices[0]
        if choice.finish_reason == "stop":
            assert isinstance(json.loads(choice.message.content), dict)
        else:  # an object cut at max_tokens is still a prefix of one
            assert choice.message.content.startswith("{")


def test_regex_choice_and_grammar(client):
    regex = r"[A-Z]{2}-\d{3}(\.[a-z]{2,3})?"
    out = client.completions.create(model=MODEL, prompt="Code:", n=4, temperature=1.0, max_tokens=20,
                                    extra_body={"structured_outputs": {"regex": regex}})
    for c in out.choices:
        assert re.fullmatch(regex, c.text) and c.finish_reason == "stop", c.text
    choices = ["red", "green", "light blue", 'say "hi"']
    out = client.chat.completions.create(model=MODEL, messages=HI, n=4, temperature=1.0, max_tokens=10,
                                         extra_body={"structured_outputs": {"choice": choices}})
    assert all(c.message.content in choices and c.finish_reason == "stop" for c in out.choices)
    # arithmetic, in GBNF and in Lark (bounded, so that a random model's output ends): every output is
    # a Python expression
    gbnf = ('root ::= expr\nexpr ::= term | term op term\nterm ::= num | "(" num op num ")"\n'
            'op ::= "+" | "-" | "*"\nnum ::= [0-9] | [1-9] [0-9]')
    lark = ('start: expr\nexpr: term | term op term\nterm: NUM | "(" NUM op NUM ")"\nop: "+" | "-" | "*"\n'
            'NUM: /[1-9]?[0-9]/')
    for grammar in (gbnf, lark):
        out = client.completions.create(model=MODEL, prompt="1+1=", n=4, temperature=1.0, max_tokens=30,
                                        extra_body={"structured_outputs": {"grammar": grammar}})
        for c in out.choices:
            assert c.finish_reason == "stop", c.text
            ast.parse(c.text, mode="eval")


def test_vllm_guided_fields(client):
    out = client.completions.create(model=MODEL, prompt="Pick:", temperature=1.0, max_tokens=5,
                                    extra_body={"guided_choice": ["yes", "no"]})
    assert out.choices[0].text in ("yes", "no")


WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "The weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 15},
                                                    "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
                   "required": ["city", "unit"], "additionalProperties": False}}}
TIME = {"type": "function", "function": {
    "name": "get_time", "parameters": {"type": "object", "properties": {"zone": {"type": "string", "maxLength": 10}},
                                       "required": ["zone"], "additionalProperties": False}}}
ASK = [{"role": "user", "content": "What's the weather in Paris?"}]


def check_call(call):
    tool = {"get_weather": WEATHER, "get_time": TIME}[call.function.name]
    jsonschema.validate(json.loads(call.function.arguments), tool["function"]["parameters"])
    assert call.type == "function" and call.id.startswith("call_")


def streamed_calls(stream):
    """The tool calls a stream's deltas reassemble to, and its last finish_reason."""
    calls, finish = {}, None
    for chunk in stream:
        for choice in chunk.choices:
            for d in choice.delta.tool_calls or []:
                entry = calls.setdefault(d.index, {"id": None, "name": "", "arguments": ""})
                entry["id"] = d.id or entry["id"]
                entry["name"] += d.function.name or ""
                entry["arguments"] += d.function.arguments or ""
            finish = choice.finish_reason or finish
    return [calls[i] for i in sorted(calls)], finish


@pytest.mark.parametrize("choice", ["required", {"type": "function", "function": {"name": "get_weather"}}],
                         ids=["required", "named"])
def test_forced_tool_calls_validate_streamed_and_not(client, choice):
    # one call (parallel_tool_calls false): a random model, free to add calls, adds them until max_tokens
    kwargs = dict(model=MODEL, messages=ASK, tools=[WEATHER, TIME], tool_choice=choice, temperature=1.0,
                  max_tokens=300, parallel_tool_calls=False)
    for seed in range(3):
        out = client.chat.completions.create(**kwargs, seed=seed)
        (c,) = out.choices
        assert c.finish_reason == "tool_calls" and c.message.content is None
        assert len(c.message.tool_calls) == 1
        check_call(c.message.tool_calls[0])
        if isinstance(choice, dict):
            assert c.message.tool_calls[0].function.name == "get_weather"
        calls, finish = streamed_calls(client.chat.completions.create(**kwargs, seed=seed, stream=True))
        assert finish == "tool_calls"
        assert [(x["name"], json.loads(x["arguments"])) for x in calls] == \
            [(t.function.name, json.loads(t.function.arguments)) for t in c.message.tool_calls]
        assert all(x["id"].startswith("call_") for x in calls)


def test_parallel_tool_calls(client):
    """"required" with parallel calls: an array of calls, each valid, streamed as each one closes."""
    kwargs = dict(model=MODEL, messages=ASK, tools=[WEATHER, TIME], tool_choice="required", temperature=1.0,
                  max_tokens=120, seed=0)
    out = client.chat.completions.create(**kwargs)
    (c,) = out.choices
    assert c.finish_reason in ("tool_calls", "length") and len(c.message.tool_calls) >= 2
    for call in c.message.tool_calls:
        check_call(call)
    calls, finish = streamed_calls(client.chat.completions.create(**kwargs, stream=True))
    assert finish == c.finish_reason
    assert [(x["name"], x["arguments"]) for x in calls] == \
        [(t.function.name, t.function.arguments) for t in c.message.tool_calls]


def test_tool_results_round_trip(client, llm):
    from ember.llm import _chat_prompt
    from ember.serve.tool_calls import ToolCalling

    first = client.chat.completions.create(model=MODEL, messages=ASK, tools=[WEATHER], tool_choice="required",
                                           parallel_tool_calls=False, temperature=1.0, max_tokens=200, seed=5)
    call = first.choices[0].message.tool_calls[0]
    messages = ASK + [first.choices[0].message.model_dump(exclude_none=True),
                      {"role": "tool", "tool_call_id": call.id, "content": "18 C and sunny"}]
    second = client.chat.completions.create(model=MODEL, messages=messages, tools=[WEATHER], temperature=0,
                                            max_tokens=5, extra_body={"ignore_eos": True})
    assert second.choices[0].finish_reason in ("length", "stop", "tool_calls")
    # the prompt the server built holds the call and its result, as ember's Hermes prompt writes them
    tools = ToolCalling.from_request([WEATHER], None, None, llm.tokenizer)
    conversation = ASK + [{"role": "assistant", "content": None, "tool_calls": [
        {"id": call.id, "type": "function", "function": {"name": call.function.name,
                                                         "arguments": json.loads(call.function.arguments)}}]},
        {"role": "tool", "tool_call_id": call.id, "content": "18 C and sunny"}]
    ids = _chat_prompt(llm.tokenizer, tools.messages(conversation))["prompt_token_ids"]
    text = llm.tokenizer.decode(ids)
    assert "<tool_response>\n18 C and sunny\n</tool_response>" in text and '"name": "get_weather"' in text
    assert second.usage.prompt_tokens == len(ids)


def test_auto_without_a_call_is_plain_text(client):
    out = client.chat.completions.create(model=MODEL, messages=ASK, tools=[WEATHER], temperature=0, max_tokens=8,
                                         extra_body={"ignore_eos": True})
    c = out.choices[0]
    assert c.finish_reason == "length" and c.message.tool_calls is None and c.message.content


def test_structured_and_plain_requests_share_batches(server, llm):
    """Concurrent requests, a shared prompt prefix (so the prefix cache hits), n > 1: the
    constrained ones stay valid, the plain ones are untouched by their neighbours' masks."""
    client = openai.AsyncOpenAI(base_url=server.url, api_key="unused", max_retries=0, timeout=120)
    prefix = "You are a careful assistant who answers in the requested format. " * 2
    messages = [{"role": "system", "content": prefix}, {"role": "user", "content": "Go."}]
    plain_kwargs = dict(model=MODEL, messages=messages, temperature=0, max_tokens=12, extra_body={"ignore_eos": True})

    async def main():
        alone = await client.chat.completions.create(**plain_kwargs)
        jobs = []
        for i in range(4):
            jobs.append(client.chat.completions.create(model=MODEL, messages=messages, n=2, temperature=1.0,
                                                       max_tokens=190, response_format=schema_format(PERSON)))
            jobs.append(client.chat.completions.create(**plain_kwargs))
            jobs.append(client.completions.create(model=MODEL, prompt=prefix, n=2, temperature=1.0, max_tokens=10,
                                                  extra_body={"structured_outputs": {"regex": r"\d{2,4}"}}))
        results = await asyncio.gather(*jobs)
        await client.close()
        return alone, results

    hits_before = llm.stats().prefix_cache_hits
    alone, results = asyncio.run(main())
    for i, out in enumerate(results):
        if i % 3 == 0:
            for c in out.choices:
                assert c.finish_reason == "stop"
                jsonschema.validate(json.loads(c.message.content), PERSON)
        elif i % 3 == 1:
            assert out.choices[0].message.content == alone.choices[0].message.content
        else:
            assert all(re.fullmatch(r"\d{2,4}", c.text) for c in out.choices)
    assert llm.stats().prefix_cache_hits > hits_before


def test_a_bad_schema_is_a_400_and_serving_goes_on(client):
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=MODEL, messages=HI, response_format=schema_format({"type": "strnig"}))
    assert e.value.body["param"] == "response_format.json_schema.schema" and "strnig" in e.value.body["message"]
    out = client.chat.completions.create(model=MODEL, messages=HI, temperature=1.0, max_tokens=190,
                                         response_format=schema_format(PERSON))
    jsonschema.validate(json.loads(out.choices[0].message.content), PERSON)


# -- /v1/responses -------------------------------------------------------------------------------
RESPONSE_TOOLS = [{"type": "function", "name": "get_weather", "description": "The weather in a city",
                   "parameters": WEATHER["function"]["parameters"]}]


def test_responses_text(client):
    out = client.responses.create(model=MODEL, input="Hello!", instructions="Be brief.", max_output_tokens=8,
                                  temperature=0)
    assert out.object == "response" and out.id.startswith("resp_") and out.model == MODEL
    assert out.status == "incomplete" and out.incomplete_details.reason == "max_output_tokens"
    (item,) = out.output
    assert item.type == "message" and item.role == "assistant" and out.output_text == item.content[0].text
    assert out.usage.output_tokens == 8 and out.usage.input_tokens > 0


def test_responses_json_schema_streamed_in_order(client):
    fmt = {"format": {"type": "json_schema", "name": "person", "schema": PERSON, "strict": True}}
    whole = client.responses.create(model=MODEL, input="A person.", text=fmt, temperature=1.0,
                                    extra_body={"seed": 4}, max_output_tokens=200)
    assert whole.status == "completed"
    jsonschema.validate(json.loads(whole.output_text), PERSON)
    events = list(client.responses.create(model=MODEL, input="A person.", text=fmt, temperature=1.0,
                                          extra_body={"seed": 4}, max_output_tokens=200, stream=True))
    kinds = [e.type for e in events]
    assert kinds[:4] == ["response.created", "response.in_progress", "response.output_item.added",
                         "response.content_part.added"]
    assert kinds[-4:] == ["response.output_text.done", "response.content_part.done", "response.output_item.done",
                          "response.completed"]
    assert set(kinds[4:-4]) == {"response.output_text.delta"}
    assert [e.sequence_number for e in events] == list(range(len(events)))
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert text == events[-4].text == whole.output_text
    assert events[-1].response.output[0].content[0].text == text


def test_responses_function_tools_round_trip(client):
    kwargs = dict(model=MODEL, input=[{"role": "user", "content": "Weather in Paris?"}], tools=RESPONSE_TOOLS,
                  tool_choice="required", parallel_tool_calls=False, temperature=1.0, extra_body={"seed": 2},
                  max_output_tokens=200)
    out = client.responses.create(**kwargs)
    (call,) = out.output
    assert call.type == "function_call" and call.name == "get_weather" and out.status == "completed"
    jsonschema.validate(json.loads(call.arguments), WEATHER["function"]["parameters"])
    events = list(client.responses.create(**kwargs, stream=True))
    kinds = [e.type for e in events]
    assert kinds == ["response.created", "response.in_progress", "response.output_item.added",
                     "response.function_call_arguments.delta", "response.function_call_arguments.done",
                     "response.output_item.done", "response.completed"]
    assert events[4].arguments == call.arguments and events[5].item.name == "get_weather"
    named = client.responses.create(**{**kwargs, "tool_choice": {"type": "function", "name": "get_weather"}})
    assert [o.type for o in named.output] == ["function_call"]
    follow = client.responses.create(model=MODEL, tools=RESPONSE_TOOLS, max_output_tokens=5, temperature=0, input=[
        {"role": "user", "content": "Weather in Paris?"},
        {"type": "function_call", "call_id": call.call_id, "name": call.name, "arguments": call.arguments},
        {"type": "function_call_output", "call_id": call.call_id, "output": "18 C"}])
    assert follow.usage.input_tokens > out.usage.input_tokens


@pytest.mark.parametrize("body,param", [
    ({"input": "hi", "text": {"format": {"type": "json_schema", "name": "x", "schema": {"type": "strnig"}}}},
     "text.format.schema"),
    ({"input": "hi", "text": {"format": {"type": "yaml"}}}, "text.format.type"),
    ({"input": "hi", "previous_response_id": "resp_1"}, "previous_response_id"),
    ({"input": "hi", "tools": [{"type": "web_search"}]}, "tools.0"),
    ({"input": [{"type": "reasoning"}]}, "input.0"),
    ({"input": [{"role": "user", "content": [{"type": "input_image"}]}]}, "input.0.content"),
    ({"input": "hi", "max_output_tokens": 5000}, "max_output_tokens"),
])
def test_responses_bad_requests_name_their_field(server, body, param):
    status, answer = server.request("POST", "/v1/responses", body)
    assert status == 400 and answer["error"]["param"] == param, answer
