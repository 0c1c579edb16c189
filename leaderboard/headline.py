"""The words and lookups shared by the Markdown and HTML leaderboards: method labels, the chosen learning
rate, paired differences and the findings they allow."""

from __future__ import annotations

import math
from typing import Any

from leaderboard.verdicts import CompareConfig, min_pairs


def method_label(row: dict[str, Any]) -> str:
    """A method row's name (harness.run.method: unique on its board)."""
    return row["label"]


def past_level(row: dict[str, Any]) -> int:
    """How many of a method row's seeds that reached the level were evaluated past it, on the check that crossed
    it (no bisection: a run resumed between the two checks, several processes, `bisect: false`, or out of
    bisection probes; records from before `match_bisected` say nothing)."""
    bisected = row["metrics"].get("match_bisected")
    return 0 if bisected is None else bisected["n"] - round(bisected["mean"] * bisected["n"])


def reached(row: dict[str, Any]) -> tuple[float, str]:
    """How many of a method row's seeds reached the level (⚠ where some did not), and how many of those were
    evaluated past it (`past_level`)."""
    n, stat = row["n"], row["metrics"].get("match_reached")
    k = round(stat["mean"] * stat["n"]) if stat else 0
    past = past_level(row)
    return k / n, f"{k}/{n}" + ("" if k == n else " ⚠") + (f", {past} past ⚠" if past > 0 else "")


def lr_label(row: dict[str, Any]) -> str:
    """The learning rate, with the grid it was chosen from when tuned."""
    if row.get("lr") is None:
        return ""
    grid = row.get("tuned_from") or []
    return f"{row['lr']:.3g}" + (f" of {{{', '.join(f'{x:.3g}' for x in grid)}}}" if grid else "")


def _num(x: float | None) -> str:
    return "∞" if x is not None and math.isinf(x) else ("?" if x is None else f"{x:.2g}")


def verdict_text(d: dict[str, Any]) -> str:
    """A primary comparison's verdict in words: resolved with its adjusted p, equivalent within the margin, or
    undecided with the smallest difference these seeds could detect and the seeds the margin needs."""
    if d["verdict"] in ("higher", "lower"):
        return f"resolved, {d['verdict']} (adjusted p {d['p_adj']:.2g})"
    if d["verdict"] == "equivalent":
        return f"equivalent within ±{d['margin']:g} (adjusted TOST p {d['p_tost_adj']:.2g})"
    if d["verdict"] == "interim":
        return (f"interim, {d['pending']} planned seed pairs still to run (p {d['p_adj']:.2g} so far; decided "
                "once the plan is complete)")
    need = "" if d["seeds_needed"] is None else f", {d['seeds_needed']} pairs for ±{d['margin']:g}"
    return f"undecided (p {d['p_adj']:.2g}; detectable ≥ {_num(d['mde'])}{need})"


def diff_label(d: dict[str, Any] | None) -> str:
    """A paired difference as `mean [95% t interval]`, then the verdict where the comparison has one."""
    if d is None or d["mean"] is None:
        return "" if d is None else "no pairs"
    text = (f"{d['mean']:+.3g} (one pair: no interval)" if d["n"] < 2
            else f"{d['mean']:+.3g} [{d['ci_low']:+.3g}, {d['ci_high']:+.3g}]")
    return f"{text} {verdict_text(d)}" if d.get("verdict") else text


def paired_lookup(paired: list[dict[str, Any]], row: dict[str, Any], baseline: str, metric: str) -> dict | None:
    for d in paired:
        if (d["baseline"], d["metric"], d["task"], d["model"], d["key"]) == \
                (baseline, metric, row["task"], row["model"], row["key"]):
            return d
    return None


def matched(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The method rows that ran matched forgetting."""
    return [r for r in rows if "tradeoff_score" in r["metrics"]]


def warning_text(rows: list[dict[str, Any]]) -> str:
    """What ⚠ in the headline's "reached" column means on this board; nothing where no row has one."""
    rows = matched(rows)
    short = any(reached(r)[0] < 1 for r in rows)
    past = any(past_level(r) > 0 for r in rows)
    parts = (["some seeds never reached the level"] if short else []) + (
        ["past: seeds evaluated past it (not bisected back to it, docs/metrics.md)"] if past else [])
    return "⚠: " + "; ".join(parts) + "." if parts else ""


def legend_text(rows: list[dict[str, Any]], cfg: CompareConfig) -> str:
    """What the headline's marks mean on this board, where it has any, then the declared protocol."""
    return " ".join(filter(None, [warning_text(rows), protocol_text(cfg)]))


def level_text(rows: list[dict[str, Any]], refs: list[dict[str, Any]]) -> str:
    """What the runs unlearned to: the retain model's forget probe, or the level the task declares when it has
    no retain model (WMDP: near chance)."""
    retain = next(((r.get("probe") or {}).get("forget") for r in refs if r.get("role") == "retain"), None)
    if retain is not None:
        return f"the retain model's ({retain:.4g})"
    level = next((r.get("level") for r in rows if r.get("level") is not None), None)
    return "its level" if level is None else f"the level the task declares, {level:.4g} (it has no retain model)"


def findings(paired: list[dict[str, Any]]) -> list[str]:
    """One line per declared comparison (the primary metric against each baseline): its difference, verdict and,
    when undecided, what these seeds could have detected, then the two-level interval where the runs kept their
    questions (the verdict holds for the questions probed; that interval says how far it carries to others); a
    line saying so when nothing was declared."""
    lines = []
    for d in (d for d in paired if d.get("role") == "primary"):
        label = d["label"]
        if not d["n"]:
            lines.append(f"- {label} vs {d['baseline']}, {d['metric']}: no seed pairs, no verdict.")
            continue
        sd = "" if d["sd"] is None else f", σ_d {d['sd']:.2g}"
        if d.get("two_level_low") is not None:  # how far the verdict, decided over seeds, carries to other questions
            share = d.get("question_share")
            sd += (f"; over seeds and questions [{d['two_level_low']:+.3g}, {d['two_level_high']:+.3g}]"
                   + ("" if share is None else f", the questions' share {share:.0%}"))
        floor = min_pairs(d["alpha"] / d["family"])
        short = (f"; an exact test over a family of {d['family']} needs ≥ {floor} pairs"
                 if d["n"] < floor and d["verdict"] == "undecided" else "")
        lines.append(f"- {label} vs {d['baseline']}, {d['metric']}: {diff_label(d)} over {d['n']} seed pairs"
                     f"{sd}{short}.")
    return lines or ["- No declared comparison: no method was paired by seed with a declared baseline."]


def protocol_text(cfg: CompareConfig) -> str:
    """The declared comparisons and the rule that decides them, in one paragraph."""
    return (f"Declared before the runs: {cfg.primary} against {', '.join(cfg.baselines)}, paired by seed. "
            f"Resolved: exact sign-flip permutation p < {cfg.alpha:g} after Bonferroni over the family; "
            f"equivalent: TOST p < {cfg.alpha:g} within ±{cfg.margin:g} after the same (together at most "
            f"{cfg.alpha:g} chance of any wrong verdict); neither below the pairs the exact test needs; otherwise "
            "undecided, with the smallest difference these seeds could detect (paired t approximation, power "
            f"{cfg.power:g}: optimistic below about 10 pairs) and the pairs a difference of the margin needs. "
            "Intervals: 95% paired Student t; two-level: seeds, then questions clustered by author (the same "
            "questions in both arms, where the run stopped held fixed), with the questions' share of the two "
            "one-way variances. Other metrics and baselines against each other: interval, no verdict "
            "(docs/metrics.md, Verdicts).")


PAIRED_HEAD = ["method", "vs", "metric", "pairs", "mean [95% t]", "σ_d", "p (exact)", "adjusted p",
               "adjusted TOST p", "verdict", "detectable ≥", "pairs for margin", "two-level 95%", "questions' share"]


def paired_cells(d: dict[str, Any]) -> list[str]:
    def num(key: str) -> str:
        return "" if d.get(key) is None else ("∞" if d[key] == float("inf") else f"{d[key]:.3g}")

    interval = "" if d["mean"] is None else (f"{d['mean']:+.3g}" + (
        "" if d["ci_low"] is None else f" [{d['ci_low']:+.3g}, {d['ci_high']:+.3g}]"))
    return [d["label"], d["baseline"], d["metric"], str(d["n"]),
            interval, num("sd"), num("p"), num("p_adj"), num("p_tost_adj"), d["verdict"] or "(no verdict)",
            num("mde"), "" if d.get("seeds_needed") is None else str(d["seeds_needed"]),
            "" if d.get("two_level_low") is None else f"[{d['two_level_low']:+.3g}, {d['two_level_high']:+.3g}]",
            "" if d.get("question_share") is None else f"{d['question_share']:.0%}"]
