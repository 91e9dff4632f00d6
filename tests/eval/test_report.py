"""The report card (herd/eval/report.py): two models' hand-made results of every kind, a contamination report, a
scaling fit made by herd's own `fit_run`, and a post-training round summary -> eval.json and index.html."""

import base64
import json
import math
import re

import numpy as np

from herd.cli import main
from herd.eval.results import BenchmarkResult, ItemResult, write_result
from herd.scaling.fit import fit_run, sigmoid

EVIL = "<script>alert(1)</script>"


def _pairwise(win: float) -> dict:
    rates = {"n": 4, "preference": win, "win_rate": win, "tie_rate": 0.0, "loss_rate": 1 - win,
             "win_rate_ci": [max(win - 0.25, 0.0), min(win + 0.25, 1.0)]}  # fmt: skip
    return {"opponent": "base", "judge": "judge-x", **rates, "position_bias": 0.5,
            "per_category": {"coding": dict(rates), "reasoning": dict(rates, win_rate=1 - win)}}  # fmt: skip


def write_run(folder, model: str, score: float, *, task: str = "arc_easy") -> None:
    items = [ItemResult("q1", "What is two plus two?", score), ItemResult("q2", "Name a colour.", 1.0)]
    write_result(folder / "humaneval.json", BenchmarkResult("humaneval", model, "humaneval", {
        "pass@1": score, "pass@1_ci": [score - 0.1, score + 0.1],
        "pass@10": score + 0.2, "pass@10_ci": [score, score + 0.3],
        "n": 10, "problems": 164}, items))  # fmt: skip
    write_result(folder / f"{task}.json", BenchmarkResult(task, model, "harness", {
        "acc": score, "acc_stderr": 0.02, "acc_norm": score + 0.05,  # as herd/eval/harness.py keys lm-eval's metrics
        "exact_match,strict-match": 0.125, "exact_match_stderr,strict-match": 0.01}, items))  # fmt: skip
    write_result(folder / "pairwise.json", BenchmarkResult("pairwise", model, "pairwise", _pairwise(score), items))
    write_result(folder / "mystery.json", BenchmarkResult("mystery", model, "custom", {"score": 0.42}, items))


def write_contamination(folder) -> None:
    split = {"contaminated": 1, "clean": 1, "contaminated_share": 0.5, "score_all": 0.75, "score_clean": 0.5,
             "score_contaminated": 1.0, "estimated_gain": 0.25, "contaminated_minus_clean": 0.5}  # fmt: skip
    report = {"version": 1, "n": 8, "thresholds": [0.2, 0.5, 0.8], "default_threshold": 0.5, "benchmarks": [
        {"benchmark": "arc_easy", "model": "model-a", "kind": "harness", "items": 2,
         "thresholds": {"0.2": split, "0.5": split, "0.8": dict(split, contaminated_share=0.0)},
         "item_fractions": []}]}  # fmt: skip
    (folder / "contamination.json").write_text(json.dumps(report))


def make_fit(folder) -> None:
    """A sweep manifest with a Chinchilla-shaped loss (3 budgets x 5 sizes, one holdout run), fitted by herd."""

    def run(c: float, n: float, holdout: bool = False) -> dict:
        loss = 1.7 + 400 / n**0.34 + 410 / (c / (6 * n)) ** 0.28
        nll = 0.9 * loss - 0.8
        acc = float(sigmoid(nll, 0.25, 0.95, 1.6, 4.0))
        return {"name": f"b{c:.0e}-n{n:.3g}", "budget": c, "holdout": holdout, "n": n, "flops_per_token": 6 * n,
                "status": "done", "val_loss": loss, "task_nll": nll, "task_acc": acc}  # fmt: skip

    def n_opt(c: float) -> float:  # the loss's compute-optimal size at C = 6 N D
        return (0.34 * 400 / (0.28 * 410)) ** (1 / 0.62) * (c / 6) ** (0.28 / 0.62)

    runs = [run(c, float(n)) for c in (1e17, 1e18, 1e19, 1e20) for n in np.geomspace(n_opt(c) / 16, n_opt(c) * 16, 5)]
    runs.append(run(1e21, n_opt(1e21), holdout=True))
    folder.mkdir()
    manifest = {"version": 1, "task": {"name": "continuation-4way", "chance": 0.25}, "runs": runs}
    (folder / "manifest.json").write_text(json.dumps(manifest))
    fit_run(folder)


def write_round(folder) -> None:
    folder.mkdir()
    counts = {"tool_call_valid": 8, "task_accuracy": 8}
    metrics = {name: {"tool_call_valid": v, "task_accuracy": v / 2, "counts": counts}
               for name, v in (("start", 0.25), ("sft", 0.5), ("dpo", 0.625))}  # fmt: skip
    summary = {"metrics": metrics, "seconds": {}, "total_s": 1.0,
               "rm": {"held_out_pairs": 12, "held_out_accuracy_before": 0.5, "held_out_accuracy_after": 0.75},
               "dpo": {"held_out_pairs": 6, "held_out_before": {"eval_reward_accuracy": 0.5},
                       "held_out_after": {"eval_reward_accuracy": 0.8333}},
               "rs": {"rm_checker_agreement": 0.7, "rm_checker_pairs": 20}, "synth": {}}  # fmt: skip
    (folder / "round.json").write_text(json.dumps(summary))


def test_report_card_of_two_models(tmp_path, capsys) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    write_run(a, "model-a", 0.5)
    write_run(b, EVIL, 0.25, task="x$\\frac{$")  # mathtext would choke on this label if it parsed it
    write_contamination(a)
    make_fit(tmp_path / "sweep")
    write_round(tmp_path / "round")
    out = tmp_path / "card"
    argv = ["eval", "report", "--run", f"model-a={a}", "--run", f"{EVIL}={b}", "--scaling", str(tmp_path / "sweep"),
            "--posttrain", str(tmp_path / "round"), "--out", str(out)]  # fmt: skip
    assert main(argv) == 0, capsys.readouterr().err
    card = json.loads((out / "eval.json").read_text())
    assert card["version"] == 1 and [m["name"] for m in card["models"]] == ["model-a", EVIL]
    first, second = card["models"]
    assert first["results"]["humaneval"]["humaneval"]["metrics"]["pass@1"] == 0.5
    assert first["results"]["harness"]["arc_easy"]["metrics"]["acc"] == 0.5
    assert second["results"]["harness"]["x$\\frac{$"]["mean_score"] == (0.25 + 1.0) / 2
    assert second["results"]["pairwise"]["pairwise"]["metrics"]["per_category"]["reasoning"]["win_rate"] == 0.75
    assert first["contamination"][0]["estimated_gain"] == 0.25 and second["contamination"] is None
    holdout = card["scaling"]["holdout"]
    assert len(holdout) == 1 and 0.25 <= holdout[0]["acc_pred"] <= 0.95 and math.isfinite(holdout[0]["task_acc"])
    assert card["scaling"]["images"] == ["isoflop.png", "laws.png", "downstream.png"]
    assert card["posttrain"]["metrics"]["dpo"]["tool_call_valid"] == 0.625
    held = {(h["stage"], h["metric"]): (h["before"], h["after"]) for h in card["posttrain"]["held_out"]}
    assert held[("rm", "held-out pairwise accuracy")] == (0.5, 0.75)
    assert held[("dpo", "eval_reward_accuracy")] == (0.5, 0.8333)

    page = (out / "index.html").read_text()
    for section in ("humaneval", "harness", "pairwise", "contamination", "scaling", "posttrain", "other"):
        assert f'id="{section}"' in page, section
    assert "model-a" in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page and "<script" not in page
    assert "0.500 [0.400, 0.600]" in page and "0.500 ± 0.020" in page and "mystery" in page
    assert "<td>exact_match (strict-match)</td><td>0.125 ± 0.010</td>" in page
    images = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert len(images) == 6  # pass@k, harness, win rates; the fit's three plots
    assert all(base64.b64decode(img)[:8] == b"\x89PNG\r\n\x1a\n" for img in images)
    assert "Not shown" not in page


def test_missing_sections_and_bad_input(tmp_path, capsys) -> None:
    write_run(tmp_path / "a", "model-a", 0.5)
    assert main(["eval", "report", "--run", str(tmp_path / "a"), "--out", str(tmp_path / "card")]) == 0
    page = (tmp_path / "card" / "index.html").read_text()
    assert "Not shown" in page and 'id="scaling"' not in page and 'id="contamination"' not in page
    assert json.loads((tmp_path / "card" / "eval.json").read_text())["models"][0]["name"] == "a"
    capsys.readouterr()
    (tmp_path / "a" / "contamination.json").write_text('{"benchmarks": 3}')
    assert main(["eval", "report", "--run", f"a={tmp_path / 'a'}", "--out", str(tmp_path / "card")]) == 1
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "contamination.json" in err and "benchmarks" in err
    assert main(["eval", "report", "--run", f"x={tmp_path / 'nowhere'}", "--out", str(tmp_path / "card")]) == 1
    assert "nowhere" in capsys.readouterr().err
