"""Leaderboard plots from records alone: forget efficacy vs utility per task with the Pareto front, and
mask density heatmaps (layer × module type). PNG bytes, deterministic for the same records."""

from __future__ import annotations

import io
from typing import Any

from harness.measure.mask_report import density_heatmap
from harness.run.method import MethodKey, labels


def _oriented(value: float, direction: str) -> float:
    return -value if direction == "lower" else value


def pareto_front(points: list[tuple[float, float]], directions: tuple[str, str]) -> list[int]:
    """Indices of the points no other point beats on both axes (each axis oriented by its direction)."""
    o = [(_oriented(x, directions[0]), _oriented(y, directions[1])) for x, y in points]
    front = []
    for i, (x, y) in enumerate(o):
        dominated = any(ox >= x and oy >= y and (ox > x or oy > y) for j, (ox, oy) in enumerate(o) if j != i)
        if not dominated:
            front.append(i)
    return front


def tradeoff_points(rows: list[dict[str, Any]], references: list[dict[str, Any]],
                    headline: dict[str, str]) -> list[dict[str, Any]]:
    """(label, x, y, kind) for method rows (means over seeds) and reference models that have both metrics."""
    fx, fy = headline["forget"], headline["utility"]
    points = []
    for ref in references:
        m = ref.get("metrics") or {}
        if m.get(fx, {}).get("value") is not None and m.get(fy, {}).get("value") is not None:
            points.append({"label": ref.get("role"), "x": m[fx]["value"], "y": m[fy]["value"], "kind": "reference"})
    for row in rows:
        m = row["metrics"]
        if fx in m and fy in m:
            points.append({"label": row["label"], "x": m[fx]["mean"], "y": m[fy]["mean"], "kind": "run"})
    return points


MARKERS = "osD^vP*Xh<>p"


def _style(i: int) -> dict[str, Any]:
    """A distinct colour and marker per series, so series are told apart by the legend, never by labels
    printed next to points (which overlap when two methods land on the same spot)."""
    return {"color": f"C{i % 10}", "marker": MARKERS[i % len(MARKERS)]}


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _finish(ax, task: str, xlabel: str, ylabel: str, title: str) -> bytes:
    """Axis labels, the title, the legend to the right of the axes (never over the points), a grid: PNG."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(f"{task}: {title}")
    ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=7, frameon=False)
    ax.grid(alpha=0.3)
    return _png(ax.figure)


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=100, metadata={"Software": None})
    _pyplot().close(fig)
    return buf.getvalue()


def tradeoff_png(task: str, points: list[dict[str, Any]], headline: dict[str, str],
                 directions: tuple[str, str]) -> bytes:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(9, 5))
    runs = [p for p in points if p["kind"] == "run"]
    for p in points:
        if p["kind"] == "reference":
            ax.scatter([p["x"]], [p["y"]], s=60, marker="s", color="black", facecolors="none")
            ax.annotate(p["label"], (p["x"], p["y"]), fontsize=8, xytext=(5, -10), textcoords="offset points")
    for i, p in enumerate(runs):
        ax.scatter([p["x"]], [p["y"]], s=40, alpha=0.8, label=p["label"], **_style(i))
    if runs:
        front = sorted((runs[i] for i in pareto_front([(p["x"], p["y"]) for p in runs], directions)),
                       key=lambda p: p["x"])
        ax.plot([p["x"] for p in front], [p["y"] for p in front], color="C3", lw=1.0, ls="--", label="Pareto front")
        ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=7, frameon=False)
    arrow = {"higher": "higher is better", "lower": "lower is better", "zero": "0 is best"}
    ax.set_xlabel(f"{headline['forget']} ({arrow.get(directions[0], '')})")
    ax.set_ylabel(f"{headline['utility']} ({arrow.get(directions[1], '')})")
    ax.set_title(f"{task}: forgetting vs utility at the stopping point (mean over seeds)")
    ax.grid(alpha=0.3)
    return _png(fig)


def trajectory_series(runs: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """The matched-forgetting runs that kept their probe curve, by method label (one legend entry each)."""
    keyed = [(MethodKey.of(r["spec"]), r) for r in runs
             if (r.get("match") or {}).get("probe") == "utility" and (r.get("curves") or {}).get("probe")]
    by_key: dict[MethodKey, list[dict[str, Any]]] = {}
    for key, r in sorted(keyed, key=lambda kr: (kr[0], kr[1]["spec"].get("seed"))):
        by_key.setdefault(key, []).append(r)
    names = labels(list(by_key))
    return {names[k]: group for k, group in by_key.items()}


def trajectory_png(task: str, runs: list[dict[str, Any]], references: list[dict[str, Any]]) -> bytes | None:
    """Utility (÷ the retain model's, or the target's where there is none) against forget efficacy (0 = target,
    1 = the level) along each matched-forgetting run: one colour per method, one line per seed."""
    series = trajectory_series(runs)
    if not series:
        return None
    ax = _pyplot().subplots(figsize=(9, 5))[1]
    for i, (label, group) in enumerate(series.items()):
        for j, r in enumerate(group):
            m = r["match"]
            xs = [(m["start"] - row["forget"]) / (m["start"] - m["level"]) for row in r["curves"]["probe"]]
            ys = [row["utility"] / m["reference"] for row in r["curves"]["probe"]]
            style = _style(i)
            ax.plot(xs, ys, color=style["color"], lw=1.0, alpha=0.7, label=label if j == 0 else None)
            ax.scatter([xs[-1]], [ys[-1]], s=25, color=style["color"], marker=style["marker"])
    ax.axvline(1.0, color="grey", lw=0.8, ls=":")
    if any(r.get("role") == "retain" for r in references):
        ax.scatter([1.0], [1.0], s=70, marker="s", color="black", facecolors="none", zorder=5)
        ax.annotate("retain model", (1.0, 1.0), fontsize=8, xytext=(5, 5), textcoords="offset points")
        axes = ("forget efficacy (0 = target, 1 = the retain model's forgetting)", "utility probe ÷ retain model's")
    else:  # no retain model (WMDP): the level is the task's, utility is relative to the target's
        axes = ("forget efficacy (0 = target, 1 = the task's level)", "utility probe ÷ target's")
    return _finish(ax, task, *axes, "unlearning trajectories (marker: where each run stopped)")


def ratio_png(task: str, rows: list[dict[str, Any]]) -> bytes | None:
    """Trade-off score (mean, 95% interval) against the ratio, one line per attribution and objective, when
    some attribution ran at two or more ratios."""
    lines: dict[str, list[tuple[float, dict[str, Any]]]] = {}
    for r in rows:
        if "tradeoff_score" in r["metrics"]:
            lines.setdefault(r["key"].family, []).append((r["ratio"], r["metrics"]["tradeoff_score"]))
    if not any(len({x for x, _ in v}) > 1 for v in lines.values()):
        return None
    ax = _pyplot().subplots(figsize=(9, 5))[1]
    for i, (label, pts) in enumerate(sorted(lines.items())):
        pts.sort(key=lambda p: p[0])
        xs = [x for x, _ in pts]
        ys = [m["mean"] for _, m in pts]
        err = [[m["mean"] - m["ci_low"] for _, m in pts], [m["ci_high"] - m["mean"] for _, m in pts]]
        ax.errorbar(xs, ys, yerr=err, label=label, capsize=3, lw=1.0, **_style(i))
    return _finish(ax, task, "ratio (fraction of weights updated)", "trade-off score (retain model = 1)",
                   "where each mask helps (mean over seeds, 95% interval)")


def density_png(runs: list[dict[str, Any]]) -> bytes | None:
    """Heatmaps of the first-seed run of each (attribution, ratio) that recorded a mask density."""
    seen: dict[str, dict[tuple[int, str], float]] = {}
    for r in sorted(runs, key=lambda r: (r["spec"].get("attribution"), r["spec"].get("ratio"), r["spec"].get("seed"))):
        density = (r.get("mask") or {}).get("layer_module_density")
        label = f"{r['spec'].get('attribution')}@{r['spec'].get('ratio'):g}"
        if density and label not in seen:
            seen[label] = {(int(k.split(".")[0]), k.split(".", 1)[1]): v for k, v in density.items()}
    if not seen:
        return None
    buf = io.BytesIO()
    density_heatmap(sorted(seen.items()), buf)
    return buf.getvalue()
