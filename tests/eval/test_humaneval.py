"""`herd eval humaneval`: problems are read and checked, programs run only in herd's sandbox (hostile ones are
contained and the run goes on), canonical solutions pass and wrong ones fail, and the command writes its files."""

import json
import socket
import uuid
from pathlib import Path

import pytest

from herd.errors import EvalError
from herd.eval.humaneval import (
    CODEX_STOP,
    Problem,
    Sample,
    execute_samples,
    extract_code,
    load_problems,
    sample_seed,
)
from herd.eval.results import read_result

MBPP_ROWS = [
    {
        "task_id": 11,
        "text": "Write a function to add two numbers.",
        "code": "def add(a, b):\n    return a + b\n",
        "test_list": ["assert add(1, 2) == 3", "assert add(-1, 1) == 0"],
        "test_setup_code": "",
    },
    {
        "task_id": 12,
        "text": "Write a function that doubles the largest element of a list.",
        "code": "def double_max(xs):\n    return 2 * max(xs)\n",
        "test_list": ["assert double_max([1, 5, 2]) == 10"],
        "test_setup_code": "import math",
    },
]


@pytest.fixture(scope="module")
def humaneval() -> dict[str, Problem]:
    return {p.task_id: p for p in load_problems()}


def _write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def test_the_packaged_problems_load(humaneval) -> None:
    assert len(humaneval) == 164
    p = humaneval["HumanEval/0"]
    assert p.entry_point == "has_close_elements" and p.reference and p.stop == CODEX_STOP
    assert p.prompt.startswith("from typing import List") and p.tests.endswith("check(has_close_elements)\n")


def test_canonical_solutions_pass_and_wrong_ones_fail(humaneval) -> None:
    # 10 and 32 call helper functions defined in their prompts; 53 is a one-liner.
    chosen = [humaneval[t] for t in ("HumanEval/0", "HumanEval/10", "HumanEval/32", "HumanEval/53")]
    right = [Sample(p.task_id, 0, p.reference or "") for p in chosen]
    wrong = [
        Sample("HumanEval/0", 1, "    return False\n"),  # right on some asserts only
        Sample("HumanEval/10", 1, "    return string\n"),
        Sample("HumanEval/32", 1, "    return 0.0\n"),
        Sample("HumanEval/53", 1, "    return x - y\n"),
        Sample("HumanEval/53", 2, "    return x +\n"),  # a syntax error
    ]
    execute_samples(chosen, right + wrong, timeout=10)
    assert [s.passed for s in right] == [True] * 4 and all(s.error is None for s in right)
    assert not any(s.passed for s in wrong)
    assert [s.error for s in wrong[:4]] == ["AssertionError"] * 4
    assert wrong[4].error is not None and "SyntaxError" in wrong[4].error


def test_hostile_samples_are_contained_and_the_run_goes_on(humaneval, tmp_path) -> None:
    problem = humaneval["HumanEval/53"]  # add(x, y)
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "keep.txt").write_text("still here")
    home_marker = Path.home() / f".herd-test-marker-{uuid.uuid4().hex}"
    home_marker.write_text("still here")
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(0.2)
    port = server.getsockname()[1]
    correct = "    return x + y\n"
    hostile = {
        "rm -rf": f"    import os, subprocess\n    assert os.path.isdir({str(victim)!r}), 'victim not visible'\n"
        f"    subprocess.run(['rm', '-rf', {str(victim)!r}])\n" + correct,
        "rmtree": f"    import shutil\n    shutil.rmtree({str(victim)!r})\n" + correct,
        "remove home": f"    import os\n    os.remove({str(home_marker)!r})\n" + correct,
        "socket": f"    import socket\n    socket.create_connection(('127.0.0.1', {port}), timeout=2).sendall(b'hi')\n"
        + correct,
        "fork bomb": "    import os\n    while True:\n        try:\n            os.fork()\n        except OSError:\n"
        "            pass\n",
    }
    samples = [Sample(problem.task_id, i, code) for i, code in enumerate(hostile.values())]
    samples += [Sample(problem.task_id, len(hostile) + i, correct) for i in range(2)]
    try:
        execute_samples([problem], samples, timeout=3, workers=2)
        with pytest.raises(TimeoutError):
            server.accept()  # nothing reached the host's loopback
    finally:
        server.close()
        home_exists = home_marker.exists()
        home_marker.unlink(missing_ok=True)
    for name, s in zip(hostile, samples, strict=False):
        assert not s.passed and s.error, name
    assert samples[0].error == "AssertionError: victim not visible"
    assert samples[1].error is not None and "FileNotFoundError" in samples[1].error
    assert samples[3].error is not None and "ConnectionRefusedError" in samples[3].error
    assert [s.passed for s in samples[-2:]] == [True, True]  # the run went on
    assert (victim / "keep.txt").read_text() == "still here" and home_exists


def test_mbpp_form_runs_through_the_same_path(tmp_path) -> None:
    problems = load_problems(_write_jsonl(tmp_path / "mbpp.jsonl", MBPP_ROWS))
    assert [p.task_id for p in problems] == ["11", "12"]
    assert problems[0].prompt == '"""\nWrite a function to add two numbers.\nassert add(1, 2) == 3\n"""\n'
    samples = [Sample(p.task_id, 0, p.reference or "") for p in problems]
    samples += [Sample("12", 1, "def double_max(xs):\n    return max(xs)\n")]
    execute_samples(problems, samples)
    assert [s.passed for s in samples] == [True, True, False]


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        ("{not json", "not JSON"),
        ('{"prompt": "def f():\\n", "test": "", "entry_point": "f"}', "missing field 'task_id'"),
        ('{"task_id": "a", "prompt": "def f():\\n", "entry_point": "f"}', "missing field 'test'"),
        ('{"task_id": "a", "prompt": "x", "test": "", "entry_point": "not a name"}', "entry_point"),
        ('{"task_id": "a", "prompt": 3, "test": "", "entry_point": "f"}', "field 'prompt' must be str"),
        ('{"task_id": "a", "text": "t", "test_list": []}', "test_list"),
        ('{"task_id": "a", "text": "t", "test_list": ["print(1)"]}', "test_list"),
        ('{"task_id": "a", "question": "t"}', "neither HumanEval form"),
        (json.dumps(MBPP_ROWS[0]), "appears twice"),
    ],
)
def test_a_bad_problems_line_names_file_and_line(tmp_path, line, reason) -> None:
    path = _write_jsonl(tmp_path / "bad.jsonl", [MBPP_ROWS[0], "", line])
    with pytest.raises(EvalError, match=f"^{path}:3: .*{reason}"):
        load_problems(path)


def test_the_command_reports_a_bad_line(tmp_path, capsys) -> None:
    from herd.cli import main

    path = _write_jsonl(tmp_path / "bad.jsonl", [MBPP_ROWS[0], {"task_id": 2, "text": 5, "test_list": ["assert 1"]}])
    assert main(["eval", "humaneval", "--problems", str(path), "--out", str(tmp_path / "out")]) == 1
    assert f"herd: error: {path}:2: field 'text' must be str" in capsys.readouterr().err


def test_chat_replies_give_their_code_block(humaneval) -> None:
    p = humaneval["HumanEval/53"]
    reply = "Sure:\n```python\ndef add(x: int, y: int):\n    return x + y\n```\nDone."
    assert extract_code(reply, p) == "\ndef add(x: int, y: int):\n    return x + y\n"
    assert extract_code("    return x + y\n", p) == "    return x + y\n"  # no block, a body only
    s = Sample(p.task_id, 0, extract_code(reply, p))
    execute_samples([p], [s])
    assert s.passed


def test_sample_seeds_depend_on_seed_task_and_index() -> None:
    assert sample_seed(0, "HumanEval/1", 3) == sample_seed(0, "HumanEval/1", 3)
    assert len({sample_seed(s, t, i) for s in (0, 1) for t in ("a", "b") for i in range(3)}) == 12


def test_end_to_end_with_a_tiny_model(tiny_chat_model, tmp_path, capsys) -> None:
    from herd.cli import main

    out = tmp_path / "out"
    argv = ["eval", "humaneval", "--model", tiny_chat_model, "--limit", "2", "--max-new-tokens", "8"]
    assert main([*argv, "--out", str(out), "--quiet"]) == 0
    result = read_result(out / "humaneval.json")
    assert result.kind == "humaneval" and result.benchmark == "humaneval"
    assert set(result.metrics) >= {"pass@1", "pass@1_ci", "n", "problems", "temperature", "seconds", "samples_per_s"}
    assert "pass@10" not in result.metrics  # k = 10 > n = 1
    assert result.metrics["problems"] == 2 and result.metrics["n"] == 1 and result.metrics["temperature"] == 0
    assert [it.id for it in result.items] == ["HumanEval/0", "HumanEval/1"]
    assert result.items[0].text.endswith("return False\n")  # prompt + canonical solution
    assert result.meta["sandbox"] == "bubblewrap"
    rows = [json.loads(line) for line in (out / "humaneval_samples.jsonl").read_text().splitlines()]
    assert [(r["task_id"], r["sample"]) for r in rows] == [("HumanEval/0", 0), ("HumanEval/1", 0)]
    assert all(r["passed"] is False and r["error"] for r in rows)  # a random model writes no working code
    assert "pass@1" in capsys.readouterr().out

    # An MBPP-style file, sampled: n = 2 per problem, pass@1 and pass@2.
    mbpp = _write_jsonl(tmp_path / "mbpp_small.jsonl", MBPP_ROWS)
    argv = ["eval", "humaneval", "--model", tiny_chat_model, "--problems", str(mbpp), "--n", "2", "--k", "1,2,10"]
    assert main([*argv, "--max-new-tokens", "4", "--seed", "1", "--out", str(out), "--quiet"]) == 0
    result = read_result(out / "mbpp_small.json")
    assert result.metrics["temperature"] == 0.8 and result.metrics["n"] == 2
    assert {k for k in result.metrics if k.startswith("pass@")} == {"pass@1", "pass@1_ci", "pass@2", "pass@2_ci"}
    assert result.items[1].text.endswith("return 2 * max(xs)\n")
    assert len((out / "mbpp_small_samples.jsonl").read_text().splitlines()) == 4
