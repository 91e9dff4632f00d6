"""`herd eval report`: one report card over several models' eval results, side by side.

Reads each --run NAME=DIR (the --out directory of the other `herd eval` commands: humaneval, harness and pairwise
result files, maybe a contamination.json), and optionally a scaling fit (`herd scaling fit`: fit.json and its
plots) and a post-training run (`herd round`: round.json, or a stage's summary.json). Writes OUT/eval.json (every
number, one object per model) and OUT/index.html: one self-contained static page, tables and matplotlib plots
embedded as base64 PNG. Everything read from result files (model, task and metric names) is escaped.
"""

from __future__ import annotations

import argparse
import base64
import html
import io
import json
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from herd.errors import EvalError
from herd.eval.results import BenchmarkResult, read_results

SCHEMA_VERSION = 1
KINDS = ("humaneval", "harness", "pairwise")
SCALING_PLOTS = ("isoflop.png", "laws.png", "downstream.png")
"""`herd scaling fit`'s plots, in the order the page shows them (other PNGs in the folder follow)."""


@dataclass(slots=True)
class Run:
    name: str
    dir: Path
    results: list[BenchmarkResult]
    contamination: dict[str, Any] | None


# ---------------------------------------------------------------------------------------------
# Reading


def _read_json(path: Path, what: str) -> Any:
    from herd.fileio import read_json

    return read_json(path, what=what, error=EvalError)


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def read_contamination(path: Path) -> dict[str, Any]:
    """A contamination.json of `herd eval contamination`, checked where the report card reads it."""
    report = _read_json(path, "contamination report")
    if not isinstance(report, dict) or not isinstance(report.get("benchmarks"), list):
        raise EvalError(f"{path}: field 'benchmarks' must be a list (not a `herd eval contamination` report?)")
    default = report.get("default_threshold")
    if not _number(default):
        raise EvalError(f"{path}: field 'default_threshold' must be a number")
    for i, b in enumerate(report["benchmarks"]):
        ok = isinstance(b, dict) and isinstance(b.get("benchmark"), str) and isinstance(b.get("thresholds"), dict)
        if not ok or f"{default:g}" not in b["thresholds"]:
            raise EvalError(f"{path}: benchmarks[{i}] needs a benchmark name and its split at the default threshold")
    return report


def read_run(spec: str) -> Run:
    """NAME=DIR (or DIR, named after the folder): its result files and contamination.json."""
    name, sep, folder = spec.partition("=")
    if not sep:
        name, folder = Path(spec).name, spec
    if not name or not folder:
        raise EvalError(f"--run {spec!r}: expected NAME=DIR")
    path = Path(folder)
    results = read_results(path)
    cont = path / "contamination.json"
    return Run(name, path, results, read_contamination(cont) if cont.is_file() else None)


def contamination_rows(report: dict[str, Any], label: str) -> list[dict[str, Any]]:
    """One row per benchmark of a contamination report: its split at the default threshold, shares at each."""
    t0 = f"{report['default_threshold']:g}"
    rows = []
    for b in report["benchmarks"]:
        d = b["thresholds"][t0]
        rows.append({"run": label, "model": b.get("model"), "benchmark": b["benchmark"], "items": b.get("items"),
                     "threshold": report["default_threshold"], **{k: d.get(k) for k in (
                         "contaminated_share", "score_clean", "score_contaminated", "estimated_gain")},
                     "shares": {t: v.get("contaminated_share") for t, v in b["thresholds"].items()}})  # fmt: skip
    return rows


def read_scaling(folder: Path) -> dict[str, Any]:
    """The fit of `herd scaling fit` in `folder`: laws, sigmoid, holdout checks, warnings and its plots' names."""
    path = folder / "fit.json"
    if not path.is_file():
        hint = "; run `herd scaling fit` on it" if (folder / "manifest.json").is_file() else ""
        raise EvalError(f"--scaling {folder}: no fit.json{hint}")
    fit = _read_json(path, "scaling fit")
    if not isinstance(fit, dict) or not isinstance(fit.get("laws"), dict):
        raise EvalError(f"{path}: field 'laws' must be an object (not a `herd scaling fit` result?)")
    laws = {k: {f: v.get(f) for f in ("form", "E", "A", "alpha", "alpha_se", "alpha_boot_se", "r2", "points")}
            for k, v in fit["laws"].items() if isinstance(v, dict)}  # fmt: skip
    sig = fit.get("sigmoid")
    pngs = sorted(folder.glob("*.png"), key=lambda p: (*SCALING_PLOTS, p.name).index(p.name))
    return {"dir": str(folder), "task": fit.get("task"), "runs_used": fit.get("runs_used"), "laws": laws,
            "sigmoid": {k: v for k, v in sig.items() if k != "cov"} if isinstance(sig, dict) else None,
            "holdout": [h for h in fit.get("holdout") or [] if isinstance(h, dict)],
            "warnings": [str(w) for w in fit.get("warnings") or []], "images": [p.name for p in pngs]}  # fmt: skip


def read_posttrain(folder: Path) -> dict[str, Any]:
    """Held-out metrics of a post-training run: a round's evals (round.json, else its eval_*.json) and the stages'
    held-out figures (reward model accuracy, DPO reward accuracy and margin, rejection sampling's agreement)."""
    metrics: dict[str, Any] = {}
    stages: dict[str, dict[str, Any]] = {}
    if (folder / "round.json").is_file():
        summary = _read_json(folder / "round.json", "round summary")
        if not isinstance(summary, dict) or not isinstance(summary.get("metrics", {}), dict):
            raise EvalError(f"{folder / 'round.json'}: field 'metrics' must be an object (not a `herd round` summary?)")
        metrics = summary.get("metrics", {})
        stages = {k: v for k, v in summary.items() if k in ("rm", "rs", "dpo") and isinstance(v, dict) and v}
    else:
        metrics = {p.stem.removeprefix("eval_"): _read_json(p, "eval") for p in sorted(folder.glob("eval_*.json"))}
        for name in ("sft", "rm", "rs", "dpo", "ppo"):
            if (folder / name / "summary.json").is_file():
                stages[name] = _read_json(folder / name / "summary.json", "stage summary")
        if (folder / "summary.json").is_file():  # one stage's own run directory
            stages[folder.name] = _read_json(folder / "summary.json", "stage summary")
    held: list[dict[str, Any]] = []
    for stage, s in stages.items():
        if not isinstance(s, dict):
            continue
        if "held_out_accuracy_before" in s or "held_out_accuracy_after" in s:
            held.append({"stage": stage, "metric": "held-out pairwise accuracy", "n": s.get("held_out_pairs"),
                         "before": s.get("held_out_accuracy_before"),
                         "after": s.get("held_out_accuracy_after")})  # fmt: skip
        before, after = s.get("held_out_before"), s.get("held_out_after")
        if isinstance(before, dict) or isinstance(after, dict):
            before, after = before or {}, after or {}
            for key in dict.fromkeys([*before, *after]):
                held.append({"stage": stage, "metric": key, "n": s.get("held_out_pairs"),
                             "before": before.get(key), "after": after.get(key)})  # fmt: skip
        if "rm_checker_agreement" in s:
            held.append({"stage": stage, "metric": "reward model agrees with the checkers", "n": s.get(
                "rm_checker_pairs"), "before": None, "after": s["rm_checker_agreement"]})  # fmt: skip
    metrics = {str(k): {m: v for m, v in val.items() if m != "responses"} for k, val in metrics.items()
               if isinstance(val, dict)}  # fmt: skip
    for row in held:  # a figure over zero held-out items is NaN in a summary: no figure, in valid JSON
        row.update({k: None for k in ("before", "after") if isinstance(row[k], float) and not math.isfinite(row[k])})
    if not metrics and not held:
        raise EvalError(f"--posttrain {folder}: no held-out metrics (round.json, eval_*.json or a summary.json)")
    return {"dir": str(folder), "metrics": metrics, "held_out": held}


def build_card(
    runs: Sequence[Run],
    *,
    contamination: Sequence[Path] = (),
    scaling: Path | None = None,
    posttrain: Path | None = None,
) -> dict[str, Any]:
    """eval.json's content: one object per model (run), the contamination files, the scaling fit, post-training."""
    models = []
    for run in runs:
        by_kind: dict[str, dict[str, Any]] = {}
        for r in run.results:
            bench = by_kind.setdefault(r.kind, {})
            key = r.benchmark if r.benchmark not in bench else f"{r.benchmark} #{len(bench) + 1}"
            bench[key] = {"model": r.model, "metrics": r.metrics, "items": len(r.items), "mean_score": r.mean_score()}
        cont = contamination_rows(run.contamination, run.name) if run.contamination else None
        models.append({"name": run.name, "dir": str(run.dir), "results": by_kind, "contamination": cont})
    files = [{"file": str(p), "rows": contamination_rows(read_contamination(p), p.name)} for p in contamination]
    return {
        "version": SCHEMA_VERSION,
        "generated": time.strftime("%Y-%m-%d %H:%M:%S"),
        "models": models,
        "contamination_files": files,
        "scaling": read_scaling(scaling) if scaling is not None else None,
        "posttrain": read_posttrain(posttrain) if posttrain is not None else None,
    }


# ---------------------------------------------------------------------------------------------
# Plots (matplotlib's object API on an Agg canvas: pyplot's global state is left alone)


def _label(text: str, width: int = 40) -> str:
    """Untrusted text as a plot label: cut short, and `$` escaped so mathtext never parses it."""
    text = text if len(text) <= width else text[: width - 1] + "…"
    return text.replace("$", r"\$")


def _png(fig: Any) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def bar_chart(groups: list[str], series: list[tuple[str, list[Any], list[Any]]], *, ylabel: str, title: str) -> str:
    """A grouped bar chart as base64 PNG: one bar per series in each group, with [lo, hi] error bars if given."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(max(6.0, 0.5 * len(groups) * max(len(series), 1) + 2), 4))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    width = 0.8 / max(len(series), 1)
    for i, (name, values, cis) in enumerate(series):
        xs = [g + (i - (len(series) - 1) / 2) * width for g in range(len(groups))]
        ys = [v if _number(v) else math.nan for v in values]
        # An interval that misses its estimate (a file's rounding) must not give matplotlib a negative length.
        err = [[max(y - ci[0], 0.0) if ci and _number(y) else 0.0 for y, ci in zip(ys, cis, strict=True)],
               [max(ci[1] - y, 0.0) if ci and _number(y) else 0.0 for y, ci in zip(ys, cis, strict=True)]]  # fmt: skip
        has_ci = any(ci for ci in cis)
        ax.bar(xs, ys, width, label=_label(name), yerr=err if has_ci else None, capsize=3 if has_ci else 0)
    ax.set_xticks(range(len(groups)), [_label(g, 28) for g in groups], rotation=30 if len(groups) > 4 else 0,
                  ha="right" if len(groups) > 4 else "center")  # fmt: skip
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.set_ylim(0, max(1.0, *[v for _, vs, _ in series for v in vs if _number(v)]))
    ax.legend(fontsize=8)
    return _png(fig)


def _ci(value: Any) -> list[float] | None:
    return [float(value[0]), float(value[1])] if isinstance(value, list | tuple) and len(value) == 2 and all(
        _number(v) for v in value) else None  # fmt: skip


# ---------------------------------------------------------------------------------------------
# The page


def _e(text: Any) -> str:
    return html.escape(str(text), quote=True)


def _g(value: Any, digits: int = 3) -> str:
    return f"{value:.{digits}g}" if _number(value) else "-"


def _f(value: Any, ci: Any = None, digits: int = 3) -> str:
    if not _number(value):
        return "-" if value is None else str(value)
    text = f"{value:.{digits}f}"
    band = _ci(ci)
    return f"{text} [{band[0]:.{digits}f}, {band[1]:.{digits}f}]" if band else text


def _table(head: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """An HTML table; every header and cell is escaped."""
    th = "".join(f"<th>{_e(h)}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td>{_e(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table>"


def _img(b64: str, alt: str) -> str:
    return f'<img alt="{_e(alt)}" src="data:image/png;base64,{b64}">'


def _results(card: dict[str, Any], kind: str) -> list[tuple[str, str, dict[str, Any]]]:
    """(run name, benchmark, entry) of every result of `kind`."""
    return [(m["name"], b, e) for m in card["models"] for b, e in m["results"].get(kind, {}).items()]


def humaneval_section(card: dict[str, Any]) -> str | None:
    found = _results(card, "humaneval")
    if not found:
        return None
    runs = [m["name"] for m in card["models"]]
    keys = list(dict.fromkeys((b, k) for _, b, e in found for k in e["metrics"]
                              if k.startswith("pass@") and not k.endswith("_ci")))  # fmt: skip
    cell = {(run, b, k): (e["metrics"].get(k), e["metrics"].get(f"{k}_ci")) for run, b, e in found for _, k in keys}
    rows = [[b, k, *(_f(*cell.get((r, b, k), (None, None))) for r in runs)] for b, k in keys]
    if not keys:
        return "<p class=note>The humaneval results hold no pass@k metrics.</p>"
    series = [(r, [cell.get((r, b, k), (None, None))[0] for b, k in keys],
               [_ci(cell.get((r, b, k), (None, None))[1]) for b, k in keys]) for r in runs]  # fmt: skip
    chart = bar_chart([f"{b} {k}" for b, k in keys], series, ylabel="pass rate", title="pass@k (95% CI)")
    return (_table(["benchmark", "metric", *runs], rows) + "<p class=note>Unbiased pass@k; brackets: 95% bootstrap "
            "interval over problems.</p>" + _img(chart, "pass@k by model"))  # fmt: skip


def _harness_metrics(metrics: dict[str, Any]) -> list[str]:
    return [k for k, v in metrics.items() if _number(v) and "stderr" not in k]


def harness_section(card: dict[str, Any]) -> str | None:
    found = _results(card, "harness")
    if not found:
        return None
    runs = [m["name"] for m in card["models"]]
    metrics = {(run, b): e["metrics"] for run, b, e in found}
    tasks = list(dict.fromkeys(b for _, b, _ in found))
    rows = []
    for task in tasks:
        names = list(dict.fromkeys(k for r in runs for k in _harness_metrics(metrics.get((r, task), {}))))
        for key in names:
            name, _, filt = key.partition(",")
            cells = []
            for r in runs:
                m = metrics.get((r, task), {})
                err = m.get(f"{name}_stderr,{filt}" if filt else f"{name}_stderr")
                cells.append(_f(m.get(key)) + (f" ± {err:.3f}" if _number(err) and _number(m.get(key)) else ""))
            rows.append([task, name if filt in ("", "none") else f"{name} ({filt})", *cells])
    # The chart shows each task's first metric (as lm-eval lists them: acc before acc_norm).
    first = {t: next(iter(_harness_metrics(next(metrics[(r, t)] for r in runs if (r, t) in metrics))), None)
             for t in tasks}  # fmt: skip
    series = [(r, [metrics.get((r, t), {}).get(first[t] or "") for t in tasks], [None] * len(tasks)) for r in runs]
    labels = [f"{t} {(first[t] or '').partition(',')[0]}" for t in tasks]
    chart = bar_chart(labels, series, ylabel="score", title="lm-evaluation-harness tasks")
    return (_table(["task", "metric", *runs], rows) + "<p class=note>± is lm-eval's standard error.</p>"
            + _img(chart, "harness task scores by model"))  # fmt: skip


def _rates(metrics: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """A pairwise result's rates per category, then overall (the top-level rates); what is missing shows as -."""
    per = metrics.get("per_category")
    rows = {str(k): v for k, v in per.items() if isinstance(v, dict)} if isinstance(per, dict) else {}
    return {**rows, "overall": metrics}


def pairwise_section(card: dict[str, Any]) -> str | None:
    found = _results(card, "pairwise")
    if not found:
        return None
    parts, series = [], []
    head = ["category", "n", "win [95% CI]", "tie", "loss", "A preferred [95% CI]"]
    for run, bench, e in found:
        m = e["metrics"]
        rates = _rates(m)
        rows = [[cat, r.get("n", "-"), _f(r.get("win_rate"), r.get("win_rate_ci")), _f(r.get("tie_rate")),
                 _f(r.get("loss_rate")), _f(r.get("preference"), r.get("preference_ci"))]
                for cat, r in rates.items()]  # fmt: skip
        title = f"{run}: {e['model']} (A) vs {m.get('opponent', '?')} (B), judge {m.get('judge', '?')} ({bench})"
        parts.append(f"<h3>{_e(title)}</h3>" + _table(head, rows))
        if _number(m.get("position_bias")):
            parts.append(f"<p class=note>The judge picked position 1 in {_f(m['position_bias'])} of its decisive "
                         "verdicts (0.5 is no position bias).</p>")  # fmt: skip
        series.append((f"{run}: vs {m.get('opponent', '?')}", rates))
    groups = [*dict.fromkeys(c for _, rates in series for c in rates if c != "overall"), "overall"]
    bars = [(name, [rates.get(c, {}).get("win_rate") for c in groups],
             [_ci(rates.get(c, {}).get("win_rate_ci")) for c in groups]) for name, rates in series]  # fmt: skip
    chart = bar_chart(groups, bars, ylabel="win rate of A", title="win rate per category (95% CI)")
    return "".join(parts) + _img(chart, "win rates per category")


def contamination_section(card: dict[str, Any]) -> str | None:
    rows = [r for m in card["models"] for r in m["contamination"] or []]
    rows += [r for f in card["contamination_files"] for r in f["rows"]]
    if not rows:
        return None
    table = [[r["run"], r["model"], r["benchmark"], r["items"], f"{r['threshold']:g}",
              ", ".join(f"{t}: {_f(s, digits=2)}" for t, s in r["shares"].items()), _f(r["score_clean"]),
              _f(r["score_contaminated"]), _f(r["estimated_gain"])] for r in rows]  # fmt: skip
    head = ["run / file", "model", "benchmark", "items", "T", "share contaminated (by T)", "clean score",
            "contaminated score", "estimated gain"]  # fmt: skip
    return _table(head, table) + ("<p class=note>8-gram overlap with the training shards (Llama 3, sec. 5.1.4): an "
                                  "item is contaminated when more than T of its tokens are; estimated gain = score on "
                                  "all items − score on the clean ones.</p>")  # fmt: skip


def scaling_section(card: dict[str, Any]) -> str | None:
    s = card["scaling"]
    if s is None:
        return None
    laws = [[k, v.get("form"), _g(v.get("A"), 4), _f(v.get("alpha"), digits=4), _f(v.get("alpha_se"), digits=4),
             _g(v.get("E"), 4), _f(v.get("r2"))] for k, v in s["laws"].items()]  # fmt: skip
    out = _table(["law y(C)", "form", "A", "alpha", "alpha s.e.", "E", "R²"], laws)
    if s["holdout"]:
        rows = [[h.get("name"), _g(h.get("budget")), _g(h.get("n")), _f(h.get("task_acc")),
                 _f(h.get("acc_pred"), h.get("acc_band")), _f(h.get("acc_from_measured_nll")), _f(h.get("task_nll")),
                 _f(h.get("nll_pred"), h.get("nll_band")), _f(h.get("val_loss")), _f(h.get("loss_at_n_pred"))]
                for h in s["holdout"]]  # fmt: skip
        out += "<h3>Predicted vs measured on the held-out run(s)</h3>" + _table(
            ["run", "FLOPs", "n", "accuracy", "predicted [±1σ]", "from its NLL", "task NLL", "predicted NLL",
             "val loss", "predicted loss"], rows)  # fmt: skip
    else:
        out += "<p class=note>No held-out run in this sweep: no predicted vs measured accuracy to show.</p>"
    out += "".join(f"<p class=note>warning: {_e(w)}</p>" for w in s["warnings"])
    folder = Path(s["dir"])
    return out + "".join(_img(base64.b64encode((folder / name).read_bytes()).decode("ascii"), name)
                         for name in s["images"])  # fmt: skip


def posttrain_section(card: dict[str, Any]) -> str | None:
    p = card["posttrain"]
    if p is None:
        return None
    out = ""
    if p["metrics"]:
        names = list(p["metrics"])
        keys = list(dict.fromkeys(k for m in p["metrics"].values() for k, v in m.items() if _number(v)))
        counts = {k: next((m.get("counts", {}).get(k) for m in p["metrics"].values() if "counts" in m), None)
                  for k in keys}  # fmt: skip
        rows = [[k, counts[k] if counts[k] is not None else "-", *(_f(p["metrics"][n].get(k)) for n in names)]
                for k in keys]  # fmt: skip
        out += "<h3>Held-out evals by model</h3>" + _table(["metric", "n", *names], rows)
    if p["held_out"]:
        rows = [[h["stage"], h["metric"], h["n"] if h["n"] is not None else "-", _f(h["before"]), _f(h["after"])]
                for h in p["held_out"]]  # fmt: skip
        out += "<h3>Held-out metrics of the stages</h3>" + _table(["stage", "metric", "n", "before", "after"], rows)
    return out


def other_section(card: dict[str, Any]) -> str | None:
    """Results of a kind this page has no layout for: their numeric metrics, as they are."""
    rows = []
    for m in card["models"]:
        for kind, benchmarks in m["results"].items():
            if kind in KINDS:
                continue
            for b, e in benchmarks.items():
                numbers = ", ".join(f"{k}={_f(v)}" for k, v in e["metrics"].items() if _number(v))
                rows.append([m["name"], b, kind, e["model"], e["items"], numbers])
    return _table(["run", "benchmark", "kind", "model", "items", "metrics"], rows) if rows else None


CSS = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:.6em 0}th,td{border:1px solid #ccc;padding:3px 8px;text-align:right}
th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}.note{color:#666;font-size:90%}
img{max-width:100%;display:block;margin:.8em 0}h2{border-bottom:1px solid #ddd;margin-top:1.6em}"""

SECTIONS = (
    ("humaneval", "HumanEval pass@k", humaneval_section, "no humaneval results in the runs"),
    ("harness", "lm-evaluation-harness tasks", harness_section, "no harness results in the runs"),
    ("pairwise", "Pairwise preference (12 use cases)", pairwise_section, "no pairwise results in the runs"),
    ("contamination", "Contamination", contamination_section, "no contamination.json in the runs, no --contamination"),
    ("scaling", "Scaling laws: predicted vs measured", scaling_section, "no --scaling fit given"),
    ("posttrain", "Post-training held-out metrics", posttrain_section, "no --posttrain run given"),
    ("other", "Other results", other_section, "every result is of a kind shown above"),
)


def render_html(card: dict[str, Any], title: str = "herd eval report") -> str:
    runs = [[m["name"], m["dir"], ", ".join(sorted({e["model"] for k in m["results"].values() for e in k.values()})),
             sum(len(k) for k in m["results"].values())] for m in card["models"]]  # fmt: skip
    body, notes = [], []
    for key, heading, render, missing in SECTIONS:
        section = render(card)
        if section is None:
            notes.append(f"{heading}: {missing}")
        else:
            body.append(f'<h2 id="{key}">{_e(heading)}</h2>{section}')
    note = "".join(f"<li>{_e(n)}</li>" for n in notes)
    return (f"<!DOCTYPE html><html lang=en><head><meta charset=utf-8><title>{_e(title)}</title>"
            f"<style>{CSS}</style></head><body><h1>{_e(title)}</h1><p class=note>generated {_e(card['generated'])} "
            f"by herd eval report; every number is also in eval.json</p>"
            + _table(["run", "directory", "model(s) in the result files", "results"], runs)
            + (f"<p class=note>Not shown:</p><ul class=note>{note}</ul>" if notes else "")
            + "".join(body) + "</body></html>\n")  # fmt: skip


def write_report(card: dict[str, Any], out: Path, *, title: str = "herd eval report") -> list[Path]:
    """OUT/eval.json and OUT/index.html, each written atomically."""
    from herd.fileio import atomic_file

    out.mkdir(parents=True, exist_ok=True)
    page = render_html(card, title)
    with atomic_file(out / "eval.json", "w") as f:
        json.dump(card, f, indent=1, allow_nan=False)
        f.write("\n")
    with atomic_file(out / "index.html", "w") as f:
        f.write(page)
    return [out / "eval.json", out / "index.html"]


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--run", action="append", default=[], metavar="NAME=DIR",
                   help="a model's eval results (a `herd eval` --out directory); one per model")  # fmt: skip
    p.add_argument("--contamination", action="append", default=[], metavar="FILE",
                   help="a `herd eval contamination` report (one inside a run directory is read anyway)")  # fmt: skip
    p.add_argument("--scaling", default=None, metavar="DIR", help="a `herd scaling fit` folder (fit.json, its PNGs)")
    p.add_argument("--posttrain", default=None, metavar="DIR",
                   help="a `herd round` folder (round.json) or a post-training stage's run directory")  # fmt: skip
    p.add_argument("--title", default="herd eval report")
    p.add_argument("--out", required=True, help="directory for eval.json and index.html")


def command(a: argparse.Namespace) -> None:
    if not (a.run or a.contamination or a.scaling or a.posttrain):
        raise EvalError("nothing to report: give --run NAME=DIR (and/or --contamination, --scaling, --posttrain)")
    runs = [read_run(spec) for spec in a.run]
    if len({r.name for r in runs}) < len(runs):
        raise EvalError(f"--run names must differ: {', '.join(r.name for r in runs)}")
    card = build_card(runs, contamination=[Path(c) for c in a.contamination],
                      scaling=Path(a.scaling) if a.scaling else None,
                      posttrain=Path(a.posttrain) if a.posttrain else None)  # fmt: skip
    paths = write_report(card, Path(a.out), title=a.title)
    counts = ", ".join(f"{m['name']}: {sum(len(k) for k in m['results'].values())} results" for m in card["models"])
    print(f"report over {len(runs)} run(s) ({counts}) -> {paths[1]} and {paths[0]}")
