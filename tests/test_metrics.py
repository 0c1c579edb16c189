"""Each TOFU metric against a value computed by hand from its formula."""

import math

import numpy as np
import pytest

from harness.measure import metrics


def test_probability_is_exp_of_minus_mean_nll():
    assert metrics.probability(np.array([0.0, math.log(2)])) == pytest.approx([1.0, 0.5])


def test_normalized_probability():
    # P(true) = 0.5, perturbed 0.25 and 0.125 -> 0.5 / 0.875
    true = np.array([math.log(2)])
    pert = np.array([[math.log(4), math.log(8)]])
    assert metrics.normalized_probability(true, pert)[0] == pytest.approx(0.5 / 0.875)


def test_truth_ratio_uses_geometric_mean_of_perturbed():
    # true avgNLL 1.0; perturbed 2.0 and 4.0 -> P_pert = exp(-3), P_true = exp(-1), R = exp(-2)
    r = metrics.truth_ratio(np.array([1.0]), np.array([[2.0, 4.0]]))
    assert r[0] == pytest.approx(math.exp(-2))


def test_truth_ratio_aggregates():
    r = np.array([0.5, 2.0, 1.0, 4.0])
    # forget: mean(min(R, 1/R)) = (0.5 + 0.5 + 1 + 0.25) / 4
    assert metrics.truth_ratio_forget(r) == pytest.approx(2.25 / 4, rel=1e-8)
    # utility: mean(max(0, 1 - R)) = (0.5 + 0 + 0 + 0) / 4
    assert metrics.truth_ratio_utility(r) == pytest.approx(0.125)


def test_rouge_l_recall_by_hand():
    # reference 6 tokens; LCS with the prediction = "the cat on the mat" (5) -> recall 5/6
    ref = "the cat sat on the mat"
    pred = "the cat lay on the mat today"
    assert metrics.rouge_l_recall([ref], [pred])[0] == pytest.approx(5 / 6)
    assert metrics.rouge_l_recall(["Paris"], ["paris is the capital"])[0] == pytest.approx(1.0)
    assert metrics.rouge_l_recall(["Paris"], [""])[0] == 0.0


def test_rouge_uses_stemming():
    assert metrics.rouge_l_recall(["he writes novels"], ["he wrote a novel, he writing"])[0] == pytest.approx(2 / 3)


def test_forget_quality_exact_ks_pvalue():
    # Two fully separated samples of size n: D = 1 and the exact two-sided p-value is 2 / C(2n, n).
    a, b = np.array([0.1, 0.2, 0.3]), np.array([0.7, 0.8, 0.9])
    assert metrics.forget_quality(a, b) == pytest.approx(2 / math.comb(6, 3))
    # identical samples: p = 1
    assert metrics.forget_quality(a, a) == pytest.approx(1.0)
    # invariant to using 1/R for both sides (legacy TOFU stores 1/R)
    rng = np.random.default_rng(0)
    x, y = rng.uniform(0.1, 2, 30), rng.uniform(0.2, 3, 25)
    assert metrics.forget_quality(x, y) == pytest.approx(metrics.forget_quality(1 / x, 1 / y))


def test_harmonic_mean():
    assert metrics.harmonic_mean([1.0, 0.5, 0.25]) == pytest.approx(3 / (1 + 2 + 4))
    assert metrics.harmonic_mean([0.3, 0.0, 0.9]) == 0.0
    with pytest.raises(ValueError):
        metrics.harmonic_mean([-0.1, 0.5])
