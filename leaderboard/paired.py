"""Paired differences between methods, seed by seed, and the verdicts declared on them.

For a method M, a baseline B (an attribution the sweep declared: dense, and random at M's own ratio, by
default; same task, model and objective) and a metric, the differences d_s = M_s − B_s over the seeds both
ran, where both have a value (a run that never reached the level has no utility at the match). The primary
metric's comparisons of every method that is not itself a baseline form one declared family per task and
model, decided by leaderboard.verdicts (exact sign-flip permutation test, TOST, Bonferroni); the other rows (the
secondary metrics, baselines against each other) get the mean and its paired t interval, no verdict. Where
the records keep their probe per question, the trade-off score and utility at the match also get the two-level
bootstrap interval (seeds, then questions) and the questions' share of the two one-way variances.
"""

from __future__ import annotations

import math
from typing import Any

from harness.run.method import MethodKey, labels
from leaderboard import questions, verdicts
from leaderboard.aggregate import method_key
from leaderboard.verdicts import CompareConfig

STATS = ("n", "mean", "sd", "ci_low", "ci_high", "family", "margin", "alpha", "p", "p_adj", "p_tost", "p_tost_adj",
         "verdict", "pending", "mde", "seeds_needed", "two_level_low", "two_level_high", "var_seeds", "var_questions",
         "question_share")


Method = tuple[str, str, MethodKey]  # (task, model, method): aggregate.method_key


def _by_method(records: list[dict[str, Any]]) -> dict[Method, dict[int, dict[str, Any]]]:
    out: dict[Method, dict[int, dict[str, Any]]] = {}
    for r in records:
        if r.get("kind") == "run" and r.get("status") == "finished":
            out.setdefault(method_key(r), {})[r["spec"].get("seed")] = r
    return out


def _ran(records: list[dict[str, Any]]) -> dict[Method, set[int]]:
    """Per method, the seeds whose run has ended (finished or failed): a planned seed not among them for both
    sides of a comparison keeps its verdict interim."""
    out: dict[Method, set[int]] = {}
    for r in records:
        if r.get("kind") == "run" and r.get("status") in ("finished", "failed"):
            out.setdefault(method_key(r), set()).add(r["spec"].get("seed"))
    return out


def _baseline(method: Method, name: str, methods: list[Method]) -> Method | None:
    """The baseline method `name` for `method`: same task, model, objective, update rule and mode, and the
    same ratio unless the baseline has no mask (dense, LoRA: ratio 1 as keyed)."""
    task, model, key = method
    if key.attribution == name:
        return None
    found = sorted(m for m in methods if m[:2] == (task, model) and m[2].attribution == name
                   and m[2].objective_text == key.objective_text and m[2].ratio in (key.ratio, 1.0))
    return found[0] if found else None


def finite_value(record: dict[str, Any], metric: str) -> float | None:
    """The record's finite value of `metric`, else None (no value, or NaN/inf: never a pair)."""
    value = ((record.get("metrics") or {}).get(metric) or {}).get("value")
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None


def record_pairs(method_runs: dict[int, dict], base_runs: dict[int, dict], metric: str) -> list[tuple[dict, dict]]:
    """(M_s, B_s) records over the seeds both ran and both have a value of `metric`, in seed order."""
    return [(method_runs[s], base_runs[s]) for s in sorted(set(method_runs) & set(base_runs))
            if finite_value(method_runs[s], metric) is not None and finite_value(base_runs[s], metric) is not None]


def differences(method_runs: dict[int, dict], base_runs: dict[int, dict], metric: str) -> list[float]:
    """M_s − B_s over the seeds both ran and both have a value of `metric`, in seed order."""
    return [finite_value(a, metric) - finite_value(b, metric) for a, b in record_pairs(method_runs, base_runs, metric)]


def paired_rows(records: list[dict[str, Any]], cfg: CompareConfig | None = None) -> list[dict[str, Any]]:
    """One row per (method, declared baseline, compared metric) where both have values; the primary rows of
    methods that are not baselines carry their family's verdicts. Sorted by method, baseline, metric."""
    cfg = cfg or CompareConfig()
    by_method = _by_method(records)
    methods = sorted(by_method)
    names = labels([m[2] for m in methods])
    ran = _ran(records)
    rows, family, diffs, missing = [], {}, {}, {}
    for m in methods:
        for name in cfg.baselines:
            base = _baseline(m, name, methods)
            if base is None:
                continue
            for metric in [cfg.primary, *cfg.secondary]:
                if not any(metric in (r.get("metrics") or {}) for r in by_method[m].values()):
                    continue
                pairs = record_pairs(by_method[m], by_method[base], metric)
                d = [finite_value(a, metric) - finite_value(b, metric) for a, b in pairs]
                key = m[2]
                row = {"task": m[0], "model": m[1], "attribution": key.attribution, "ratio": key.ratio,
                       "objective": key.objective_text, "config": key.config, "key": key, "label": names[key],
                       "baseline": name,
                       "metric": metric,
                       "role": "primary" if metric == cfg.primary and key.attribution not in cfg.baselines
                       else "secondary",
                       **dict.fromkeys(STATS), "verdict": "", **verdicts.describe(d)}
                if metric in questions.METRICS:  # seeds and questions resampled together (leaderboard/questions.py)
                    row.update(questions.two_level(pairs, metric) or {})
                rows.append(row)
                diffs[id(row)] = d
                missing[id(row)] = sorted(set(cfg.seeds) - (ran.get(m, set()) & ran.get(base, set())))
                if row["role"] == "primary":
                    family.setdefault((m[0], m[1]), []).append(row)
    for members in family.values():
        for row, decided in zip(members, verdicts.decide([diffs[id(r)] for r in members], cfg), strict=True):
            row.update(verdicts.interim(decided, missing[id(row)]))
    return rows
