"""Code Shield on known-insecure samples: each finding comes from the analyzer expected (codeshield's regex rules,
the semgrep rules it ships run by a real semgrep, bandit), a clean sample is allowed, and a semgrep that cannot run is
reported, never taken for a clean scan."""

import argparse
import io
import json
import os

import pytest

from herd.errors import SafetyError
from herd.safety import codeshield
from herd.safety.codeshield import (
    BLOCK_EXIT_STATUS,
    add_codeshield_parser,
    extract_code_blocks,
    scan_code,
    scan_response,
)


@pytest.fixture(scope="module")
def semgrep() -> str:
    path = codeshield.find_semgrep()
    if path is None:
        # `make test` creates .venv-semgrep: a missing semgrep is a broken install, not a reason to pass.
        if os.environ.get("HERD_SKIP_SEMGREP_TESTS") == "1":
            pytest.skip("semgrep is not installed and HERD_SKIP_SEMGREP_TESTS=1")
        pytest.fail("semgrep is not installed: `make test` creates .venv-semgrep (or set HERD_SKIP_SEMGREP_TESTS=1)")
    return path


C_SAMPLE = """#include <stdio.h>
#include <string.h>

void greet(const char *name) {
    char buf[16];
    strcpy(buf, name);
    gets(buf);
}
"""
JS_SAMPLE = "function run(userInput) {\n  return eval(userInput + '1');\n}\n"
CLEAN = """import json
from pathlib import Path


def load_config(path: str) -> dict:
    return json.loads(Path(path).read_text())
"""


@pytest.mark.parametrize(
    ("language", "code", "expected", "decision"),
    [
        ("python", "import hashlib\n\nd = hashlib.md5(b'x').hexdigest()\n",
         {("codeshield-regex", "insecure-md5-hash-usage", 3), ("bandit", "B324", 3)}, "block"),
        ("python", "import subprocess\n\n\ndef run(cmd):\n    return subprocess.call(cmd, shell=True)\n",
         {("semgrep", "insecure-subprocess-using-shell", 5), ("bandit", "B602", 5)}, "block"),
        ("python", "import pickle\n\n\ndef load(blob):\n    return pickle.loads(blob)\n",
         {("semgrep", "unsafe-pickle-use", 5), ("bandit", "B301", 5)}, "warn"),
        # codeshield's yaml rule only matches an explicit unsafe Loader: bandit catches the default one.
        ("python", "import yaml\n\n\ndef load(text):\n    return yaml.load(text)\n", {("bandit", "B506", 5)}, "warn"),
        ("python", "print(eval(input()))\n", {("semgrep", "insecure-eval-use", 1), ("bandit", "B307", 1)}, "warn"),
        ("c", C_SAMPLE, {("semgrep", "vulnerable-strcpy", 6), ("codeshield-regex", "bugprone-gets", 7)}, "block"),
        ("javascript", JS_SAMPLE, {("semgrep", "eval-with-expression", 2)}, "warn"),
    ],
    ids=["md5", "shell", "pickle", "yaml", "eval", "c-strcpy-gets", "js-eval"],
)  # fmt: skip
def test_insecure_sample_is_flagged_by_the_expected_analyzer(semgrep, language, code, expected, decision) -> None:
    scan = scan_code(code, language)
    assert expected <= {(f.source, f.rule_id, f.line) for f in scan.findings}
    assert scan.decision == decision
    assert scan.skipped == []


def test_semgrep_runs_once_over_every_block_of_a_response(semgrep) -> None:
    response = (
        "Three ways to do it:\n\n```py\nimport pickle\nobj = pickle.loads(blob)\n```\n\nIn C:\n\n"
        f"```c\n{C_SAMPLE}```\n\nand in JavaScript:\n\n```js\n{JS_SAMPLE}```\n"
    )
    scan = scan_response(response)
    assert [(b.language, b.line) for b in scan.blocks] == [("python", 4), ("c", 11), ("javascript", 24)]
    by_semgrep = {(f.block, f.rule_id, f.line) for f in scan.findings if f.source == "semgrep"}
    # Lines are the response's, so each finding points at its line in the model's answer.
    assert by_semgrep == {(0, "unsafe-pickle-use", 5), (1, "vulnerable-strcpy", 16), (2, "eval-with-expression", 25)}
    assert scan.decision == "block" and scan.skipped == [] and scan.seconds["semgrep"] > 0


def test_suppression_comments_in_generated_code_are_ignored(semgrep) -> None:
    code = "import subprocess\nsubprocess.call(cmd, shell=True)  # nosec # nosemgrep\n"
    sources = {f.source for f in scan_code(code, "python").findings if f.line == 2}
    assert sources == {"semgrep", "bandit"}


def test_clean_code_is_allowed(semgrep) -> None:
    scan = scan_response(f"Use json:\n\n```python\n{CLEAN}```\n")
    assert (scan.decision, scan.findings, scan.skipped) == ("allow", [], [])


def test_block_at_sets_the_severity_that_blocks(semgrep) -> None:
    assert scan_code(JS_SAMPLE, "js").decision == "warn"  # codeshield's semgrep rules are WARNING: medium
    assert scan_code(JS_SAMPLE, "js", block_at="medium").decision == "block"
    with pytest.raises(SafetyError, match="block_at='critical'"):
        scan_code(JS_SAMPLE, "js", block_at="critical")  # type: ignore[arg-type]


def test_missing_semgrep_is_reported_not_clean(monkeypatch) -> None:
    monkeypatch.setattr(codeshield, "find_semgrep", lambda: None)
    scan = scan_code(JS_SAMPLE, "javascript")
    assert scan.findings == [] and scan.decision == "allow"
    assert len(scan.skipped) == 1 and scan.skipped[0].startswith("semgrep: not installed")
    monkeypatch.undo()
    monkeypatch.setenv("HERD_SEMGREP", "/nonexistent/semgrep")
    with pytest.raises(SafetyError, match="HERD_SEMGREP=/nonexistent/semgrep"):
        scan_code(JS_SAMPLE, "javascript")


def test_code_blocks_are_found_with_language_and_line() -> None:
    text = (
        "Intro\n```python3\nx = 1\n```\n~~~\n#include <stdio.h>\nint main(void) { return 0; }\n~~~\n"
        "```bash\nls -la\n```\n```\njust words\n```\n"
        "<|python_tag|>import os\nos.system('ls')<|eom_id|>\n"
        "```c++\nint main() {"  # an unclosed fence: a truncated answer is still scanned
    )
    blocks = extract_code_blocks(text)
    assert [(b.tag, b.language, b.line) for b in blocks] == [
        ("python3", "python", 3), ("", "c", 6), ("bash", None, 10), ("", None, 13), ("python_tag", "python", 15),
        ("c++", "cpp", 18),
    ]  # fmt: skip
    assert blocks[4].code == "import os\nos.system('ls')" and blocks[5].code == "int main() {"
    with pytest.raises(SafetyError, match="unknown language 'cobol'"):
        scan_code("DISPLAY 'HI'.", "cobol")


def _cli(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="herd")
    add_codeshield_parser(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(["codeshield", *argv])


def test_cli_blocks_with_its_exit_status_and_prints_json(semgrep, tmp_path, capsys, monkeypatch) -> None:
    response = tmp_path / "answer.md"
    response.write_text("Run it:\n\n```python\nimport subprocess\nsubprocess.call(cmd, shell=True)\n```\n")
    a = _cli([str(response)])
    with pytest.raises(SystemExit) as e:
        a.func(a)
    assert e.value.code == BLOCK_EXIT_STATUS
    out = capsys.readouterr().out
    assert f"{response}:5: high CWE-78 [bandit B602]" in out and "decision: block" in out

    monkeypatch.setattr("sys.stdin", io.StringIO(CLEAN))
    a = _cli(["-", "--language", "python", "--json"])
    a.func(a)
    scan = json.loads(capsys.readouterr().out)
    assert (scan["decision"], scan["findings"], scan["blocks"][0]["language"]) == ("allow", [], "python")


def test_cli_names_an_unreadable_file(tmp_path) -> None:
    a = _cli([str(tmp_path / "missing.py")])
    with pytest.raises(SafetyError, match=r"cannot read .*missing\.py: No such file"):
        a.func(a)
    (tmp_path / "binary.md").write_bytes(b"\xff\xfe\x00code")
    a = _cli([str(tmp_path / "binary.md")])
    with pytest.raises(SafetyError, match=r"cannot read .*binary\.md: not UTF-8"):
        a.func(a)
