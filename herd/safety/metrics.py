"""How well a guard classifies labelled guard data: precision, recall, false positives on safe and borderline-safe
prompts, per-category scores, and the area under the precision-recall curve of its score.

Definitions (the ones Llama Guard's model cards report, computed here from scratch):
* unsafe is the positive class. precision = TP / (TP + FP), recall = TP / (TP + FN), F1 their harmonic mean.
* false-positive rate = flagged safe examples / safe examples; reported on all safe examples and on the
  borderline ones alone (safe prompts written to look unsafe, GuardExample.borderline).
* per category c, over examples whose label is known (safe ones and unsafe ones with categories; "unsafe,
  category unknown" examples are skipped): TP = gold has c and the prediction flags unsafe with c; precision
  and recall as above. A prediction that flags unsafe with a wrong category is a hit overall and a miss here.
* AUPRC is average precision: sum over score thresholds of (R_k - R_{k-1}) * P_k, thresholds at each distinct
  score (ties move together), the step-wise sum sklearn's `average_precision_score` computes. It needs no
  interpolation, and a classifier that ranks at random scores the positive rate.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from herd.errors import SafetyError
from herd.fileio import atomic_file
from herd.safety.data import LG3_CODES, GuardExample


@dataclass(frozen=True, slots=True)
class GuardPrediction:
    unsafe: bool
    categories: tuple[str, ...] = ()
    score: float = 0.0
    """In [0, 1], higher = more likely unsafe; used for the PR curve (a guard's P("unsafe") token probability)."""


def _ratio(num: int, den: int) -> float | None:
    return num / den if den else None


def precision_recall_f1(tp: int, fp: int, fn: int) -> dict[str, float | None]:
    """None where a ratio has no denominator (no predicted or no gold positives): 0 would be a made-up number."""
    p, r = _ratio(tp, tp + fp), _ratio(tp, tp + fn)
    f1 = 2 * p * r / (p + r) if p is not None and r is not None and p + r > 0 else None
    return {"precision": p, "recall": r, "f1": f1}


def precision_recall_curve(labels: Sequence[bool], scores: Sequence[float]) -> tuple[list[float], list[float]]:
    """(precision, recall) at each distinct score threshold, from the highest score down."""
    if len(labels) != len(scores):
        raise SafetyError(f"precision_recall_curve: {len(labels)} labels but {len(scores)} scores")
    n_pos = sum(labels)
    order = sorted(range(len(scores)), key=lambda i: -scores[i])
    precision, recall = [], []
    tp = fp = 0
    for k, i in enumerate(order):
        tp += labels[i]
        fp += not labels[i]
        # Only after the last example of a run of equal scores: a threshold cannot split a tie.
        if k + 1 == len(order) or scores[order[k + 1]] != scores[i]:
            precision.append(tp / (tp + fp))
            recall.append(tp / n_pos if n_pos else 0.0)
    return precision, recall


def average_precision(labels: Sequence[bool], scores: Sequence[float]) -> float | None:
    """Area under the step PR curve; None without positive labels (the curve is undefined)."""
    if not any(labels):
        return None
    precision, recall = precision_recall_curve(labels, scores)
    ap, prev_r = 0.0, 0.0
    for p, r in zip(precision, recall, strict=True):
        ap += (r - prev_r) * p
        prev_r = r
    return ap


def _confusion(gold: Sequence[bool], pred: Sequence[bool]) -> tuple[int, int, int, int]:
    tp = sum(g and p for g, p in zip(gold, pred, strict=True))
    fp = sum(p and not g for g, p in zip(gold, pred, strict=True))
    fn = sum(g and not p for g, p in zip(gold, pred, strict=True))
    return tp, fp, fn, len(gold) - tp - fp - fn


def _binary(examples: Sequence[GuardExample], preds: Sequence[GuardPrediction]) -> dict[str, Any]:
    gold = [ex.unsafe for ex in examples]
    tp, fp, fn, _ = _confusion(gold, [p.unsafe for p in preds])
    safe = [p.unsafe for ex, p in zip(examples, preds, strict=True) if not ex.unsafe]
    border = [p.unsafe for ex, p in zip(examples, preds, strict=True) if ex.borderline]
    return {
        "n": len(examples),
        "n_unsafe": sum(gold),
        **precision_recall_f1(tp, fp, fn),
        "fpr_safe": _ratio(sum(safe), len(safe)),
        "n_safe": len(safe),
        "fpr_borderline": _ratio(sum(border), len(border)),
        "n_borderline": len(border),
        "auprc": average_precision(gold, [p.score for p in preds]),
    }


def evaluate(examples: Sequence[GuardExample], predictions: Sequence[GuardPrediction]) -> dict[str, Any]:
    """The report: overall and per-role binary metrics, and per-category precision/recall for each LG3 code in
    the gold labels. Plain dicts and floats (None where undefined), ready for json.dumps."""
    if len(examples) != len(predictions):
        raise SafetyError(f"evaluate: {len(examples)} examples but {len(predictions)} predictions")
    report: dict[str, Any] = {"overall": _binary(examples, predictions), "by_role": {}, "by_category": {}}
    for role in ("User", "Agent"):
        pairs = [(ex, p) for ex, p in zip(examples, predictions, strict=True) if ex.role == role]
        if pairs:
            report["by_role"][role] = _binary([e for e, _ in pairs], [p for _, p in pairs])
    known = [(ex, p) for ex, p in zip(examples, predictions, strict=True) if not ex.unsafe or ex.categories]
    present = sorted({c for ex, _ in known for c in ex.categories}, key=LG3_CODES.index)
    for code in present:
        gold = [code in ex.categories for ex, _ in known]
        pred = [p.unsafe and code in p.categories for _, p in known]
        tp, fp, fn, _ = _confusion(gold, pred)
        row = precision_recall_f1(tp, fp, fn)
        report["by_category"][code] = {"precision": row["precision"], "recall": row["recall"], "support": sum(gold)}
    return report


def _fmt(x: float | None) -> str:
    return "  -  " if x is None else f"{x:.3f}"


def format_report(report: Mapping[str, Any], *, title: str = "") -> str:
    """The report as a fixed-width text table."""
    lines = [title] if title else []
    head = f"{'':10} {'n':>5} {'unsafe':>6} {'prec':>6} {'recall':>6} {'F1':>6} {'FPR':>6} {'FPR-bl':>6} {'AUPRC':>6}"
    lines.append(head)
    rows = [("all", report["overall"]), *report["by_role"].items()]
    for name, m in rows:
        cells = (m["precision"], m["recall"], m["f1"], m["fpr_safe"], m["fpr_borderline"], m["auprc"])
        lines.append(f"{name:10} {m['n']:>5} {m['n_unsafe']:>6} " + " ".join(f"{_fmt(c):>6}" for c in cells))
    if report["by_category"]:
        lines.append(f"\n{'category':10} {'support':>7} {'prec':>6} {'recall':>6}")
        for code, m in report["by_category"].items():
            lines.append(f"{code:10} {m['support']:>7} {_fmt(m['precision']):>6} {_fmt(m['recall']):>6}")
    return "\n".join(lines)


def plot_pr_curves(
    curves: Mapping[str, tuple[Sequence[bool], Sequence[float]]], path: str | Path, *, title: str = ""
) -> Path:
    """One PR curve per name ({"keyword baseline": (labels, scores), ...}) into a PNG, AP in the legend."""
    import matplotlib

    matplotlib.use("Agg")  # no display on CI machines; select before pyplot is imported
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 4))
    for name, (labels, scores) in curves.items():
        precision, recall = precision_recall_curve(labels, scores)
        ap = average_precision(labels, scores)
        ax.step([0.0, *recall], [precision[0] if precision else 1.0, *precision], where="post",
                label=f"{name} (AP {_fmt(ap)})")  # fmt: skip
    if curves:
        labels = next(iter(curves.values()))[0]
        ax.axhline(sum(labels) / max(len(labels), 1), color="grey", linestyle=":", label="chance")
    ax.set(xlabel="recall", ylabel="precision", xlim=(0, 1), ylim=(0, 1.02), title=title or "unsafe: precision-recall")
    ax.legend(loc="lower left", fontsize=8)
    fig.tight_layout()
    path = Path(path)
    with atomic_file(path, "wb") as f:
        fig.savefig(f, format="png", dpi=120)
    plt.close(fig)
    return path
