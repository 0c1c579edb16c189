"""Paired differences between methods, seed by seed: each method against dense and against WAGLE (same task,
model and objective; WAGLE at the same ratio), on utility at matched forgetting and the trade-off score.

For a method M, a baseline B and a metric, the differences d_s = M_s - B_s over the seeds both ran (and both
have a value: a run that never reached the level has no utility at the match) get their mean and a 95%
percentile-bootstrap interval of the mean (aggregate.bootstrap_ci). A difference is *resolved* only when that
interval excludes 0 and there are at least three pairs (with two, the percentile interval is just the two
differences); otherwise it is reported as not resolved, and no winner is named. With 3 seeds the interval
spans roughly the smallest to the largest difference, so resolved then means every seed agrees on the sign.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from leaderboard.aggregate import bootstrap_ci, config_key, objective_label

METRICS = ("match_utility", "tradeoff_score")
BASELINES = ("dense", "wagle")
MIN_PAIRS = 3


def _method(spec: dict[str, Any]) -> tuple:
    return (spec.get("task"), spec.get("model"), spec.get("attribution"), spec.get("ratio"), objective_label(spec),
            config_key(spec))


def _by_method(records: list[dict[str, Any]]) -> dict[tuple, dict[int, dict[str, Any]]]:
    out: dict[tuple, dict[int, dict[str, Any]]] = {}
    for r in records:
        if r.get("kind") == "run" and r.get("status") == "finished":
            out.setdefault(_method(r["spec"]), {})[r["spec"].get("seed")] = r
    return out


def _baseline(method: tuple, name: str, methods: list[tuple]) -> tuple | None:
    """The baseline method `name` for `method`: same task, model, objective (and ratio, unless dense)."""
    task, model, attribution, ratio, objective, _ = method
    if attribution == name:
        return None
    found = sorted((m for m in methods if m[0] == task and m[1] == model and m[2] == name and m[4] == objective
                    and (name == "dense" or m[3] == ratio)), key=lambda m: tuple(str(x) for x in m))
    return found[0] if found else None


def _value(record: dict[str, Any], metric: str) -> float | None:
    return ((record.get("metrics") or {}).get(metric) or {}).get("value")


def difference(method_runs: dict[int, dict], base_runs: dict[int, dict], metric: str) -> dict[str, Any]:
    """Mean paired difference over common seeds, its 95% bootstrap interval and whether it is resolved."""
    diffs = []
    for seed in sorted(set(method_runs) & set(base_runs)):
        a, b = _value(method_runs[seed], metric), _value(base_runs[seed], metric)
        if a is not None and b is not None:
            diffs.append(a - b)
    if not diffs:
        return {"n": 0, "mean": None, "ci_low": None, "ci_high": None, "resolved": False, "verdict": "no pairs"}
    low, high = bootstrap_ci(diffs)
    resolved = len(diffs) >= MIN_PAIRS and (low > 0 or high < 0)
    verdict = ("higher" if low > 0 else "lower") if resolved else "not resolved"
    return {"n": len(diffs), "mean": float(np.mean(diffs)), "ci_low": low, "ci_high": high, "resolved": resolved,
            "verdict": verdict}


def paired_rows(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (method, baseline, metric) where both ran matched forgetting; sorted."""
    by_method = _by_method(records)
    methods = sorted(by_method, key=lambda m: tuple(str(x) for x in m))
    rows = []
    for m in methods:
        for name in BASELINES:
            base = _baseline(m, name, methods)
            if base is None:
                continue
            for metric in METRICS:
                if not any(_value(r, metric) is not None or metric in (r.get("metrics") or {})
                           for r in by_method[m].values()):
                    continue
                rows.append({"task": m[0], "model": m[1], "attribution": m[2], "ratio": m[3], "objective": m[4],
                             "config": m[5], "baseline": name, "metric": metric,
                             **difference(by_method[m], by_method[base], metric)})
    return rows
