"""The hand-written free-phrasing families (tests/posttrain/data/free_phrasing.json) that benchmarks/free_phrasing.py
measures models on: every item is right by herd's own checkers, and no training generator of herd synth writes any
of them (they measure phrasing the round never trained on)."""

import json
import random
from pathlib import Path

from herd.posttrain.synth.facts import ALL_FAMILIES, fact_items, judge
from herd.posttrain.synth.run import _tools
from herd.posttrain.synth.tools import make_tool_dialogs, score_tool_call

DATA = json.loads((Path(__file__).parent / "data" / "free_phrasing.json").read_text())


def test_every_tool_item_has_a_call_that_executes_and_every_fact_its_answer() -> None:
    tools = _tools("json")
    assert len({t["family"] for t in DATA["tools"]}) >= 4 and len({t["tool"] for t in DATA["tools"]}) == 4
    for t in DATA["tools"]:
        item = {"fmt": "json", "tool": t["tool"]}
        call = json.dumps({"name": t["tool"], "arguments": t["arguments"]})
        assert score_tool_call(item, call, tools) == {"valid": True, "right_tool": True, "error": None}, t
    for f in DATA["facts"]:
        item = {"answer": f["answer"], "aliases": f["aliases"]}
        if f["answer"] is None:
            assert f["family"] == "made_up"
            assert judge(item, "I don't know that.") == "refused"
        else:
            assert judge(item, f"The answer is {f['answer']}.") == "correct", f
            assert judge(item, "The answer is Narnia.") == "wrong"


def test_no_synth_generator_writes_these_requests() -> None:
    requests = {t["request"] for t in DATA["tools"]} | {f["question"] for f in DATA["facts"]}
    dialogs = make_tool_dialogs(random.Random(0), 400, fmt="json", max_tools=2)
    written = {m["content"] for d in dialogs for m in d["messages"] if m["role"] == "user"}
    for split in ("train", "eval"):
        written |= {q["messages"][0]["content"] for q in fact_items(random.Random(1), 200, split=split,
                                                                    fictitious=0.2, families=ALL_FAMILIES)}  # fmt: skip
    assert not requests & written
