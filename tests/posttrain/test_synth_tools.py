import json
import random

import pytest

from herd.posttrain.data import read_jsonl
from herd.posttrain.synth.tools import make_tool_dialogs, make_tool_eval, score_tool_call
from herd.tokenizer.chat_format import Message, ToolCall, format_tool_call
from herd.tools import SandboxResult, builtin, execute_tool_call, make_tools

FORMATS = ("json", "llama3")


@pytest.fixture(scope="module", params=FORMATS)
def dialogs(request) -> tuple[str, list[dict]]:
    return request.param, make_tool_dialogs(random.Random(0), 40, fmt=request.param)


def _calls(records: list[dict]) -> list[tuple[dict, str]]:
    """(call, ipython content) of every tool dialog."""
    return [
        (m["messages"][2]["tool_calls"][0], m["messages"][3]["content"]) for m in records if len(m["messages"]) == 5
    ]


def test_every_stored_call_reexecutes_to_its_ipython_content(dialogs) -> None:
    fmt, records = dialogs
    tools = make_tools(fmt=fmt)
    calls = _calls(records)
    assert {call["name"] for call, _ in calls} == set(tools)  # every tool is exercised
    for call, content in calls:
        assert execute_tool_call(call, tools) == content


def test_dialogs_have_the_tool_use_shape(dialogs) -> None:
    _, records = dialogs
    for record in records:
        roles = [m["role"] for m in record["messages"]]
        assert roles in (
            ["system", "user", "assistant", "ipython", "assistant"],
            ["system", "user", "assistant"],
        )
        assert record["messages"][-1]["content"].strip()
        for i, m in enumerate(record["messages"]):
            Message.from_dict(m, index=i)  # herd's neutral message form
    no_tool = sum(len(r["messages"]) == 3 for r in records)
    assert 0 < no_tool <= len(records) // 4
    assert json.loads(json.dumps(records)) == records


def test_dialogs_pass_the_sft_reader(dialogs, tmp_path) -> None:
    fmt, records = dialogs
    path = tmp_path / f"{fmt}.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    result = read_jsonl(path, kind="sft", on_error="stop")
    assert result.records == records and not result.problems


def test_builtin_calls_end_the_message_in_the_llama3_format() -> None:
    records = make_tool_dialogs(random.Random(3), 30, fmt="llama3")
    for record in records:
        if len(record["messages"]) == 5:
            call_turn = record["messages"][2]
            builtin = call_turn["tool_calls"][0]["name"] in ("code_interpreter", "brave_search")
            assert (call_turn.get("stop_reason") == "end_of_message") == builtin


def test_a_failing_call_is_drawn_again(monkeypatch) -> None:
    real = builtin.run_python

    def failing_on_factorials(code: str) -> SandboxResult:
        if "factorial" in code:
            return SandboxResult(ok=False, stdout="", stderr="", error="RuntimeError: broken")
        return real(code)

    monkeypatch.setattr(builtin, "run_python", failing_on_factorials)
    records = make_tool_dialogs(random.Random(1), 40, fmt="json", no_tool_share=0.0)
    codes = [call["arguments"]["code"] for call, _ in _calls(records) if call["name"] == "code_interpreter"]
    assert len(records) == 40 and codes
    assert not any("factorial" in code for code in codes)


def test_eval_items_are_disjoint_from_training_dialogs() -> None:
    train = make_tool_dialogs(random.Random(0), 80, fmt="json")
    evals = make_tool_eval(random.Random(0), 40, fmt="json")
    train_requests = {r["messages"][1]["content"] for r in train}
    train_calls = {json.dumps(call, sort_keys=True) for call, _ in _calls(train)}
    for item in evals:
        assert item["kind"] == "tool" and [m["role"] for m in item["messages"]] == ["system", "user"]
        assert item["messages"][1]["content"] not in train_requests
        call = {"name": item["tool"], "arguments": item["arguments"]}
        assert json.dumps(call, sort_keys=True) not in train_calls
    assert len({item["tool"] for item in evals}) >= 4
    assert json.loads(json.dumps(evals)) == evals


@pytest.mark.parametrize("fmt", FORMATS)
def test_the_reference_call_of_an_eval_item_scores_valid(fmt: str) -> None:
    tools = make_tools(fmt=fmt)
    for item in make_tool_eval(random.Random(2), 12, fmt=fmt):
        if fmt == "json":
            response = json.dumps({"name": item["tool"], "arguments": item["arguments"]})
        else:
            text = format_tool_call(ToolCall(name=item["tool"], arguments=item["arguments"]))
            response = f"<|python_tag|>{text}<|eom_id|>" if item["tool"] == "code_interpreter" else text
        assert score_tool_call(item, response, tools) == {"valid": True, "right_tool": True, "error": None}


DOCS = [
    {"title": "Eiffel Tower", "text": "A wrought-iron lattice tower in Paris, finished in 1889."},
    {"title": "Colosseum", "text": "An oval amphitheatre in the centre of Rome, built of travertine and concrete."},
    {"title": "Alhambra", "text": "A palace and fortress complex in Granada, Spain."},
    {"title": "Petra", "text": "A historic city in southern Jordan, carved into rose-red sandstone."},
    {"title": "Angkor Wat", "text": "A temple complex in Cambodia, the largest religious monument in the world."},
    {"title": "Machu Picchu", "text": "A fifteenth-century Inca citadel on a mountain ridge in Peru."},
]


def test_search_runs_over_the_given_documents() -> None:
    records = make_tool_dialogs(random.Random(0), 60, fmt="json", docs=DOCS, no_tool_share=0.0)
    searches = [(call, content) for call, content in _calls(records) if call["name"] == "search"]
    assert searches
    titles = {doc["title"] for doc in DOCS}
    for call, content in searches:
        assert json.loads(content)[0]["title"] == call["arguments"]["query"] in titles


# ---------------------------------------------------------------------------------------------
# Scoring model responses (parsing, argument checks and execution: tests/tools/test_calls.py)

ITEM = {"kind": "tool", "fmt": "json", "tool": "convert_units"}
CALL = {"name": "convert_units", "arguments": {"value": 3, "from_unit": "km", "to_unit": "mi"}}


@pytest.fixture(scope="module")
def json_tools():
    return make_tools(fmt="json", docs=DOCS)


@pytest.mark.parametrize(
    "response", [json.dumps(CALL), json.dumps({"name": "convert_units", "parameters": CALL["arguments"]})]
)
def test_a_valid_json_call_scores_valid(response: str, json_tools) -> None:
    assert score_tool_call(ITEM, response, json_tools) == {"valid": True, "right_tool": True, "error": None}


@pytest.mark.parametrize(
    ("response", "right_tool", "reason"),
    [
        ('{"name": "convert_units", "arguments": {"value": 3', False, "not JSON"),
        ("Sure! 3 km is about 1.86 miles.", False, "not JSON"),
        ('{"arguments": {"value": 3}}', False, "string 'name'"),
        ('{"name": "convert_units", "arguments": {"value": "3", "from_unit": "km", "to_unit": "mi"}}', True, "not a"),
        ('{"name": "convert_units", "arguments": {"value": 3, "from_unit": "km"}}', True, "missing required"),
        ('{"name": "convert_units", "arguments": {"value": 3, "from_unit": "km", "to_unit": "kg"}}', True, "cannot"),
        ('{"name": "teleport", "arguments": {"to": "Mars"}}', False, "unknown tool 'teleport'"),
        ('{"name": "code_interpreter", "arguments": {"code": "print(1 / 0)"}}', False, "ZeroDivisionError"),
    ],
)
def test_bad_calls_score_invalid_with_a_reason(response: str, right_tool: bool, reason: str, json_tools) -> None:
    score = score_tool_call(ITEM, response, json_tools)
    assert score["valid"] is False and score["right_tool"] is right_tool
    assert reason in score["error"]


def test_a_valid_call_of_the_wrong_tool_is_valid_but_not_right(json_tools) -> None:
    response = '{"name": "http_status", "arguments": {"code": 404}}'
    assert score_tool_call(ITEM, response, json_tools) == {"valid": True, "right_tool": False, "error": None}


def test_llama3_responses_score_by_the_chat_format() -> None:
    search = format_tool_call(ToolCall(name="brave_search", arguments={"query": "Petra"}))
    tools = make_tools(fmt="llama3", docs=DOCS)
    item = {"kind": "tool", "fmt": "llama3", "tool": "brave_search"}
    assert score_tool_call(item, search, tools)["valid"]
    assert score_tool_call(item, "<|python_tag|>raise SystemExit('no')", tools)["error"] == "code failed: no"
    assert score_tool_call(item, "Petra is in Jordan.<|eot_id|>", tools)["right_tool"] is False
