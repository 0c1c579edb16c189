"""Leaderboard plots from records alone: forget efficacy vs utility per task with the Pareto front, and
mask density heatmaps (layer × module type). PNG bytes, deterministic for the same records."""

from __future__ import annotations

import io
from typing import Any

from harness.mask_report import density_heatmap


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
            label = f"{row['attribution']}@{row['ratio']:g}+{row['objective']}"
            points.append({"label": label, "x": m[fx]["mean"], "y": m[fy]["mean"], "kind": "run"})
    return points


def tradeoff_png(task: str, points: list[dict[str, Any]], headline: dict[str, str],
                 directions: tuple[str, str]) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 5))
    runs = [p for p in points if p["kind"] == "run"]
    for p in points:
        style = {"marker": "s", "color": "grey"} if p["kind"] == "reference" else {"marker": "o", "color": "C0"}
        ax.scatter([p["x"]], [p["y"]], s=36, **style)
        ax.annotate(p["label"], (p["x"], p["y"]), fontsize=7, xytext=(4, 3), textcoords="offset points")
    if runs:
        front = sorted((runs[i] for i in pareto_front([(p["x"], p["y"]) for p in runs], directions)),
                       key=lambda p: p["x"])
        ax.plot([p["x"] for p in front], [p["y"] for p in front], color="C3", lw=1.2, label="Pareto front")
        ax.legend(loc="best", fontsize=8)
    arrow = {"higher": "higher is better", "lower": "lower is better", "zero": "0 is best"}
    ax.set_xlabel(f"{headline['forget']} ({arrow.get(directions[0], '')})")
    ax.set_ylabel(f"{headline['utility']} ({arrow.get(directions[1], '')})")
    ax.set_title(f"{task}: forgetting vs utility (mean over seeds)")
    ax.grid(alpha=0.3)
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=100, metadata={"Software": None})
    plt.close(fig)
    return buf.getvalue()


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
