"""Per-method rows: finished runs grouped by everything but the seed, each metric's mean over seeds and the
95% Student t interval of that mean."""

from __future__ import annotations

from typing import Any

import numpy as np

from harness.run import records as records_mod
from harness.run.method import MethodKey, labels
from leaderboard.verdicts import t_interval

GROUP_COLUMNS = ["task", "model", "attribution", "ratio", "objective", "config"]
TIMINGS = records_mod.TIMINGS


def mean_ci(values: list[float], level: float = 0.95) -> tuple[float, float]:
    """Student t interval of the mean over seeds (leaderboard.verdicts.t_interval); one value: the point. A
    percentile bootstrap over 3 seeds is not used: its interval is the range of the values."""
    if not values:
        raise ValueError("an interval of no values")
    ci = t_interval(values, level)
    return (float(values[0]), float(values[0])) if ci is None else ci


def method_key(record: dict[str, Any]) -> tuple[str, str, MethodKey]:
    """(task, model, method) of a record: the group its method row is."""
    spec = record["spec"]
    return spec.get("task"), spec.get("model"), MethodKey.of(spec)


def method_rows(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per method configuration (finished test runs grouped by task, model and MethodKey, with
    pandas over the records' tidy frame, harness.run.records.tidy): n seeds, then per metric mean / ci_low /
    ci_high; sorted."""
    done = [r for r in records if r.get("kind") == "run" and r.get("status") == "finished"]
    by_id = {r["id"]: r for r in done}
    values = records_mod.tidy(done).dropna(subset=["value"])
    groups: dict[tuple, list[str]] = {}
    for r in done:
        groups.setdefault(method_key(r), []).append(r["id"])
    names = labels([k for _, _, k in groups])
    rows = []
    for task, model, key in sorted(groups, key=lambda k: (str(k[0]), str(k[1]), k[2])):
        runs = [by_id[i] for i in groups[(task, model, key)]]
        spec = runs[0]["spec"]
        row: dict[str, Any] = {"task": task, "model": model, "attribution": key.attribution, "ratio": key.ratio,
                               "objective": key.objective_text, "config": key.config, "key": key,
                               "label": names[key],
                               "seeds": " ".join(str(s) for s in sorted(r["spec"].get("seed") for r in runs)),
                               "n": len(runs), "lr": (spec.get("train") or {}).get("lr"),
                               "tuned_from": list(spec.get("tuned_from") or []),
                               "level": (runs[0].get("match") or {}).get("level"), "metrics": {}}
        mine = values[values["id"].isin(groups[(task, model, key)])]
        for name, g in sorted(mine.groupby("metric", sort=False), key=lambda item: item[0]):
            vals = [float(v) for v in g["value"]]
            low, high = mean_ci(vals)
            row["metrics"][name] = {"direction": g["direction"].iloc[0], "group": g["group"].iloc[0],
                                    "mean": float(np.mean(vals)), "ci_low": low, "ci_high": high, "n": len(vals)}
        rows.append(row)
    return rows


run_metrics = records_mod.with_timings  # a record's metrics with its phase timings (group "timing")
