"""report.html of `herd run` (herd/recipe/report.py): untrusted names and file contents are escaped, an unreadable
file costs only its own section, a plan with a scaling fit shows the fit, and the Chromium check used on the real
report (tests/recipe/test_run.py, over a whole micro recipe) does catch console errors and blank pages."""

import hashlib
import json
import re
from pathlib import Path

from browser import colours, needs_chromium, render
from PIL import Image

from herd.recipe.report import render_report

EVIL = "<script>alert(1)</script>"


def _record(name: str, kind: str, folder: Path, seconds: float | None, status: str = "ran", **summary) -> dict:
    return {"name": name, "kind": kind, "dir": str(folder), "status": status, "seconds": seconds,
            "key": hashlib.sha256(name.encode()).hexdigest(), "summary": summary}  # fmt: skip


def _sweep_manifest() -> dict:
    """A Chinchilla-shaped loss over 3 budgets x 5 sizes, as `herd scaling sweep` would record it."""
    runs = []
    for c in (1e15, 1e16, 1e17):
        n_opt = (0.34 * 400 / (0.28 * 410)) ** (1 / 0.62) * (c / 6) ** (0.28 / 0.62)
        for f in (0.25, 0.5, 1.0, 2.0, 4.0):
            n = n_opt * f
            loss = 1.7 + 400 / n**0.34 + 410 / (c / (6 * n)) ** 0.28
            runs.append({"name": f"b{c:.0e}-n{n:.3g}", "budget": c, "holdout": False, "n": n,
                         "flops_per_token": 6 * n, "status": "done", "val_loss": loss})  # fmt: skip
    return {"runs": runs, "seq_len": 64}


def _images(page: str) -> list[Image.Image]:
    import base64
    import io

    found = re.findall(r'src="data:image/png;base64,([^"]+)"', page)
    return [Image.open(io.BytesIO(base64.b64decode(b))) for b in found]


@needs_chromium
def test_the_chromium_check_catches_console_errors_and_blank_pages(tmp_path) -> None:
    broken = tmp_path / "broken.html"
    broken.write_text("<!DOCTYPE html><html><body><h1>broken</h1><script>console.error('deliberate');"
                      "not_defined_anywhere();</script></body></html>")  # fmt: skip
    console = render(broken, tmp_path / "broken.png")
    assert any('"deliberate"' in line for line in console), console
    assert any("Uncaught ReferenceError: not_defined_anywhere" in line for line in console), console
    blank = tmp_path / "blank.html"
    blank.write_text("<!DOCTYPE html><html><body style='background:#fff'></body></html>")
    assert render(blank, tmp_path / "blank.png") == []
    assert len(colours(tmp_path / "blank.png")) == 1


def test_names_and_file_contents_are_escaped(tmp_path) -> None:
    guard = tmp_path / "guard"
    guard.mkdir()
    (guard / "guard.json").write_text(json.dumps({"model": "<img src=x onerror=alert(1)>",
                                                  "table": [{"<b>category</b>": EVIL, "rate": 1}]}))  # fmt: skip
    records = [_record(EVIL, EVIL, guard, 1.0, note=EVIL), _record("g", "guard", guard, None, status="<i>odd</i>")]
    page = render_report(tmp_path, records)
    assert "<script>" not in page and "<img src=x" not in page and "<b>" not in page and "<i>" not in page
    assert page.count("&lt;script&gt;alert(1)&lt;/script&gt;") == 4  # stage name, kind, summary, a table cell
    assert "&lt;img src=x onerror=alert(1)&gt;" in page and "&lt;b&gt;category&lt;/b&gt;" in page


def test_a_section_whose_file_is_unreadable_says_so_and_the_rest_still_render(tmp_path) -> None:
    for name, text in (("plan", "{not json"), ("pretrain", '{"step": 1, "loss": 3.0, "tokens": 64}\n{"step": 2, "lo')):
        (tmp_path / name).mkdir()
        (tmp_path / name / ("plan.json" if name == "plan" else "metrics.jsonl")).write_text(text)
    records = [_record("plan", "plan", tmp_path / "plan", 0.1), _record("pretrain", "pretrain", tmp_path / "pretrain",
               1), _record("eval", "eval", tmp_path / "eval", None, status="pending")]  # fmt: skip
    page = render_report(tmp_path, records)
    assert "could not render this section: JSONDecodeError" in page
    assert '<section id="loss">' in page and "<td>pretrain</td><td>1</td>" in page  # the torn line is left out
    assert '<section id="eval">' not in page  # a pending stage with no files has no section


def test_a_plan_with_a_scaling_fit_shows_the_fit(tmp_path) -> None:
    from herd.scaling.fit import fit_run
    from herd.scaling.plan import make_plan

    plan = tmp_path / "plan"
    plan.mkdir()
    (plan / "manifest.json").write_text(json.dumps(_sweep_manifest()))
    fit_run(plan)
    (plan / "plan.json").write_text(json.dumps(make_plan(flops=1e18, law=str(plan / "fit.json"))))
    page = render_report(tmp_path, [_record("plan", "plan", plan, 0.5)])
    assert '<section id="scaling">' in page and "could not render" not in page
    assert len(_images(page)) == 1  # the fit's plot
