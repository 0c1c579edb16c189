"""Question-level resampling of matched-forgetting numbers, and the two-level bootstrap of a paired difference.

A run record keeps its probe per question (`match.questions`: the target's and the retain model's, every
check's, the bisected model's, and each question's cluster, TOFU's author). A draw of questions is a weight
per question: clusters drawn with replacement (a question weighs as often as its cluster was drawn), or the
questions themselves where a set has fewer than MIN_CLUSTERS clusters (a bootstrap over 2 to 4 authors has
too few distinct draws; drawing their questions ignores that questions of one author move together).
Where a run stopped is held fixed: the bisected model counts as the match under every draw, as it does in the
record (harness/measure/match.py), so the question level measures the noise of the numbers at that model, not of
where the run would have stopped. `replay` recomputes a run's trade-off score or
utility at the match from its per-question values under such draws, exactly as harness/measure/match.py computes
them from the whole sets (the all-ones draw gives the record's own number back).

The two-level bootstrap of a paired difference draws the seed pairs with replacement and, in the same
replicate, one draw of questions shared by every run (the same questions in both arms and in every seed). Its
variance is split into what seeds alone and questions alone give, so a reader sees which one more of would
narrow the interval.
"""

from __future__ import annotations

from typing import Any

import numpy as np

METRICS = ("tradeoff_score", "match_utility")
RESAMPLES = 2000
MAX_UNDEFINED = 0.01  # the largest share of question draws left out of the two-level interval (two_level)
MIN_CLUSTERS = 5  # below this many authors in a set, its questions are drawn one by one


def has_questions(record: dict[str, Any]) -> bool:
    return bool(((record.get("match") or {}).get("questions") or {}).get("target"))


def draws(questions: dict[str, Any], resamples: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Per probe key, a (resamples, n) array of question weights."""
    out = {}
    for key, values in questions["target"].items():
        n = len(values)
        labels = questions.get("clusters", {}).get(key) or list(range(n))
        groups, index = np.unique(np.asarray(labels), return_inverse=True)
        if len(groups) < MIN_CLUSTERS:  # too few authors to draw: draw their questions
            groups, index = np.arange(n), np.arange(n)
        counts = rng.multinomial(len(groups), np.full(len(groups), 1.0 / len(groups)), size=resamples)
        out[key] = counts[:, index].astype(np.float64)
    return out


def ones(questions: dict[str, Any]) -> dict[str, np.ndarray]:
    """The draw that keeps every question once."""
    return {key: np.ones((1, len(v))) for key, v in questions["target"].items()}


def _means(rows: list[dict[str, list[float]]], key: str, w: np.ndarray) -> np.ndarray:
    values = np.asarray([r[key] for r in rows], dtype=np.float64)  # (rows, n)
    return (w @ values.T) / w.sum(axis=1, keepdims=True)  # (draws, rows)


def _utility(rows: list[dict[str, list[float]]], probe: str, w: dict[str, np.ndarray]) -> np.ndarray:
    if probe != "utility":
        return _means(rows, probe, w[probe])
    parts = np.stack([_means(rows, k, w[k]) for k in sorted(w) if k.startswith("utility/")])  # (parts, draws, rows)
    with np.errstate(divide="ignore"):
        return np.where((parts > 0).all(axis=0), len(parts) / (1.0 / parts).sum(axis=0), 0.0)


def _segment_arrays(e: np.ndarray, u: np.ndarray):
    """harness/measure/match.py's `_segments` of many trajectories at once (e, u of shape (trajectories,
    points)). Per segment (points - 1 of them): whether it advances the running maximum of e within [0, 1], and
    its (lo, u(lo), hi, u(hi)), with the same floating-point operations in the same order as `_segments`. A
    segment after the running maximum reached 1 never advances, as `_segments` stops there. The arrays keep the
    two-level bootstrap's thousands of replays per run fast (benchmarks/two_level.py)."""
    e1, e2, u1, u2 = e[:, :-1], e[:, 1:], u[:, :-1], u[:, 1:]
    reach = np.maximum.accumulate(np.concatenate([np.zeros((len(e), 1)), np.maximum(e[:, 1:-1], 0.0)], axis=1),
                                  axis=1)  # the running maximum before each segment (the first point not in it)
    lo, hi = np.maximum(e1, reach), np.minimum(e2, 1.0)
    live = (e2 > reach) & (hi > lo)
    with np.errstate(divide="ignore", invalid="ignore"):
        slope = (u2 - u1) / (e2 - e1)
        return live, lo, u1 + slope * (lo - e1), hi, u1 + slope * (hi - e1)


def tradeoff_scores(e: np.ndarray, u: np.ndarray) -> np.ndarray:
    """harness/measure/match.py's tradeoff_score of each row of e, u (shape (trajectories, points)), bit for
    bit: the trapezoids are added one segment at a time, left to right, as Python's sum adds them."""
    live, lo, ua, hi, ub = _segment_arrays(e, u)
    total = np.zeros(len(e))
    for i in range(live.shape[1]):
        total = total + np.where(live[:, i], (hi[:, i] - lo[:, i]) * (ua[:, i] + ub[:, i]) / 2, 0.0)
    return total


def at_matches(e: np.ndarray, u: np.ndarray) -> np.ndarray:
    """harness/measure/match.py's at_match of each row of e, u (shape (trajectories, points)); NaN where e
    never reaches 1."""
    live, _, _, hi, ub = _segment_arrays(e, u)
    ends = live & (hi >= 1.0)
    first = ends.argmax(axis=1)
    return np.where(ends.any(axis=1), ub[np.arange(len(e)), first], np.nan)


def trajectories(record: dict[str, Any], w: dict[str, np.ndarray]) -> tuple[np.ndarray, ...]:
    """The run's matched-forgetting points under each draw of question weights, as harness/measure/match.py
    places them from the whole sets: efficacy e and relative utility u (shape (draws, points)), the reference
    utility per draw, and whether the draw leaves something to unlearn (the target's forget probe above the
    level)."""
    m = record["match"]
    q, probe = m["questions"], m["probe"]
    bisection = m.get("bisection")
    rows = [q["target"], *q["checks"]]
    steps = [0, *(c["step"] for c in q["checks"])]
    if bisection is not None:
        rows = [r for r, s in zip(rows, steps, strict=True) if s <= bisection["from_step"]]
    forget, utility = _means(rows, "forget", w["forget"]), _utility(rows, probe, w)
    fixed = ((record.get("spec") or {}).get("match") or {}).get("level")
    level = (_means([q["retain"]], "forget", w["forget"])[:, 0] if fixed is None and "retain" in q
             else np.full(forget.shape[0], m["level"]))
    reference = _utility([q["retain"] if "retain" in q else q["target"]], probe, w)[:, 0]
    start = forget[:, :1]
    with np.errstate(divide="ignore", invalid="ignore"):
        e, u = (start - forget) / (start - level[:, None]), utility / reference[:, None]
        if bisection is not None:  # the match, as harness/measure/match.py::summarize places it
            matched = _utility([q["matched"]], probe, w)[:, 0]
            e_match = (np.ones_like(level) if bisection.get("within", True)
                       else (start[:, 0] - _means([q["matched"]], "forget", w["forget"])[:, 0]) / (start[:, 0] - level))
            e, u = np.column_stack([e, e_match]), np.column_stack([u, matched / reference])
    return e, u, reference, (start[:, 0] > level) & (reference > 0)


def replay(record: dict[str, Any], metric: str, w: dict[str, np.ndarray]) -> np.ndarray:
    """The run's `metric` (tradeoff_score or match_utility) under each draw of question weights; NaN where a
    draw leaves nothing to unlearn (the target's forget probe at or below the level)."""
    e, u, reference, defined = trajectories(record, w)
    out = tradeoff_scores(e, u) if metric == "tradeoff_score" else at_matches(e, u) * reference
    return np.where(defined, out, np.nan)


def same_questions(q: dict[str, Any], other: dict[str, Any]) -> bool:
    """Whether two runs were probed on the same questions in the same order: the same sets, sizes and clusters,
    and the same target model's value on each question (the values identify the questions: another question
    moves them by a tenth, rounding on another machine's kernels by 10⁻⁴ at most; a NaN matches a NaN)."""
    if {k: len(v) for k, v in q["target"].items()} != {k: len(v) for k, v in other["target"].items()}:
        return False
    return q.get("clusters") == other.get("clusters") and all(
        np.allclose(np.asarray(v, dtype=float), np.asarray(other["target"][k], dtype=float), rtol=1e-3, atol=1e-6,
                    equal_nan=True) for k, v in q["target"].items())


def two_level(pairs: list[tuple[dict[str, Any], dict[str, Any]]], metric: str, resamples: int = RESAMPLES,
              seed: int = 0) -> dict[str, float] | None:
    """The two-level bootstrap of the mean paired difference of `metric` over `pairs` (method record, baseline
    record; one pair per seed): its 95% percentile interval, and the variances of the one-way bootstraps over
    seeds alone and over questions alone (both hold the seed × question interaction, so their shares are a
    guide to which more of would narrow the interval, not a decomposition). None below two pairs, when a record
    has no per-question values, when the runs were probed on different question sets, or when more than
    MAX_UNDEFINED of the question draws leave some run short of the level (its metric undefined there); below
    that share those draws are left out for every seed alike, so the interval is conditional on the level
    being reached."""
    if len(pairs) < 2 or not all(has_questions(r) for pair in pairs for r in pair):
        return None
    first = pairs[0][0]["match"]["questions"]

    if not all(same_questions(r["match"]["questions"], first) for p in pairs for r in p):
        return None
    rng = np.random.default_rng(seed)
    w = draws(first, resamples, rng)
    diffs = np.stack([replay(a, metric, w) - replay(b, metric, w) for a, b in pairs])  # (seeds, draws)
    base = np.array([(replay(a, metric, ones(first)) - replay(b, metric, ones(first)))[0] for a, b in pairs])
    picks = rng.integers(0, len(pairs), size=(resamples, len(pairs)))
    undefined = np.isnan(diffs).any(axis=0)  # a question draw under which some run never reaches the level
    if undefined.mean() > MAX_UNDEFINED or np.isnan(base).any():
        return None
    both = diffs[picks, np.arange(resamples)[:, None]].mean(axis=1)[~undefined]
    seeds_only, questions_only = base[picks].mean(axis=1), diffs[:, ~undefined].mean(axis=0)
    var_s, var_q = float(np.var(seeds_only)), float(np.var(questions_only))
    low, high = np.quantile(both, [0.025, 0.975])
    return {"two_level_low": float(low), "two_level_high": float(high), "var_seeds": var_s, "var_questions": var_q,
            "question_share": var_q / (var_s + var_q) if var_s + var_q > 0 else None}

