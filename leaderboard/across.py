"""Across tasks, as rliable reports RL benchmarks (Agarwal et al., NeurIPS 2021; google-research/rliable,
`rliable/metrics.py` and `rliable/library.py`): per method, the interquartile mean of its normalised trade-off
scores over every run of every task, with a task-stratified bootstrap interval; its probability of improvement
over dense; and a performance profile.

The trade-off score is already normalised (the target model 0, the retain model 1: docs/metrics.md), so scores
of different tasks share one scale. A method is its label on each task's board (harness.run.method: the
attribution (ratio) + objective, with the config digest appended where two configurations of one label ran
on that task, so configurations are never pooled); its settings may differ from task to task (each task
tunes its own rate). Each method's row covers the tasks it shares with the baseline (its own tasks when it
shares none, or there is no baseline; the baseline's row, all its tasks), so rows may cover different task
sets: the `tasks` column says which, with each task's run count. As rliable does:

- IQM: `scipy.stats.trim_mean(scores, 0.25)` over all runs of all tasks (`aggregate_iqm`);
- probability of improvement of X over Y: per task, the Mann-Whitney U of X's runs against Y's divided by
  n_X n_Y (P(X > Y) + P(X = Y)/2), averaged over tasks (`probability_of_improvement`);
- intervals: 95% percentile intervals of a stratified bootstrap, runs drawn with replacement within each task
  (X's and Y's independently for the probability of improvement);
- performance profile: for each threshold τ, the share of runs scoring above τ, averaged over tasks (the same
  as rliable's share over all runs when every task has as many runs).

rliable scores a runs × tasks matrix, so each task weighs the same. Here tasks may have different numbers of
runs, and the pooled IQM (and its interval) then weighs each task by its runs: the `tasks` column gives the
counts. Each method's bootstrap has its own generator, seeded from its label, so adding a method to the
records leaves the other rows' intervals as they were.
"""

from __future__ import annotations

import csv
import io
import zlib
from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats

from harness.io import spreadsheet_safe
from harness.run.method import MethodKey, labels
from leaderboard.paired import finite_value

RESAMPLES = 2000
METRIC = "tradeoff_score"


def scored(records: list[dict[str, Any]], metric: str = METRIC
           ) -> dict[str, tuple[MethodKey, dict[str, np.ndarray]]]:
    """Per method label (as each task's board names it): its key and, per task, the finished test runs' values
    of `metric` (runs that have one)."""
    by_task: dict[str, dict[MethodKey, list[float]]] = {}
    for r in records:
        value = finite_value(r, metric)
        if r.get("kind") == "run" and r.get("status") == "finished" and value is not None:
            by_task.setdefault(r["spec"]["task"], {}).setdefault(MethodKey.of(r["spec"]), []).append(float(value))
    out: dict[str, tuple[MethodKey, dict[str, np.ndarray]]] = {}
    for task, methods in sorted(by_task.items()):
        for key, label in labels(list(methods)).items():
            out.setdefault(label, (key, {}))[1][task] = np.asarray(methods[key])
    return dict(sorted(out.items()))


def scores(records: list[dict[str, Any]], metric: str = METRIC) -> dict[str, dict[str, np.ndarray]]:
    """Per method label, per task, the finished test runs' values of `metric`."""
    return {label: per_task for label, (_, per_task) in scored(records, metric).items()}


def baseline_runs(found: dict[str, tuple[MethodKey, dict[str, np.ndarray]]], key: MethodKey,
                  baseline: str) -> dict[str, np.ndarray]:
    """Per task, the runs of the baseline attribution with `key`'s objective (update rule and mode alike): its
    one configuration there (a task where it ran in several is left out: which is the baseline is not said)."""
    per: dict[str, list[np.ndarray]] = {}
    for k, per_task in found.values():
        if k.attribution == baseline and k.objective_text == key.objective_text:
            for task, values in per_task.items():
                per.setdefault(task, []).append(values)
    return {task: v[0] for task, v in per.items() if len(v) == 1}


def iqm(per_task: dict[str, np.ndarray]) -> np.ndarray | float:
    """25% trimmed mean over every run of every task; arrays of shape (draws, runs) give one per draw."""
    pooled = np.concatenate(list(per_task.values()), axis=-1)
    return stats.trim_mean(pooled, 0.25, axis=-1) if pooled.ndim > 1 else float(stats.trim_mean(pooled, 0.25))


def improvement(x: dict[str, np.ndarray], y: dict[str, np.ndarray]) -> np.ndarray | float:
    """P(X > Y) + P(X = Y)/2 per task (Mann-Whitney U / n_X n_Y: 0.5 for identical samples), averaged over the
    tasks; arrays of shape (draws, runs) give one per draw."""
    out = []
    for task in x:
        a, b = np.asarray(x[task]), np.asarray(y[task])
        out.append(stats.mannwhitneyu(a, b, alternative="greater", axis=-1).statistic / (a.shape[-1] * b.shape[-1]))
    mean = np.mean(out, axis=0)
    return float(mean) if np.ndim(mean) == 0 else mean


def _resample(per_task: dict[str, np.ndarray], rng: np.random.Generator, draws: int | None = None
              ) -> dict[str, np.ndarray]:
    """Runs drawn with replacement within each task: one draw, or (draws, runs) arrays."""
    shape = (lambda n: n) if draws is None else (lambda n: (draws, n))
    return {t: v[rng.integers(0, len(v), shape(len(v)))] for t, v in per_task.items()}


def _interval(values: np.ndarray) -> tuple[float, float]:
    low, high = np.quantile(values, [0.025, 0.975])
    return float(low), float(high)


def summary(records: list[dict[str, Any]], baseline: str = "dense", resamples: int = RESAMPLES,
            seed: int = 0) -> list[dict[str, Any]]:
    """One row per method on the tasks it shares with the baseline's attribution (same objective; its own
    tasks when it shares none or there is no baseline): IQM and its interval, and the probability of
    improvement over the baseline on the shared tasks with its interval."""
    found = scored(records)
    rows = []
    for method, (key, per_task) in found.items():
        rng = np.random.default_rng([seed, zlib.crc32(method.encode())])
        base = baseline_runs(found, key, baseline)
        shared = sorted(set(per_task) & set(base))
        tasks = shared or sorted(per_task)
        mine = {t: per_task[t] for t in tasks}
        low, high = _interval(iqm(_resample(mine, rng, resamples)))
        row = {"method": method, "tasks": " ".join(f"{t} ({len(mine[t])})" for t in tasks),
               "runs": sum(len(v) for v in mine.values()), "iqm": iqm(mine), "iqm_low": low, "iqm_high": high,
               "poi": None, "poi_low": None, "poi_high": None}
        if shared and key.attribution != baseline:
            theirs = {t: base[t] for t in tasks}
            low, high = _interval(improvement(_resample(mine, rng, resamples), _resample(theirs, rng, resamples)))
            row.update(poi=improvement(mine, theirs), poi_low=low, poi_high=high)
        rows.append(row)
    return rows


def profile(per_task: dict[str, np.ndarray], taus: np.ndarray) -> np.ndarray:
    """Per threshold τ, the share of runs scoring above τ, averaged over tasks."""
    return np.mean([(v[None, :] > taus[:, None]).mean(axis=1) for v in per_task.values()], axis=0)


def profile_png(records: list[dict[str, Any]]) -> bytes | None:
    """Performance profiles of every method's trade-off score (runs of all tasks)."""
    from leaderboard.plots import _png, _pyplot, _style

    found = scores(records)
    if not found:
        return None
    values = np.concatenate([v for per_task in found.values() for v in per_task.values()])
    taus = np.linspace(min(0.0, values.min()), max(1.2, values.max()), 121)
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for i, (method, per_task) in enumerate(found.items()):
        ax.plot(taus, profile(per_task, taus), label=f"{method} ({len(per_task)} tasks)",
                color=_style(i).get("color"), lw=1.5)
    ax.axvline(1.0, color="grey", lw=0.8, ls=":")
    ax.set_xlabel("normalised trade-off score τ (target 0, retain model 1)")
    ax.set_ylabel("share of runs with score > τ")
    ax.set_title("Performance profiles across tasks")
    ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=7, frameon=False)
    ax.grid(alpha=0.3)
    return _png(fig)


FIELDS = ["method", "tasks", "runs", "iqm", "iqm_low", "iqm_high", "poi", "poi_low", "poi_high"]


def summary_csv(rows: list[dict[str, Any]]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=FIELDS, lineterminator="\n")
    writer.writeheader()
    for r in rows:
        writer.writerow({k: ("" if r[k] is None else f"{r[k]:.6g}" if isinstance(r[k], float)
                             else spreadsheet_safe(r[k])) for k in FIELDS})
    return buf.getvalue()


def summary_markdown(rows: list[dict[str, Any]], baseline: str = "dense") -> str:
    def ci(r: dict[str, Any], key: str) -> str:
        return "" if r[key] is None else f"{r[key]:.3g} [{r[key + '_low']:.3g}, {r[key + '_high']:.3g}]"

    out = ["# Across tasks", "",
           "Interquartile mean (IQM) of the normalised trade-off score over every run of every task, and the "
           f"probability that a run of the method beats a run of {baseline} on the same task (averaged over "
           "tasks); 95% intervals from a task-stratified bootstrap, as rliable reports them (docs/metrics.md, "
           "Across tasks). Descriptive: the verdicts are the per-task paired tests.", "",
           f"| method | tasks | runs | IQM trade-off | P(improvement over {baseline}) |", "| --- " * 5 + "|"]
    out += [f"| {r['method']} | {r['tasks']} | {r['runs']} | {ci(r, 'iqm')} | {ci(r, 'poi')} |" for r in rows]
    return "\n".join(out) + "\n"


def write(results_dirs: list[Path], out_dir: Path, baseline: str = "dense") -> list[Path]:
    """summary.csv, summary.md and profile.png from the records of one or more results folders (a pure
    function of the records: the same records give the same bytes)."""
    from harness.io import atomic_write_bytes, atomic_write_text
    from leaderboard.table import read_records

    records = [r for d in results_dirs for r in read_records(Path(d))]
    rows = summary(records, baseline)
    out_dir = Path(out_dir)
    written = [out_dir / "summary.csv", out_dir / "summary.md"]
    atomic_write_text(written[0], summary_csv(rows))
    atomic_write_text(written[1], summary_markdown(rows, baseline))
    png = profile_png(records)
    if png:
        written.append(out_dir / "profile.png")
        atomic_write_bytes(written[-1], png)
    return written
