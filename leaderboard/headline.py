"""The words and lookups shared by the Markdown and HTML leaderboards: method labels, the chosen learning
rate, paired differences and the findings they allow."""

from __future__ import annotations

from typing import Any

from leaderboard.paired import MIN_PAIRS


def method_label(row: dict[str, Any]) -> str:
    return f"{row['attribution']} ({row['ratio']:g}) + {row['objective']}"


def lr_label(row: dict[str, Any]) -> str:
    """The learning rate, with the grid it was chosen from when tuned."""
    if row.get("lr") is None:
        return ""
    grid = row.get("tuned_from") or []
    return f"{row['lr']:.3g}" + (f" of {{{', '.join(f'{x:.3g}' for x in grid)}}}" if grid else "")


def diff_label(d: dict[str, Any] | None) -> str:
    """A paired difference as `mean [low, high] verdict` (n pairs when fewer than all)."""
    if d is None or d["mean"] is None:
        return "" if d is None else "no pairs"
    if d["n"] < 2:
        return f"{d['mean']:+.3g} (one pair: no interval)"
    mark = "**resolved**" if d["resolved"] else "not resolved"
    return f"{d['mean']:+.3g} [{d['ci_low']:+.3g}, {d['ci_high']:+.3g}] {mark}"


def paired_lookup(paired: list[dict[str, Any]], row: dict[str, Any], baseline: str, metric: str) -> dict | None:
    for d in paired:
        if (d["baseline"], d["metric"], d["attribution"], d["ratio"], d["objective"], d["config"]) == \
                (baseline, metric, row["attribution"], row["ratio"], row["objective"], row["config"]):
            return d
    return None


def matched(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The method rows that ran matched forgetting."""
    return [r for r in rows if "tradeoff_score" in r["metrics"]]


def level_text(rows: list[dict[str, Any]], refs: list[dict[str, Any]]) -> str:
    """What the runs unlearned to: the retain model's forget probe, or the level the task declares when it has
    no retain model (WMDP: near chance)."""
    retain = next(((r.get("probe") or {}).get("forget") for r in refs if r.get("role") == "retain"), None)
    if retain is not None:
        return f"the retain model's ({retain:.4g})"
    level = next((r.get("level") for r in rows if r.get("level") is not None), None)
    return "its level" if level is None else f"the level the task declares, {level:.4g} (it has no retain model)"


def findings(paired: list[dict[str, Any]]) -> list[str]:
    """One line per resolved difference; a line saying so when none is resolved."""
    lines = []
    for d in paired:
        if d["resolved"]:
            label = f"{d['attribution']} ({d['ratio']:g}) + {d['objective']}"
            lines.append(f"- {label} has a {d['verdict']} {d['metric']} than {d['baseline']}: "
                         f"{d['mean']:+.3g} [{d['ci_low']:+.3g}, {d['ci_high']:+.3g}] over {d['n']} seeds")
    if not lines and paired and all(d["n"] < MIN_PAIRS for d in paired):
        return [f"- No paired difference can be resolved: fewer than {MIN_PAIRS} seeds pair each method with its "
                "baseline, so no method is ranked above another."]
    return lines or ["- No paired difference is resolved: every 95% interval includes 0, so no method is "
                     "ranked above another."]
