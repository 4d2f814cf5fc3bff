"""Tool-call readers on canned model text: the same content and calls however the text is
split into streamed chunks (hypothesis draws the splits), malformed calls kept as content,
and the prompt ember writes for a template that knows no tools."""

import json

import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from ember.serve.protocol import APIError
from ember.serve.tool_calls import (PARSERS, NamedReader, RequiredReader, ToolCalling, hermes_history,
                                    parser_for_template)

WEATHER = {"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}}
TIME = {"name": "get_time", "arguments": {"zone": "Europe/Paris <CET>"}}

# (parser or reader, model text, expected content, expected calls as (name, arguments))
CASES = [
    ("hermes", 'Let me check.\n<tool_call>\n' + json.dumps(WEATHER) + '\n</tool_call>', "Let me check.\n",
     [WEATHER]),
    ("hermes", '<tool_call>' + json.dumps(WEATHER) + '</tool_call>\n<tool_call>' + json.dumps(TIME) + '</tool_call>',
     "\n", [WEATHER, TIME]),
    ("hermes", "No tools needed: 3 < 4 and <tool is a word.", "No tools needed: 3 < 4 and <tool is a word.", []),
    ("hermes", "<tool_call>{not json}</tool_call> done", "<tool_call>{not json}</tool_call> done", []),
    ("hermes", "Sure <tool_call>\n" + json.dumps(TIME), "Sure ", [TIME]),   # EOS before the closing tag
    ("hermes", "text ending in <tool_c", "text ending in <tool_c", []),
    ("llama3_json", ' {"name": "get_weather", "parameters": {"city": "Paris", "unit": "celsius"}}', "", [WEATHER]),
    ("llama3_json", '<|python_tag|>{"name": "get_weather", "parameters": {"city": "Paris", "unit": "celsius"}}; '
     '{"name": "get_time", "parameters": {"zone": "Europe/Paris <CET>"}}', "", [WEATHER, TIME]),
    ("llama3_json", "The weather is fine {really}.", "The weather is fine {really}.", []),
    ("llama3_json", "{broken", "{broken", []),
    ("mistral", "Checking.[TOOL_CALLS][" + json.dumps(WEATHER) + ", " + json.dumps(TIME) + "]", "Checking.",
     [WEATHER, TIME]),
    ("mistral", "Just text [TOOL_CA", "Just text [TOOL_CA", []),
    ("required", '[{"name": "get_weather", "parameters": {"city": "Paris", "unit": "celsius"}}, '
     '{"name": "get_time", "parameters": {"zone": "Europe/Paris <CET>"}}]', "", [WEATHER, TIME]),
    ("named", '{"city": "Paris", "unit": "celsius"}', "", [WEATHER]),
]


def reader(kind):
    if kind == "required":
        return RequiredReader()
    if kind == "named":
        return NamedReader("get_weather")
    return PARSERS[kind]()


def as_pairs(calls):
    return [(c.name, json.loads(c.arguments)) for c in calls]


def expected_pairs(calls):
    return [(c["name"], c["arguments"]) for c in calls]


@pytest.mark.parametrize("kind,text,content,calls", CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_whole_text(kind, text, content, calls):
    got_content, got_calls = reader(kind).read(text)
    assert got_content == content
    assert as_pairs(got_calls) == expected_pairs(calls)
    assert all(c.id.startswith("call_") for c in got_calls) and len({c.id for c in got_calls}) == len(got_calls)


@settings(max_examples=300, deadline=None)
@given(case=st.sampled_from(CASES), cuts=st.lists(st.floats(0, 1), max_size=12))
def test_any_chunking_gives_the_same_calls(case, cuts):
    kind, text, content, calls = case
    points = sorted({int(c * len(text)) for c in cuts})
    chunks = [text[a:b] for a, b in zip([0, *points], [*points, len(text)])]
    r, got_content, got_calls = reader(kind), [], []
    for chunk in chunks:
        c, k = r.feed(chunk)
        got_content.append(c)
        got_calls += k
    c, k = r.finish()
    got_content.append(c)
    got_calls += k
    event(f"{kind}: {len(calls)} calls, {min(len(chunks), 3)}{'+' * (len(chunks) >= 3)} chunks")
    assert "".join(got_content) == content
    assert as_pairs(got_calls) == expected_pairs(calls)


def test_a_call_is_sent_as_soon_as_it_closes():
    r = PARSERS["hermes"]()
    assert r.feed("Hi <tool_") == ("Hi ", [])
    assert r.feed("call>" + json.dumps(WEATHER)) == ("", [])
    content, calls = r.feed("</tool_call> and")
    assert content == " and" and as_pairs(calls) == [("get_weather", WEATHER["arguments"])]
    r = RequiredReader()
    _, first = r.feed('[{"name": "get_weather", "parameters": {"city": "Paris", "unit": "celsius"}}, {"name": "g')
    assert as_pairs(first) == [("get_weather", WEATHER["arguments"])]


TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "The weather in a city",
                                           "parameters": {"type": "object",
                                                          "properties": {"city": {"type": "string"}},
                                                          "required": ["city"]}}}]


class Tok:
    def __init__(self, template):
        self.chat_template = template


def test_template_formats():
    assert parser_for_template("{% for m in messages %}{{ m.content }}{% endfor %}") is None
    assert parser_for_template("{{ tools }} <tool_call> </tool_call>") == "hermes"
    assert parser_for_template("{%- if tools %}[AVAILABLE_TOOLS]...[TOOL_CALLS]") == "mistral"
    assert parser_for_template("<|python_tag|>{{ tools }}") == "llama3_json"


def test_a_template_without_tools_gets_ember_system_prompt():
    tools = ToolCalling.from_request(TOOLS, None, None, Tok("{{ messages }}"))
    assert tools.choice == "auto" and tools.parser == "hermes" and tools.template_tools() is None
    messages = tools.messages([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Weather?"}])
    assert messages[0]["role"] == "system" and messages[0]["content"].startswith("Be brief.")
    assert '"name": "get_weather"' in messages[0]["content"] and "<tool_call>" in messages[0]["content"]
    assert messages[1] == {"role": "user", "content": "Weather?"}
    knows = ToolCalling.from_request(TOOLS, "auto", None, Tok("{{ tools }}<tool_call>"))
    assert knows.template_tools() == TOOLS and knows.messages([{"role": "user", "content": "x"}]) == [
        {"role": "user", "content": "x"}]


def test_past_calls_and_results_become_hermes_text():
    call = {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": {"city": "Oslo"}}}
    history = hermes_history([{"role": "user", "content": "Weather?"},
                              {"role": "assistant", "content": None, "tool_calls": [call]},
                              {"role": "tool", "tool_call_id": "call_1", "content": "4 C"},
                              {"role": "tool", "tool_call_id": "call_2", "content": "rain"}])
    assert history[1] == {"role": "assistant",
                          "content": '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo"}}\n</tool_call>'}
    assert history[2] == {"role": "user", "content": "<tool_response>\n4 C\n</tool_response>\n"
                                                     "<tool_response>\nrain\n</tool_response>"}
    assert len(history) == 3


def test_required_and_named_constraints():
    required = ToolCalling.from_request(TOOLS, "required", False, Tok(""))
    schema = required.constraint().json
    assert schema["minItems"] == 1 and schema["maxItems"] == 1
    assert schema["items"]["properties"]["name"] == {"type": "string", "enum": ["get_weather"]}
    named = ToolCalling.from_request(TOOLS, {"type": "function", "function": {"name": "get_weather"}}, None, Tok(""))
    assert named.constraint().json == TOOLS[0]["function"]["parameters"]
    assert ToolCalling.from_request(TOOLS, "none", None, Tok("")) is None
    assert ToolCalling.from_request(TOOLS, "auto", None, Tok("")).constraint() is None


@pytest.mark.parametrize("tools,choice,param", [
    (TOOLS, "sometimes", "tool_choice"),
    (TOOLS, {"type": "function", "function": {"name": "nope"}}, "tool_choice.function.name"),
    (None, "required", "tool_choice"),
    ([{"type": "function", "function": {"description": "no name"}}], "auto", "tools.0.function.name"),
    ([{"type": "retrieval"}], "auto", "tools.0"),
    ([{"type": "function", "function": {"name": "f", "parameters": "x"}}], "auto", "tools.0.function.parameters"),
])
def test_bad_tools_name_the_field(tools, choice, param):
    with pytest.raises(APIError) as e:
        ToolCalling.from_request(tools, choice, None, Tok(""))
    assert e.value.status == 400 and e.value.param == param
