"""The unbiased pass@k estimator against the Codex paper's formula, and its bootstrap interval."""

from math import comb

import pytest

from herd.errors import EvalError
from herd.eval.passk import bootstrap_ci, mean_pass_at_k, pass_at_k, pass_at_k_metrics


@pytest.mark.parametrize(
    ("n", "c", "k", "expected"),
    [
        (5, 2, 1, 0.4),  # pass@1 is the pass rate c/n
        (4, 1, 2, 0.5),  # 1 - C(3,2)/C(4,2) = 1 - 3/6
        (10, 0, 1, 0.0),
        (10, 0, 10, 0.0),
        (10, 8, 3, 1.0),  # n - c = 2 < k: every draw of 3 holds a passing sample
        (10, 10, 1, 1.0),
        (3, 1, 3, 1.0),
        (1, 1, 1, 1.0),
        (200, 13, 10, 1 - comb(187, 10) / comb(200, 10)),
    ],
)
def test_hand_worked_cases(n, c, k, expected) -> None:
    assert pass_at_k(n, c, k) == pytest.approx(expected, abs=1e-12)


def test_matches_the_naive_binomial_formula_on_a_grid() -> None:
    for n in range(1, 25):
        for c in range(n + 1):
            for k in range(1, n + 1):
                naive = 1.0 if n - c < k else 1 - comb(n - c, k) / comb(n, k)
                assert pass_at_k(n, c, k) == pytest.approx(naive, rel=1e-9, abs=1e-12), (n, c, k)


def test_large_n_stays_finite_and_in_range() -> None:
    value = pass_at_k(5000, 7, 100)  # C(5000, 100) overflows a float; the product form does not
    assert 0 < value < 1
    assert value == pytest.approx(1 - comb(4993, 100) / comb(5000, 100), rel=1e-9)


@pytest.mark.parametrize(
    ("n", "c", "k"),
    [(0, 0, 1), (5, 6, 1), (5, -1, 1), (5, 2, 0), (5, 2, 6), (5.0, 2, 1), (5, 2, True), ("5", 2, 1)],
)
def test_bad_arguments_raise(n, c, k) -> None:
    with pytest.raises(EvalError, match="pass@k"):
        pass_at_k(n, c, k)


def test_mean_over_problems_and_metrics() -> None:
    counts = [(4, 1), (4, 0), (4, 4), (4, 2)]
    assert mean_pass_at_k(counts, 1) == pytest.approx((0.25 + 0 + 1 + 0.5) / 4)
    metrics = pass_at_k_metrics(counts, [1, 2, 10], seed=0)
    assert set(metrics) == {"pass@1", "pass@1_ci", "pass@2", "pass@2_ci"}  # k = 10 > n = 4 is left out
    assert metrics["pass@2"] == pytest.approx((0.5 + 0 + 1 + 1 - comb(2, 2) / comb(4, 2)) / 4)
    lo, hi = metrics["pass@1_ci"]
    assert 0 <= lo <= metrics["pass@1"] <= hi <= 1
    with pytest.raises(EvalError):
        mean_pass_at_k([], 1)


def test_bootstrap_is_seeded_and_brackets_the_mean() -> None:
    values = [1.0] * 30 + [0.0] * 70
    a, b = bootstrap_ci(values, seed=3), bootstrap_ci(values, seed=3)
    assert a == b
    assert a[0] < 0.3 < a[1]
    assert 0.18 < a[0] and a[1] < 0.42  # about 0.3 +- 1.96 * sqrt(0.3 * 0.7 / 100)
    assert bootstrap_ci([0.5] * 10) == (0.5, 0.5)
    with pytest.raises(EvalError):
        bootstrap_ci([])
    with pytest.raises(EvalError):
        bootstrap_ci([1.0], confidence=1.0)
