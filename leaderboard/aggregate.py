"""Per-method rows: finished runs grouped by everything but the seed, each metric's mean over seeds and the
95% Student t interval of that mean."""

from __future__ import annotations

from typing import Any

import numpy as np

from harness.method import MethodKey, labels
from leaderboard.verdicts import t_interval

GROUP_COLUMNS = ["task", "model", "attribution", "ratio", "objective", "config"]
TIMINGS = ("attribution_s", "unlearning_s", "evaluation_s")


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
    """One row per method configuration: n seeds, then per metric mean / ci_low / ci_high; sorted."""
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for r in records:
        if r.get("kind") != "run" or r.get("status") != "finished":
            continue
        groups.setdefault(method_key(r), []).append(r)
    names = labels([k for _, _, k in groups])
    rows = []
    for task, model, key in sorted(groups, key=lambda k: (str(k[0]), str(k[1]), k[2])):
        runs = groups[(task, model, key)]
        row: dict[str, Any] = {"task": task, "model": model, "attribution": key.attribution, "ratio": key.ratio,
                               "objective": key.objective_text, "config": key.config, "key": key,
                               "label": names[key]}
        row["seeds"] = " ".join(str(s) for s in sorted(r["spec"].get("seed") for r in runs))
        row["n"] = len(runs)
        spec = runs[0]["spec"]
        row["lr"] = (spec.get("train") or {}).get("lr")
        row["tuned_from"] = list(spec.get("tuned_from") or [])
        row["level"] = (runs[0].get("match") or {}).get("level")
        metrics: dict[str, tuple[str, str, list[float]]] = {}
        for r in runs:
            for name, m in run_metrics(r).items():
                if m.get("value") is not None:
                    metrics.setdefault(name, (m.get("direction", ""), m.get("group", ""), []))[2].append(
                        float(m["value"]))
        row["metrics"] = {}
        for name in sorted(metrics):
            direction, group, values = metrics[name]
            low, high = mean_ci(values)
            row["metrics"][name] = {"direction": direction, "group": group, "mean": float(np.mean(values)),
                                    "ci_low": low, "ci_high": high, "n": len(values)}
        rows.append(row)
    return rows


def run_metrics(record: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """A record's metrics, plus its phase timings as metrics of group 'timing'."""
    out = dict(record.get("metrics") or {})
    for name in TIMINGS:
        value = (record.get("timings") or {}).get(name)
        if value is not None:
            out[f"time_{name}"] = {"value": value, "direction": "lower", "group": "timing"}
    return out
