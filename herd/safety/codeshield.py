"""Code Shield: scan the code in model responses for insecure patterns, as Llama 3 shipped it, plus bandit.

Three analyzers, each reported as the `source` of its findings:
- "codeshield-regex": Meta's `codeshield` regex rules (its `codeshield` use case), through its own loader and matcher.
- "semgrep": the semgrep rules `codeshield` ships (`rules/semgrep/_generated_/<language>_codeshield.json`), run by
  a semgrep from its own venv, offline. See [Note: semgrep outside codeshield].
- "bandit": PyCQA bandit on Python blocks.

Severities are mapped onto one scale, low < medium < high (codeshield/semgrep ERROR, WARNING, ADVICE/INFO; bandit
HIGH, MEDIUM, LOW). The decision follows codeshield's treatment: "block" when a finding reaches `block_at` (codeshield
blocks at ERROR, i.e. "high", the default), "warn" for any other finding, "allow" when there is none. An analyzer
that could not run is named in `CodeScan.skipped`: a scan is never reported clean because a tool was missing.

References: PurpleLlama CodeShield (`codeshield==1.0.1`: `cs.py`, `insecure_code_detector/`), llama-stack's
code_scanner shield, bandit's manager API.

[Note: semgrep outside codeshield]
`codeshield` declares `semgrep` as a dependency and runs it from its `oss` module, which (1) fails at import when
`semgrep-core` is not on the same interpreter, (2) writes an `osemgrep` symlink into semgrep's package, and (3) passes
`--project-root /` for temp files, with which semgrep returns no results offline. semgrep also pins opentelemetry
versions that the `openai` client upgrades. So codeshield is installed with `--no-deps`, semgrep lives in
`.venv-semgrep/` (the Makefile makes both), and codeshield's `insecure_code_detector` is given a stand-in `oss` module
through the `.internal.oss` override it looks for first: its regex layer runs as shipped, and semgrep runs here as
`semgrep scan --experimental --metrics=off --disable-version-check --disable-nosem --json --quiet --config <rules.json>
... <files>` (no network, local rule files only). `--experimental` runs semgrep's OCaml CLI (osemgrep), as codeshield
does: measured here 0.3 s per call against 2.8 s for the Python CLI.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import types
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeAlias

from herd.errors import SafetyError

Severity: TypeAlias = Literal["low", "medium", "high"]
Decision: TypeAlias = Literal["allow", "warn", "block"]
Source: TypeAlias = Literal["codeshield-regex", "semgrep", "bandit"]

SEVERITIES: tuple[Severity, ...] = ("low", "medium", "high")
_RANK = {s: i for i, s in enumerate(SEVERITIES)}
# codeshield's Severity and semgrep's levels; anything else (semgrep INVENTORY/EXPERIMENT) counts as low.
_LEVELS: dict[str, Severity] = {"error": "high", "warning": "medium", "advice": "low", "info": "low"}
_BANDIT_LEVELS: dict[str, Severity] = {"HIGH": "high", "MEDIUM": "medium", "LOW": "low"}

SEMGREP_TIMEOUT_S = 120.0
# B101 (assert_used) flags every `assert`: asserts in generated snippets and tests are not a vulnerability.
BANDIT_EXCLUDE = frozenset({"B101"})
BLOCK_EXIT_STATUS = 3
"""`herd codeshield`'s exit status when the scan blocks: 1 is every herd error, 2 argparse's usage error."""

# Fence tags and file extensions that are not codeshield Language values or its extensions.
_ALIASES = {
    "py3": "python",
    "python3": "python",
    "c++": "cpp",
    "cc": "cpp",
    "cxx": "cpp",
    "hpp": "cpp",
    "h": "c",
    "c#": "csharp",
    "node": "javascript",
    "nodejs": "javascript",
    "jsx": "javascript",
    "mjs": "javascript",
    "cjs": "javascript",
    "objc": "objective_c",
    "objective-c": "objective_c",
    "objectivec": "objective_c",
}
# Tried in order on blocks without a language tag; the first match wins.
_GUESSES = [
    ("php", re.compile(r"<\?php")),
    ("cpp", re.compile(r"#include\s*<(iostream|string|vector|memory|map)>|\bstd::|\bcout\s*<<")),
    ("c", re.compile(r"^\s*#include\s*[<\"]", re.M)),
    ("java", re.compile(r"\bpublic\s+(static\s+)?(final\s+)?(class|void)\b|\bSystem\.out\.")),
    ("csharp", re.compile(r"^\s*using\s+System\b|\bConsole\.Write")),
    ("python", re.compile(r"^\s*def\s+\w+\s*\(.*\)\s*(->.*)?:\s*$|^\s*(from\s+[\w.]+\s+)?import\s+[\w., ]+$", re.M)),
    ("javascript", re.compile(r"\bfunction\s*\w*\s*\(|\bconsole\.log\(|\brequire\(|^\s*(const|let)\s+\w+\s*=", re.M)),
]
_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})[ \t]*([^\s`{]*)")
# Llama 3.1 writes code-interpreter calls as `<|python_tag|>code<|eom_id|>`, without a fence.
_PYTHON_TAG = re.compile(r"<\|python_tag\|>(.*?)(?:<\|eom_id\|>|<\|eot_id\|>|\Z)", re.S)


@dataclass(frozen=True, slots=True)
class CodeBlock:
    code: str
    language: str | None
    """codeshield `Language` value ("python", "c", ...), or None when it is not one codeshield knows."""
    tag: str = ""
    """The fence's language tag as written ("" for none)."""
    line: int = 1
    """Line of the input on which the code starts (1-based)."""


@dataclass(frozen=True, slots=True)
class Finding:
    rule_id: str
    cwe: str
    """"CWE-78", or "" where the rule names none."""
    severity: Severity
    line: int
    """Line in the scanned input (the response, not the block), 1-based."""
    message: str
    source: Source
    block: int = 0
    """Index of the code block in `CodeScan.blocks`."""


@dataclass(slots=True)
class CodeScan:
    blocks: list[CodeBlock]
    findings: list[Finding]
    decision: Decision
    block_at: Severity
    skipped: list[str] = field(default_factory=list)
    """Analyzers or blocks that were not scanned, and why. Empty only when every applicable analyzer ran."""
    seconds: dict[str, float] = field(default_factory=dict)
    """Wall time per analyzer."""

    def to_dict(self) -> dict[str, Any]:
        blocks = [{"index": i, "language": b.language, "tag": b.tag, "line": b.line} for i, b in enumerate(self.blocks)]
        findings = [asdict(f) for f in self.findings]
        seconds = {k: round(v, 4) for k, v in self.seconds.items()}
        return {
            "decision": self.decision,
            "block_at": self.block_at,
            "findings": findings,
            "blocks": blocks,
            "skipped": self.skipped,
            "seconds": seconds,
        }


# ---------------------------------------------------------------------------------------------
# codeshield's modules, imported lazily like bandit (~0.25 s to import): `herd --help` needs neither


@functools.cache
def _icd() -> types.SimpleNamespace:
    try:
        from codeshield.insecure_code_detector import languages
    except ImportError as e:
        raise SafetyError(
            f"codeshield is not installed ({e}): run `make test` or `pip install --no-deps codeshield`"
        ) from e
    rules = Path(languages.__file__).parent / "rules"
    # The stand-in for codeshield's `oss` module: see [Note: semgrep outside codeshield].
    oss = types.ModuleType("codeshield.insecure_code_detector.internal.oss")
    oss.__dict__.update(
        RULES_ROOT=rules, SEMGREP_RULE_REPO_PATH=rules / "semgrep", ENABLE_REGEX_ANALYZER=True, ENABLE_SEMGREP=False
    )
    internal = types.ModuleType("codeshield.insecure_code_detector.internal")
    internal.__dict__["oss"] = oss
    sys.modules.setdefault(internal.__name__, internal)
    sys.modules.setdefault(oss.__name__, oss)
    from codeshield.insecure_code_detector import insecure_code_detector, insecure_patterns
    from codeshield.insecure_code_detector.analyzers import Analyzer
    from codeshield.insecure_code_detector.usecases import UseCase

    semgrep = {
        lang.value
        for lang, analyzers in insecure_code_detector.LANGUAGE_ANALYZER_MAP.items()
        if Analyzer.SEMGREP in analyzers
    }
    return types.SimpleNamespace(
        Language=languages.Language,
        extensions={lang.value: ext for lang, ext in languages.EXTENSION_MAP.items()},
        supported=[lang.value for lang in languages.get_supported_languages()],
        regex_languages={p.stem for p in (rules / "regex").glob("*.yaml")},
        semgrep_languages=semgrep,
        semgrep_rules=rules / "semgrep" / "_generated_",
        load=functools.partial(insecure_patterns.load, analyzer=Analyzer.REGEX, usecase=UseCase.CODESHIELD),
        search=insecure_code_detector._search_pattern,
    )


def language_of(name: str) -> str | None:
    """The codeshield `Language` value for a fence tag, a language name or a file extension ("py", ".c", "c++")."""
    icd = _icd()
    name = name.strip().lower()
    if name in {lang.value for lang in icd.Language}:
        return name
    # Extensions in codeshield's EXTENSION_MAP (".php" is both PHP and Hack: PHP wins, as the later entry).
    by_ext = {ext.lstrip("."): lang for lang, ext in icd.extensions.items()}
    return by_ext.get(name.lstrip(".")) or _ALIASES.get(name)


def guess_language(code: str) -> str | None:
    """A codeshield `Language` value from the code's look, or None."""
    return next((lang for lang, pattern in _GUESSES if pattern.search(code)), None)


def extract_code_blocks(text: str) -> list[CodeBlock]:
    """The fenced code blocks (``` or ~~~, language from the tag or guessed) and `<|python_tag|>` calls of a text.

    An unclosed fence runs to the end of the text (a truncated response is still scanned).
    """
    blocks = [
        CodeBlock(code=m.group(1), language="python", tag="python_tag", line=text.count("\n", 0, m.start(1)) + 1)
        for m in _PYTHON_TAG.finditer(text)
    ]
    lines = _PYTHON_TAG.sub(lambda m: "\n" * m.group(0).count("\n"), text).split("\n")
    i = 0
    while i < len(lines):
        if (m := _FENCE.match(lines[i])) is None:
            i += 1
            continue
        fence, tag = m.group(1), m.group(2)
        closing = re.compile(rf"^ {{0,3}}{re.escape(fence[0])}{{{len(fence)},}}\s*$")
        end = next((j for j in range(i + 1, len(lines)) if closing.match(lines[j])), len(lines))
        code = "\n".join(lines[i + 1 : end])
        language = language_of(tag) if tag else guess_language(code)
        blocks.append(CodeBlock(code=code, language=language, tag=tag, line=i + 2))
        i = end + 1
    return sorted(blocks, key=lambda b: b.line)


def scan_code(code: str, language: str | None = None, *, block_at: Severity = "high") -> CodeScan:
    """Scan one piece of code. `language`: a codeshield language or alias ("python", "c", "js"); None guesses it."""
    if language is not None:
        if (resolved := language_of(language)) is None:
            known = ", ".join(sorted(lang.value for lang in _icd().Language))
            raise SafetyError(f"unknown language {language!r}; codeshield knows {known} (and aliases such as py, js)")
        return scan_blocks([CodeBlock(code=code, language=resolved, tag=language)], block_at=block_at)
    return scan_blocks([CodeBlock(code=code, language=guess_language(code))], block_at=block_at)


def scan_response(text: str, *, block_at: Severity = "high") -> CodeScan:
    """Scan every code block of a model response (prose outside the blocks is not scanned)."""
    return scan_blocks(extract_code_blocks(text), block_at=block_at)


def scan_blocks(blocks: list[CodeBlock], *, block_at: Severity = "high") -> CodeScan:
    """Run the three analyzers over `blocks`: one semgrep process and one bandit pass for all of them."""
    if block_at not in SEVERITIES:
        raise SafetyError(f"block_at={block_at!r}; expected one of {', '.join(SEVERITIES)}")
    icd = _icd()
    scan = CodeScan(blocks=blocks, findings=[], decision="allow", block_at=block_at)
    for i, b in enumerate(blocks):
        if b.language is None:
            what = f"({b.tag})" if b.tag else "(no language tag, not recognised)"
            scan.skipped.append(
                f"block {i} {what}: semgrep and bandit do not apply; codeshield regex rules of every language ran"
            )
        elif b.language not in icd.regex_languages and b.language not in icd.semgrep_languages:
            scan.skipped.append(f"block {i} ({b.language}): codeshield ships no rules for this language")
    t0 = time.perf_counter()
    scan.findings += _regex_findings(blocks)
    scan.seconds["codeshield-regex"] = time.perf_counter() - t0
    with tempfile.TemporaryDirectory(prefix="herd-codeshield-") as tmp:
        paths = {
            i: Path(tmp) / f"block{i}{icd.extensions[b.language]}"
            for i, b in enumerate(blocks)
            if b.language in icd.extensions
        }
        for i, path in paths.items():
            path.write_text(blocks[i].code, encoding="utf-8")
        semgrep = {i: p for i, p in paths.items() if blocks[i].language in icd.semgrep_languages}
        if semgrep:
            t0 = time.perf_counter()
            scan.findings += _semgrep_findings(blocks, semgrep, scan.skipped)
            scan.seconds["semgrep"] = time.perf_counter() - t0
        python = {i: p for i, p in paths.items() if blocks[i].language == "python"}
        if python:
            t0 = time.perf_counter()
            scan.findings += _bandit_findings(blocks, python, scan.skipped)
            scan.seconds["bandit"] = time.perf_counter() - t0
    scan.findings.sort(key=lambda f: (f.block, f.line, -_RANK[f.severity], f.source, f.rule_id))
    if any(_RANK[f.severity] >= _RANK[block_at] for f in scan.findings):
        scan.decision = "block"
    elif scan.findings:
        scan.decision = "warn"
    return scan


# ---------------------------------------------------------------------------------------------
# The analyzers


def _regex_findings(blocks: list[CodeBlock]) -> list[Finding]:
    icd = _icd()
    findings: dict[tuple[int, str, int], Finding] = {}
    for i, b in enumerate(blocks):
        # As CodeShield.scan_code does without a language: the rules of every supported language.
        languages = [b.language] if b.language else icd.supported
        # codeshield logs a fatal error for a language without a regex file (kotlin): use the shared rules then.
        languages = [lang if lang in icd.regex_languages else "language_agnostic" for lang in languages]
        for lang in dict.fromkeys(languages):
            for pattern in icd.load(icd.Language(lang)):
                for issue in icd.search(pattern, b.code):
                    if (severity := _LEVELS.get(str(issue.severity.value))) is None:  # "disabled"
                        continue
                    rule_id = issue.pattern_id or issue.rule
                    line = b.line + issue.line - 1
                    findings[(i, rule_id, line)] = Finding(
                        rule_id=rule_id,
                        cwe=issue.cwe_id or "",
                        severity=severity,
                        line=line,
                        message=" ".join(issue.description.split()),
                        source="codeshield-regex",
                        block=i,
                    )
    return list(findings.values())


def find_semgrep() -> str | None:
    """The semgrep executable: $HERD_SEMGREP, then `.venv-semgrep/bin/semgrep` beside the project or the venv, then
    PATH. None when there is none."""
    if env := os.environ.get("HERD_SEMGREP"):
        if not os.access(env, os.X_OK):
            raise SafetyError(f"HERD_SEMGREP={env} is not an executable file")
        return env
    roots = dict.fromkeys([Path(__file__).resolve().parents[2], Path(sys.prefix).resolve().parent])
    for root in roots:
        if os.access(candidate := root / ".venv-semgrep" / "bin" / "semgrep", os.X_OK):
            return str(candidate)
    return shutil.which("semgrep")


def _semgrep_findings(blocks: list[CodeBlock], paths: dict[int, Path], skipped: list[str]) -> list[Finding]:
    icd = _icd()
    if (semgrep := find_semgrep()) is None:
        skipped.append(
            "semgrep: not installed (no $HERD_SEMGREP, .venv-semgrep/ or semgrep on PATH; `make test` creates "
            f".venv-semgrep): blocks {sorted(paths)} not scanned by codeshield's semgrep rules"
        )
        return []
    configs = dict.fromkeys(icd.semgrep_rules / f"{blocks[i].language}_codeshield.json" for i in paths)
    cmd = [semgrep, "scan", "--experimental", "--metrics=off", "--disable-version-check", "--disable-nosem"]
    cmd += ["--json", "--quiet", *(a for c in configs for a in ("--config", str(c))), *map(str, paths.values())]
    workdir = next(iter(paths.values())).parent
    try:
        run = subprocess.run(cmd, capture_output=True, text=True, timeout=SEMGREP_TIMEOUT_S, cwd=workdir)
    except subprocess.TimeoutExpired:
        skipped.append(f"semgrep: timed out after {SEMGREP_TIMEOUT_S:.0f} s: blocks {sorted(paths)} not scanned")
        return []
    try:
        out = json.loads(run.stdout)
    except json.JSONDecodeError:
        why = (run.stderr.strip().splitlines() or [f"exit status {run.returncode}, no JSON"])[-1]
        skipped.append(f"semgrep: {semgrep} failed ({why}): blocks {sorted(paths)} not scanned")
        return []
    block_of = {p.name: i for i, p in paths.items()}
    for err in out.get("errors", []):
        kind = err.get("type", "error")
        kind = kind[0] if isinstance(kind, list) else kind  # ["PartialParsing", [spans]]
        where = f" in block {block_of[name]}" if (name := Path(err.get("path", "")).name) in block_of else ""
        message = " ".join(str(err.get("message", "")).replace(f"{workdir}{os.sep}", "").split())
        skipped.append(f"semgrep: {kind}{where}: {message[:200]}")
    scanned = {Path(p).name for p in out.get("paths", {}).get("scanned", [])}
    skipped += [f"semgrep: did not scan block {i}" for i, p in paths.items() if p.name not in scanned]
    findings = []
    for r in out.get("results", []):
        i, extra = block_of[Path(r["path"]).name], r.get("extra", {})
        findings.append(
            Finding(
                rule_id=r["check_id"].rsplit(".", 1)[-1],
                cwe=extra.get("metadata", {}).get("cwe_id") or "",
                severity=_LEVELS.get(str(extra.get("severity", "")).lower(), "low"),
                line=blocks[i].line + r["start"]["line"] - 1,
                message=" ".join(str(extra.get("message", "")).split()),
                source="semgrep",
                block=i,
            )
        )
    return findings


def _bandit_findings(blocks: list[CodeBlock], paths: dict[int, Path], skipped: list[str]) -> list[Finding]:
    try:
        from bandit.core import config as bandit_config
        from bandit.core import manager as bandit_manager
    except ImportError as e:
        skipped.append(f"bandit: not installed ({e}); python blocks {sorted(paths)} not scanned by bandit")
        return []
    # ignore_nosec: a `# nosec` comment in generated code must not switch the scan off (semgrep: --disable-nosem).
    mgr = bandit_manager.BanditManager(
        bandit_config.BanditConfig(), "file", quiet=True, ignore_nosec=True, profile={"exclude": set(BANDIT_EXCLUDE)}
    )
    mgr.discover_files([str(p) for p in paths.values()])
    mgr.run_tests()
    block_of = {p.name: i for i, p in paths.items()}
    skipped += [f"bandit: block {block_of[Path(name).name]}: {reason}" for name, reason in mgr.skipped]
    findings = []
    for issue in mgr.get_issue_list():
        d, i = issue.as_dict(), block_of[Path(issue.fname).name]
        cwe = d.get("issue_cwe", {}).get("id")
        findings.append(
            Finding(
                rule_id=d["test_id"],
                cwe=f"CWE-{cwe}" if cwe else "",
                severity=_BANDIT_LEVELS.get(d["issue_severity"], "low"),
                line=blocks[i].line + d["line_number"] - 1,
                message=" ".join(d["issue_text"].split()),
                source="bandit",
                block=i,
            )
        )
    return findings


# ---------------------------------------------------------------------------------------------
# `herd codeshield FILE|-`


def add_codeshield_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("codeshield", help="scan code or a model response for insecure code (Code Shield, bandit)")
    p.add_argument(
        "input", metavar="FILE", help="a model response (its fenced code blocks) or a source file; - = stdin"
    )
    p.add_argument("--language", default=None, help="scan the whole input as code in this language (python, c, js...)")
    p.add_argument("--json", action="store_true", help="print the scan as JSON")
    p.add_argument("--block-at", choices=SEVERITIES, default="high", help="lowest severity that blocks (default high)")
    p.set_defaults(func=cmd_codeshield)


def cmd_codeshield(a: argparse.Namespace) -> None:
    """Scan FILE; exit status 0 for allow or warn, `BLOCK_EXIT_STATUS` (3) for block, 1 for an error."""
    name = "<stdin>" if a.input == "-" else a.input
    try:
        text = sys.stdin.read() if a.input == "-" else Path(a.input).read_text(encoding="utf-8")
    except OSError as e:
        raise SafetyError(f"cannot read {name}: {e.strerror or e}") from None
    except UnicodeDecodeError as e:
        raise SafetyError(f"cannot read {name}: not UTF-8 text (byte {e.start})") from None
    # A source file (known extension) is code; anything else is a response if it has code blocks, else code.
    ext_language = language_of(Path(a.input).suffix) if a.input != "-" and Path(a.input).suffix else None
    if a.language is not None or ext_language is not None or not extract_code_blocks(text):
        scan = scan_code(text, a.language or ext_language, block_at=a.block_at)
    else:
        scan = scan_response(text, block_at=a.block_at)
    if a.json:
        print(json.dumps(scan.to_dict(), indent=2))
    else:
        print(format_scan(scan, name=name))
    if scan.decision == "block":
        raise SystemExit(BLOCK_EXIT_STATUS)


def format_scan(scan: CodeScan, *, name: str = "<input>") -> str:
    """The findings one per line (`file:line: severity CWE [source rule] message`), then the blocks and decision."""
    lines = [
        f"{name}:{f.line}: {f.severity} {f.cwe or '-'} [{f.source} {f.rule_id}] {f.message}" for f in scan.findings
    ]
    blocks = ", ".join(f"{b.language or b.tag or '?'} at line {b.line}" for b in scan.blocks)
    lines.append(
        f"scanned {len(scan.blocks)} code block(s){f' ({blocks})' if blocks else ''} in "
        f"{sum(scan.seconds.values()):.2f} s"
    )
    lines += [f"not scanned: {s}" for s in scan.skipped]
    lines.append(f"decision: {scan.decision} ({len(scan.findings)} finding(s); blocks at {scan.block_at} or above)")
    return "\n".join(lines)
