"""The verdict rule on paired seed differences: its false-positive rate under the null at n = 3, 6, 10 (the
percentile-bootstrap rule it replaces measured 25% at n = 3), its power, and each statistic against a value
computed independently (by enumeration or by its formula)."""

from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pytest
from scipy import stats
from statsmodels.stats.multitest import multipletests

from harness.errors import ConfigError
from leaderboard import verdicts
from leaderboard.verdicts import CompareConfig


def _null_families(n: int, sims: int, rng: np.random.Generator, effect: float = 0.0) -> np.ndarray:
    """Paired differences of one method against two baselines (as the demo declares), seed effect shared by all
    three methods (so the two comparisons correlate), method noise 0.3 of it: shape (sims, 2, n)."""
    seed = rng.normal(size=(sims, n, 1))
    x = seed + 0.3 * rng.normal(size=(sims, n, 3))
    x[..., 2] += effect
    return np.stack([x[..., 2] - x[..., 0], x[..., 2] - x[..., 1]], axis=1)


@pytest.fixture
def fast_adjust(monkeypatch):
    """statsmodels' multipletests ends with a gc.collect() (≈ 40 ms in a process holding torch): skipped here so
    that a thousand families take seconds. The adjustment itself is statsmodels' own."""
    import gc

    monkeypatch.setattr(gc, "collect", lambda *args: 0)


def _resolved(p: np.ndarray) -> np.ndarray:
    """Per family (a row of permutation p-values), whether any comparison resolves after the adjustment."""
    return np.array([(verdicts.adjust(row, np.ones_like(row), 0.05)[0] < 0.05).any() for row in p])


@pytest.mark.parametrize("n", [3, 6, 10])
def test_false_positive_rate_under_the_null_is_at_most_alpha(n, fast_adjust):
    rng = np.random.default_rng(n)
    d = _null_families(n, 1000, rng)
    p = np.stack([verdicts.sign_flip_p(d[:, 0]), verdicts.sign_flip_p(d[:, 1])], axis=1)
    single = (p[:, 0] < 0.05).mean()  # one comparison alone, unadjusted: the test's own level
    assert _resolved(p).mean() <= 0.05 and single <= 0.05
    if n == 3:  # the old rule: the percentile interval excludes 0 exactly when all signs agree
        agree = (np.all(d[:, 0] > 0, axis=1) | np.all(d[:, 0] < 0, axis=1)).mean()
        assert 0.2 < agree < 0.3 and single == 0.0  # no exact test resolves anything at 3 pairs
    if n == 6:
        assert single == pytest.approx(np.mean(np.all(d[:, 0] > 0, axis=1) | np.all(d[:, 0] < 0, axis=1)))


def test_any_wrong_verdict_of_either_kind_stays_at_alpha(fast_adjust):
    """One comparison with no difference (a false 'resolved' is wrong) and one at exactly the margin (a false
    'equivalent' is wrong), 10 pairs: the adjustment bounds the chance of either. Holm on each set alone lets
    the two errors add up."""
    rng = np.random.default_rng(3)
    sims, n = 1500, 10
    a = rng.normal(0.0, 0.01, size=(sims, n))
    b = rng.normal(0.02, 0.02, size=(sims, n))
    perm = np.stack([verdicts.sign_flip_p(a), verdicts.sign_flip_p(b)], axis=1)
    tost = np.array([[verdicts.tost_p(x, 0.02), verdicts.tost_p(y, 0.02)] for x, y in zip(a, b, strict=True)])
    wrong, separate = [], []
    for pp, tt in zip(perm, tost, strict=True):
        pa, ta = verdicts.adjust(pp, tt, 0.05)
        wrong.append(pa[0] < 0.05 or ta[1] < 0.05)
        holm = [multipletests(x, alpha=0.05, method="holm")[1] for x in (pp, tt)]
        separate.append(holm[0][0] < 0.05 or holm[1][1] < 0.05)
    assert np.mean(wrong) <= 0.055 < np.mean(separate)  # SE ≈ 0.006 at 1,500 families


def test_the_rule_finds_a_real_difference_with_enough_seeds(fast_adjust):
    d = _null_families(10, 300, np.random.default_rng(1), effect=0.5)  # 1.2 σ_d of a 0.3 · √2 spread
    p = np.stack([verdicts.sign_flip_p(d[:, 0]), verdicts.sign_flip_p(d[:, 1])], axis=1)
    both = np.array([(verdicts.adjust(row, np.ones_like(row), 0.05)[0] < 0.05).all() for row in p])
    assert both.mean() > 0.6


def test_sign_flip_p_by_enumeration():
    assert verdicts.sign_flip_p([0.1, 0.2, 0.15]) == pytest.approx(0.25)  # the smallest two-sided p at n = 3
    assert verdicts.sign_flip_p([0.1] * 5 + [0.3]) == pytest.approx(2 / 64)
    d = np.array([1.0, 2.0, -0.5, 3.0, 0.5, 1.0, -2.0])
    means = [np.mean(d * s) for s in itertools.product([1, -1], repeat=d.size)]
    observed = d.mean()
    one_sided = min(np.mean([m >= observed - 1e-12 for m in means]), np.mean([m <= observed + 1e-12 for m in means]))
    assert verdicts.sign_flip_p(d) == pytest.approx(min(1.0, 2 * one_sided))
    assert verdicts.sign_flip_p([0.0, 0.0, 0.0]) == 1.0 and verdicts.min_pairs(0.05) == 6
    assert verdicts.min_pairs(0.025) == 7  # a family of two at α 0.05: Bonferroni's α/2
    big = np.tile([0.3, -0.1, 0.2, 0.4], 5)  # 20 pairs: a seeded Monte Carlo draw of sign patterns
    assert verdicts.sign_flip_p(big) == verdicts.sign_flip_p(big) < 0.001


def test_t_interval_and_tost_by_formula():
    d = np.array([0.01, -0.004, 0.006, 0.002, 0.0])
    n, mean, se = d.size, d.mean(), d.std(ddof=1) / math.sqrt(d.size)
    low, high = verdicts.t_interval(d)
    q = stats.t.ppf(0.975, n - 1)
    assert (low, high) == pytest.approx((mean - q * se, mean + q * se))
    margin = 0.02
    by_hand = max(stats.t.sf((mean + margin) / se, n - 1), stats.t.cdf((mean - margin) / se, n - 1))
    assert verdicts.tost_p(d, margin) == pytest.approx(by_hand)
    assert verdicts.t_interval([0.3]) is None and verdicts.t_interval([0.2, 0.2]) == (0.2, 0.2)


def _power(effect: float, n: int, alpha: float) -> float:
    """Two-sided one-sample t test power from the noncentral t distribution."""
    q = stats.t.ppf(1 - alpha / 2, n - 1)
    nc = effect * math.sqrt(n)
    return stats.nct.sf(q, n - 1, nc) + stats.nct.cdf(-q, n - 1, nc)


def test_minimum_detectable_effect_and_seeds_needed_by_the_noncentral_t():
    sd = 0.048
    mde = verdicts.mde(sd, 10, 0.05, 0.8)
    assert _power(mde / sd, 10, 0.05) == pytest.approx(0.8, abs=1e-3)
    assert verdicts.mde(sd, 5, 0.05, 0.8) == math.inf  # no exact test reaches 0.05 with 5 pairs
    assert verdicts.mde(None, 10, 0.05, 0.8) is None
    n = verdicts.seeds_needed(sd, 0.02, 0.05, 0.8)
    assert _power(0.02 / sd, n, 0.05) >= 0.8 > _power(0.02 / sd, n - 1, 0.05)
    assert verdicts.seeds_needed(1e-6, 0.02, 0.025, 0.8) == 7  # precise enough: the permutation floor


def test_seeds_needed_where_the_effect_is_many_times_sigma():
    """Where σ_d is far below the margin the noncentrality passes 10, scipy's lower-tail nct.cdf returns NaN and
    a power computed through it never reaches 0.8: the count must still be the permutation floor, and never
    fall as σ_d grows."""
    assert verdicts.seeds_needed(0.005, 0.02, 0.05, 0.8) == 6  # power at 6 pairs ≈ 1 (it said 10)
    assert verdicts.t_power(0.02 / 0.005, 6, 0.05) == pytest.approx(1.0, abs=1e-3)
    counts = [verdicts.seeds_needed(sd, 0.02, 0.0125, 0.8) for sd in np.geomspace(1e-4, 0.1, 120)]
    assert counts == sorted(counts) and counts[0] == verdicts.min_pairs(0.0125)
    for es, n in [(0.5, 10), (1.0, 8), (0.3, 40)]:  # statsmodels' figure where it is finite
        assert verdicts.t_power(es, n, 0.05) == pytest.approx(_power(es, n, 0.05), abs=1e-9)


def test_zero_differences_carry_no_sign():
    """A pair with no difference cannot be flipped: six pairs of which one is 0 are five for the exact test,
    whose smallest p, 2/32, cannot reach 0.05: no detectable effect is promised."""
    (row,) = verdicts.decide([[0.0, 0.05, 0.05, 0.05, 0.05, 0.06]], CompareConfig())
    assert row["p"] == pytest.approx(2 / 32) and row["verdict"] == "undecided" and row["mde"] == math.inf


def test_decide_resolves_finds_equivalence_or_says_what_it_could_detect():
    cfg = CompareConfig()
    up = [0.05, 0.06, 0.04, 0.05, 0.07, 0.05, 0.06]
    tiny = [0.001, -0.002, 0.0, 0.001, -0.001, 0.002, 0.0]
    a, b = verdicts.decide([up, tiny], cfg)
    assert a["verdict"] == "higher" and a["p"] == pytest.approx(2 / 128) and a["p_adj"] == pytest.approx(4 / 128)
    assert b["verdict"] == "equivalent" and b["p_tost_adj"] < 0.05 and a["family"] == 2
    (c,) = verdicts.decide([[0.05, 0.06, 0.04]], cfg)
    assert c["verdict"] == "undecided" and c["p"] == pytest.approx(0.25) and c["mde"] == math.inf
    assert c["seeds_needed"] >= 6
    (down,) = verdicts.decide([[-x for x in up]], cfg)
    assert down["verdict"] == "lower"
    # no verdict of either kind below the exact test's pairs: two equal-ish pairs are not "equivalent"
    (two,) = verdicts.decide([[0.001, 0.0012]], cfg)
    assert two["verdict"] == "undecided" and two["p_tost_adj"] == 1.0
    # no spread: equivalence from the mean alone, and no detectable effect to state
    (same,) = verdicts.decide([[0.0] * 7], cfg)
    assert same["verdict"] == "equivalent" and same["mde"] is None
    with pytest.raises(ValueError, match="finite"):
        verdicts.decide([[0.1, float("nan"), 0.2, 0.3, 0.1, 0.2, 0.2]], cfg)


def test_declared_comparisons_are_read_with_their_errors(tmp_path):
    assert verdicts.load_protocol(tmp_path) == CompareConfig()
    (tmp_path / verdicts.PROTOCOL_FILE).write_text(json.dumps({"primary": "match_utility", "secondary": [],
                                                               "baselines": ["dense"]}))
    assert verdicts.load_protocol(tmp_path).baselines == ["dense"]
    (tmp_path / verdicts.PROTOCOL_FILE).write_text(json.dumps({"margin": -1}))
    with pytest.raises(ConfigError, match=r"comparisons\.json.*margin must be positive"):
        verdicts.load_protocol(tmp_path)
    (tmp_path / verdicts.PROTOCOL_FILE).write_text(json.dumps({"baseline": ["dense"]}))
    with pytest.raises(ConfigError, match=r"unknown key.*baseline"):
        verdicts.load_protocol(tmp_path)
