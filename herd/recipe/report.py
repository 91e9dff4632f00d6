"""The run report: `report.html` in the run directory, one static page a person opens in a browser.

A section per part of the recipe, each present only when its stage is in the run and has written the files it
reads (in the stage's directory, the record's "dir"): curate report.json (herd/data/report.py); plan plan.json
(herd/scaling/plan.py) and a fit.json with the sweep's manifest.json beside it; pretrain and anneal metrics.jsonl
(herd/train/metrics.py); posttrain round.json (herd/posttrain/round.py) and the metrics.jsonl of its runs; guard
guard.json (free-form); eval eval.json (herd/eval/report.py); export its files. The page has no script and loads
nothing: CSS inline, plots as base64 PNG (herd/recipe/plots.py). Every string read from the run (stage names, file
contents) is HTML-escaped.
"""

from __future__ import annotations

import html
import json
import math
import os
import time
import urllib.parse
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from herd.fileio import atomic_file
from herd.recipe import plots

STATUSES = ("ran", "reused", "failed", "pending")


class Markup(str):
    """HTML built here from escaped parts: table cells of this type are not escaped again."""


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if not math.isfinite(value):
            return "-"
        return f"{value:.4g}" if abs(value) >= 1e-3 or value == 0 else f"{value:.3e}"
    return str(value)


def _si(value: Any) -> str:
    if not _number(value):
        return "-"
    for scale, suffix in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "K")):
        if abs(value) >= scale:
            return f"{value / scale:.4g}{suffix}"
    return f"{value:.4g}"


def _size(n: int) -> str:
    i = min((n.bit_length() - 1) // 10, 4) if n > 0 else 0
    return f"{n} B" if i == 0 else f"{n / 1024**i:.1f} {('KiB', 'MiB', 'GiB', 'TiB')[i - 1]}"


def _table(head: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """Every header and cell escaped, except cells that are Markup (built here from escaped parts)."""

    def cell(c: Any) -> str:
        return c if isinstance(c, Markup) else _e(_fmt(c))

    th = "".join(f"<th>{_e(h)}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td>{cell(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table>"


def _img(b64: str, alt: str) -> str:
    return f'<img alt="{_e(alt)}" src="data:image/png;base64,{b64}">'


def _link(run_dir: Path, target: Path, text: str) -> Markup:
    """A link relative to report.html, so the run directory can be moved or copied whole."""
    href = urllib.parse.quote(Path(os.path.relpath(target, run_dir)).as_posix())
    return Markup(f'<a href="{_e(href)}">{_e(text)}</a>')


def _note(text: str) -> str:
    return f"<p class=note>{_e(text)}</p>"


def _read_json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """The records of a metrics.jsonl that carry a loss, in order; a line torn by a kill mid-write is left out, as
    are steps the trainer skipped (their loss never reached the weights)."""
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict) and _number(record.get("loss")) and not record.get("skipped"):
            out.append(record)
    return out


# ---------------------------------------------------------------------------------------------
# Sections: each takes the run directory and the records of its stage kinds, and returns HTML or None.


def overview(run_dir: Path, records: list[dict[str, Any]]) -> str | None:
    rows = []
    for i, r in enumerate(records, 1):
        status = r.get("status") if r.get("status") in STATUSES else "pending"
        summary = r.get("summary") or {}
        shown = [f"{k}: {_fmt(v)}" for k, v in summary.items() if _number(v) or isinstance(v, str)][:6]
        d = Path(r["dir"])
        where = _link(run_dir, d, d.name) if d.is_dir() else "-"
        rows.append([i, r.get("name"), r.get("kind"), Markup(f'<span class="st {status}">{_e(status)}</span>'),
                     r.get("seconds"), (r.get("key") or "-")[:12], where, "; ".join(shown)])  # fmt: skip
    counts = ", ".join(f"{n} {s}" for s in STATUSES if (n := sum(r.get("status") == s for r in records)))
    return _note(f"{len(records)} stages: {counts or 'none'}") + _table(
        ["#", "stage", "kind", "status", "seconds", "key", "directory", "summary"], rows
    )


def curation(run_dir: Path, records: list[dict[str, Any]]) -> str | None:
    parts = []
    for r in records:
        path = Path(r["dir"]) / "report.json"
        if not path.is_file():
            continue
        report = _read_json(path)
        steps = [s for s in report["steps"] if isinstance(s, dict)]
        inp, out = report.get("input", {}), report.get("output", {})
        rows = [[s.get("stage"), s.get("step"), s.get("docs_in"), s.get("docs_out"), s.get("chars_in"),
                 s.get("chars_out"), ", ".join(f"{k} {v}" for k, v in {**s.get("dropped", {}),
                                                                       **s.get("skipped", {})}.items())]
                for s in steps]  # fmt: skip
        own = Path(r["dir"]) / "report.html"
        link = f" Full curation report: {_link(run_dir, own, 'report.html')}." if own.is_file() else ""
        parts.append(
            f"<h3>{_e(r['name'])}</h3><p>{_e(inp.get('documents'))} documents in, {_e(out.get('documents'))} kept "
            f"({_e(out.get('chars'))} characters).{link}</p>"
            + (_img(plots.funnel(steps), "documents and characters per curation step") if steps else "")
            + _table(["stage", "step", "docs in", "docs out", "chars in", "chars out", "dropped / skipped"], rows)
        )
    return "".join(parts) or None


def _fit_for(plan: dict[str, Any], stage_dir: Path) -> Path | None:
    given = (plan.get("law") or {}).get("path")
    for candidate in ([Path(given), stage_dir / given] if given else []) + [stage_dir / "fit.json"]:
        if candidate.is_file():
            return candidate
    return None


def scaling(run_dir: Path, records: list[dict[str, Any]]) -> str | None:
    parts = []
    for r in records:
        path = Path(r["dir"]) / "plan.json"
        if not path.is_file():
            continue
        plan = _read_json(path)
        plan = plan["plan"] if isinstance(plan.get("plan"), dict) else plan  # a stage may wrap make_plan's dict
        law, preset = plan.get("law") or {}, plan.get("preset") or {}
        hw, mem = plan.get("hardware") or {}, plan.get("memory") or {}
        shape = preset.get("shape") or {}
        rows = [
            ["compute", f"{plan.get('flops', 0):.3g} FLOPs ({plan.get('flops_source', '?')})"],
            ["law", f"{law.get('name', '?')}: tokens = {law.get('tokens', '?')} [{law.get('source', '')}]"],
            ["training tokens", _si(plan.get("tokens"))],
            ["parameters (C = 6ND)", _si(plan.get("params_6nd"))],
            ["nearest preset", f"{preset.get('name', '?')}: {_si(preset.get('params'))} parameters, "
                               + ", ".join(f"{k} {v}" for k, v in shape.items())],
            ["time", f"{_fmt(hw.get('gpu_days'))} GPU-days at {_fmt(hw.get('mfu'))} MFU"
                     + (f"; {_fmt(hw.get('days'))} days on {hw['gpus']} GPUs" if hw.get("gpus") else "")],
            ["memory per device", f"{_fmt((mem.get('gib') or {}).get('total'))} GiB on "
                                  + " x ".join(f"{k} {v}" for k, v in (mem.get("layout") or {}).items())],
        ]  # fmt: skip
        if isinstance(model := plan.get("model"), dict):  # what a recipe's pretrain stage trains
            rows.append(["model trained", f"{model.get('preset') or model.get('source', '?')}: "
                         + ", ".join(f"{k} {v}" for k, v in (model.get("shape") or {}).items())])  # fmt: skip
        if (pred := plan.get("prediction")) is not None:
            rows += [["predicted loss", _fmt(pred.get("loss"))], ["predicted accuracy", _fmt(pred.get("accuracy"))]]
        out = f"<h3>{_e(r['name'])}</h3>" + _table(["", "plan"], rows)
        out += "".join(_note(f"warning: {w}") for w in plan.get("warnings") or [])
        fit_path = _fit_for(plan, Path(r["dir"]))
        if fit_path is not None:
            fit = _read_json(fit_path)
            manifest = fit_path.parent / "manifest.json"
            runs = [x for x in _read_json(manifest).get("runs", []) if isinstance(x, dict) and x.get("status") ==
                    "done"] if manifest.is_file() else []  # fmt: skip
            chosen = (plan["flops"], pred["n"]) if pred and _number(pred.get("n")) else None
            if fit.get("budgets"):
                out += _img(plots.isoflop(fit, runs, chosen), "IsoFLOP curves and the compute-optimal size")
        parts.append(out)
    return "".join(parts) or None


def loss_curves(run_dir: Path, records: list[dict[str, Any]]) -> str | None:
    """Pretraining and annealing on one axis; a later stage that counts its steps from 1 again (it started from the
    previous stage's weights) is shifted to follow on. The anneal's start is marked: where an anneal stage begins,
    or where a run's records enter the "anneal" phase of its schedule."""
    series: list[dict[str, Any]] = []
    marks: list[dict[str, Any]] = []
    rows = []
    last_step, last_tokens = 0, 0
    for r in records:
        path = Path(r["dir"]) / "metrics.jsonl"
        recs = read_metrics(path) if path.is_file() else []
        if not recs:
            continue
        shift = recs[0]["step"] <= last_step
        d_step, d_tok = (last_step, last_tokens) if shift else (0, 0)
        steps = [x["step"] + d_step for x in recs]
        tokens = [x.get("tokens", 0) + d_tok for x in recs]
        series.append({"label": r["name"], "steps": steps, "tokens": tokens, "loss": [x["loss"] for x in recs]})
        # An anneal is its own stage (kind anneal, or a second pretrain stage named so) or the last phase of a run.
        if r["kind"] == "anneal" or "anneal" in str(r["name"]).lower():
            marks.append({"label": f"{r['name']} starts", "step": steps[0], "tokens": tokens[0]})
        elif (i := next((i for i, x in enumerate(recs) if x.get("phase") == "anneal"), None)) is not None:
            marks.append({"label": f"{r['name']}: anneal", "step": steps[i], "tokens": tokens[i]})
        last_step, last_tokens = steps[-1], tokens[-1]
        tps = [x["tokens_per_s"] for x in recs if _number(x.get("tokens_per_s"))]
        rows.append([r["name"], len(recs), _si(recs[-1].get("tokens")), recs[0]["loss"], recs[-1]["loss"],
                     min(x["loss"] for x in recs), _si(sum(tps) / len(tps)) if tps else "-"])  # fmt: skip
    if not series:
        return None
    head = ["stage", "steps", "tokens", "first loss", "last loss", "lowest loss", "tokens/s"]
    return _img(plots.loss_curves(series, marks), "training loss vs steps and tokens") + _table(head, rows)


def posttrain_curves(run_dir: Path, records: list[dict[str, Any]]) -> str | None:
    runs = []
    for r in records:
        stage_dir = Path(r["dir"])
        # In the round's order (herd/posttrain/round.py STAGES), then any other run by its path.
        order = ("sft", "rm", "rs", "dpo", "ppo")
        found = sorted(stage_dir.rglob("metrics.jsonl"), key=lambda p: (
            p.parent.parent, order.index(p.parent.name) if p.parent.name in order else len(order), p))  # fmt: skip
        for path in found:
            recs = read_metrics(path)
            if recs:
                runs.append((f"{r['name']}/{path.parent.relative_to(stage_dir).as_posix()}", recs))
    if not runs:
        return None
    rows = [[name, len(recs), recs[0]["loss"], recs[-1]["loss"]] for name, recs in runs]
    head = ["run", "steps", "first loss", "last loss"]
    return _img(plots.run_grid(runs), "post-training losses") + _table(head, rows)


def posttrain_metrics(run_dir: Path, records: list[dict[str, Any]]) -> str | None:
    from herd.posttrain.round import EVAL_METRICS

    labels = dict(EVAL_METRICS)
    parts = []
    for r in records:
        stage_dir = Path(r["dir"])
        for path in sorted(stage_dir.rglob("round.json")):
            summary = _read_json(path)
            metrics = {str(k): v for k, v in (summary.get("metrics") or {}).items() if isinstance(v, dict)}
            names = list(metrics)
            keys = [k for k in dict.fromkeys(k for m in metrics.values() for k, v in m.items() if _number(v))]
            keys.sort(key=lambda k: (k not in labels, list(labels).index(k) if k in labels else 0))
            rows = []
            for key in keys:
                counts = (m["counts"].get(key) for m in metrics.values() if isinstance(m.get("counts"), dict))
                count = next(counts, None)
                rows.append([labels.get(key, key), count, *(metrics[n].get(key) for n in names)])
            where = path.parent.relative_to(stage_dir).as_posix()
            heading = r["name"] if where == "." else f"{r['name']}/{where}"
            out = f"<h3>{_e(heading)}</h3>" + _table(["held-out metric", "n", *names], rows)
            rm, rs = summary.get("rm") or {}, summary.get("rs") or {}
            if "held_out_accuracy_after" in rm:
                before, after = _fmt(rm.get("held_out_accuracy_before")), _fmt(rm["held_out_accuracy_after"])
                out += _note(f"reward model: held-out pairwise accuracy {before} -> {after} on "
                             f"{rm.get('held_out_pairs')} pairs")  # fmt: skip
            if "rm_checker_agreement" in rs:
                out += _note(f"rejection sampling: the reward model orders {_fmt(rs['rm_checker_agreement'])} of "
                             f"{rs.get('rm_checker_pairs')} sample pairs as the checkers do")  # fmt: skip
            parts.append(out)
    return "".join(parts) or None


def _scalar(value: Any) -> bool:
    return _number(value) or isinstance(value, str | bool) or value is None


def _columns(rows: Any) -> list[str]:
    return list(dict.fromkeys(k for row in rows for k, v in row.items() if _scalar(v)))


def _walk(obj: dict[str, Any], prefix: str, scalars: list, tables: list) -> None:
    """A free-form dict as its scalars (dotted keys) and its tables (name, head, rows): a list of dicts (or of
    lists) is a table of rows; a dict of dicts ({"no shield": {"violation_rate": ...}, ...}) one with a row per key."""
    for key, value in obj.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict) and value and all(isinstance(v, dict) for v in value.values()):
            head = _columns(value.values())
            tables.append((path, ["", *head], [[k, *(v.get(c) for c in head)] for k, v in value.items()]))
        elif isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            head = _columns(value)
            tables.append((path, head, [[v.get(c) for c in head] for v in value]))
        elif isinstance(value, list) and value and all(isinstance(v, list) for v in value):
            tables.append((path, [""] * max(map(len, value)), value))
        elif isinstance(value, dict):
            _walk(value, f"{path}.", scalars, tables)
        elif _scalar(value):
            scalars.append((path, value))


def safety(run_dir: Path, records: list[dict[str, Any]]) -> str | None:
    """guard.json is free-form (which guard, the safety eval's figures, maybe a "table" of rows): its scalars in one
    table, then each table it holds."""
    parts = []
    for r in records:
        path = Path(r["dir"]) / "guard.json"
        if not path.is_file():
            continue
        guard = _read_json(path)
        if not isinstance(guard, dict):
            raise TypeError(f"{path} holds a {type(guard).__name__}, not an object")
        scalars: list[tuple[str, Any]] = []
        tables: list[tuple[str, list[str], list[list[Any]]]] = []
        _walk(guard, "", scalars, tables)
        out = f"<h3>{_e(r['name'])}</h3>" + (_table(["", "value"], scalars) if scalars else "")
        parts.append(out + "".join(f"<h4>{_e(name)}</h4>" + _table(head, rows) for name, head, rows in tables))
    return "".join(parts) or None


def eval_card(run_dir: Path, records: list[dict[str, Any]]) -> str | None:
    parts = []
    for r in records:
        path = Path(r["dir"]) / "eval.json"
        if not path.is_file():
            continue
        card = _read_json(path)
        rows = []
        for model in card.get("models") or []:
            for kind, benchmarks in (model.get("results") or {}).items():
                for bench, entry in benchmarks.items():
                    metrics = entry.get("metrics") or {}
                    shown = ", ".join(f"{k} {_fmt(v)}" for k, v in metrics.items()
                                      if _number(v) and not k.endswith("_ci") and "stderr" not in k)  # fmt: skip
                    rows.append([model.get("name"), kind, bench, entry.get("model"), entry.get("items"), shown])
        index = Path(r["dir"]) / "index.html"
        link = f"<p>The full report card: {_link(run_dir, index, 'index.html')}.</p>" if index.is_file() else ""
        parts.append(f"<h3>{_e(r['name'])}</h3>" + link
                     + _table(["run", "kind", "benchmark", "model", "items", "metrics"], rows))  # fmt: skip
    return "".join(parts) or None


MAX_FILES = 200


def exports(run_dir: Path, records: list[dict[str, Any]]) -> str | None:
    parts = []
    for r in records:
        stage_dir = Path(r["dir"])
        if not stage_dir.is_dir():
            continue
        # Hidden names are atomic writes in flight or bookkeeping, not artifacts.
        files = sorted(p for p in stage_dir.rglob("*") if p.is_file() and not any(
            part.startswith(".") for part in p.relative_to(stage_dir).parts) and p.name != "stage.json")  # fmt: skip
        if not files:
            continue
        rows = [[_link(run_dir, p, p.relative_to(stage_dir).as_posix()), _size(p.stat().st_size)]
                for p in files[:MAX_FILES]]  # fmt: skip
        total = _size(sum(p.stat().st_size for p in files))
        more = _note(f"... and {len(files) - MAX_FILES} more files") if len(files) > MAX_FILES else ""
        parts.append(f"<h3>{_e(r['name'])}</h3>" + _note(f"{len(files)} files, {total}")
                     + _table(["file", "size"], rows) + more)  # fmt: skip
    return "".join(parts) or None


Section = Callable[[Path, list[dict[str, Any]]], "str | None"]
SECTIONS: tuple[tuple[str, str, tuple[str, ...] | None, Section], ...] = (
    ("overview", "Stages", None, overview),
    ("curation", "Curation funnel", ("curate",), curation),
    ("scaling", "Scaling plan", ("plan",), scaling),
    ("loss", "Pretraining loss", ("pretrain", "anneal"), loss_curves),
    ("posttrain-loss", "Post-training losses", ("posttrain",), posttrain_curves),
    ("posttrain", "Post-training metrics", ("posttrain",), posttrain_metrics),
    ("safety", "Safety", ("guard",), safety),
    ("eval", "Eval card", ("eval",), eval_card),
    ("exports", "Exports", ("export",), exports),
)
"""(anchor, heading, the stage kinds it reads (None: all), renderer), in page order."""

CSS = """body{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#222}
body{background:#fff}table{border-collapse:collapse;margin:.6em 0}
th,td{border:1px solid #ccc;padding:3px 8px;text-align:left;font-size:13px}
th{background:#eef2f8}img{max-width:100%;display:block;margin:.8em 0}h2{border-bottom:1px solid #ddd;margin-top:1.6em}
.note{color:#666;font-size:90%}.err{color:#a00}nav a{margin-right:1em}
.st{padding:1px 6px;border-radius:3px;color:#fff}.ran{background:#2e7d32}.reused{background:#1565c0}
.failed{background:#c62828}.pending{background:#888}"""


def render_report(run_dir: Path, records: list[dict]) -> str:
    """The page's HTML for the run in `run_dir`, whose stages are `records` (in recipe order)."""
    run_dir = Path(run_dir)
    body, nav = [], []
    for anchor, heading, kinds, render in SECTIONS:
        chosen = [r for r in records if kinds is None or r.get("kind") in kinds]
        if not chosen and kinds is not None:
            continue
        # The report is written after a failed stage too: a file one section cannot read is shown as such, and
        # the other sections still render.
        try:
            html_text = render(run_dir, chosen)
        except (OSError, ValueError, KeyError, TypeError, AttributeError, IndexError) as e:
            html_text = f"<p class=err>could not render this section: {_e(type(e).__name__)}: {_e(e)}</p>"
        if html_text is None:
            continue
        nav.append(f'<a href="#{anchor}">{_e(heading)}</a>')
        body.append(f'<section id="{anchor}"><h2>{_e(heading)}</h2>{html_text}</section>')
    title = f"herd run: {run_dir.name}"
    return (f"<!DOCTYPE html><html lang=en><head><meta charset=utf-8><title>{_e(title)}</title>"
            f"<style>{CSS}</style></head><body><h1>{_e(title)}</h1>"
            f"<p class=note>{_e(run_dir)} · written {_e(time.strftime('%Y-%m-%d %H:%M:%S'))} by herd run; "
            f"lineage in lineage.json</p><nav>{''.join(nav)}</nav>{''.join(body)}</body></html>\n")  # fmt: skip


def write_report(run_dir: Path, records: list[dict]) -> Path:
    """Write run_dir/report.html atomically (a reader never sees half a page); its path."""
    path = Path(run_dir) / "report.html"
    page = render_report(run_dir, records)
    with atomic_file(path, "w") as f:
        f.write(page)
    return path
