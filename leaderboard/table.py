"""Leaderboard tables as a pure function of a directory of run records."""

from __future__ import annotations

import csv
import io
import logging
from pathlib import Path
from typing import Any

from harness.cache import stable_hash
from harness.io import markdown_text, spreadsheet_safe
from harness.run import records
from harness.run.method import MethodKey
from leaderboard import aggregate, html, paired, plots, verdicts
from leaderboard.headline import (
    PAIRED_HEAD,
    diff_label,
    findings,
    legend_text,
    level_text,
    lr_label,
    matched,
    method_label,
    paired_cells,
    paired_lookup,
    reached,
)
from leaderboard.verdicts import CompareConfig

log = logging.getLogger(__name__)
ARROW = html.ARROW
KEY_COLUMNS = ["id", "kind", "task", "model", "attribution", "ratio", "objective", "seed", "status"]
TIME_COLUMNS = ["attribution_s", "unlearning_s", "evaluation_s"]
FOUR_BIT = ("fp4_b64", "nf4_b64", "int4_g128")  # the quantization probe's 4-bit tags, in the order plotted


def read_records(results_dir: Path) -> list[dict[str, Any]]:
    """Every readable record under results_dir/runs (version 1 or 2), in its JSON form; corrupt or foreign
    files are skipped with a warning (harness.run.records.read_all). Two finished runs of one method and seed are
    refused (`single_runs`)."""
    found = [r.to_json() for r in records.read_all(results_dir)]
    single_runs(found, Path(results_dir))
    rehearsed = {bool(r["spec"].get("rehearsal")) for r in found if r.get("kind") in ("run", "tune")}
    if len(rehearsed) > 1:
        raise records.RecordError(f"{results_dir} mixes rehearsal runs (a stand-in model, every size cut: "
                                  "`sweep --rehearse`) with real ones: a leaderboard shows one or the other")
    return found


def single_runs(found: list[dict[str, Any]], results_dir: Path) -> None:
    """A method's seed has one finished run: two (records of two versions of the code, or copied in from
    another folder) would pair one of them by file order and count both in the mean."""
    seen: dict[tuple, str] = {}
    for r in found:
        if r.get("kind") in ("run", "tune") and r.get("status") == "finished":
            key = (r.get("kind"), aggregate.method_key(r), r["spec"].get("seed"))
            if key in seen:
                raise records.RecordError(
                    f"{results_dir}: {seen[key]} and {r.get('id')} are both finished runs of "
                    f"{key[1][2].label} on {key[1][0]}, seed {key[2]} (made by code {_core(seen[key], found)} and "
                    f"{_core(r.get('id'), found)}): move one out of the folder")
            seen[key] = r.get("id")


def _core(record_id: str | None, found: list[dict[str, Any]]) -> str:
    r = next(r for r in found if r.get("id") == record_id)
    prov = r.get("provenance") or {}
    return f"core {prov.get('core', 'unrecorded')}, commit {str(prov.get('git_commit', 'unknown'))[:12]}"


def _row(record: dict[str, Any]) -> dict[str, Any]:
    spec = record["spec"]
    reference = record.get("kind") in ("reference", "eval")
    row = {
        "id": record.get("id"), "kind": record.get("role") if reference else record.get("kind", "run"),
        "task": spec.get("task"),
        "model": spec.get("model"), "attribution": "" if reference else spec.get("attribution"),
        "ratio": "" if reference else spec.get("ratio"),
        "objective": "" if reference else MethodKey.of(spec).objective_text,
        "seed": "" if reference else spec.get("seed"), "status": record.get("status"),
    }
    for name, metric in (record.get("metrics") or {}).items():
        value = metric.get("value")
        row[f"{name} {ARROW.get(metric.get('direction'), '')}".strip()] = "" if value is None else f"{value:.6g}"
    for name in TIME_COLUMNS:
        value = (record.get("timings") or {}).get(name)
        row[name] = "" if value is None else f"{value:.1f}"
    return row


def _order(row: dict[str, Any]) -> tuple:
    kind_rank = {"target": 0, "retain": 1}.get(row["kind"], 2)
    return (row["task"] or "", kind_rank, row["attribution"] or "", str(row["ratio"]), row["objective"] or "",
            str(row["seed"]), row["id"] or "")


def runs_csv(records: list[dict[str, Any]]) -> str:
    """One row per record: reference models first, then runs; metric headers carry their direction."""
    rows = sorted((_row(r) for r in records), key=_order)
    metric_cols = sorted({c for r in rows for c in r} - set(KEY_COLUMNS) - set(TIME_COLUMNS))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=KEY_COLUMNS + metric_cols + TIME_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: spreadsheet_safe(row.get(k, "")) for k in writer.fieldnames})
    return buf.getvalue()


def methods_csv(rows: list[dict[str, Any]]) -> str:
    """One row per method configuration: seeds, n, then per metric mean, ci_low, ci_high."""
    metrics = sorted({(m, r["metrics"][m]["direction"]) for r in rows for m in r["metrics"]})
    fields = [*aggregate.GROUP_COLUMNS, "seeds", "n"]
    for name, direction in metrics:
        label = f"{name} {ARROW.get(direction, '')}".strip()
        fields += [f"{label} mean", f"{label} ci_low", f"{label} ci_high"]
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(fields)
    for r in rows:
        line = [r[c] for c in aggregate.GROUP_COLUMNS] + [r["seeds"], r["n"]]
        for name, _ in metrics:
            s = r["metrics"].get(name)
            line += ["", "", ""] if s is None else [f"{s['mean']:.6g}", f"{s['ci_low']:.6g}", f"{s['ci_high']:.6g}"]
        writer.writerow([spreadsheet_safe(x) for x in line])
    return buf.getvalue()


def _ci(s: dict[str, Any] | None, n: int) -> str:
    """Mean [95% CI]; the interval over the seeds that have the metric, and how many when not all of the row's
    n do (a probe run on seed 0 only, a seed that never reached the level)."""
    if s is None or s.get("mean") is None:
        return ""
    k = s.get("n", n)
    return (f"{s['mean']:.4g}" + (f" [{s['ci_low']:.4g}, {s['ci_high']:.4g}]" if k > 1 else "")
            + (f" ({k} of {n} seeds)" if k < n else ""))


def headline_rows(rows: list[dict[str, Any]], refs: list[dict[str, Any]], paired: list[dict[str, Any]],
                  cfg: CompareConfig) -> tuple[list[str], list[list[str]]]:
    """The matched-forgetting headline: per method the chosen rate, how many seeds reached the level, the
    forget probe where it stopped, utility at the match, trade-off score, and its verdict on the primary metric
    against each declared baseline."""
    head = ["method", "lr", "reached", "forget probe at stop", "utility at match ↑", "trade-off score ↑",
            *(f"{cfg.primary} vs {b}" for b in cfg.baselines)]
    out = []
    for ref in refs:
        probe = ref.get("probe") or {}
        m = ref.get("metrics") or {}
        util = (m.get("match_utility") or {}).get("value")
        score = (m.get("tradeoff_score") or {}).get("value", 0.0 if ref.get("role") == "target" else None)
        out.append([f"{ref.get('role')} model", "", "", "" if "forget" not in probe else f"{probe['forget']:.4g}",
                    "" if util is None else f"{util:.4g}", "" if score is None else f"{score:.4g}",
                    *("" for _ in cfg.baselines)])
    for r in matched(rows):
        out.append([method_label(r), lr_label(r), reached(r)[1],
                    _ci(r["metrics"].get("match_forget"), r["n"]), _ci(r["metrics"].get("match_utility"), r["n"]),
                    _ci(r["metrics"].get("tradeoff_score"), r["n"]),
                    *(diff_label(paired_lookup(paired, r, b, cfg.primary)) for b in cfg.baselines)])
    return head, out


def _md_table(head: list[str], body: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(head) + " |", "| --- " * len(head) + "|",
            *("| " + " | ".join(markdown_text(c) for c in r) + " |" for r in body)]


def markdown(tasks: dict[str, tuple[list[dict[str, Any]], list[dict[str, Any]], dict[str, str]]],
             paired: list[dict[str, Any]] | None = None, probed: set[str] | frozenset[str] = frozenset(),
             headlines: dict[str, dict[str, str]] | None = None, cfg: CompareConfig | None = None) -> str:
    """Per task: the matched-forgetting headline and paired differences (when runs have them), then every
    metric as mean [95% CI] when there are several seeds; the `probed` metrics (group probe) in tables of
    their own: the headline forget metric next to its probed values, then every probe metric."""
    paired, headlines, cfg = paired or [], headlines or {}, cfg or CompareConfig()
    out = ["# Leaderboard", "", "Mean over seeds; [95% Student t interval of the mean] with two or more seeds.", ""]
    for task, (rows, refs, directions) in sorted(tasks.items()):
        out += [f"## {task}", ""]
        task_paired = [d for d in paired if d["task"] == task]
        if matched(rows):
            out += ["### Matched forgetting", "",
                    f"Each run unlearns until its forget probe reaches {level_text(rows, refs)}; utility at the "
                    f"match and the trade-off score are defined in docs/metrics.md. "
                    + legend_text(rows, cfg),
                    "", *_md_table(*headline_rows(rows, refs, task_paired, cfg)), "", "### Verdicts", "",
                    *findings(task_paired), "", "### Paired differences", ""]
            out += [*_md_table(PAIRED_HEAD, [paired_cells(d) for d in task_paired]), "", "### All metrics", ""]
        here = set(directions) & set(probed)
        out += _metric_table(rows, refs, directions, sorted(set(directions) - here))
        if here:
            out += ["### Robustness and privacy probes", "",
                    "Attacks run on each unlearned model after its evaluation (docs/metrics.md, Probes).", ""]
            summary = probe_summary(headlines.get(task), here)
            if summary:
                out += ["Does it stay forgotten? The headline forget metric unlearned, then after each probe "
                        "(`_undone`: the share of the forgetting undone; relearning: the held-out forget probe "
                        "before and after, and the retain model's after the same steps); every probe metric "
                        "follows.", ""]
                out += _metric_table(rows, refs, directions, summary)
            out += _metric_table(rows, [], directions, sorted(here))
    return "\n".join(out)


# The probe metrics of the summary table besides those named after the headline forget metric.
SUMMARY_PROBES = ("relearn_forget_before", "relearn_forget", "relearn_forget_retain_model", "mia_privleak")


def probe_summary(headline: dict[str, str] | None, probed: set[str]) -> list[str]:
    """The summary's columns: the headline forget metric, its probed values (e.g. int4_g128_forget_prob and
    its _undone share), relearning's forget probes, PrivLeak; empty when nothing of it was probed."""
    if not headline:
        return []
    forget = headline["forget"]
    named = sorted(m for m in probed if m.endswith((f"_{forget}", f"_{forget}_undone")))
    columns = named + [m for m in SUMMARY_PROBES if m in probed]
    return [forget, *columns] if columns else []


def _metric_table(rows: list[dict[str, Any]], refs: list[dict[str, Any]], directions: dict[str, str],
                   metrics: list[str]) -> list[str]:
    """One Markdown table: reference rows, then method rows, one column per metric (mean [95% CI])."""
    head = ["| method | ratio | objective | lr | seeds | "
            + " | ".join(f"{m} {ARROW.get(directions[m], '')}".strip() for m in metrics) + " |",
            "| --- " * (5 + len(metrics)) + "|"]
    out = list(head)
    for ref in refs:
        vals = [((ref.get("metrics") or {}).get(m) or {}).get("value") for m in metrics]
        out.append(f"| {markdown_text(ref.get('role'))} | | | | | "
                   + " | ".join("" if v is None else f"{v:.4g}" for v in vals) + " |")
    for r in rows:
        cells = [_ci(r["metrics"].get(m), r["n"]) for m in metrics]
        out.append(f"| {markdown_text(r['attribution'])} | {r['ratio']:g} | {markdown_text(r['objective'])} | "
                   f"{lr_label(r)} | {r['n']} | "
                   + " | ".join(cells) + " |")
    out.append("")
    return out


PAIRED_FIELDS = ["task", "model", "attribution", "ratio", "objective", "config", "baseline", "metric", "role",
                 *paired.STATS]


def paired_csv(rows: list[dict[str, Any]]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=PAIRED_FIELDS, lineterminator="\n")
    writer.writeheader()
    for d in rows:
        writer.writerow({k: ("" if d.get(k) is None else f"{d[k]:.6g}" if isinstance(d[k], float)
                             else spreadsheet_safe(d[k])) for k in PAIRED_FIELDS})
    return buf.getvalue()


def write(results_dir: Path, out: Path, task: str | None = None) -> int:
    """The per-run CSV alone (`out` is the file)."""
    from harness.io import atomic_write_text

    records = [r for r in read_records(results_dir) if task is None or r["spec"].get("task") == task]
    atomic_write_text(out, runs_csv(records))
    return len(records)


def probed_axes(headline: dict[str, str], directions: dict[str, str],
                axes: tuple[str, str] | None) -> tuple[str, str] | None:
    """The second trade-off plot's (x, y): `axes` where the task has both metrics; by default, where runs were
    probed with 4-bit quantization (bitsandbytes' FP4 or NF4, else RTN in groups of 128), the headline forget
    metric after it against the headline utility."""
    if axes is None:
        found = [f"{t}_{headline['forget']}" for t in FOUR_BIT if f"{t}_{headline['forget']}" in directions]
        axes = (found[0] if found else f"{FOUR_BIT[0]}_{headline['forget']}", headline["utility"])
    return axes if all(a in directions for a in axes) else None


def references(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The reference records, target first, one per role and model evaluation: where one grid ran matched
    forgetting and another did not (a SPUNGE grid), the same model has a record with the probe values and one
    without, and the one with them stands for both."""
    best: dict[tuple, dict[str, Any]] = {}
    for r in sorted((r for r in records if r.get("kind") == "reference"), key=lambda r: r.get("id") or ""):
        spec = {k: v for k, v in r["spec"].items() if k != "match"}
        key = (r.get("role"), r.get("model"), stable_hash(spec, 8))
        if key not in best or (r.get("probe") and not best[key].get("probe")):
            best[key] = r
    return sorted(best.values(), key=lambda r: ({"target": 0, "retain": 1}.get(r.get("role"), 2), r.get("id") or ""))


def verdict_lines(results_dir: Path, task: str | None = None) -> list[str]:
    """The declared comparisons' verdicts in words (the leaderboard's "Verdicts" list), for the command line."""
    records = [r for r in read_records(results_dir) if task is None or r["spec"].get("task") == task]
    return findings(paired.paired_rows(records, verdicts.load_protocol(results_dir)))


def _per_task(records: list[dict[str, Any]], rows: list[dict[str, Any]]) -> dict[str, tuple[list, list, dict]]:
    """Per task: its method rows, its reference records, and the direction of each metric its runs have."""
    per_task: dict[str, tuple[list, list, dict[str, str]]] = {}
    for name in sorted({r["spec"].get("task") or "" for r in records}):
        task_records = [r for r in records if r["spec"].get("task") == name]
        directions = {m: v.get("direction", "") for r in task_records if r.get("kind") != "tune"
                      for m, v in aggregate.run_metrics(r).items()}
        per_task[name] = ([r for r in rows if r["task"] == name], references(task_records),
                          dict(sorted(directions.items())))
    return per_task


def write_all(results_dir: Path, out_dir: Path, task: str | None = None,
              axes: tuple[str, str] | None = None) -> list[Path]:
    """Every leaderboard file into `out_dir`: runs.csv, methods.csv, leaderboard.md, index.html and the
    per-task plots (a second trade-off plot on `axes`, e.g. a probed forget metric against utility). A pure
    function of the records: the same records give byte-identical files."""
    from harness.io import atomic_write_bytes, atomic_write_text, inside

    records = [r for r in read_records(results_dir) if task is None or r["spec"].get("task") == task]
    rows = aggregate.method_rows(records)
    cfg = verdicts.load_protocol(results_dir)
    pairs = paired.paired_rows(records, cfg)
    per_task = _per_task(records, rows)
    out_dir = Path(out_dir)
    written = [out_dir / "runs.csv", out_dir / "methods.csv", out_dir / "leaderboard.md", out_dir / "index.html",
               out_dir / "paired.csv"]
    atomic_write_text(written[0], runs_csv(records))
    atomic_write_text(written[1], methods_csv(rows))
    probed = {m for r in records for m, v in (r.get("metrics") or {}).items() if v.get("group") == "probe"}
    headlines = {name: next((r["headline"] for r in records if r["spec"].get("task") == name and r.get("headline")),
                            None) for name in per_task}
    atomic_write_text(written[2], markdown(per_task, pairs, probed, headlines, cfg))
    atomic_write_text(written[4], paired_csv(pairs))
    sections = []
    for name, (task_rows, refs, directions) in per_task.items():
        headline = headlines[name]
        tradeoff, second = None, None
        if headline and headline["forget"] in directions and headline["utility"] in directions:
            points = plots.tradeoff_points(task_rows, refs, headline)
            if points:
                tradeoff = plots.tradeoff_png(name, points, headline,
                                              (directions[headline["forget"]], directions[headline["utility"]]))
                written.append(inside(out_dir, f"tradeoff-{name}.png"))
                atomic_write_bytes(written[-1], tradeoff)
        pair = probed_axes(headline, directions, axes) if headline else None
        if pair:
            chosen = {"forget": pair[0], "utility": pair[1]}
            points = plots.tradeoff_points(task_rows, refs, chosen)
            if points:
                second = plots.tradeoff_png(name, points, chosen, (directions[pair[0]], directions[pair[1]]))
                written.append(inside(out_dir, f"tradeoff-{name}-{pair[0]}-{pair[1]}.png"))
                atomic_write_bytes(written[-1], second)
        runs = [r for r in records if r["spec"].get("task") == name and r.get("kind") == "run"
                and r.get("status") == "finished"]
        density = plots.density_png(runs)
        if density:
            written.append(inside(out_dir, f"masks-{name}.png"))
            atomic_write_bytes(written[-1], density)
        extra = {"trajectory": plots.trajectory_png(name, runs, refs), "ratios": plots.ratio_png(name, task_rows)}
        for kind, png in extra.items():
            if png:
                written.append(inside(out_dir, f"{kind}-{name}.png"))
                atomic_write_bytes(written[-1], png)
        task_pairs = [d for d in pairs if d["task"] == name]
        sections.append(html.task_section(name, task_rows, refs, directions, tradeoff, density, task_pairs,
                                          dict(extra, axes=second), cfg))
    atomic_write_text(written[3], html.page(sections, len(records)))
    return written
