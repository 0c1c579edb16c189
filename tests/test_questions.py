"""Question-level resampling (leaderboard/questions.py): cluster draws, a run's numbers recomputed from its
per-question probe values (by hand), and the two-level bootstrap of a paired difference."""

from __future__ import annotations

import numpy as np
import pytest

from harness.measure import match
from leaderboard import questions


def _record(forget_checks, utility_checks, *, retain=((0.2, 0.2), (0.5, 0.5)), shift=0.0):
    """A run with two forget and two utility questions (one utility part), target first, no bisection."""
    target = {"forget": [0.9, 0.7], "utility/u": [0.6, 0.4]}
    checks = [{"step": 2 * (i + 1), "forget": list(f), "utility/u": [x + shift for x in u]}
              for i, (f, u) in enumerate(zip(forget_checks, utility_checks, strict=True))]
    q = {"target": target, "retain": {"forget": list(retain[0]), "utility/u": list(retain[1])}, "checks": checks,
         "clusters": {}}
    return {"spec": {"match": {"level": None}}, "match": {"questions": q, "probe": "utility", "level": 0.2,
                                                          "bisection": None}}


def test_replay_recomputes_the_trade_off_from_questions_by_hand():
    r = _record([(0.5, 0.5), (0.1, 0.2)], [(0.45, 0.35), (0.3, 0.3)])
    # all questions: F0 0.8, L 0.2, U_ret 0.5; e = 0, 0.5, 1.083; u = 1, 0.8, 0.6
    traj = [{"step": 0, "forget": 0.8, "utility": 0.5}, {"step": 2, "forget": 0.5, "utility": 0.4},
            {"step": 4, "forget": 0.15, "utility": 0.3}]
    expected = match.summarize(traj, "utility", 0.2, 0.5)
    assert questions.replay(r, "tradeoff_score", questions.ones(r["match"]["questions"]))[0] == pytest.approx(
        expected["tradeoff"])
    # only the first question of each set (weights 2, 0): F0 0.9, L 0.2, U_ret 0.5, F 0.5 then 0.1, U 0.45, 0.3
    w = {"forget": np.array([[2.0, 0.0]]), "utility/u": np.array([[2.0, 0.0]])}
    first = [{"step": 0, "forget": 0.9, "utility": 0.6}, {"step": 2, "forget": 0.5, "utility": 0.45},
             {"step": 4, "forget": 0.1, "utility": 0.3}]
    assert questions.replay(r, "tradeoff_score", w)[0] == pytest.approx(
        match.summarize(first, "utility", 0.2, 0.5)["tradeoff"])
    assert questions.replay(r, "match_utility", w)[0] == pytest.approx(
        match.summarize(first, "utility", 0.2, 0.5)["at_match"])


def test_draws_resample_clusters_whole_and_few_clusters_by_question():
    q = {"target": {"forget": [0.1] * 10, "utility/u": [0.1] * 4},
         "clusters": {"forget": [0, 0, 1, 1, 2, 2, 3, 3, 4, 4], "utility/u": [0, 0, 1, 1]}}
    w = questions.draws(q, 500, np.random.default_rng(0))
    assert w["forget"].shape == (500, 10) and np.all(w["forget"][:, 0::2] == w["forget"][:, 1::2])  # authors whole
    assert np.all(w["forget"].sum(axis=1) == 10) and np.all(w["utility/u"].sum(axis=1) == 4)
    # two authors are too few to draw: their questions are drawn one by one
    assert not np.all(w["utility/u"][:, 0] == w["utility/u"][:, 1])


def test_two_level_bootstrap_splits_seed_and_question_variance():
    base = [_record([(0.5, 0.5), (0.1, 0.2)], [(0.45, 0.35), (0.3, 0.3)]) for _ in range(4)]
    better = [_record([(0.5, 0.5), (0.1, 0.2)], [(0.45, 0.35), (0.3, 0.3)], shift=s) for s in (0.02, 0.03, 0.01, 0.04)]
    out = questions.two_level(list(zip(better, base, strict=True)), "tradeoff_score", resamples=400)
    assert 0 < out["two_level_low"] < out["two_level_high"] and 0 <= out["question_share"] <= 1
    assert out["var_seeds"] > 0 and out["var_questions"] > 0
    assert questions.two_level([(better[0], {"match": {}})] * 2, "tradeoff_score") is None  # no questions kept
    assert questions.two_level(list(zip(better, base, strict=True))[:1], "tradeoff_score") is None  # one pair
    other = _record([(0.5, 0.5), (0.1, 0.2)], [(0.45, 0.35), (0.3, 0.3)])
    other["match"]["questions"]["target"]["forget"] = [0.7, 0.9]  # the same sizes, the questions in another order
    assert questions.two_level([*zip(better, base, strict=True), (other, base[0])], "tradeoff_score") is None
    other["match"]["questions"]["target"]["forget"] = [0.9 * (1 + 6e-5), 0.7]  # another CPU's rounding: paired
    assert questions.two_level([*zip(better, base, strict=True), (other, base[0])], "tradeoff_score") is not None
    nan = {"target": {"forget": [0.9, None]}, "clusters": {}}  # a value stored as null (NaN) matches itself
    assert questions.same_questions(nan, nan) and not questions.same_questions(nan, base[0]["match"]["questions"])
    same = questions.two_level(list(zip(base, base, strict=True)), "tradeoff_score", resamples=200)
    assert (same["two_level_low"], same["two_level_high"], same["var_questions"]) == (0.0, 0.0, 0.0)  # shared draws


def test_two_level_leaves_out_draws_that_never_reach_the_level_only_when_they_are_rare(monkeypatch):
    # all questions: forget 0.8 → 0.175, under the level 0.2; question 2 alone: 0.7 → 0.3, never reached
    short = [_record([(0.5, 0.5), (0.05, 0.3)], [(0.45, 0.35), (0.3, 0.3)]) for _ in range(3)]
    base = [_record([(0.5, 0.5), (0.1, 0.2)], [(0.45, 0.35), (0.3, 0.3)]) for _ in range(3)]
    pairs = list(zip(short, base, strict=True))
    alone = {"forget": np.array([[0.0, 2.0]]), "utility/u": np.array([[1.0, 1.0]])}
    assert np.isnan(questions.replay(short[0], "match_utility", alone)[0])
    assert not np.isnan(questions.replay(short[0], "match_utility", questions.ones(short[0]["match"]["questions"])))
    assert questions.two_level(pairs, "match_utility", resamples=400) is None  # a quarter of the draws: no interval
    monkeypatch.setattr(questions, "MAX_UNDEFINED", 0.5)
    out = questions.two_level(pairs, "match_utility", resamples=400)
    assert np.isfinite([out["two_level_low"], out["two_level_high"], out["var_questions"]]).all()


@pytest.mark.parametrize("points", [2, 4, 9])
def test_array_versions_equal_the_scalar_ones_bit_for_bit(points):
    # trajectories that fall back, pass 1, start below 0 and never reach 1, as the two-level bootstrap replays them
    rng = np.random.default_rng(points)
    e = np.cumsum(rng.normal(0.2, 0.35, size=(500, points)), axis=1) - 0.1
    e[:, 0] = 0.0
    e[::7, 0] = -0.05
    u = rng.uniform(0.2, 1.2, size=(500, points))
    scores, ends = questions.tradeoff_scores(e, u), questions.at_matches(e, u)
    for row in range(len(e)):
        pts = list(zip(e[row].tolist(), u[row].tolist(), strict=True))
        assert scores[row] == match.tradeoff_score(pts)
        end = match.at_match(pts)
        assert np.isnan(ends[row]) if end is None else ends[row] == end
    assert np.isnan(ends).any() and not np.isnan(ends).all()  # both kinds of trajectory were drawn
