"""The unbiased pass@k estimator of the Codex paper (Chen et al. 2021, "Evaluating Large Language Models Trained on
Code") and bootstrap confidence intervals over problems.

With n samples of a problem of which c pass, pass@k is the probability that at least one of k samples drawn
without replacement from the n passes: 1 - C(n-c, k) / C(n, k). The binomial coefficients overflow floats and lose
precision for large n, so the ratio is computed as a product of k factors, C(n-c, k) / C(n, k) =
prod_{i=n-c+1}^{n} (1 - k/i), each in (0, 1]. The benchmark's pass@k is the mean over problems.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence

from herd.errors import EvalError


def _check_int(name: str, value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise EvalError(f"pass@k: {name} must be an int, got {value!r}")
    return value


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k of one problem with `n` samples of which `c` passed (1 <= k <= n, 0 <= c <= n)."""
    n, c, k = _check_int("n", n), _check_int("c", c), _check_int("k", k)
    if n < 1:
        raise EvalError(f"pass@k: n (samples) must be >= 1, got {n}")
    if not 0 <= c <= n:
        raise EvalError(f"pass@k: c (passing samples) must be in [0, n={n}], got {c}")
    if not 1 <= k <= n:
        raise EvalError(f"pass@k: k must be in [1, n={n}], got {k}")
    if n - c < k:  # every draw of k samples holds a passing one
        return 1.0
    failing_only = 1.0  # C(n-c, k) / C(n, k)
    for i in range(n - c + 1, n + 1):
        failing_only *= 1.0 - k / i
    return 1.0 - failing_only


def mean_pass_at_k(counts: Sequence[tuple[int, int]], k: int) -> float:
    """The benchmark's pass@k: the mean over problems of pass_at_k(n, c, k), `counts` holding (n, c) per problem."""
    if not counts:
        raise EvalError("pass@k: no problems")
    return math.fsum(pass_at_k(n, c, k) for n, c in counts) / len(counts)


def bootstrap_ci(
    values: Sequence[float], *, confidence: float = 0.95, resamples: int = 2000, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of `values` (one per problem): the problems are resampled with
    replacement `resamples` times, seeded, so the interval says how much the score hangs on which problems
    happened to be in the benchmark (not on the sampling of completions)."""
    if not values:
        raise EvalError("bootstrap: no values")
    if not 0 < confidence < 1:
        raise EvalError(f"bootstrap: confidence must be in (0, 1), got {confidence}")
    if resamples < 1:
        raise EvalError(f"bootstrap: resamples must be >= 1, got {resamples}")
    rng = random.Random(seed)
    m = len(values)
    means = sorted(math.fsum(rng.choices(values, k=m)) / m for _ in range(resamples))
    alpha = (1 - confidence) / 2
    return _quantile(means, alpha), _quantile(means, 1 - alpha)


def _quantile(sorted_values: list[float], q: float) -> float:
    """Linear interpolation between the closest ranks (numpy's default)."""
    pos = q * (len(sorted_values) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


def pass_at_k_metrics(
    counts: Sequence[tuple[int, int]], ks: Sequence[int], *, confidence: float = 0.95, seed: int = 0
) -> dict[str, float | list[float]]:
    """{"pass@k": mean, "pass@k_ci": [lo, hi]} for each k no larger than every problem's n (larger ones are left
    out: with fewer than k samples pass@k cannot be estimated)."""
    if not counts:
        raise EvalError("pass@k: no problems")
    smallest_n = min(n for n, _ in counts)
    out: dict[str, float | list[float]] = {}
    for k in sorted(set(ks)):
        if k > smallest_n:
            continue
        per_problem = [pass_at_k(n, c, k) for n, c in counts]
        out[f"pass@{k}"] = math.fsum(per_problem) / len(per_problem)
        lo, hi = bootstrap_ci(per_problem, confidence=confidence, seed=seed)
        out[f"pass@{k}_ci"] = [lo, hi]
    return out
