"""Per-method rows: finished runs grouped by everything but the seed, each metric's mean over seeds and the
95% Student t interval of that mean."""

from __future__ import annotations

from typing import Any

import numpy as np

from harness.cache import stable_hash
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


def objective_label(spec: dict[str, Any]) -> str | None:
    """The objective as tables show it, with its update rule when that is not AdamW and SPUNGE's merge when
    it split the forget set (`graddiff [soul]`, `npo [spunge-ties]`)."""
    objective = spec.get("objective")
    tags = [] if (spec.get("optimizer") or "adamw") == "adamw" else [spec["optimizer"]]
    if (spec.get("spunge") or {}).get("enabled"):
        tags.append(f"spunge-{spec['spunge'].get('merge', 'ties')}")
    if (spec.get("offset") or {}).get("enabled"):
        tags.append(f"offset via {spec['offset'].get('small_model')}")
    return objective if not tags or objective is None else f"{objective} [{', '.join(tags)}]"


# Not part of a method's identity: the seed, the device, the probes (they attack the model after its
# evaluation and change nothing in it; a sweep may probe some seeds only, e.g. relearning on seed 0), and
# whether the full evaluation ran (a sweep's extra seeds stop at the match: the same method, fewer metrics).
NOT_METHOD = ("seed", "device", "probes", "probe_config", "full_evaluation")


def config_key(spec: dict[str, Any]) -> str:
    """A short hash of the spec without its seed, device and probes: the runs of one method share it."""
    return stable_hash({k: v for k, v in spec.items() if k not in NOT_METHOD}, 8)


def method_rows(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per method configuration: n seeds, then per metric mean / ci_low / ci_high; sorted."""
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for r in records:
        if r.get("kind") != "run" or r.get("status") != "finished":
            continue
        s = r["spec"]
        key = (s.get("task"), s.get("model"), s.get("attribution"), s.get("ratio"), objective_label(s),
               config_key(s))
        groups.setdefault(key, []).append(r)
    rows = []
    for key in sorted(groups, key=lambda k: tuple(str(x) for x in k)):
        runs = groups[key]
        row: dict[str, Any] = dict(zip(GROUP_COLUMNS, key, strict=True))
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
