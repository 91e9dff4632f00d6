"""IsoFLOP fits, compute-optimal laws and the two-step downstream predictor (herd/scaling/fit.py)."""

import json
import math
import re

import numpy as np
import pytest

from herd.scaling.fit import ScalingError, fit_run, fit_sweep, format_fit, predict, sigmoid

# A Chinchilla-shaped loss L(N, D) = E + A / N^alpha + B / D^beta with C = 6 N D. Its compute-optimal model size
# grows as C^(beta / (alpha + beta)) and its tokens as C^(alpha / (alpha + beta)).
E, A, ALPHA, B, BETA = 1.7, 400.0, 0.34, 410.0, 0.28
N_EXPONENT = BETA / (ALPHA + BETA)
D_EXPONENT = ALPHA / (ALPHA + BETA)
BUDGETS = [float(c) for c in np.geomspace(1e17, 1e22, 6)]
# Accuracy from task NLL: 0.25 (chance, 4 choices) at high NLL up to 0.95, halfway at NLL 1.6.
SIG = {"lower": 0.25, "upper": 0.95, "midpoint": 1.6, "slope": 4.0}


def true_n_opt(c: float) -> float:
    g = (ALPHA * A / (BETA * B)) ** (1 / (ALPHA + BETA))
    return g * (c / 6) ** N_EXPONENT


def loss(n: float, d: float) -> float:
    return E + A / n**ALPHA + B / d**BETA


def task_nll(val_loss: float) -> float:
    return 0.9 * val_loss - 0.8


def make_run(c: float, n: float, *, val_loss: float, acc_noise: float = 0.0, holdout: bool = False) -> dict:
    """One manifest run (MANIFEST_SCHEMA.tmp.md) of a model with n law parameters, FLOPs per token 6n."""
    nll = task_nll(val_loss)
    return {
        "name": f"b{c:.2e}-n{n:.4g}",
        "budget": c,
        "holdout": holdout,
        "dim": 64,
        "n_layers": 2,
        "n_heads": 4,
        "n_kv_heads": 2,
        "params": int(n * 1.1),
        "n": n,
        "flops_per_token": 6 * n,
        "tokens": c / (6 * n),
        "flops": c,
        "steps": 100,
        "status": "done",
        "val_loss": val_loss,
        "task_nll": nll,
        "task_acc": float(sigmoid(nll, **SIG)) + acc_noise,
        "seconds": 1.0,
    }


def manifest(
    budgets: list[float] = BUDGETS, *, sizes: int = 11, span: float = 4.0, noise: float = 0.01, seed: int = 0
) -> dict:
    """A sweep over `budgets`, each with `sizes` log-spaced models from n*/span^2 to n*.span^2 around an off-centre
    guess n* of the optimum, losses with multiplicative noise."""
    rng = np.random.default_rng(seed)
    runs = []
    for c in budgets:
        centre = true_n_opt(c) * math.exp(rng.uniform(-0.4, 0.4))
        for n in np.geomspace(centre / span**2, centre * span**2, sizes):
            val = loss(n, c / (6 * n)) * (1 + noise * rng.standard_normal())
            runs.append(make_run(c, float(n), val_loss=val, acc_noise=0.01 * rng.standard_normal()))
    return {
        "version": 1,
        "flops_formula": "synthetic: 6 n per token",
        "seq_len": 256,
        "config": {},
        "task": {"name": "continuation-4way", "items": 400, "chance": 0.25},
        "runs": runs,
    }


def test_fit_recovers_compute_optimal_exponents_of_a_known_law() -> None:
    fit = fit_sweep(manifest())
    n_law, d_law = fit["laws"]["n_opt"], fit["laws"]["tokens_opt"]
    assert n_law["alpha"] == pytest.approx(N_EXPONENT, rel=0.05)
    assert d_law["alpha"] == pytest.approx(D_EXPONENT, rel=0.05)
    # FLOPs per token are exactly 6n here, so n_opt x D_opt = C / 6 at every budget and the exponents sum to 1.
    assert n_law["alpha"] + d_law["alpha"] == pytest.approx(1.0, abs=1e-9)
    for law in (n_law, d_law, fit["laws"]["loss_opt"], fit["laws"]["task_nll"]):
        assert 0 < law["alpha_se"] < 0.05
        assert 0 < law["alpha_boot_se"] < 0.1
    assert fit["warnings"] == []
    assert [b["budget"] for b in fit["budgets"]] == BUDGETS
    # The per-budget optima sit near the analytic ones (noise moves each a little).
    for b in fit["budgets"]:
        assert b["n_opt"] == pytest.approx(true_n_opt(b["budget"]), rel=0.35)
        assert b["tokens_opt"] == pytest.approx(b["budget"] / (6 * b["n_opt"]))
    # Loss and task NLL fall with compute.
    assert fit["laws"]["loss_opt"]["alpha"] < 0 and fit["laws"]["task_nll"]["alpha"] < 0


def test_noiseless_sweep_recovers_exponents_almost_exactly() -> None:
    fit = fit_sweep(manifest(noise=0.0), bootstrap=0)
    # What remains is the parabola's approximation of a curve that is not one.
    assert fit["laws"]["n_opt"]["alpha"] == pytest.approx(N_EXPONENT, rel=0.005)
    assert fit["laws"]["n_opt"]["alpha_boot_se"] is None


def test_sigmoid_fit_recovers_the_midpoint_of_accuracy_vs_nll() -> None:
    fit = fit_sweep(manifest(), bootstrap=0)
    sig = fit["sigmoid"]
    assert sig["points"] == 66
    assert sig["midpoint"] == pytest.approx(SIG["midpoint"], abs=0.05)
    assert sig["lower"] == pytest.approx(SIG["lower"], abs=0.02)
    assert sig["upper"] == pytest.approx(SIG["upper"], abs=0.05)
    assert sig["slope"] == pytest.approx(SIG["slope"], rel=0.2)
    assert all(v > 0 for v in sig["se"].values())
    assert sig["midpoint"] == pytest.approx(SIG["midpoint"], abs=3 * sig["se"]["midpoint"])


def test_two_step_prediction_matches_the_truth_inside_the_sweep() -> None:
    fit = fit_sweep(manifest(), bootstrap=0)
    c = 1e19
    p = predict(fit, c)
    n = true_n_opt(c)
    true_loss = loss(n, c / (6 * n))
    assert p["n"] == pytest.approx(n, rel=0.3)
    assert p["loss"] == pytest.approx(true_loss, rel=0.02)
    assert p["nll"] == pytest.approx(task_nll(true_loss), rel=0.03)
    assert p["accuracy"] == pytest.approx(float(sigmoid(task_nll(true_loss), **SIG)), abs=0.03)
    for key in ("n", "tokens", "loss", "nll", "accuracy"):
        lo, hi = p["band"][key]
        assert lo < p[key] < hi, key


def test_budget_with_fewer_than_three_sizes_is_skipped_with_a_warning() -> None:
    m = manifest(noise=0.0)
    m["runs"] += [make_run(3e20, n, val_loss=loss(n, 3e20 / (6 * n))) for n in (1e8, 1e9)]
    fit = fit_sweep(m, bootstrap=0)
    assert [s["budget"] for s in fit["skipped"]] == [3e20]
    assert any(w.startswith("budget 3e+20 skipped") and "2 distinct model size" in w for w in fit["warnings"])
    assert 3e20 not in [b["budget"] for b in fit["budgets"]]


@pytest.mark.parametrize(
    ("factors", "side"), [((1 / 64, 1 / 32, 1 / 16, 1 / 8), "larger"), ((8, 16, 32, 64), "smaller")]
)
def test_minimum_at_the_edge_of_a_budget_warns_naming_it(factors: tuple[float, ...], side: str) -> None:
    m = manifest(noise=0.0)
    c = 3e20
    m["runs"] += [
        make_run(c, true_n_opt(c) * f, val_loss=loss(true_n_opt(c) * f, c / (6 * true_n_opt(c) * f))) for f in factors
    ]
    fit = fit_sweep(m, bootstrap=0)
    (edge,) = [w for w in fit["warnings"] if w.startswith("budget 3e+20:")]
    assert f"extend the sweep toward {side} models" in edge
    (b,) = [b for b in fit["budgets"] if b["budget"] == c]
    assert b["edge"] == side


def test_parabola_opening_downward_is_skipped_with_a_warning() -> None:
    m = manifest(noise=0.0)
    m["runs"] += [make_run(3e20, n, val_loss=v) for n, v in ((1e8, 3.0), (1e9, 3.2), (1e10, 3.0))]
    fit = fit_sweep(m, bootstrap=0)
    assert any(w.startswith("budget 3e+20 skipped") and "opens downward" in w for w in fit["warnings"])
    assert fit["skipped"][0]["budget"] == 3e20


def test_nan_and_inf_losses_are_dropped_with_a_warning_naming_the_runs() -> None:
    m = manifest(noise=0.0)
    m["runs"][3]["val_loss"] = float("nan")
    m["runs"][20]["val_loss"] = float("inf")
    m["runs"][30]["val_loss"] = None
    names = [m["runs"][i]["name"] for i in (3, 20, 30)]
    fit = fit_sweep(m, bootstrap=0)
    (w,) = [w for w in fit["warnings"] if "NaN" in w]
    assert all(name in w for name in names)
    assert fit["runs_used"] == len(m["runs"]) - 3
    assert fit["laws"]["n_opt"]["alpha"] == pytest.approx(N_EXPONENT, rel=0.01)


def test_fewer_than_two_usable_budgets_raise_a_one_line_error() -> None:
    m = manifest(budgets=BUDGETS[:2], noise=0.0)
    m["runs"] = [r for r in m["runs"] if r["budget"] == BUDGETS[0] or r["n"] < m["runs"][-10]["n"]]
    with pytest.raises(ScalingError, match=r"1 usable budget\(s\), need at least 2") as e:
        fit_sweep(m)
    assert "\n" not in str(e.value)
    with pytest.raises(ScalingError, match="no done runs"):
        fit_sweep({"version": 1, "runs": []})


def test_two_budgets_fit_without_standard_errors_and_say_so() -> None:
    fit = fit_sweep(manifest(budgets=BUDGETS[:2], noise=0.0), bootstrap=0)
    assert fit["laws"]["n_opt"]["alpha_se"] is None
    assert any("only 2 usable budgets" in w for w in fit["warnings"])
    assert predict(fit, 1e21)["band"]["n"] is None


def test_malformed_manifest_names_the_run_and_field() -> None:
    m = manifest(budgets=BUDGETS[:2])
    m["runs"][1]["n"] = "big"
    with pytest.raises(ScalingError, match=re.escape(f"run {m['runs'][1]['name']}: field 'n'")):
        fit_sweep(m)


def test_fit_run_writes_fit_json_and_plots_and_checks_the_holdout(tmp_path) -> None:
    m = manifest()
    m["runs"][5]["status"] = "failed"
    m["runs"][5]["error"] = "out of memory"
    c = 1e23  # ten times the largest fitted budget
    n = true_n_opt(c)
    m["runs"].append(make_run(c, n, val_loss=loss(n, c / (6 * n)), holdout=True))
    (tmp_path / "manifest.json").write_text(json.dumps(m))
    fit = fit_run(tmp_path)
    for name in ("fit.json", "isoflop.png", "laws.png", "downstream.png"):
        assert (tmp_path / name).is_file()
        if name.endswith(".png"):
            assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((tmp_path / "fit.json").read_text()) == fit
    assert any(m["runs"][5]["name"] in w and "not done" in w for w in fit["warnings"])
    (h,) = fit["holdout"]
    assert h["budget"] == c
    # One decade beyond the sweep, the loss law (no irreducible term) still lands within 2% of the truth.
    assert h["loss_opt_pred"] == pytest.approx(h["val_loss"], rel=0.02)
    assert h["loss_at_n_pred"] == pytest.approx(h["val_loss"], rel=0.02)
    assert h["acc_pred"] == pytest.approx(h["task_acc"], abs=0.05)
    assert h["acc_from_measured_nll"] == pytest.approx(h["task_acc"], abs=0.02)
    text = format_fit(fit)
    assert "holdout" in text and "n_opt" in text and "warning:" in text
    out = tmp_path / "elsewhere"
    fit_run(tmp_path, out)
    assert sorted(p.name for p in out.iterdir()) == ["downstream.png", "fit.json", "isoflop.png", "laws.png"]


def test_fit_run_without_a_valid_manifest_raises_one_line(tmp_path) -> None:
    with pytest.raises(ScalingError, match="no sweep manifest"):
        fit_run(tmp_path)
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(ScalingError, match="not valid JSON") as e:
        fit_run(tmp_path)
    assert "\n" not in str(e.value)


def test_accuracy_stuck_at_chance_warns_that_the_sigmoid_is_unconstrained() -> None:
    m = manifest(budgets=BUDGETS[:4], sizes=7)
    rng = np.random.default_rng(1)
    for r in m["runs"]:
        r["task_acc"] = 0.25 + 0.02 * rng.standard_normal()
    fit = fit_sweep(m, bootstrap=0)
    assert any("sigmoid is poorly constrained" in w or "upper <= lower" in w for w in fit["warnings"])


def test_three_budgets_fall_back_to_a_pure_power_loss_law_with_a_warning() -> None:
    fit = fit_sweep(manifest(budgets=BUDGETS[:3]), bootstrap=0)
    assert fit["laws"]["loss_opt"]["form"] == "power" and fit["laws"]["loss_opt"]["E"] == 0
    assert any(w.startswith("loss law: no irreducible term") for w in fit["warnings"])
    full = fit_sweep(manifest(), bootstrap=0)["laws"]["loss_opt"]
    assert full["form"] == "offset_power"
    assert full["E"] == pytest.approx(E, abs=3 * full["E_se"])
