"""JSON-schema constrained decoding: valid documents pass character by character, invalid ones fail at the first
wrong character, random accepted walks always end in valid JSON, and the embedded model forced through the
constraint writes a valid tool call."""

import json
import random
from typing import Any

import pytest
import torch

from herd.errors import ToolError
from herd.inference.constrain import JsonConstraint, constrained_token, token_texts
from herd.inference.load import load_decoder
from herd.inference.sampling import SamplingParams
from herd.tools.calls import Tool, check_arguments

WEATHER = {
    "type": "object",
    "properties": {
        "city": {"type": "string"},
        "unit": {"type": "string", "enum": ["C", "F"]},
        "days": {"type": "integer"},
    },
    "required": ["city", "unit"],
}
NESTED = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "minLength": 1},
        "where": {
            "type": "object",
            "properties": {"lat": {"type": "number"}, "lon": {"type": "number"}},
            "required": ["lat", "lon"],
        },
        "tags": {"type": "array", "items": {"type": "string"}, "maxItems": 3},
        "ok": {"type": ["boolean", "null"]},
    },
    "required": ["name", "where"],
}
ENUM = {"enum": ["red", "green", 1, 12, None, [1, 2], {"a": True}]}
INTS = {"type": "array", "items": {"type": "integer"}, "minItems": 1, "maxItems": 4}
FLAGS = {"type": "array", "items": {"type": ["boolean", "null"]}}
TEXT = {"type": "string", "maxLength": 40}
ANY_OF = {
    "anyOf": [
        {"type": "string"},
        {"type": "object", "properties": {"x": {"type": "integer"}}, "required": ["x"]},
        {"type": "object", "properties": {"y": {"const": "z"}}, "required": ["y"]},
        {"type": "array", "items": {"type": "boolean"}},
    ]
}
FREE = {"type": "object", "additionalProperties": {"type": "integer"}, "required": ["n"]}

VALID = [
    (WEATHER, [{"city": "Paris", "unit": "C"}, {"unit": "F", "days": -3, "city": ""}]),
    (
        NESTED,
        [
            {"name": "x", "where": {"lat": 48.85, "lon": -2.35e-3}},
            {"ok": None, "tags": ["a", "b"], "where": {"lon": 0, "lat": 1e10}, "name": "y"},
            {"name": "z", "where": {"lat": 0.5, "lon": 1}, "ok": False, "tags": []},
        ],
    ),
    (ENUM, ["red", "green", 1, 12, None, [1, 2], {"a": True}]),
    (INTS, [[0], [-1, 2, 30, 400]]),
    (FLAGS, [[], [True, False, None]]),
    (TEXT, ['a "quoted" \\ back/slash', "tab\there\nnew line", "é ü 中文 😀", "\x01\x1f\u2028"]),
    (ANY_OF, ["just text", {"x": 5}, {"y": "z"}, [True, False]]),
    (FREE, [{"n": 1}, {"a": 2, "n": 3, "b": -4}]),
    (None, [{"a": [1, {"b": None}], "c": "d"}, [], "s", 3.5, True, None]),
    ({"type": "object"}, [{}, {"k": [1, "x", {"z": False}]}]),
]


def _dumps_variants(value: Any) -> list[str]:
    return [
        json.dumps(value),
        json.dumps(value, separators=(",", ":")),
        json.dumps(value, ensure_ascii=False),
        json.dumps(value, separators=(",", ":"), ensure_ascii=False),
    ]


def _feed_chars(c: JsonConstraint, text: str) -> None:
    for ch in text:
        assert c.accepts(ch), f"{ch!r} rejected after {c.text!r}"
        c.feed(ch)


@pytest.mark.parametrize("schema, values", VALID)
def test_valid_documents_are_accepted_char_by_char(schema, values) -> None:
    for value in values:
        for text in _dumps_variants(value):
            c = JsonConstraint(schema)
            _feed_chars(c, text)
            assert c.done and c.text == text
        whole = JsonConstraint(schema)  # and in one piece
        assert whole.accepts(json.dumps(value))


INVALID = [
    (WEATHER, '{"city": "x"', "}"),  # required "unit" missing
    (WEATHER, '{"', "w"),  # unknown key
    (WEATHER, '{"city": ', "1"),  # wrong type
    (WEATHER, '{"unit": "', "K"),  # not in the enum
    (WEATHER, '{"city": "a", "unit": "C", "days": 0', "1"),  # leading zero
    (WEATHER, '{"city": "a", "unit": "C", "days": 1', "."),  # integer with a fraction
    (WEATHER, '{"city": "a", "unit": "C"}', "x"),  # trailing garbage
    (WEATHER, '{"city": "a", "unit": "C"}', " "),  # nor whitespace after the final value
    (WEATHER, '{"city": "a", "', "c"),  # duplicate key
    (WEATHER, '{"city": "a', "\n"),  # raw control character
    (TEXT, '"a\\', "x"),  # bad escape
    (TEXT, '"\\u00', "g"),  # bad \u escape
    (NESTED, '{"name": "', '"'),  # minLength 1
    (NESTED, '{"name": "n", "where": {"lat": 1', "}"),  # nested required key missing
    (NESTED, '{"name": "n", "where": {"lat": -', "a"),
    (NESTED, '{"name": "n", "where": {"lat": 1.', "e"),
    (NESTED, '{"name": "n", "tags": ["a", "b", "c"', ","),  # maxItems
    (INTS, "[", "]"),  # minItems
    (INTS, "[1,", "]"),  # trailing comma
    (FLAGS, "[tru", "t"),
    (ENUM, '"gre', "y"),
    (ENUM, "[1,", "3"),
    (ANY_OF, '{"x": 1', ","),  # each alternative alone must fit: x's has no second key
    (ANY_OF, "[", "1"),
    (FREE, '{"a": 1, "a', '"'),  # duplicate free key
    (FREE, '{"a": ', '"'),
    (None, "", "}"),
    (None, "[1 ", "2"),
    (None, "  ", " "),  # at most 2 whitespace characters in a row
]


@pytest.mark.parametrize("schema, prefix, bad", INVALID)
def test_invalid_documents_fail_at_the_first_wrong_character(schema, prefix, bad) -> None:
    c = JsonConstraint(schema)
    _feed_chars(c, prefix)
    assert not c.accepts(bad)
    assert not c.accepts(bad + "}")
    with pytest.raises(ValueError, match="cannot follow"):
        c.feed(bad)
    assert c.text == prefix  # a failed feed changes nothing


def _valid(value: Any, schema: dict | None) -> bool:
    """The schema subset, checked on a parsed value (this test's reference)."""
    schema = schema or {}
    if "anyOf" in schema:
        return any(_valid(value, alt) for alt in schema["anyOf"])
    if "const" in schema:
        return value == schema["const"]
    if "enum" in schema:
        return any(value == v and type(value) is type(v) for v in schema["enum"])
    kinds = schema.get("type")
    kinds = [kinds] if isinstance(kinds, str) else kinds
    if kinds is not None and not any(_is(value, k) for k in kinds):
        return False
    if isinstance(value, dict):
        props = schema.get("properties", {})
        extra = schema.get("additionalProperties", not props)
        extra = {} if extra is True else extra
        if any(k not in props and extra is False for k in value) or not set(schema.get("required", [])) <= set(value):
            return False
        return all(_valid(v, props.get(k, extra)) for k, v in value.items())
    if isinstance(value, list):
        if not schema.get("minItems", 0) <= len(value) <= schema.get("maxItems", len(value)):
            return False
        return all(_valid(v, schema.get("items")) for v in value)
    if isinstance(value, str):
        return schema.get("minLength", 0) <= len(value) <= schema.get("maxLength", len(value))
    return True


def _is(value: Any, kind: str) -> bool:
    types = {"object": dict, "array": list, "string": str, "boolean": bool, "null": type(None)}
    if kind in ("number", "integer"):
        return not isinstance(value, bool) and isinstance(value, int if kind == "integer" else int | float)
    return isinstance(value, types[kind])


PIECES = [chr(i) for i in range(32, 127)] + ["\n", "\t", "é", "中", "😀", "\\n", "\\u00e9", '"', '":', '", "']
PIECES += ['"city"', ' "unit": "C"', "true", "false", "null", "-0.5e+3", "12", "[]", "{}", "}", "]}", "},"]


@pytest.mark.parametrize("schema", [WEATHER, NESTED, ENUM, INTS, FLAGS, TEXT, ANY_OF, FREE, None, {"type": "object"}])
def test_random_accepted_walks_end_in_valid_json(schema) -> None:
    rng = random.Random(0)
    for _ in range(20):
        c = JsonConstraint(schema, max_string=12, max_items=4, max_number=8)
        for _ in range(3000):
            if c.done:
                break
            options = [p for p in PIECES if c.accepts(p)]
            assert options, f"dead end after {c.text!r}"
            c.feed(rng.choice(options))
        assert c.done, f"not done after {c.text!r}"
        value = json.loads(c.text)
        assert _valid(value, schema), c.text
        if schema is WEATHER:
            check_arguments(Tool("get_weather", "", WEATHER, lambda **_: ""), value)


def test_caps_make_every_path_end() -> None:
    c = JsonConstraint({"type": "string"}, max_string=3)
    c.feed('"abc')
    assert {p for p in PIECES if c.accepts(p)} == {'"'}  # only the closing quote
    n = JsonConstraint({"type": "number"}, max_number=4)
    n.feed("-1.")  # a fraction digit is still needed and fits
    assert n.accepts("5") and not n.accepts("55")
    n.feed("5")
    assert n.done and not n.accepts("5")
    a = JsonConstraint({"type": "array"}, max_items=2)
    a.feed("[1,2")
    assert not a.accepts(",") and a.accepts("]")
    deep = JsonConstraint()  # values without a schema stop nesting containers
    deep.feed("[" * 6)
    assert not deep.accepts("[") and not deep.accepts("{") and deep.accepts("1")
    free = JsonConstraint({"type": "object"}, max_items=1)
    free.feed('{"a": 1')
    assert not free.accepts(",") and free.accepts("}")


def test_free_keys_leave_room_for_required_ones() -> None:
    c = JsonConstraint({"type": "object", "required": ["n"]}, max_items=2)
    c.feed('{"a": 1, "')
    assert not c.accepts("b") and c.accepts('n": 2}')


def test_api_contract() -> None:
    c = JsonConstraint(WEATHER)
    assert not c.accepts("")
    with pytest.raises(ValueError):
        c.feed("")
    c.feed('{"city": "Ro')
    fork = c.copy()
    fork.feed('me", "unit": "C"}')
    assert fork.done and not c.done and c.text == '{"city": "Ro'
    assert c.accepts('me"') and c.text == '{"city": "Ro'  # accepts leaves the state alone
    assert JsonConstraint({"type": "number"}).accepts("-1") and not JsonConstraint().done
    with pytest.raises(ValueError, match=r"\$ref"):
        JsonConstraint({"type": "object", "properties": {"a": {"$ref": "#/$defs/A"}}})
    with pytest.raises(ValueError, match="required"):
        JsonConstraint({"type": "object", "properties": {"a": {}}, "required": ["b"]})
    ignored = JsonConstraint({"type": "integer", "minimum": 5, "description": "unknown keywords are ignored"})
    ignored.feed("1")
    assert ignored.done


def test_constrained_token_on_a_toy_vocabulary() -> None:
    texts = ["{", "}", '"a', '"', ":", " 1", "", "hello", "1}", '{"a":1}']
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    logits = torch.tensor([0.0, 1.0, 0.5, 0.0, 0.0, 0.0, 9.0, 8.0, 0.0, 0.5])
    c = JsonConstraint(schema)
    # "" and "hello" rank first but can never be taken; the best accepted is the whole object (0.5 > 0.0).
    assert constrained_token(logits, c, texts, SamplingParams(), None, stop_id=99) == 9
    g = torch.Generator().manual_seed(0)
    draws = {constrained_token(logits, c, texts, SamplingParams(temperature=1.0), g, 99) for _ in range(50)}
    assert draws == {0, 9}
    top1 = SamplingParams(temperature=1.0, top_k=1)
    assert constrained_token(logits, c, texts, top1, g, 99) == 9
    c.feed('{"a":1}')
    assert constrained_token(logits, c, texts, SamplingParams(), None, stop_id=99) == 99


def test_constrained_token_looks_past_the_top_of_the_ranking() -> None:
    texts = ["prose"] * 3000 + ["[", "[1", "{", "x"]
    logits = torch.cat([torch.linspace(10, 5, 3000), torch.tensor([1.0, 2.0, 0.0, 3.0])])
    c = JsonConstraint({"type": "array"})
    assert constrained_token(logits, c, texts, SamplingParams(), None, 0) == 3001
    g = torch.Generator().manual_seed(0)
    sampled = SamplingParams(temperature=1.0)
    assert {constrained_token(logits, c, texts, sampled, g, 0, candidates=2) for _ in range(40)} == {3000, 3001}


@pytest.fixture(scope="module")
def decoder():
    loaded = load_decoder()
    return loaded, token_texts(loaded.tokenizer)


def _generate(decoder, c: JsonConstraint, params: SamplingParams, seed: int | None, n: int = 96) -> str:
    """A bounded constrained decoding loop over the decode model's KV cache, as the engine runs it."""
    loaded, texts = decoder
    model, tok = loaded.model, loaded.tokenizer
    prompt = tok.encode_chat([{"role": "user", "content": "What is the weather in Paris? Call get_weather."}])
    generator = None if seed is None else torch.Generator().manual_seed(seed)
    model.setup_caches(1, len(prompt) + n)
    try:
        logits = model(torch.tensor([prompt]), cache_pos=0)[0, -1]
        for step in range(n):
            token = constrained_token(logits, c, texts, params, generator, tok.eos_id)
            if token == tok.eos_id:
                return c.text
            c.feed(texts[token])
            logits = model(torch.tensor([[token]]), cache_pos=len(prompt) + step)[0, -1]
    finally:
        model.clear_caches()
    raise AssertionError(f"not done within {n} tokens: {c.text!r}")


@pytest.mark.parametrize("params, seed", [(SamplingParams(), None), (SamplingParams(temperature=1.0), 0)])
def test_embedded_model_writes_a_valid_tool_call(decoder, params, seed) -> None:
    args = json.loads(_generate(decoder, JsonConstraint(WEATHER), params, seed))
    check_arguments(Tool("get_weather", "", WEATHER, lambda **_: ""), args)
    with pytest.raises(ToolError):  # the check is real
        check_arguments(Tool("get_weather", "", WEATHER, lambda **_: ""), {"city": "x"})


@pytest.mark.parametrize("params, seed", [(SamplingParams(), None), (SamplingParams(temperature=1.0), 1)])
def test_embedded_model_writes_a_json_object(decoder, params, seed) -> None:
    # Small caps: the model fills a free-form object with prose, each string and key list up to its cap.
    c = JsonConstraint({"type": "object"}, max_string=16, max_items=2)
    assert isinstance(json.loads(_generate(decoder, c, params, seed)), dict)


def test_token_texts(decoder) -> None:
    loaded, texts = decoder
    tok = loaded.tokenizer
    assert len(texts) == tok.vocab_size
    fragments = [i for i in range(tok.vocab_size) if "\ufffd" in tok.decode([i])]
    assert fragments and all(texts[i] == "" for i in fragments)  # byte pieces of multi-byte characters
    assert all(texts[i] == "" for i in tok.stop_ids) and texts[tok.special_tokens["<|im_start|>"]] == ""
    hello = tok.encode(" hello")
    assert len(hello) == 1 and texts[hello[0]] == " hello"
