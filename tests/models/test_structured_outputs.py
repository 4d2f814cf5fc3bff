"""#24's acceptance on the built-in SmolLM2-135M-Instruct: at temperature 1.0 and n=4,
every answer to a JSON schema (enums, nested objects, arrays with min/max items, strings
with max lengths, numbers, booleans, additionalProperties false) parses, validates and
ends with "stop"; regex, choice and grammar answers match; forced tool calls validate."""

import ast
import json
import re

import jsonschema
import pytest

from ember import SamplingParams

pytestmark = pytest.mark.slow

SCHEMAS = {
    "person": {
        "type": "object",
        "properties": {
            "name": {"type": "string", "maxLength": 20},
            "age": {"type": "integer", "minimum": 0, "maximum": 120},
            "height_m": {"type": "number", "minimum": 0.5, "maximum": 2.5},
            "employed": {"type": "boolean"},
            "role": {"type": "string", "enum": ["engineer", "teacher", "doctor", "artist"]},
            "address": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 20},
                                                         "country": {"type": "string", "maxLength": 20}},
                        "required": ["city", "country"], "additionalProperties": False},
            "hobbies": {"type": "array", "items": {"type": "string", "maxLength": 15}, "minItems": 1, "maxItems": 3},
        },
        "required": ["name", "age", "height_m", "employed", "role", "address", "hobbies"],
        "additionalProperties": False,
    },
    "order": {
        "type": "object",
        "properties": {
            "id": {"type": "integer", "minimum": 1, "maximum": 99999},
            "items": {"type": "array", "minItems": 1, "maxItems": 4, "items": {
                "type": "object", "properties": {"sku": {"type": "string", "maxLength": 8},
                                                 "qty": {"type": "integer", "minimum": 1, "maximum": 9},
                                                 "price": {"type": "number", "minimum": 0, "maximum": 1000}},
                "required": ["sku", "qty", "price"], "additionalProperties": False}},
            "status": {"enum": ["pending", "shipped", "delivered"]},
            "gift": {"type": "boolean"},
        },
        "required": ["id", "items", "status", "gift"],
        "additionalProperties": False,
    },
}


@pytest.fixture(scope="module")
def llm():
    from ember import LLM

    return LLM(max_num_seqs=16)


@pytest.mark.parametrize("name", sorted(SCHEMAS))
def test_every_sampled_answer_validates(llm, name):
    schema = SCHEMAS[name]
    messages = [{"role": "user", "content": f"Write a realistic {name} as JSON."}]
    outs = llm.chat(messages, SamplingParams(n=4, temperature=1.0, max_tokens=400, seed=0,
                                             structured_outputs={"json": schema}), use_tqdm=False)
    for c in outs[0].outputs:
        assert c.finish_reason == "stop", c.text
        jsonschema.validate(json.loads(c.text), schema)


def test_regex_choice_and_grammar(llm):
    ask = [{"role": "user", "content": "Give me a US phone number."}]
    out = llm.chat(ask, SamplingParams(n=4, temperature=1.0, max_tokens=30, seed=1,
                                       structured_outputs={"regex": r"\(\d{3}\) \d{3}-\d{4}"}), use_tqdm=False)
    assert all(re.fullmatch(r"\(\d{3}\) \d{3}-\d{4}", c.text) and c.finish_reason == "stop" for c in out[0].outputs)
    ask = [{"role": "user", "content": "Is the sky blue? Answer yes or no."}]
    out = llm.chat(ask, SamplingParams(n=4, temperature=1.0, max_tokens=5, seed=2,
                                       structured_outputs={"choice": ["yes", "no"]}), use_tqdm=False)
    assert all(c.text in ("yes", "no") for c in out[0].outputs)
    # up to three terms, so that every answer ends (an unbounded one: the model writes "+4+4+4..." on)
    grammar = ('root ::= term | term op term | term op term op term\nop ::= "+" | "-" | "*"\n'
               'term ::= num | "(" num op num ")"\nnum ::= [1-9] [0-9]?')
    ask = [{"role": "user", "content": "Write an arithmetic expression."}]
    out = llm.chat(ask, SamplingParams(n=4, temperature=1.0, max_tokens=60, seed=3,
                                       structured_outputs={"grammar": grammar}), use_tqdm=False)
    for c in out[0].outputs:
        assert c.finish_reason == "stop", c.text
        ast.parse(c.text, mode="eval")
