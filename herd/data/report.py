"""The curation report: per-step documents and characters in/out, drop reasons, language and domain histograms,
ground-truth precision/recall when the input has it; written as report.json, report.png and report.html.

Step figures come from datatrove's own per-task statistics (`<logging_dir>/stats/*.json`), summed over tasks.
"""

from __future__ import annotations

import html
import json
from collections import Counter
from pathlib import Path
from typing import Any

from herd.fileio import atomic_file

# datatrove counters that are bookkeeping, not outcomes worth a column.
_BOOKKEEPING = {"total", "forwarded", "dropped", "doc_len", "documents", "batches"}


def step_summaries(stage: str, logging_dir: Path) -> list[dict[str, Any]]:
    """One summary per pipeline step of a stage, summed over the tasks' stats files."""
    merged: list[dict[str, Any]] = []
    for path in sorted((logging_dir / "stats").glob("*.json")):
        for i, step in enumerate(json.loads(path.read_text())):
            if i == len(merged):
                # chars stays None for a step that counts no doc_len (a formatter, a tagger): unknown, not 0.
                merged.append({"name": step["name"], "stats": Counter(), "chars": None, "seconds": 0.0})
            entry = merged[i]
            for key, value in step.get("stats", {}).items():
                if key == "doc_len" and isinstance(value, dict):
                    entry["chars"] = (entry["chars"] or 0) + value.get("total", 0)
                elif isinstance(value, dict):  # a counter datatrove keeps with per-file statistics
                    entry["stats"][key] += value.get("total", 0)
                elif isinstance(value, int | float):
                    entry["stats"][key] += value
            time_stats = step.get("time_stats")
            if isinstance(time_stats, dict):
                entry["seconds"] += time_stats.get("total", 0.0)
    out: list[dict[str, Any]] = []
    docs_prev, chars_prev = None, None
    for entry in merged:
        s = entry["stats"]
        name = _clean_name(entry["name"])
        docs_in = s.get("total", s.get("documents", docs_prev))
        docs_out = s.get("forwarded", s.get("documents", docs_in))
        if "WRITER" in entry["name"]:
            docs_in = docs_out = s.get("total", docs_prev)
        summary = {
            "stage": stage,
            "step": name,
            "docs_in": docs_in if docs_in is not None else docs_out,
            "docs_out": docs_out,
            "chars_in": entry["chars"] if not out else chars_prev,  # None after a step that did not count them
            "chars_out": entry["chars"],
            "dropped": {k.removeprefix("dropped_"): v for k, v in s.items() if k.startswith("dropped_")},
            "skipped": {k.removeprefix("skipped_"): v for k, v in s.items() if k.startswith("skipped_")},
            "counters": {
                k: v for k, v in s.items() if k not in _BOOKKEEPING and not k.startswith(("dropped_", "skipped_"))
            },
            "seconds": round(entry["seconds"], 3),
        }
        out.append(summary)
        docs_prev, chars_prev = summary["docs_out"], summary["chars_out"]
    return out


def _clean_name(name: str) -> str:
    # datatrove names look like "🔻 - FILTER: 🌍 Language ID"; keep the words.
    name = name.split(":", 1)[-1]
    return "".join(ch for ch in name if ch.isascii()).strip(" -") or name


def histograms(docs: list[dict[str, Any]]) -> dict[str, dict[str, int]]:
    langs = Counter(str(d.get("metadata", {}).get("language", "unknown")) for d in docs)
    domains = Counter(str(d.get("metadata", {}).get("domain", "unknown")) for d in docs)
    return {"languages": dict(langs.most_common()), "domains": dict(domains.most_common())}


def write_report(report: dict[str, Any], out_dir: Path) -> None:
    """report.png, report.html, then report.json: the JSON, which marks a finished run, comes last (a run killed
    between the files otherwise looked finished without its pages; found by tests/drills)."""
    _plot(report, out_dir / "report.png")
    with atomic_file(out_dir / "report.html", "w") as f:
        f.write(_html(report))
    with atomic_file(out_dir / "report.json", "w") as f:
        json.dump(report, f, indent=2, ensure_ascii=False)


def format_curate(report: dict[str, Any], out_dir: Path) -> str:
    """What `herd data curate` prints after a run: a table of the steps (documents in and out, the top three drop
    or skip reasons), the documents kept, the ground-truth scores when the input has them, and where the report
    files are (`write_report`'s, in `out_dir`). Starts with a blank line, as it follows the run's own output."""
    lines = ["", f"{'step':<34}{'docs in':>9}{'docs out':>10}  dropped / skipped"]
    for step in report["steps"]:
        reasons = {**step["dropped"], **step["skipped"]}
        top = ", ".join(f"{k} {v}" for k, v in sorted(reasons.items(), key=lambda kv: -kv[1])[:3])
        docs_in, docs_out = (str(step[k]) if step[k] is not None else "-" for k in ("docs_in", "docs_out"))
        lines.append(f"{(step['stage'] + ': ' + step['step'])[:33]:<34}{docs_in:>9}{docs_out:>10}  {top}")
    o = report["output"]
    lines += ["", f"kept {o['documents']} of {report['input']['documents']} documents -> {o['path']}"]
    if truth := report.get("ground_truth"):
        lines += ["", "against the corpus's ground truth:"]
        for name, result in truth.items():
            shown = {k: v for k, v in result.items() if k not in ("tp", "fp", "fn", "confusion") and v is not None}
            lines.append(f"  {name:<44} " + "  ".join(f"{k}={v}" for k, v in shown.items()))
    lines += ["", f"report: {out_dir / 'report.json'}, {out_dir / 'report.png'}, {out_dir / 'report.html'}"]
    return "\n".join(lines)


def _plot(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [s for s in report["steps"] if s["docs_in"] is not None]
    fig, axes = plt.subplots(1, 3, figsize=(18, 6), gridspec_kw={"width_ratios": [3, 1, 1]})
    labels = [f"{s['stage']}: {s['step']}"[:40] for s in steps]
    ax = axes[0]
    y = range(len(steps))
    ax.barh(list(y), [s["docs_in"] for s in steps], color="#c7d4e8", label="documents in")
    ax.barh(list(y), [s["docs_out"] for s in steps], color="#3b6fb6", label="documents out")
    ax.set_yticks(list(y), labels, fontsize=8)
    ax.invert_yaxis()
    ax.set_title("Documents through each step")
    ax.legend(loc="lower right")
    for ax, key, title in ((axes[1], "languages", "Languages kept"), (axes[2], "domains", "Domains kept")):
        items = list(report["output"].get(key, {}).items())[:15]
        ax.barh([k for k, _ in items], [v for _, v in items], color="#5a9e6f")
        ax.invert_yaxis()
        ax.set_title(title)
    fig.tight_layout()
    with atomic_file(path) as f:
        fig.savefig(f, format="png", dpi=90)
    plt.close(fig)


def _html(report: dict[str, Any]) -> str:
    def table(rows: list[list[Any]], head: list[str]) -> str:
        th = "".join(f"<th>{html.escape(h)}</th>" for h in head)
        cell = lambda c: "-" if c is None else html.escape(str(c))  # noqa: E731  (None: not counted)
        body = "".join("<tr>" + "".join(f"<td>{cell(c)}</td>" for c in r) + "</tr>" for r in rows)
        return f"<table><tr>{th}</tr>{body}</table>"

    steps = table(
        [
            [
                s["stage"],
                s["step"],
                s["docs_in"],
                s["docs_out"],
                s["chars_in"],
                s["chars_out"],
                ", ".join(f"{k}: {v}" for k, v in {**s["dropped"], **s["skipped"]}.items()),
                s["seconds"],
            ]
            for s in report["steps"]
        ],
        ["stage", "step", "docs in", "docs out", "chars in", "chars out", "drops / skips by reason", "seconds"],
    )
    truth = report.get("ground_truth") or {}
    truth_table = table(
        [[k, v.get("precision"), v.get("recall"), v.get("tp"), v.get("fp"), v.get("fn")] for k, v in truth.items()],
        ["check", "precision", "recall", "true pos.", "false pos.", "false neg."],
    )
    out = report["output"]
    return f"""<!DOCTYPE html><html><head><meta charset="utf-8"><title>herd data curation report</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse;margin:1em 0}}
td,th{{border:1px solid #ccc;padding:4px 8px;font-size:13px}}th{{background:#eef}}</style></head><body>
<h1>Data curation report</h1>
<p>Input: {report["input"]["documents"]} documents from {report["input"]["files"]} files
({sum(report["input"]["skipped"].values())} records skipped). Kept: {out["documents"]} documents,
{out["chars"]} characters, in <code>{html.escape(out["path"])}</code>.</p>
<img src="report.png" style="max-width:100%">
<h2>Steps</h2>{steps}
<h2>Ground truth</h2>{truth_table if truth else "<p>The input carries no ground truth.</p>"}
<h2>Input problems</h2>{table([[k, v] for k, v in report["input"]["skipped"].items()], ["reason", "records"])}
</body></html>
"""
