"""Verdicts on paired seed differences: tests declared before the runs and valid at a handful of seeds.

A sweep declares its comparisons (`CompareConfig`): one primary metric, the baselines every other method is
compared with, an equivalence margin and α. For a method M and a baseline B the data are the paired
differences d_s = M_s − B_s over the seeds both ran. Each comparison gets

- the mean difference and its paired Student t interval (scipy.stats.ttest_1samp),
- an exact sign-flip permutation p-value: all 2^n sign patterns of the d_s (scipy.stats.permutation_test,
  permutation_type="samples"; a seeded draw of 99,999 patterns beyond 16 pairs); its smallest two-sided value
  is 2 / 2^n, so nothing resolves below 6 pairs, and a family of two needs 7,
- two one-sided t tests against ±margin (TOST, statsmodels' ttost_paired),

and the primary comparisons of one task and model form the declared family of m comparisons. Both sets of
p-values are adjusted by Bonferroni over the m (statsmodels' multipletests; `adjust` says why this and not
Holm), so the chance of any wrong verdict, of either kind, is at most α. The verdict:

- **resolved** (higher or lower): adjusted permutation p < α;
- **equivalent** within ±margin: adjusted TOST p < α;
- **undecided** otherwise, and always below the pairs the exact test needs at α/m, with the minimum
  detectable effect at this n (paired t at α/m, power 0.8, at the observed σ_d: an approximation, optimistic
  for the exact test below about 10 pairs; infinite while 2 / 2^n ≥ α/m) and the number of seeds that would
  detect a difference of the margin at that σ_d;
- **interim** while some of the seeds the sweep planned (`seeds`, written by the sweep with its declaration)
  have not run for both methods: the statistics are shown, the verdict waits for the plan. A sweep grown over
  several sessions is then decided once, at the size it declared, and not at whichever look first crosses α.

Secondary metrics get the mean and its t interval, never a verdict. Definitions: docs/metrics.md, "Verdicts".
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy import optimize, stats
from statsmodels.stats.multitest import multipletests
from statsmodels.stats.weightstats import ttost_paired

from harness.config import from_dict, option
from harness.errors import ConfigError

PROTOCOL_FILE = "comparisons.json"
MAX_SEEDS = 100_000  # seeds_needed looks no further
TINY = 1e-12  # a σ_d below this is rounding: the differences are all equal
EXACT_UP_TO = 16  # pairs up to which the sign-flip p enumerates every pattern (2^16 = 65,536)
MONTE_CARLO = 99_999  # sign patterns drawn beyond that (scipy counts the observed one: p >= 1/100,000)


@dataclass
class CompareConfig:
    primary: str = option("tradeoff_score", "the metric the verdicts are declared on (one per task and model)")
    secondary: list[str] = option(["match_utility"], "metrics compared pairwise with an interval but no verdict")
    baselines: list[str] = option(["dense", "random"], "attributions every other method is compared with (random "
                                                       "at the method's own ratio)")
    margin: float = option(0.02, "equivalence margin: a difference within ±margin counts as no difference")
    alpha: float = option(0.05, "chance of any wrong verdict in the declared family (Bonferroni over it)")
    power: float = option(0.8, "power at which the minimum detectable effect and the seeds needed are stated")
    seeds: list[int] = option([], "the test seeds the sweep plans (the sweep writes its own): until every one has "
                                  "run for both methods a verdict is interim; empty: decided on the seeds found")

    def validate(self) -> None:
        if not 0.0 < self.alpha < 1.0:
            raise ValueError(f"alpha must be in (0, 1), got {self.alpha}")
        if not 0.0 < self.power < 1.0:
            raise ValueError(f"power must be in (0, 1), got {self.power}")
        if not self.margin > 0.0:
            raise ValueError(f"margin must be positive, got {self.margin}")
        if not self.baselines:
            raise ValueError("baselines must name at least one attribution")
        if self.primary in self.secondary:
            raise ValueError(f"{self.primary} is the primary metric; leave it out of secondary")
        if len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds must not repeat, got {self.seeds}")


def t_interval(values: Sequence[float], level: float = 0.95) -> tuple[float, float] | None:
    """Student t interval of the mean; None for fewer than two values, the mean for values all equal."""
    v = np.asarray(values, dtype=np.float64)
    if v.size < 2:
        return None
    if np.std(v) < TINY:
        return float(v.mean()), float(v.mean())
    low, high = stats.ttest_1samp(v, 0.0).confidence_interval(level)
    return float(low), float(high)


def sign_flip_p(diffs: Sequence[float] | np.ndarray) -> Any:
    """Exact two-sided p of the mean over all 2^n sign flips of the paired differences (the last axis: a 2-D
    array gives one p per row)."""
    d = np.asarray(diffs, dtype=np.float64)
    if d.shape[-1] < 2:  # one pair: its two sign patterns are one each side of zero
        return 1.0 if d.ndim == 1 else np.ones(d.shape[:-1])
    if d.ndim == 1 and np.all(d == 0):
        return 1.0
    exact = d.shape[-1] <= EXACT_UP_TO  # 2^n sign patterns; beyond, a seeded Monte Carlo draw of them
    result = stats.permutation_test((d,), np.mean, permutation_type="samples",
                                    n_resamples=np.inf if exact else MONTE_CARLO, alternative="two-sided",
                                    vectorized=True, axis=-1, rng=np.random.default_rng(0))
    p = np.minimum(1.0, result.pvalue)
    return float(p) if d.ndim == 1 else p


def tost_p(diffs: Sequence[float], margin: float) -> float:
    """TOST p for |mean difference| < margin (paired t); 1 below two pairs; with no spread at all, 0 when the
    difference is inside the margin and 1 when not."""
    d = np.asarray(diffs, dtype=np.float64)
    if d.size < 2:
        return 1.0
    if np.std(d) < TINY:  # every pair the same difference: inside the margin or not, no t statistic needed
        return 0.0 if abs(d.mean()) < margin else 1.0
    p, _, _ = ttost_paired(d, np.zeros_like(d), -margin, margin)
    return float(p)


def min_pairs(alpha: float) -> int:
    """The fewest pairs whose exact sign-flip test can reach two-sided p < alpha: 2 / 2^n < alpha."""
    return math.floor(math.log2(2.0 / alpha)) + 1


def t_power(effect_size: float, n: int, alpha: float) -> float:
    """Power of a two-sided paired t test at level alpha with n pairs against a standardized effect: both tails of
    the noncentral t (scipy.stats.nct), each as a survival function. statsmodels' TTestPower takes the lower
    tail as a cdf, which scipy returns as NaN once the noncentrality passes about 10."""
    df, nc = n - 1, effect_size * math.sqrt(n)
    c = stats.t.isf(alpha / 2, df)
    return float(stats.nct.sf(c, df, nc) + stats.nct.sf(c, df, -nc))


def mde(sd: float | None, n: int, alpha: float, power: float, signed: int | None = None) -> float | None:
    """Minimum detectable effect of a two-sided paired t test at level alpha: Cohen's d times σ_d; inf where
    the exact permutation test cannot reach alpha with n pairs, or with the `signed` pairs whose difference is
    not zero (a zero difference has no sign to flip); None without an estimate of σ_d (or where it is 0)."""
    if n < min_pairs(alpha):
        return math.inf
    if sd is None or not np.isfinite(sd) or sd < TINY:
        return None
    if signed is not None and signed < min_pairs(alpha):
        return math.inf
    effect = optimize.brentq(lambda es: t_power(es, n, alpha) - power, 1e-9, 1e3)  # power rises with the effect
    return float(effect) * sd


def seeds_needed(sd: float | None, effect: float, alpha: float, power: float) -> int | None:
    """Seed pairs for a two-sided paired t test at level alpha to detect `effect` at σ_d = sd with `power`
    (and at least the permutation test's minimum, which is also the answer when σ_d is 0); None without an
    estimate of σ_d."""
    if sd is None or not np.isfinite(sd):
        return None
    if sd < TINY:
        return min_pairs(alpha)

    def enough(n: int) -> bool:
        return t_power(effect / sd, n, alpha) >= power

    high = 2
    while not enough(high):  # power grows with n: double, then bisect
        if high >= MAX_SEEDS:
            return None
        high *= 2
    low = high // 2
    while high - low > 1:
        mid = (low + high) // 2
        low, high = (low, mid) if enough(mid) else (mid, high)
    return max(min_pairs(alpha), high)


def describe(diffs: Sequence[float]) -> dict[str, Any]:
    """n, mean, σ_d and the paired t interval of the differences (the part every comparison has)."""
    d = np.asarray(diffs, dtype=np.float64)
    if d.size == 0:
        return {"n": 0, "mean": None, "sd": None, "ci_low": None, "ci_high": None}
    ci = t_interval(d)
    return {"n": int(d.size), "mean": float(d.mean()), "sd": float(d.std(ddof=1)) if d.size > 1 else None,
            "ci_low": None if ci is None else ci[0], "ci_high": None if ci is None else ci[1]}


def adjust(perm: Sequence[float], tost: Sequence[float], alpha: float) -> tuple[np.ndarray, np.ndarray]:
    """Both sets of p-values of one family adjusted so that the chance of any wrong verdict, a false difference
    or a false equivalence, is at most alpha: Bonferroni over the m comparisons (statsmodels' multipletests).
    Each comparison has two null hypotheses (no difference; a difference of at least the margin) of which at
    most one is true, so at most m of the 2m tests can reject a true null, each at alpha/m. Holm's step-down on
    either set alone keeps that set's error rate but lets the two add up (to 2α)."""
    return (multipletests(perm, alpha=alpha, method="bonferroni")[1],
            multipletests(tost, alpha=alpha, method="bonferroni")[1])


def decide(family: list[list[float]], cfg: CompareConfig) -> list[dict[str, Any]]:
    """The verdicts of one declared family (each entry a comparison's paired differences): raw and adjusted
    permutation and TOST p-values, the verdict, the minimum detectable effect and the seeds needed. A
    comparison with fewer pairs than the exact test needs at alpha/m gets no verdict of either kind, and one
    whose differences are not all finite is refused."""
    m = len(family)
    if m == 0:
        return []
    for d in family:
        if not np.all(np.isfinite(np.asarray(d, dtype=np.float64))):
            raise ValueError(f"paired differences must be finite, got {list(d)}")
    floor = min_pairs(cfg.alpha / m)
    perm = [sign_flip_p(d) for d in family]  # below `floor` pairs it cannot reach alpha/m by itself
    tost = [tost_p(d, cfg.margin) if len(d) >= floor else 1.0 for d in family]  # TOST could: held to the same
    perm_adj, tost_adj = adjust(perm, tost, cfg.alpha)
    out = []
    for d, p, pa, t, ta in zip(family, perm, perm_adj, tost, tost_adj, strict=True):
        row = describe(d)
        row.update({"family": m, "margin": cfg.margin, "alpha": cfg.alpha, "p": p, "p_adj": float(pa), "p_tost": t,
                    "p_tost_adj": float(ta),
                    "mde": mde(row["sd"], row["n"], cfg.alpha / m, cfg.power, int(np.count_nonzero(d))),
                    "seeds_needed": seeds_needed(row["sd"], cfg.margin, cfg.alpha / m, cfg.power)})
        if row["n"] and pa < cfg.alpha:
            row["verdict"] = "higher" if row["mean"] > 0 else "lower"
        elif row["n"] and ta < cfg.alpha:
            row["verdict"] = "equivalent"
        else:
            row["verdict"] = "undecided"
        out.append(row)
    return out


def interim(decided: dict[str, Any], missing: Sequence[int]) -> dict[str, Any]:
    """A decided comparison whose planned seeds `missing` have not all run: the same statistics, verdict
    `interim`, and the seeds still to come."""
    return dict(decided, verdict="interim" if missing else decided["verdict"], pending=len(missing))


def load_protocol(results_dir: Path) -> CompareConfig:
    """The comparisons a sweep declared in its results folder (`comparisons.json`), or the defaults."""
    path = Path(results_dir) / PROTOCOL_FILE
    if not path.is_file():
        return CompareConfig()
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}: not valid JSON ({exc.msg})") from None
    return from_dict(CompareConfig, data, str(path))
