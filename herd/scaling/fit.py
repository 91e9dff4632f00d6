"""IsoFLOP fits: per-budget parabolas, compute-optimal power laws, and the two-step downstream predictor.

The method follows the Llama 3 paper, section 3.2.1:

1. Per FLOP budget C, least squares fits loss = a x^2 + b x + c with x = ln n, where n is the manifest's "n"
   (non-embedding matmul parameters). Then n_opt = exp(-b / 2a) and loss_opt is the parabola's minimum. The tokens
   at the optimum are D_opt = C / flops_per_token(n_opt). flops_per_token is interpolated piecewise-linearly in
   log-log space between that budget's runs (beyond the sweep, the end segment is extended), so D_opt follows
   herd's FLOPs formula, not 6N.
2. Across budgets, power laws y = A C^alpha are fitted by least squares on (ln C, ln y) for n_opt and D_opt. Loss
   and task NLL level off towards an irreducible value, so loss_opt and the task NLL get y = E + A C^alpha
   (bounded curve_fit, 0 <= E < min y) when 4+ budgets pin the floor down; otherwise, with a warning, a pure power
   law, which undershoots when extrapolated far. Standard errors come from the fit covariance. A bootstrap over
   runs (resampling each budget's runs with replacement) gives a second estimate of each exponent.
3. Downstream prediction has two steps. First, the task NLL at each budget's optimum: the parabola of task_nll vs
   ln n over the same runs, evaluated at ln n_opt, gives the law nll(C). Second, accuracy vs NLL is a
   4-parameter sigmoid fitted on every done, non-holdout run's (task_nll, task_acc).

Holdout runs never enter a fit. Problems in the data are returned in fit["warnings"] (never emitted through
`warnings.warn`). A fit that cannot be made raises ScalingError.
"""

from __future__ import annotations

import json
import math
import os
import warnings as pywarnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, SupportsFloat, overload

import numpy as np
from scipy.optimize import OptimizeWarning, curve_fit
from scipy.special import expit

from herd.errors import HerdError
from herd.fileio import atomic_file

if TYPE_CHECKING:
    from matplotlib.figure import Figure

SIGMOID_PARAMS = ("lower", "upper", "midpoint", "slope")
LAWS = ("n_opt", "tokens_opt", "loss_opt", "task_nll", "curvature")
BOOTSTRAP_SAMPLES = 100
MIN_SIGMOID_POINTS = 5
"""Four parameters plus one degree of freedom for the residual."""


class ScalingError(HerdError):
    """A sweep manifest or a fit that cannot be used: missing file, bad field, too few usable budgets."""


class _Skip(Exception):
    """A budget that cannot give an optimum; the message says why."""


def _curve_fit(*args: object, **kwargs: object) -> tuple[np.ndarray, np.ndarray]:
    """scipy's curve_fit without its OptimizeWarning: callers check the covariance and report it themselves."""
    with pywarnings.catch_warnings():
        pywarnings.simplefilter("ignore", OptimizeWarning)
        return curve_fit(*args, **kwargs)


def _label(budget: float) -> str:
    return f"{budget:.3g}"


def _num(value: SupportsFloat | str | None) -> float:
    return float("nan") if value is None else float(value)


@overload
def _clean(obj: dict) -> dict: ...
@overload
def _clean(obj: list | tuple) -> list: ...
@overload
def _clean(obj: object) -> object: ...
def _clean(obj: object) -> object:
    """Plain JSON types, with NaN and inf as None (JSON has no NaN)."""
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_clean(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _clean(obj.tolist())
    if isinstance(obj, bool | np.bool_):
        return bool(obj)
    if isinstance(obj, int | np.integer):
        return int(obj)
    if isinstance(obj, float | np.floating):
        return float(obj) if math.isfinite(obj) else None
    return obj


def _runs(manifest: dict, warnings: list[str]) -> tuple[list[dict], list[dict]]:
    """(runs to fit, holdout runs): both done; runs to fit also have a finite val_loss."""
    if not isinstance(manifest, dict) or not isinstance(manifest.get("runs"), list):
        raise ScalingError("sweep manifest: no 'runs' list")
    if manifest.get("version", 1) != 1:
        raise ScalingError(f"sweep manifest: version {manifest.get('version')!r} is not supported (expected 1)")
    fit, holdout, failed, nonfinite = [], [], [], []
    for i, run in enumerate(manifest["runs"]):
        name = run.get("name", f"#{i}") if isinstance(run, dict) else f"#{i}"
        if not isinstance(run, dict):
            raise ScalingError(f"sweep manifest: run {name} is not an object")
        if run.get("status") != "done":
            failed.append(name)
            continue
        for key in ("budget", "n", "flops_per_token"):
            value = run.get(key)
            if not isinstance(value, int | float) or isinstance(value, bool) or not value > 0:
                raise ScalingError(
                    f"sweep manifest: run {name}: field {key!r} must be a positive number, got {value!r}"
                )
        if run.get("holdout", False):
            holdout.append(run)
        elif not math.isfinite(_num(run.get("val_loss"))):
            nonfinite.append(name)
        else:
            fit.append(run)
    if failed:
        warnings.append(f"{len(failed)} run(s) not done, not used: {', '.join(failed)}")
    if nonfinite:
        warnings.append(f"run(s) with a NaN/inf/missing val_loss dropped: {', '.join(nonfinite)}")
    return fit, holdout


def _parabola(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray | None, float]:
    """Least squares y = a (x - xm)^2 + b (x - xm) + c; centring x keeps the normal equations well conditioned.

    Returns (a, b, c), their covariance (None without a residual degree of freedom) and xm.
    """
    xm = float(x.mean())
    design = np.stack([(x - xm) ** 2, x - xm, np.ones_like(x)], axis=1)
    coef = np.linalg.lstsq(design, y, rcond=None)[0]
    cov = None
    if len(x) > 3:
        resid = y - design @ coef
        cov = float(resid @ resid) / (len(x) - 3) * np.linalg.inv(design.T @ design)
    return coef, cov, xm


def _uncentred(coef: np.ndarray, xm: float) -> list[float]:
    """(a, b, c) of a x^2 + b x + c from the centred fit, for plotting and evaluation anywhere."""
    a, b, c = (float(v) for v in coef)
    return [a, b - 2 * a * xm, a * xm * xm - b * xm + c]


def _loglog_interp(n: float, ns: np.ndarray, values: np.ndarray) -> float:
    """values(n), piecewise linear in (ln n, ln value); the end segments are extended beyond the sweep."""
    lx, inverse = np.unique(np.log(ns), return_inverse=True)
    ly = np.bincount(inverse, weights=np.log(values)) / np.bincount(inverse)
    x = math.log(n)
    if len(lx) == 1:
        return float(math.exp(ly[0]))
    i = int(np.clip(np.searchsorted(lx, x) - 1, 0, len(lx) - 2))
    slope = (ly[i + 1] - ly[i]) / (lx[i + 1] - lx[i])
    return float(math.exp(ly[i] + slope * (x - lx[i])))


def _fit_budget(budget: float, runs: list[dict]) -> dict:
    """The optimum of one IsoFLOP curve; raises _Skip when there is none."""
    n = np.array([float(r["n"]) for r in runs])
    if len(np.unique(n)) < 3:
        raise _Skip(f"only {len(np.unique(n))} distinct model size(s) (a parabola needs 3)")
    x, loss = np.log(n), np.array([float(r["val_loss"]) for r in runs])
    coef, cov, xm = _parabola(x, loss)
    a, b, c = (float(v) for v in coef)
    if a <= 0:
        raise _Skip(f"the loss parabola opens downward (a={a:.3g}), so it has no minimum")
    x_opt = xm - b / (2 * a)
    n_opt = math.exp(x_opt)
    x_opt_se = None
    if cov is not None:
        # Delta method on x_opt = xm - b / 2a.
        grad = np.array([b / (2 * a * a), -1 / (2 * a), 0.0])
        x_opt_se = math.sqrt(max(float(grad @ cov @ grad), 0.0))
    fpt = _loglog_interp(n_opt, n, np.array([float(r["flops_per_token"]) for r in runs]))
    out = {
        "budget": budget,
        "runs": len(runs),
        "sizes": len(np.unique(n)),
        "n_min": float(n.min()),
        "n_max": float(n.max()),
        "coef": _uncentred(coef, xm),
        "n_opt": n_opt,
        "ln_n_opt_se": x_opt_se,
        "loss_opt": c - b * b / (4 * a),
        "flops_per_token_opt": fpt,
        "tokens_opt": budget / fpt,
        "edge": "smaller" if n_opt <= n.min() else "larger" if n_opt >= n.max() else None,
        "task_nll_opt": None,
        "task_coef": None,
    }
    task = [(xi, _num(r.get("task_nll"))) for xi, r in zip(x, runs, strict=True)]
    task = [(xi, v) for xi, v in task if math.isfinite(v) and v > 0]
    if len({xi for xi, _ in task}) >= 3:
        tx, ty = np.array([t[0] for t in task]), np.array([t[1] for t in task])
        tcoef, _, txm = _parabola(tx, ty)
        nll = float(np.polyval(tcoef, x_opt - txm))
        if nll > 0:
            out["task_nll_opt"] = nll
            out["task_coef"] = _uncentred(tcoef, txm)
    return out


def _law(form: str, c: np.ndarray, y: np.ndarray, params: np.ndarray, cov: np.ndarray | None, ln_c0: float) -> dict:
    """The JSON form of y = E + exp(log_y0 + alpha (ln C - ln_c0)) = E + A C^alpha (E = 0 for a pure power law)."""
    e, log_y0, alpha = (float(params[0]), *params[1:]) if form == "offset_power" else (0.0, *params)
    law = {
        "form": form,
        "E": e,
        "A": math.exp(log_y0 - alpha * ln_c0),
        "alpha": float(alpha),
        "ln_c0": ln_c0,
        "log_y0": float(log_y0),
        "cov": cov.tolist() if cov is not None else None,
        "alpha_se": math.sqrt(cov[-1, -1]) if cov is not None else None,
        "E_se": math.sqrt(cov[0, 0]) if cov is not None and form == "offset_power" else None,
        "points": len(c),
        "alpha_boot_se": None,
    }
    resid = y - np.array([_law_value(law, ci) for ci in c])
    total = float(((y - y.mean()) ** 2).sum())
    law["r2"] = 1 - float(resid @ resid) / total if total > 0 else None
    return law


def _power_law(c: np.ndarray, y: np.ndarray) -> dict:
    """y = A C^alpha by least squares on (ln C, ln y); ln C is centred so the covariance is well conditioned."""
    if not (np.all(c > 0) and np.all(y > 0)):
        raise ValueError("a power law needs positive values")  # e.g. a resampled parabola's negative optimum
    lx, ly = np.log(c), np.log(y)
    ln_c0 = float(lx.mean())
    design = np.stack([np.ones_like(lx), lx - ln_c0], axis=1)
    coef = np.linalg.lstsq(design, ly, rcond=None)[0]
    resid = ly - design @ coef
    dof = len(lx) - 2
    cov = float(resid @ resid) / dof * np.linalg.inv(design.T @ design) if dof > 0 else None
    return _law("power", c, y, coef, cov, ln_c0)


def _offset_power_law(c: np.ndarray, y: np.ndarray) -> dict | None:
    """y = E + A C^alpha with 0 <= E < min y and alpha < 0, or None where the data cannot pin E down.

    Loss and task NLL level off towards an irreducible value; a pure power law through them bends too fast and
    undershoots when extrapolated. The floor is identifiable only with 4+ budgets (3 parameters and a residual).
    """
    start = _power_law(c, y)
    if len(c) < 4 or start["alpha"] >= 0:
        return None
    lx = np.log(c)
    ln_c0 = start["ln_c0"]

    def model(lc: np.ndarray, e: float, log_y0: float, alpha: float) -> np.ndarray:
        return e + np.exp(log_y0 + alpha * lc)

    ceiling = float(y.min())
    p0 = [0.5 * ceiling, math.log(max(float(np.exp(start["log_y0"])) - 0.5 * ceiling, 1e-12)), start["alpha"]]
    bounds = ([0.0, -50.0, -5.0], [ceiling, 50.0, 0.0])
    try:
        params, cov = _curve_fit(model, lx - ln_c0, y, p0=p0, bounds=bounds, maxfev=20000)
    except (RuntimeError, ValueError):
        return None
    if not np.all(np.isfinite(cov)) or params[0] >= 0.999 * ceiling or params[2] >= 0:
        return None
    return _law("offset_power", c, y, params, cov, ln_c0)


def _law_value(law: dict, flops: float) -> float:
    return law["E"] + math.exp(law["log_y0"] + law["alpha"] * (math.log(flops) - law["ln_c0"]))


def describe_law(law: dict) -> str:
    """A fitted law as text: "A C^alpha", or "E + A C^alpha" with an irreducible term."""
    power = f"{law['A']:.4g} C^{law['alpha']:.4f}"
    return f"{law['E']:.4g} + {power}" if law["form"] == "offset_power" else power


def _saturating(c: np.ndarray, y: np.ndarray, name: str, warnings: list[str] | None) -> dict:
    """The offset power law where it can be fitted, else the pure power law (with a warning)."""
    law = _offset_power_law(c, y)
    if law is None:
        if warnings is not None:
            warnings.append(
                f"{name} law: no irreducible term could be fitted ({len(c)} budgets; needs 4+ with {name} falling); "
                f"using a pure power law, which undershoots when extrapolated far"
            )
        law = _power_law(c, y)
    return law


def _laws(optima: list[dict], warnings: list[str] | None = None) -> dict:
    budgets = np.array([o["budget"] for o in optima])
    laws = {
        "n_opt": _power_law(budgets, np.array([o["n_opt"] for o in optima])),
        "tokens_opt": _power_law(budgets, np.array([o["tokens_opt"] for o in optima])),
        "loss_opt": _saturating(budgets, np.array([o["loss_opt"] for o in optima]), "loss", warnings),
        # The parabolas' curvature vs C: with n_opt and loss_opt it gives the loss of any size at any budget.
        "curvature": _power_law(budgets, np.array([o["coef"][0] for o in optima])),
        "task_nll": None,
    }
    task = [o for o in optima if o["task_nll_opt"] is not None]
    if len(task) >= 2:
        c = np.array([o["budget"] for o in task])
        laws["task_nll"] = _saturating(c, np.array([o["task_nll_opt"] for o in task]), "task NLL", warnings)
    return laws


def _bootstrap(groups: dict[float, list[dict]], samples: int, seed: int) -> dict[str, float | None]:
    """Standard deviation of each law's exponent over fits to runs resampled within each budget."""
    rng = np.random.default_rng(seed)
    exps: dict[str, list[float]] = {k: [] for k in LAWS}
    for _ in range(samples):
        optima = []
        for budget, runs in groups.items():
            pick = [runs[i] for i in rng.integers(0, len(runs), len(runs))]
            if len({r["n"] for r in pick}) < 3:  # a resample with fewer distinct sizes has no parabola
                continue
            try:
                optima.append(_fit_budget(budget, pick))
            except _Skip:
                continue
        if len(optima) < 2:
            continue
        try:
            laws = _laws(optima)
        except (OverflowError, ValueError, FloatingPointError, np.linalg.LinAlgError):
            continue  # a resample whose optima run off to infinity says nothing about the spread
        for key, law in laws.items():
            if law is not None:
                exps[key].append(law["alpha"])
    # Below 20 successful resamples a standard deviation says little.
    return {k: float(np.std(v, ddof=1)) if len(v) >= 20 else None for k, v in exps.items()}


def sigmoid(nll: np.ndarray | float, lower: float, upper: float, midpoint: float, slope: float) -> np.ndarray:
    """Accuracy vs task NLL: `upper` at low NLL, falling to `lower` at high NLL, halfway at `midpoint`."""
    return lower + (upper - lower) * expit(-slope * (np.asarray(nll, dtype=float) - midpoint))


def _fit_sigmoid(points: list[tuple[float, float]], chance: float | None, warnings: list[str]) -> dict | None:
    if len(points) < MIN_SIGMOID_POINTS:
        warnings.append(
            f"accuracy sigmoid not fitted: {len(points)} (task_nll, task_acc) point(s), need {MIN_SIGMOID_POINTS}"
        )
        return None
    nll, acc = np.array([p[0] for p in points]), np.array([p[1] for p in points])
    span = max(float(nll.max() - nll.min()), 1e-6)
    lower0 = chance if chance is not None else float(acc.min())
    p0 = [min(lower0, float(acc.min())), float(acc.max()), float(np.median(nll)), 4.0 / span]
    lo = [0.0, 0.0, float(nll.min()) - 2 * span, 1e-6]
    hi = [1.0, 1.0, float(nll.max()) + 2 * span, 1e3 / span]
    p0 = [float(np.clip(v, lo_i, hi_i)) for v, lo_i, hi_i in zip(p0, lo, hi, strict=True)]
    try:
        params, cov = _curve_fit(sigmoid, nll, acc, p0=p0, bounds=(lo, hi), maxfev=20000)
    except (RuntimeError, ValueError) as e:
        warnings.append(f"accuracy sigmoid fit failed: {str(e).splitlines()[0]}")
        return None
    se = np.sqrt(np.diag(cov)) if np.all(np.isfinite(cov)) else None
    if se is None:
        warnings.append(
            "accuracy sigmoid: parameter uncertainties are undefined (the points do not constrain all four "
            "parameters; sweep sizes whose accuracy spans the transition)"
        )
    elif se[2] > span or se[3] > params[3]:
        warnings.append(
            f"accuracy sigmoid is poorly constrained (midpoint {params[2]:.3g} +- {se[2]:.2g}, slope {params[3]:.3g} "
            f"+- {se[3]:.2g}): accuracy predictions are unreliable; sweep sizes whose accuracy spans the transition"
        )
    if params[1] <= params[0]:
        warnings.append("accuracy sigmoid: fitted upper <= lower, accuracy does not rise as task NLL falls")
    resid = acc - sigmoid(nll, *params)
    return {
        **{k: float(v) for k, v in zip(SIGMOID_PARAMS, params, strict=True)},
        "se": {k: float(v) for k, v in zip(SIGMOID_PARAMS, se, strict=True)} if se is not None else None,
        "cov": cov.tolist() if se is not None else None,
        "rmse": float(np.sqrt(np.mean(resid**2))),
        "points": len(points),
        "chance": chance,
    }


def fit_sweep(manifest: dict, *, bootstrap: int = BOOTSTRAP_SAMPLES, seed: int = 0) -> dict:
    """Fit IsoFLOP parabolas, compute-optimal power laws and the downstream predictor to a sweep manifest.

    Args:
        manifest: the parsed RUN_DIR/manifest.json of `herd scaling sweep`.
        bootstrap: resamples of the runs for the bootstrap standard errors of the exponents (0 to skip).
        seed: seed of the bootstrap resampling.

    Returns:
        A JSON-ready dict: "budgets" (per-budget optimum), "skipped" (budget, reason), "laws" (n_opt, tokens_opt,
        loss_opt, task_nll, curvature: each y = E + A C^alpha, E = 0 for a pure power law, with standard errors),
        "sigmoid" (accuracy vs task NLL), "warnings" (list of one-line strings) and the method notes.

    Raises:
        ScalingError: the manifest is malformed or fewer than 2 budgets give an optimum.
    """
    warnings: list[str] = []
    runs, _ = _runs(manifest, warnings)
    groups: dict[float, list[dict]] = {}
    for run in runs:
        groups.setdefault(float(run["budget"]), []).append(run)
    groups = dict(sorted(groups.items()))
    optima: list[dict] = []
    skipped: list[dict[str, Any]] = []
    for budget, group in groups.items():
        try:
            opt = _fit_budget(budget, group)
        except _Skip as e:
            skipped.append({"budget": budget, "reason": str(e)})
            warnings.append(f"budget {_label(budget)} skipped: {e}")
            continue
        if opt["edge"] is not None:
            side = "smallest" if opt["edge"] == "smaller" else "largest"
            warnings.append(
                f"budget {_label(budget)}: the fitted optimum n={opt['n_opt']:.3g} is at or beyond the {side} size "
                f"swept ({opt['n_min' if opt['edge'] == 'smaller' else 'n_max']:.3g}); extend the sweep toward "
                f"{opt['edge']} models"
            )
        if opt["task_nll_opt"] is None and any(math.isfinite(_num(r.get("task_nll"))) for r in group):
            warnings.append(f"budget {_label(budget)}: too few finite task_nll values for its optimum (need 3 sizes)")
        optima.append(opt)
    if len(optima) < 2:
        reasons = "; ".join(f"{_label(s['budget'])}: {s['reason']}" for s in skipped) or "no done runs"
        raise ScalingError(f"sweep: {len(optima)} usable budget(s), need at least 2 ({reasons})")
    if len(optima) == 2:
        warnings.append("only 2 usable budgets: each power law passes through both points and has no standard error")
    try:
        laws = _laws(optima, warnings)
    except (OverflowError, ValueError, np.linalg.LinAlgError) as e:
        raise ScalingError(f"the per-budget optima do not fit a power law ({e}); check the sweep's warnings") from None
    if laws["task_nll"] is None:
        warnings.append("no task NLL law: fewer than 2 budgets have a task NLL at their optimum")
    if bootstrap > 0:
        for key, se in _bootstrap(groups, bootstrap, seed).items():
            if laws[key] is not None:
                laws[key]["alpha_boot_se"] = se
    points = [(_num(r.get("task_nll")), _num(r.get("task_acc"))) for r in runs]
    finite = [p for p in points if math.isfinite(p[0]) and math.isfinite(p[1])]
    if len(finite) < len(points):
        warnings.append(
            f"{len(points) - len(finite)} run(s) without a finite task_nll/task_acc left out of the sigmoid"
        )
    task = manifest.get("task") or {}
    chance = task.get("chance") if isinstance(task.get("chance"), int | float) else None
    fit = {
        "version": 1,
        "method": {
            "n": "non-embedding matmul parameters (manifest 'n')",
            "parabola": "per budget: val_loss = a (ln n)^2 + b (ln n) + c, least squares; n_opt = exp(-b / 2a)",
            "tokens": "tokens_opt = budget / flops_per_token(n_opt), flops_per_token piecewise log-log interpolated",
            "laws": "n_opt, tokens_opt, curvature: y = A C^alpha, least squares on (ln C, ln y); loss_opt, task_nll: "
            "y = E + A C^alpha (curve_fit, 0 <= E < min y) with 4+ budgets, else the pure power law",
            "task_nll": "task_nll parabola in ln n per budget, evaluated at ln n_opt",
            "sigmoid": "acc = lower + (upper - lower) / (1 + exp(slope (nll - midpoint))) over done non-holdout runs",
            "flops_formula": manifest.get("flops_formula"),
        },
        "seq_len": manifest.get("seq_len"),
        "task": task or None,
        "runs_used": sum(o["runs"] for o in optima),
        "budgets": optima,
        "skipped": skipped,
        "laws": laws,
        "sigmoid": _fit_sigmoid(finite, chance, warnings),
        "bootstrap_samples": bootstrap,
        "warnings": warnings,
    }
    return _clean(fit)


def _law_band(law: dict | None, flops: float) -> dict | None:
    """A law at `flops`, with the +-1 sigma band of the fitted mean (None where there is no covariance).

    The band of a pure power law is multiplicative (its errors live in log space), that of an offset one additive.
    """
    if law is None:
        return None
    lc = math.log(flops) - law["ln_c0"]
    power = math.exp(law["log_y0"] + law["alpha"] * lc)
    value = law["E"] + power
    out = {"value": value, "lo": None, "hi": None}
    if law.get("cov") is not None:
        cov = np.array(law["cov"])
        if law["form"] == "offset_power":
            grad = np.array([1.0, power, power * lc])
            sd = math.sqrt(max(float(grad @ cov @ grad), 0.0))
            out["lo"], out["hi"] = value - sd, value + sd
        else:
            grad = np.array([1.0, lc])
            sd = math.sqrt(max(float(grad @ cov @ grad), 0.0))
            out["lo"], out["hi"] = value * math.exp(-sd), value * math.exp(sd)
    return out


def _accuracy(sig: dict, nll: dict) -> dict:
    """Accuracy at the NLL prediction; the band joins the NLL band and the sigmoid's own parameter uncertainty."""
    params = [sig[k] for k in SIGMOID_PARAMS]
    value = float(sigmoid(nll["value"], *params))
    out = {"value": value, "lo": None, "hi": None}
    sd = 0.0
    if sig.get("cov") is not None:
        # Delta method with a central-difference gradient in the parameters.
        grad = np.zeros(4)
        for i in range(4):
            h = 1e-6 * max(abs(params[i]), 1.0)
            up, down = list(params), list(params)
            up[i] += h
            down[i] -= h
            grad[i] = (float(sigmoid(nll["value"], *up)) - float(sigmoid(nll["value"], *down))) / (2 * h)
        sd = math.sqrt(max(float(grad @ np.array(sig["cov"]) @ grad), 0.0))
    if nll["lo"] is None and sd == 0.0:
        return out
    # Accuracy falls as NLL rises: the NLL band's high end gives the accuracy band's low end.
    below = value - float(sigmoid(nll["hi"], *params)) if nll["hi"] is not None else 0.0
    above = float(sigmoid(nll["lo"], *params)) - value if nll["lo"] is not None else 0.0
    out["lo"] = max(value - math.hypot(below, sd), 0.0)
    out["hi"] = min(value + math.hypot(above, sd), 1.0)
    return out


def predict(fit: dict, flops: float) -> dict:
    """Compute-optimal size, tokens, loss, task NLL and accuracy at a FLOP budget, from a `fit_sweep` result.

    Args:
        fit: the result of `fit_sweep` (or a loaded fit.json).
        flops: the training budget in FLOPs, counted the way the sweep counted them.

    Returns:
        {"flops", "n", "tokens", "loss", "nll", "accuracy", "band"}: each quantity is a float (None when the fit has
        no such law), and band[quantity] is its [lo, hi] +-1 sigma band from the fit covariance (None where that is
        undefined, as with only 2 budgets).
    """
    if not flops > 0:
        raise ScalingError(f"predict: flops={flops} must be positive")
    laws = fit["laws"]
    nll = _law_band(laws.get("task_nll"), flops)
    sig = fit.get("sigmoid")
    bands = {
        "n": _law_band(laws["n_opt"], flops),
        "tokens": _law_band(laws["tokens_opt"], flops),
        "loss": _law_band(laws["loss_opt"], flops),
        "nll": nll,
        "accuracy": _accuracy(sig, nll) if sig is not None and nll is not None else None,
    }
    out: dict = {"flops": flops}
    out |= {k: None if q is None else q["value"] for k, q in bands.items()}
    out["band"] = {k: None if q is None or q["lo"] is None else [q["lo"], q["hi"]] for k, q in bands.items()}
    return out


def _holdout(manifest: dict, fit: dict) -> list[dict]:
    """Predicted vs measured for each done holdout run.

    Two loss predictions: loss_opt(C) from the loss law (what the compute-optimal model at the run's budget
    reaches), and the loss at the run's own size from the parabola family, loss_opt(C) + a(C) (ln n - ln n_opt(C))^2,
    with n_opt, loss_opt and the curvature a each taken from its law in C.
    """
    out = []
    for run in _runs(manifest, [])[1]:
        c, n = float(run["budget"]), float(run["n"])
        p = predict(fit, c)
        curvature = _law_value(fit["laws"]["curvature"], c)
        sig = fit.get("sigmoid")
        nll = _num(run.get("task_nll"))
        entry = {
            "name": run.get("name"),
            "budget": c,
            "n": n,
            "n_opt_pred": p["n"],
            "val_loss": _num(run.get("val_loss")),
            "loss_opt_pred": p["loss"],
            "loss_opt_band": p["band"]["loss"],
            "loss_at_n_pred": p["loss"] + curvature * (math.log(n) - math.log(p["n"])) ** 2,
            "task_nll": nll,
            "nll_pred": p["nll"],
            "nll_band": p["band"]["nll"],
            "task_acc": _num(run.get("task_acc")),
            "acc_pred": p["accuracy"],
            "acc_band": p["band"]["accuracy"],
            "acc_from_measured_nll": (
                float(sigmoid(nll, *[sig[k] for k in SIGMOID_PARAMS]))
                if sig is not None and math.isfinite(nll)
                else None
            ),
        }
        out.append(_clean(entry))
    return out


def _save(fig: Figure, path: Path) -> Path:
    with atomic_file(path, "wb") as f:
        fig.savefig(f, format="png", dpi=110)
    return path


def plot_fit(manifest: dict, fit: dict, out_dir: Path) -> list[Path]:
    """Write isoflop.png, laws.png and downstream.png into `out_dir` (atomically); return their paths."""
    # The object-oriented API with the Agg canvas leaves pyplot's global backend alone.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    done = [r for r in manifest.get("runs", []) if isinstance(r, dict) and r.get("status") == "done"]
    budgets = sorted({float(r["budget"]) for r in done})
    colors = {b: f"C{i % 10}" for i, b in enumerate(budgets)}
    fitted = {b["budget"]: b for b in fit["budgets"]}
    paths = []

    fig = Figure(figsize=(7, 5))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for budget in budgets:
        pts = [(float(r["n"]), _num(r.get("val_loss")), bool(r.get("holdout"))) for r in done if r["budget"] == budget]
        sweep = [p for p in pts if math.isfinite(p[1]) and not p[2]]
        held = [p for p in pts if math.isfinite(p[1]) and p[2]]
        if sweep:
            ax.scatter(
                [p[0] for p in sweep], [p[1] for p in sweep], color=colors[budget], s=18, label=f"C={budget:.2g}"
            )
        if held:
            ax.scatter([p[0] for p in held], [p[1] for p in held], color=colors[budget], marker="D", s=40,
                       edgecolors="k", label=f"holdout C={budget:.2g}")  # fmt: skip
        if budget in fitted:
            b = fitted[budget]
            xs = np.linspace(math.log(b["n_min"]) - 0.3, math.log(b["n_max"]) + 0.3, 100)
            ax.plot(np.exp(xs), np.polyval(b["coef"], xs), color=colors[budget], lw=1)
            ax.scatter([b["n_opt"]], [b["loss_opt"]], color=colors[budget], marker="*", s=140, edgecolors="k")
    ax.set_xscale("log")
    ax.set_xlabel("n (non-embedding matmul parameters)")
    ax.set_ylabel("validation loss (nats/token)")
    ax.set_title("IsoFLOP curves (stars: fitted minima)")
    ax.legend(fontsize=7)
    paths.append(_save(fig, out_dir / "isoflop.png"))

    c_pts = np.array([b["budget"] for b in fit["budgets"]])
    c_max = max([*budgets, float(c_pts.max())])
    cs = np.geomspace(float(c_pts.min()), c_max, 50)
    fig = Figure(figsize=(11, 4.5))
    FigureCanvasAgg(fig)
    for i, (key, label) in enumerate((("n_opt", "compute-optimal n"), ("tokens_opt", "compute-optimal tokens"))):
        ax = fig.add_subplot(1, 2, i + 1)
        law = fit["laws"][key]
        ax.scatter(c_pts, [b[key] for b in fit["budgets"]], color="C0", zorder=3)
        ax.plot(cs, [_law_value(law, c) for c in cs], color="C1", label=describe_law(law))
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("compute C (FLOPs)")
        ax.set_ylabel(label)
        ax.legend()
    paths.append(_save(fig, out_dir / "laws.png"))

    fig = Figure(figsize=(11, 4.5))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 2, 1)
    law = fit["laws"].get("task_nll")
    if law is not None:
        with_nll = [b for b in fit["budgets"] if b["task_nll_opt"] is not None]
        ax.scatter([b["budget"] for b in with_nll], [b["task_nll_opt"] for b in with_nll], color="C0", zorder=3)
        ax.plot(cs, [_law_value(law, c) for c in cs], color="C1", label=describe_law(law))
        held_nll = [(float(r["budget"]), _num(r.get("task_nll"))) for r in done if r.get("holdout")]
        held_nll = [h for h in held_nll if math.isfinite(h[1])]
        if held_nll:
            ax.scatter([h[0] for h in held_nll], [h[1] for h in held_nll], marker="D", s=40, color="C3",
                       edgecolors="k", label="holdout runs")  # fmt: skip
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.legend()
    else:
        ax.text(0.5, 0.5, "no task NLL law", ha="center", transform=ax.transAxes)
    ax.set_xlabel("compute C (FLOPs)")
    ax.set_ylabel("task NLL at the optimum")
    ax = fig.add_subplot(1, 2, 2)
    pts = [(_num(r.get("task_nll")), _num(r.get("task_acc")), bool(r.get("holdout"))) for r in done]
    pts = [p for p in pts if math.isfinite(p[0]) and math.isfinite(p[1])]
    ax.scatter([p[0] for p in pts if not p[2]], [p[1] for p in pts if not p[2]], s=14, color="C0", label="sweep runs")
    if any(p[2] for p in pts):
        ax.scatter([p[0] for p in pts if p[2]], [p[1] for p in pts if p[2]], marker="D", s=40, color="C3",
                   edgecolors="k", label="holdout")  # fmt: skip
    sig = fit.get("sigmoid")
    if sig is not None and pts:
        lo, hi = min(p[0] for p in pts), max(p[0] for p in pts)
        xs = np.linspace(lo - 0.1 * (hi - lo), hi + 0.1 * (hi - lo), 200)
        ax.plot(xs, sigmoid(xs, *[sig[k] for k in SIGMOID_PARAMS]), color="C1", label="sigmoid fit")
    if sig is not None and sig.get("chance") is not None:
        ax.axhline(sig["chance"], color="gray", ls=":", label="chance")
    ax.set_xlabel("task NLL of the correct answer")
    ax.set_ylabel("task accuracy")
    ax.legend(fontsize=8)
    paths.append(_save(fig, out_dir / "downstream.png"))
    return paths


def fit_run(run_dir: Path, out_dir: Path | None = None) -> dict:
    """Fit the sweep in `run_dir`, compare with its holdout runs, and write fit.json and the plots.

    Args:
        run_dir: a `herd scaling sweep` run directory holding manifest.json.
        out_dir: where fit.json and the PNGs go; `run_dir` by default.

    Returns:
        The `fit_sweep` result plus "holdout" (predicted vs measured per holdout run) and "files".

    Raises:
        ScalingError: manifest.json is missing or invalid, or the fit cannot be made.
    """
    run_dir = Path(run_dir)
    path = run_dir / "manifest.json"
    if not path.is_file():
        raise ScalingError(f"{path}: no sweep manifest; run `herd scaling sweep` first")
    try:
        manifest = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError) as e:
        raise ScalingError(f"{path}: cannot read ({e})") from e
    except json.JSONDecodeError as e:
        raise ScalingError(f"{path}: not valid JSON ({e.msg} at line {e.lineno})") from e
    try:
        fit = fit_sweep(manifest)
    except ScalingError as e:
        raise ScalingError(f"{path}: {e}") from e
    fit["holdout"] = _holdout(manifest, fit)
    out_dir = Path(out_dir) if out_dir is not None else run_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    pngs = plot_fit(manifest, fit, out_dir)
    fit["files"] = [os.fspath(p) for p in [out_dir / "fit.json", *pngs]]
    with atomic_file(out_dir / "fit.json", "w") as f:
        f.write(json.dumps(fit, indent=2, allow_nan=False) + "\n")
    return fit


def _si(value: float | None) -> str:
    if value is None:
        return "-"
    for scale, suffix in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "K")):
        if abs(value) >= scale:
            return f"{value / scale:.3g}{suffix}"
    return f"{value:.3g}"


def _se(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def _band(value: float | None, band: list[float] | None, fmt: str = ".3f") -> str:
    if value is None:
        return "-"
    text = format(value, fmt)
    return text if band is None else f"{text} [{format(band[0], fmt)}, {format(band[1], fmt)}]"


def format_fit(fit: dict) -> str:
    """A short human summary: per-budget optima, the laws with errors, the sigmoid, holdout checks, warnings."""
    lines = [
        f"IsoFLOP fit: {len(fit['budgets'])} budget(s) used, {len(fit['skipped'])} skipped, {fit['runs_used']} runs"
    ]
    lines.append(f"  {'budget':>9} {'n_opt':>9} {'tokens':>9} {'loss_opt':>9} {'task_nll':>9}")
    for b in fit["budgets"]:
        nll = "-" if b["task_nll_opt"] is None else f"{b['task_nll_opt']:.4f}"
        edge = f"  (optimum at the {b['edge']} edge)" if b["edge"] else ""
        lines.append(
            f"  {b['budget']:>9.3g} {_si(b['n_opt']):>9} {_si(b['tokens_opt']):>9} {b['loss_opt']:>9.4f} {nll:>9}{edge}"
        )
    lines.append("laws in C (alpha +- regression s.e., bootstrap s.e. in brackets):")
    for key, name in (("n_opt", "n_opt"), ("tokens_opt", "tokens"), ("loss_opt", "loss"), ("task_nll", "task NLL")):
        law = fit["laws"].get(key)
        if law is not None:
            lines.append(
                f"  {name:<9} = {describe_law(law)}, alpha +- {_se(law['alpha_se'])} [{_se(law['alpha_boot_se'])}]"
            )
    sig = fit.get("sigmoid")
    if sig is not None:
        se = sig["se"] or {}
        parts = [f"{k} {sig[k]:.4g}" + (f" +- {se[k]:.2g}" if k in se else "") for k in SIGMOID_PARAMS]
        lines.append(f"accuracy vs NLL sigmoid ({sig['points']} runs, rmse {sig['rmse']:.3f}): " + ", ".join(parts))
    for h in fit.get("holdout", []):
        lines.append(
            f"holdout {h['name']} (C={h['budget']:.3g}, n={_si(h['n'])}, predicted n_opt {_si(h['n_opt_pred'])}): "
            f"loss {_fmt(h['val_loss'])} vs predicted {_band(h['loss_opt_pred'], h['loss_opt_band'])} at the optimum, "
            f"{h['loss_at_n_pred']:.3f} at its size; accuracy {_fmt(h['task_acc'])} vs predicted "
            f"{_band(h['acc_pred'], h['acc_band'])} ({_fmt(h['acc_from_measured_nll'])} from its measured NLL)"
        )
    lines += [f"warning: {w}" for w in fit["warnings"]]
    return "\n".join(lines)


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"
