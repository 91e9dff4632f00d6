"""`herd eval pairwise`: the prompt set, both judging orders, aggregation with bootstrap CIs, bad input, and one
end-to-end run with a herd model as A, B and judge.

The judge endpoint is a small OpenAI-compatible server on 127.0.0.1 (one for the module), a stand-in for an external
judge whose "models" are fixed rules the tests can reason about: `longer` prefers the longer response, `first`
always names position 1, `mumble` never gives a verdict.
"""

import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from herd.cli import main
from herd.eval.pairwise import bootstrap_rates, item_score, load_prompts, parse_verdict
from herd.eval.results import read_result
from herd.eval.usecases import CATEGORIES, PASSAGES, build_prompts, pool

_PAIR = re.compile(
    r"\[Response 1\]\n(?P<first>.*)\n\[End of Response 1\]\n\n\[Response 2\]\n(?P<second>.*)\n\[End of Response 2\]\Z",
    re.DOTALL,
)


def _longer(first: str, second: str) -> str:
    verdict = "1" if len(first) > len(second) else "2" if len(second) > len(first) else "tie"
    return f"Response {verdict} says more. [[{verdict}]]"


RULES = {"longer": _longer, "first": lambda first, second: "[[1]]", "mumble": lambda first, second: "Hard to say."}


class _JudgeHandler(BaseHTTPRequestHandler):
    timeout = 30  # a stuck client cannot hold a handler thread forever

    def _send(self, payload: dict) -> None:
        body = json.dumps(payload).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        self._send({"object": "list", "data": [{"id": m, "object": "model", "created": 0, "owned_by": "tests"}
                                               for m in RULES]})  # fmt: skip

    def do_POST(self) -> None:
        request = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        pair = _PAIR.search(request["messages"][-1]["content"])
        assert pair is not None, "the judge prompt lost its response markers"
        text = RULES[request["model"]](pair["first"], pair["second"])
        self._send({
            "id": "cmpl-1", "object": "chat.completion", "created": 0, "model": request["model"],
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
        })  # fmt: skip

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def judge_url():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _JudgeHandler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}/v1"
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


def _jsonl(path: Path, rows: list) -> str:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return str(path)


def _run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(["eval", "pairwise", *argv])
    out, err = capsys.readouterr()
    return code, out, err


# Four prompts in two categories; A's answer is longer, shorter, as long, and longer than B's.
PROMPTS = [
    {"id": "p1", "category": "advice", "prompt": "How do I keep basil alive?"},
    {"id": "p2", "category": "advice", "prompt": "Should I learn the piano or the guitar?"},
    {"id": "p3", "category": "coding", "prompt": "Reverse a list in Python."},
    {"id": "p4", "category": "coding", "prompt": "Sum a list in C."},
]
ANSWERS_A = ["Water it often and give it sun.", "Guitar.", "xs[::-1]", "Loop and add each element."]
ANSWERS_B = ["Water it.", "The piano: it teaches harmony.", "xs.rev()", "Use a for loop."]


@pytest.fixture
def files(tmp_path) -> dict[str, str]:
    return {
        "prompts": _jsonl(tmp_path / "prompts.jsonl", PROMPTS),
        "a": _jsonl(
            tmp_path / "alpha.jsonl", [{"id": p["id"], "answer": t} for p, t in zip(PROMPTS, ANSWERS_A, strict=True)]
        ),
        "b": _jsonl(
            tmp_path / "beta.jsonl", [{"id": p["id"], "answer": t} for p, t in zip(PROMPTS, ANSWERS_B, strict=True)]
        ),
    }


def _judge_run(capsys, files, judge_url, judge_model: str, out: Path, *extra: str) -> tuple[dict, list[dict], str]:
    code, stdout, err = _run(capsys, "--model-a", files["a"], "--model-b", files["b"], "--judge", judge_url,
                             "--judge-model", judge_model, "--prompts", files["prompts"], "--out", str(out),
                             "--quiet", *extra)  # fmt: skip
    assert code == 0, err
    judgments = [json.loads(line) for line in (out / "pairwise_judgments.jsonl").read_text().splitlines()]
    return read_result(out / "pairwise.json").to_json(), judgments, stdout


def test_swapping_the_pair_swaps_the_raw_verdict_and_the_score_follows_a(capsys, files, judge_url, tmp_path) -> None:
    result, judgments, stdout = _judge_run(capsys, files, judge_url, "longer", tmp_path / "out")
    by_id = {j["id"]: j for j in judgments}
    # A longer: position 1 wins when A is first, position 2 when B is first; both map to A.
    assert (by_id["p1"]["verdict_ab"], by_id["p1"]["verdict_ba"], by_id["p1"]["score"]) == ("1", "2", 1.0)
    assert (by_id["p2"]["verdict_ab"], by_id["p2"]["verdict_ba"], by_id["p2"]["score"]) == ("2", "1", 0.0)
    assert (by_id["p3"]["verdict_ab"], by_id["p3"]["verdict_ba"], by_id["p3"]["score"]) == ("tie", "tie", 0.5)
    assert by_id["p4"]["score"] == 1.0
    assert by_id["p1"]["answer_a"] == ANSWERS_A[0] and "[[1]]" in by_id["p1"]["judge_ab"]

    assert result["model"] == "alpha" and result["kind"] == result["benchmark"] == "pairwise"
    m = result["metrics"]
    assert m["opponent"] == "beta" and m["judge"] == f"longer @ {judge_url}"
    assert (m["n"], m["win_rate"], m["tie_rate"], m["loss_rate"], m["preference"]) == (4, 0.5, 0.25, 0.25, 0.625)
    assert m["per_category"]["advice"]["win_rate"] == 0.5 and m["per_category"]["coding"]["preference"] == 0.75
    assert set(m["per_category"]) == {"advice", "coding"}
    # An order-blind judge: each decisive item gives one "1" and one "2", and the two orders always agree.
    assert m["position_bias"] == 0.5 and m["order_agreement"] == 1.0 and m["unparsable"] == 0
    assert [(it["id"], it["text"], it["score"]) for it in result["items"]] == [
        (p["id"], p["prompt"], s) for p, s in zip(PROMPTS, (1.0, 0.0, 0.5, 1.0), strict=True)
    ]
    assert "advice" in stdout and "overall" in stdout and "0.625" in stdout


def test_a_position_biased_judge_comes_out_all_ties(capsys, files, judge_url, tmp_path) -> None:
    result, judgments, _ = _judge_run(capsys, files, judge_url, "first", tmp_path / "first")
    m = result["metrics"]
    assert all(j["verdict_ab"] == j["verdict_ba"] == "1" and j["score"] == 0.5 for j in judgments)
    assert (m["tie_rate"], m["win_rate"], m["loss_rate"], m["preference"]) == (1.0, 0.0, 0.0, 0.5)
    assert m["position_bias"] == 1.0 and m["order_agreement"] == 0.0
    assert m["verdicts"] == {"first": 8, "second": 0, "tie": 0, "unparsable": 0}

    # A judge that never gives a verdict: every order is a tie, and each unparsable answer is counted.
    result, _, stdout = _judge_run(capsys, files, judge_url, "mumble", tmp_path / "mumble")
    m = result["metrics"]
    assert m["tie_rate"] == 1.0 and m["unparsable"] == 8 and m["position_bias"] is None
    assert "8 unparsable" in stdout


def test_verdict_parsing_is_strict_and_item_scores_take_five_values() -> None:
    assert parse_verdict("Response 2 is clearer.\n[[2]]") == "2"
    assert parse_verdict("[[TIE]]") == "tie"
    assert parse_verdict("[[1]] ... so, again, [[1]]") == "1"
    for text in ("[[1]] or maybe [[2]]", "[1]", "Response 1", "[[A]]", ""):
        assert parse_verdict(text) is None, text
    scores = {(ab, ba): item_score(ab, ba) for ab in ("1", "2", "tie", None) for ba in ("1", "2", "tie", None)}
    assert set(scores.values()) == {0.0, 0.25, 0.5, 0.75, 1.0}
    assert scores["1", "2"] == 1.0 and scores["2", "1"] == 0.0 and scores["1", "1"] == scores["2", "2"] == 0.5
    assert scores["1", None] == scores["1", "tie"] == 0.75 and scores[None, None] == 0.5


def test_bootstrap_intervals_hold_the_estimate_and_repeat_under_a_seed(capsys, files, judge_url, tmp_path) -> None:
    scores = [1.0, 0.75, 0.5, 0.5, 0.25, 0.0, 1.0, 1.0, 0.75, 0.5]
    r = bootstrap_rates(scores, n_boot=500, seed=3)
    assert r == bootstrap_rates(scores, n_boot=500, seed=3) != bootstrap_rates(scores, n_boot=500, seed=4)
    assert r["preference"] == pytest.approx(sum(scores) / len(scores))
    for key in ("preference", "win_rate", "tie_rate", "loss_rate"):
        lo, hi = r[f"{key}_ci"]
        assert 0 <= lo <= r[key] <= hi <= 1 and lo < hi, key
    # One item, or items all alike: a zero-width interval at the estimate.
    assert bootstrap_rates([0.75], n_boot=100)["preference_ci"] == [0.75, 0.75]
    assert bootstrap_rates([0.5] * 7, n_boot=100)["tie_rate_ci"] == [1.0, 1.0]

    first = _judge_run(capsys, files, judge_url, "longer", tmp_path / "s1", "--seed", "7", "--bootstrap", "300")[0]
    again = _judge_run(capsys, files, judge_url, "longer", tmp_path / "s2", "--seed", "7", "--bootstrap", "300")[0]
    assert first["metrics"] == again["metrics"] and len(first["metrics"]["preference_ci"]) == 2


def test_bad_lines_and_unknown_categories_name_the_file_and_line(capsys, files, judge_url, tmp_path) -> None:
    def error(**paths: str) -> str:
        argv = {"--model-a": files["a"], "--model-b": files["b"], "--prompts": files["prompts"]} | paths
        code, _, err = _run(capsys, *[x for kv in argv.items() for x in kv], "--judge", judge_url,
                            "--judge-model", "longer", "--out", str(tmp_path / "bad"), "--quiet")  # fmt: skip
        assert code == 1 and err.startswith("herd: error: ")
        return err.strip().removeprefix("herd: error: ")

    poetry = _jsonl(tmp_path / "p.jsonl", [PROMPTS[0], "", {"category": "poetry", "prompt": "A sonnet."}])
    assert error(**{"--prompts": poetry}).startswith(f"{poetry}:3: unknown category 'poetry'")
    no_answer = _jsonl(tmp_path / "a.jsonl", [{"id": "p1", "answer": "x"}, {"id": "p2", "text": "y"}])
    assert error(**{"--model-a": no_answer}) == f"{no_answer}:2: missing field 'answer'"
    broken = _jsonl(tmp_path / "b.jsonl", [{"id": "p1", "answer": "x"}, "{not json"])
    assert error(**{"--model-b": broken}).startswith(f"{broken}:2: not JSON")
    short = _jsonl(tmp_path / "c.jsonl", [{"id": "p1", "answer": "x"}])
    assert error(**{"--model-b": short}) == f"{short}: no answer for 3 of 4 prompts (ids p2, p3, p4)"
    dup = _jsonl(tmp_path / "d.jsonl", [PROMPTS[0], PROMPTS[0]])
    assert error(**{"--prompts": dup}) == f"{dup}:2: duplicate id 'p1'"
    code, _, err = _run(capsys, "--categories", "advice,poetry", "--prompts-only", "--out", str(tmp_path / "x"))
    assert code == 1 and "--categories 'advice,poetry'" in err


def test_herds_prompt_set_covers_the_12_use_cases_and_is_seeded(capsys, tmp_path) -> None:
    prompts = build_prompts(3, seed=0)
    assert [p.category for p in prompts[:12]] == list(CATEGORIES)  # interleaved: --limit 12 covers every case
    assert len(prompts) == 36 == len({p.id for p in prompts}) == len({p.prompt for p in prompts})
    assert prompts == build_prompts(3, seed=0) and prompts != build_prompts(3, seed=1)
    bigger = build_prompts(5, seed=0)
    assert all(p in bigger for p in prompts)  # a larger set keeps the smaller one
    assert min(len(pool(c)) for c in CATEGORIES) >= 150  # --per-category 150: Llama 3's 1,800 prompts
    texts = [p.text for p in PASSAGES]
    for p in prompts:
        needs_passage = p.category in ("closed_qa", "extraction", "summarization")
        assert not needs_passage or any(t in p.prompt for t in texts), p

    # --prompts-only writes the set for answering elsewhere, in the format --prompts reads.
    code, _, err = _run(capsys, "--per-category", "2", "--limit", "5", "--prompts-only", "--out", str(tmp_path))
    assert code == 0, err
    assert load_prompts(tmp_path / "pairwise_prompts.jsonl") == build_prompts(2)[:5]


def test_end_to_end_with_a_herd_model_as_a_b_and_judge(capsys, tiny_chat_model, tmp_path) -> None:
    out = tmp_path / "run"
    code, stdout, err = _run(capsys, "--model-a", tiny_chat_model, "--model-b", tiny_chat_model + "/", "--judge",
                             tiny_chat_model, "--categories", "brainstorming,coding", "--per-category", "1",
                             "--max-new-tokens", "4", "--judge-max-new-tokens", "6", "--bootstrap", "50",
                             "--out", str(out), "--quiet")  # fmt: skip
    assert code == 0, err
    result = read_result(out / "pairwise.json")
    assert [it.id for it in result.items] == ["brainstorming-000", "coding-000"]
    assert all(it.score in (0, 0.25, 0.5, 0.75, 1) for it in result.items)
    m = result.metrics
    assert m["judge"] == tiny_chat_model and m["n"] == 2 and set(m["per_category"]) == {"brainstorming", "coding"}
    assert sum(m["verdicts"].values()) == 4 and m["unparsable"] == m["verdicts"]["unparsable"]
    judgments = [json.loads(line) for line in (out / "pairwise_judgments.jsonl").read_text().splitlines()]
    # The same weights answer greedily twice: the same answers, generated by the two loads.
    assert [j["answer_a"] for j in judgments] == [j["answer_b"] for j in judgments]
    assert all(isinstance(j["judge_ab"], str) and isinstance(j["judge_ba"], str) for j in judgments)
    assert "brainstorming" in stdout and "coding" in stdout
