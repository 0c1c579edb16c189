"""MUSE and copyright metric formulas against hand computations and an independent implementation."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from harness.measure import metrics


def test_rouge_l_f1_by_hand():
    # LCS("a b c d", "a c d e") = "a c d": P = R = 3/4, F1 = 3/4; no stemming: "cats" != "cat"
    assert metrics.rouge_l_f1(["a b c d"], ["a c d e"])[0] == pytest.approx(0.75)
    assert metrics.rouge_l_f1(["the cats"], ["the cat"])[0] == pytest.approx(0.5)
    assert metrics.rouge_l_recall(["the cats"], ["the cat"])[0] == pytest.approx(1.0)  # TOFU's is stemmed


def test_bleu_by_hand():
    ref, pred = "the cat sat on the mat", "the cat sat on a mat"
    # n-gram precisions 5/6, 3/5, 2/4, 1/3; same length, so no brevity penalty
    expected = (5 / 6 * 3 / 5 * 2 / 4 * 1 / 3) ** 0.25
    assert metrics.bleu([ref], [pred])[0] == pytest.approx(expected, abs=1e-4)
    assert metrics.bleu([ref], [ref])[0] == pytest.approx(1.0)


def test_min_k_score_by_hand():
    lp = np.array([-1.0, -5.0, -2.0, -4.0, -3.0])
    assert metrics.min_k_score(lp, 0.4) == pytest.approx(4.5)  # int(5·0.4)=2 lowest: -5, -4
    assert metrics.min_k_score(lp, 1.0) == pytest.approx(3.0)
    assert metrics.min_k_score(np.array([-1.0, -3.0]), 0.4) == pytest.approx(3.0)  # at least one token
    with pytest.raises(ValueError):
        metrics.min_k_score(np.array([]), 0.4)


def test_auc_by_hand_and_against_sklearn():
    # pairs (neg, pos): (1,2) win, (1,3) win, (2,2) tie, (2,3) win -> 3.5 / 4
    assert metrics.auc([1.0, 2.0], [2.0, 3.0]) == pytest.approx(0.875)
    rng = np.random.default_rng(0)
    neg, pos = rng.normal(0, 1, 40).round(1), rng.normal(0.5, 1, 30).round(1)  # rounding makes ties
    labels = [0] * len(neg) + [1] * len(pos)
    assert metrics.auc(neg, pos) == pytest.approx(roc_auc_score(labels, np.concatenate([neg, pos])))


def test_mia_auc_orientation_and_privleak():
    # a model that memorised the forget set scores it lower (more member-like) than the holdout: AUC 0
    assert metrics.mia_auc([1.0, 1.5], [3.0, 4.0]) == 0.0
    assert metrics.mia_auc([3.0, 4.0], [1.0, 1.5]) == 1.0
    assert metrics.privleak(0.3, 0.5) == pytest.approx(-40.0)
    assert metrics.privleak(0.5, 0.5) == 0.0
    assert math.isclose(metrics.privleak(0.6, 0.4), 50.0)
