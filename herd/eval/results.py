"""The result file every `herd eval` command writes, so contamination and the report card read them all alike.

One JSON object per benchmark run (`<benchmark>.json` in the run's --out directory):
    {"benchmark": "humaneval", "model": "smollm2-135m-instruct", "kind": "humaneval",
     "metrics": {"pass@1": 0.12, "pass@1_ci": [0.08, 0.17], ...},
     "items": [{"id": "HumanEval/0", "text": "...", "score": 0.4}, ...],
     "meta": {...}}
`items` holds one entry per eval item: `text` is what contamination checks against the training data (the prompt,
plus the reference answer where the benchmark has one), `score` the item's score in [0, 1] (pass rate, accuracy,
win = 1 / tie = 0.5 / loss = 0), so a benchmark's score on any subset of its items is their mean.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from herd.errors import EvalError
from herd.fileio import atomic_file, read_json


@dataclass(slots=True)
class ItemResult:
    id: str
    text: str
    score: float


@dataclass(slots=True)
class BenchmarkResult:
    benchmark: str
    """The benchmark's name: humaneval, an lm-eval task name, pairwise, ..."""
    model: str
    kind: str
    """Which command made it: humaneval, harness, pairwise (the report card lays each kind out its own way)."""
    metrics: dict[str, Any]
    items: list[ItemResult] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)

    def mean_score(self, ids: set[str] | None = None) -> float | None:
        """The mean item score over `ids` (all items when None); None for an empty subset."""
        scores = [it.score for it in self.items if ids is None or it.id in ids]
        return sum(scores) / len(scores) if scores else None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def write_result(path: str | Path, result: BenchmarkResult) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(path, "w") as f:
        json.dump(result.to_json(), f, indent=1, allow_nan=False)
        f.write("\n")
    return path


def read_result(path: str | Path) -> BenchmarkResult:
    """A result file, checked field by field; errors name the file and the field."""
    path = Path(path)
    raw = read_json(path, what="result file", error=EvalError)
    if not isinstance(raw, dict):
        raise EvalError(f"{path}: expected a JSON object, got {type(raw).__name__}")
    for key, kind in (("benchmark", str), ("model", str), ("kind", str), ("metrics", dict)):
        if not isinstance(raw.get(key), kind):
            raise EvalError(f"{path}: field {key!r} must be a {kind.__name__}")
    items = []
    for i, it in enumerate(raw.get("items") or []):
        ok = isinstance(it, dict) and isinstance(it.get("id"), str) and isinstance(it.get("text"), str)
        score = it.get("score") if isinstance(it, dict) else None
        if not ok or not isinstance(score, int | float) or isinstance(score, bool) or not math.isfinite(score):
            raise EvalError(f"{path}: items[{i}] needs a string id and text and a finite number score")
        items.append(ItemResult(it["id"], it["text"], float(score)))
    return BenchmarkResult(raw["benchmark"], raw["model"], raw["kind"], raw["metrics"], items, raw.get("meta") or {})


def read_results(folder: str | Path) -> list[BenchmarkResult]:
    """Every result file in a run directory (`*.json` with a benchmark field), sorted by file name."""
    folder = Path(folder)
    if not folder.is_dir():
        raise EvalError(f"{folder}: not a directory of eval results")
    out = []
    for p in sorted(folder.glob("*.json")):
        if p.name in ("eval.json", "contamination.json"):
            continue
        out.append(read_result(p))
    return out


def read_jsonl(path: str | Path, required: dict[str, type | tuple[type, ...]]) -> list[dict[str, Any]]:
    """Eval items from a jsonl file: one JSON object per non-blank line holding each `required` field with its
    type. A bad line is an EvalError `file:line: reason`; nothing is skipped silently."""
    return [row for _, row in read_jsonl_numbered(path, required)]


def read_jsonl_numbered(
    path: str | Path, required: dict[str, type | tuple[type, ...]]
) -> list[tuple[int, dict[str, Any]]]:
    """`read_jsonl` with each row's line number, for callers whose own checks also name `file:line`."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as e:
        raise EvalError(f"{path}: cannot read: {e.strerror or e}") from None
    except UnicodeDecodeError as e:
        raise EvalError(f"{path}: not UTF-8 text: {e.reason}") from None
    rows = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise EvalError(f"{path}:{n}: not JSON: {e.msg} (column {e.colno})") from None
        if not isinstance(row, dict):
            raise EvalError(f"{path}:{n}: expected a JSON object, got {type(row).__name__}")
        for key, kind in required.items():
            if key not in row:
                raise EvalError(f"{path}:{n}: missing field {key!r}")
            if not isinstance(row[key], kind) or (isinstance(row[key], bool) and bool not in _types(kind)):
                names = "/".join(t.__name__ for t in _types(kind))
                raise EvalError(f"{path}:{n}: field {key!r} must be {names}, got {type(row[key]).__name__}")
        rows.append((n, row))
    if not rows:
        raise EvalError(f"{path}: no items (the file is empty)")
    return rows


def _types(kind: type | tuple[type, ...]) -> tuple[type, ...]:
    return kind if isinstance(kind, tuple) else (kind,)
