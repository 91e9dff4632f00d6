import json
import re

import pytest

from herd.errors import ToolError
from herd.tokenizer.chat_format import ToolCall, format_tool_call
from herd.tools import execute_tool_call, make_tools, parse_tool_call, read_tool_call, tool_system_prompt

DOCS = [
    {"title": "Eiffel Tower", "text": "A wrought-iron lattice tower in Paris, finished in 1889."},
    {"title": "Petra", "text": "A historic city in southern Jordan, carved into rose-red sandstone."},
]
CALL = {"name": "convert_units", "arguments": {"value": 3, "from_unit": "km", "to_unit": "mi"}}


@pytest.fixture(scope="module")
def json_tools():
    return make_tools(fmt="json", docs=DOCS)


# ---------------------------------------------------------------------------------------------
# Parsing model responses


@pytest.mark.parametrize(
    "response",
    [
        json.dumps(CALL),
        f"  ```json\n{json.dumps(CALL)}\n```\n",
        json.dumps({"name": "convert_units", "parameters": CALL["arguments"]}),
        json.dumps({"name": "convert_units", "arguments": json.dumps(CALL["arguments"])}),
    ],
)
def test_a_valid_json_call_parses_and_executes(response: str, json_tools) -> None:
    assert parse_tool_call(response, "json") == CALL
    assert json.loads(execute_tool_call(parse_tool_call(response, "json"), json_tools))["unit"] == "mi"


@pytest.mark.parametrize(
    ("response", "reason"),
    [
        ('{"name": "convert_units", "arguments": {"value": 3', "not JSON"),
        ("Sure! 3 km is about 1.86 miles.", "not JSON"),
        ('{"arguments": {"value": 3}}', "string 'name'"),
        ('["convert_units"]', "string 'name'"),
        ('{"name": "convert_units", "arguments": [3, "km", "mi"]}', "no 'arguments' object"),
    ],
)
def test_a_response_that_is_not_one_call_does_not_parse(response: str, reason: str) -> None:
    assert parse_tool_call(response, "json") is None
    with pytest.raises(ToolError, match=reason):
        read_tool_call(response, "json")


@pytest.mark.parametrize(
    ("arguments", "reason"),
    [
        ({"value": "3", "from_unit": "km", "to_unit": "mi"}, "value='3' is not a number"),
        ({"value": True, "from_unit": "km", "to_unit": "mi"}, "value=True is not a number"),
        ({"value": 3, "from_unit": "km"}, "missing required arguments ['to_unit']"),
        ({"value": 3, "from_unit": "km", "to_unit": "mi", "x": 1}, "unknown arguments ['x']"),
        ({"value": 3, "from_unit": "km", "to_unit": "parsec"}, "is not one of"),
        ({"value": 3, "from_unit": "km", "to_unit": "kg"}, "cannot convert 'km' to 'kg'"),
    ],
)
def test_arguments_that_do_not_fit_raise_with_a_reason(arguments: dict, reason: str, json_tools) -> None:
    with pytest.raises(ToolError, match=re.escape(reason)):
        execute_tool_call({"name": "convert_units", "arguments": arguments}, json_tools)


@pytest.mark.parametrize(
    ("call", "reason"),
    [
        ({"name": "teleport", "arguments": {"to": "Mars"}}, "unknown tool 'teleport'"),
        ({"name": "code_interpreter", "arguments": {"code": "print(1 / 0)"}}, "ZeroDivisionError"),
        ({"name": "date_diff", "arguments": {"start": "2024-02-30", "end": "2024-03-01"}}, "ISO date"),
    ],
)
def test_unknown_tools_and_failed_executions_raise(call: dict, reason: str, json_tools) -> None:
    with pytest.raises(ToolError, match=reason):
        execute_tool_call(call, json_tools)


def test_llama3_calls_round_trip_through_the_chat_format() -> None:
    custom = ToolCall(name="convert_units", arguments=CALL["arguments"])
    assert parse_tool_call(format_tool_call(custom), "llama3") == CALL
    code = "import math\nprint(math.factorial(20))"
    code_call = format_tool_call(ToolCall(name="code_interpreter", arguments={"code": code}))
    parsed = parse_tool_call(f"<|python_tag|>{code_call}<|eom_id|>", "llama3")
    assert parsed == {"name": "code_interpreter", "arguments": {"code": code}}
    search = format_tool_call(ToolCall(name="brave_search", arguments={"query": "Petra"}))
    assert parse_tool_call(f"<|python_tag|>{search}<|eom_id|>", "llama3") == {
        "name": "brave_search",
        "arguments": {"query": "Petra"},
    }
    assert parse_tool_call("Petra is in Jordan.<|eot_id|>", "llama3") is None
    with pytest.raises(ToolError, match="no tool call"):
        read_tool_call("Petra is in Jordan.<|eot_id|>", "llama3")
    tools = make_tools(fmt="llama3", docs=DOCS)
    assert json.loads(execute_tool_call(read_tool_call(search, "llama3"), tools))[0]["title"] == "Petra"
    with pytest.raises(ToolError, match=r"^code failed: no$"):
        execute_tool_call(read_tool_call("<|python_tag|>raise SystemExit('no')", "llama3"), tools)


def test_an_unknown_format_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="fmt='xml'"):
        parse_tool_call("{}", "xml")


# ---------------------------------------------------------------------------------------------
# System prompts


def test_system_prompts_offer_the_tools_per_format() -> None:
    json_tools, llama_tools = make_tools(fmt="json", docs=DOCS), make_tools(fmt="llama3", docs=DOCS)
    text = tool_system_prompt(json_tools.values(), "json")
    for tool in json_tools.values():
        assert json.dumps(tool.spec()) in text
    text = tool_system_prompt(llama_tools.values(), "llama3")
    assert text.startswith("Environment: ipython\nTools: brave_search\n")
    assert '"name": "word_count"' in text and '"name": "code_interpreter"' not in text
    assert tool_system_prompt([llama_tools["code_interpreter"]], "llama3").startswith("Environment: ipython\n\n")
    with pytest.raises(ValueError, match="fmt='xml'"):
        tool_system_prompt(json_tools.values(), "xml")
