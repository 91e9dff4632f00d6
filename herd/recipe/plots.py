"""The run report's figures: matplotlib on an Agg canvas (pyplot's global state is left alone), returned as base64
PNG for an <img> tag, so report.html stays one self-contained file.

Every label drawn from a run's files goes through `label`: stage and step names are untrusted, and matplotlib
would parse a `$` in them as mathtext.
"""

from __future__ import annotations

import base64
import io
import math
from collections.abc import Sequence
from typing import Any

MAX_POINTS = 2000
"""Points per curve: a long run's metrics.jsonl is thinned to this many, evenly, keeping the last."""


def label(text: Any, width: int = 40) -> str:
    text = str(text)
    text = text if len(text) <= width else text[: width - 1] + "…"
    return text.replace("$", r"\$")


def thin(values: Sequence[Any], limit: int = MAX_POINTS) -> list[Any]:
    if len(values) <= limit:
        return list(values)
    stride = math.ceil(len(values) / limit)
    return [*values[::stride], values[-1]] if (len(values) - 1) % stride else list(values[::stride])


def _figure(width: float, height: float) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height))
    FigureCanvasAgg(fig)
    return fig


def _png(fig: Any) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def funnel(steps: list[dict[str, Any]]) -> str:
    """Documents and characters into and out of each curation step, as horizontal bars (pipeline order, top down)."""
    fig = _figure(13, 0.35 * len(steps) + 1.6)
    names = [label(f"{s.get('stage', '')}: {s.get('step', '')}", 44) for s in steps]
    for i, (unit, title) in enumerate((("docs", "documents"), ("chars", "characters"))):
        ax = fig.add_subplot(1, 2, i + 1)
        ys = list(range(len(steps)))
        ax.barh(ys, [_value(s.get(f"{unit}_in")) for s in steps], color="#c7d4e8", label="in")
        ax.barh(ys, [_value(s.get(f"{unit}_out")) for s in steps], color="#3b6fb6", label="out")
        ax.set_yticks(ys, names if i == 0 else [""] * len(ys), fontsize=8)
        ax.invert_yaxis()
        ax.set_title(f"{title} through each step")
        ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    return _png(fig)


def _value(x: Any) -> float:
    """A count to draw; NaN (no bar) where the step did not count it (curate has no character count for some)."""
    return float(x) if isinstance(x, int | float) and not isinstance(x, bool) else math.nan


def loss_curves(series: list[dict[str, Any]], marks: list[dict[str, Any]]) -> str:
    """Training loss against optimizer steps and against tokens, one colour per stage.

    Each series: {"label", "steps", "tokens", "loss"} (equal-length lists, already on one shared axis). Each mark:
    {"label", "step", "tokens"}: a dashed vertical line (the anneal's start).
    """
    fig = _figure(13, 4.2)
    for i, (key, xlabel) in enumerate((("steps", "optimizer step"), ("tokens", "tokens seen"))):
        ax = fig.add_subplot(1, 2, i + 1)
        for j, s in enumerate(series):
            ax.plot(thin(s[key]), thin(s["loss"]), color=f"C{j % 10}", lw=1.2, label=label(s["label"]))
        for m in marks:
            ax.axvline(m["step" if key == "steps" else "tokens"], color="#a33", ls="--", lw=1, label=label(m["label"]))
        ax.set_xlabel(xlabel)
        ax.set_ylabel("training loss (nats/token)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    return _png(fig)


def run_grid(runs: list[tuple[str, list[dict[str, Any]]]], columns: int = 3) -> str:
    """One small loss-vs-step panel per post-training run (SFT, reward model, DPO...): their losses differ in kind
    and scale, so they do not share an axis."""
    rows = math.ceil(len(runs) / columns)
    fig = _figure(4.3 * min(columns, len(runs)), 3.2 * rows)
    for i, (name, records) in enumerate(runs):
        ax = fig.add_subplot(rows, min(columns, len(runs)), i + 1)
        kept = thin(records)
        ax.plot([r["step"] for r in kept], [r["loss"] for r in kept], color=f"C{i % 10}", lw=1.2)
        ax.set_title(label(name), fontsize=10)
        ax.set_xlabel("step")
        ax.set_ylabel("loss")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return _png(fig)


def _law(law: dict[str, Any], flops: float) -> float:
    # fit.json's laws: y = E + A C^alpha (E = 0 for a pure power law).
    return float(law.get("E") or 0.0) + float(law["A"]) * flops ** float(law["alpha"])


def isoflop(fit: dict[str, Any], runs: list[dict[str, Any]], chosen: tuple[float, float] | None) -> str:
    """Left: each budget's IsoFLOP parabola (loss vs model size) with its fitted minimum, over the sweep's runs when
    the manifest is at hand. Right: the optimal size per budget, the fitted law, and the size the plan chose."""
    import numpy as np

    fig = _figure(13, 4.5)
    ax = fig.add_subplot(1, 2, 1)
    budgets = fit["budgets"]
    for i, b in enumerate(budgets):
        color = f"C{i % 10}"
        pts = [r for r in runs if _value(r.get("budget")) == b["budget"] and isinstance(r.get("val_loss"), int | float)]
        ax.scatter([r["n"] for r in pts], [r["val_loss"] for r in pts], color=color, s=14)
        xs = np.linspace(math.log(b["n_min"]) - 0.3, math.log(b["n_max"]) + 0.3, 100)
        ax.plot(np.exp(xs), np.polyval(b["coef"], xs), color=color, lw=1, label=f"C={b['budget']:.2g}")
        ax.scatter([b["n_opt"]], [b["loss_opt"]], color=color, marker="*", s=120, edgecolors="k", zorder=3)
    ax.set_xscale("log")
    ax.set_xlabel("model size n (non-embedding parameters)")
    ax.set_ylabel("validation loss")
    ax.set_title("IsoFLOP curves (stars: fitted minima)")
    ax.legend(fontsize=8)

    ax = fig.add_subplot(1, 2, 2)
    cs = [b["budget"] for b in budgets]
    ax.scatter(cs, [b["n_opt"] for b in budgets], color="C0", zorder=3, label="per-budget optimum")
    law = fit.get("laws", {}).get("n_opt")
    hi = max([*cs, chosen[0]]) if chosen else max(cs)
    if isinstance(law, dict):
        grid = np.geomspace(min(cs), hi, 60)
        ax.plot(grid, [_law(law, c) for c in grid], color="C1", label="fitted law")
    if chosen:
        ax.scatter([chosen[0]], [chosen[1]], color="#a33", marker="*", s=160, edgecolors="k", zorder=4,
                   label="this plan")  # fmt: skip
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("compute C (FLOPs)")
    ax.set_ylabel("compute-optimal n")
    ax.set_title("Optimal size vs compute")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return _png(fig)
