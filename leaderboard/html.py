"""A static leaderboard page that works offline: one section per task with the trade-off plot, a sortable
table of methods (mean over seeds, 95% bootstrap interval), reference models first, and mask densities.
Everything is inline (CSS, JS, PNGs as data URIs); no timestamps, so the same records give the same bytes."""

from __future__ import annotations

import base64
import html
from typing import Any

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

ARROW = {"higher": "↑", "lower": "↓", "zero": "→0"}
HINT = {"higher": "higher is better", "lower": "lower is better", "zero": "closer to 0 is better",
        "info": "for reading, not ranking"}
GROUPS = [("forget", "Forgetting at the stopping point"), ("utility", "Utility at the stopping point"),
          ("match", "Matched forgetting"), ("probe", "Robustness and privacy probes (after unlearning)"),
          ("info", "Run details"), ("timing", "Timing (seconds)")]

STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5em; color: #222; max-width: 1400px; }
table { border-collapse: collapse; font-size: 13px; margin: 0.5em 0 1em; }
table.headline { font-size: 13px; }
table.headline td { white-space: nowrap; }
table.headline .ci { display: block; white-space: nowrap; }
table.headline td.diff, table.headline td.text { white-space: normal; }
td.better { background: #d9f2d9; font-weight: 600; } td.worse { background: #f7d9d9; font-weight: 600; }
td.unresolved { color: #666; } td.equivalent { background: #e3ebf7; }
td.diff { white-space: normal; min-width: 9em; } .verdict { font-size: 11px; }
details { margin: 0.5em 0; } summary { cursor: pointer; font-weight: 600; }
.wide { overflow-x: auto; }
th, td { border: 1px solid #ccc; padding: 3px 7px; text-align: right; }
th { background: #f0f0f0; cursor: pointer; user-select: none; }
th.sorted-asc::after { content: " ▲"; } th.sorted-desc::after { content: " ▼"; }
td.text, th.text { text-align: left; }
tr.reference td { background: #fafae6; }
.ci { color: #777; font-size: 11px; }
img { max-width: 100%; border: 1px solid #ddd; }
"""

SCRIPT = """
document.querySelectorAll("table.sortable").forEach(function (table) {
  table.querySelectorAll("th").forEach(function (th, col) {
    th.addEventListener("click", function () {
      var asc = !th.classList.contains("sorted-asc");
      table.querySelectorAll("th").forEach(function (h) { h.classList.remove("sorted-asc", "sorted-desc"); });
      th.classList.add(asc ? "sorted-asc" : "sorted-desc");
      var body = table.tBodies[0];
      var rows = Array.prototype.slice.call(body.rows);
      rows.sort(function (a, b) {
        var x = a.cells[col].dataset.value, y = b.cells[col].dataset.value;
        if (x === "" && y === "") return 0;
        if (x === "") return 1;
        if (y === "") return -1;
        var nx = parseFloat(x), ny = parseFloat(y);
        var c = (isNaN(nx) || isNaN(ny)) ? x.localeCompare(y) : nx - ny;
        return asc ? c : -c;
      });
      rows.forEach(function (r) { body.appendChild(r); });
    });
  });
});
"""


def _cell(value: Any, text: str | None = None, css: str = "") -> str:
    shown = html.escape(str(value) if text is None else text)
    data = "" if value is None else html.escape(str(value), quote=True)
    cls = f' class="{css}"' if css else ""
    return f'<td{cls} data-value="{data}">{shown}</td>'


def _fmt(x: float | None) -> str:
    return "" if x is None else f"{x:.4g}"


def _diff_cell(d: dict[str, Any] | None) -> str:
    """A paired difference: mean and interval, then its verdict where it has one (better / worse / equivalent
    highlighted, undecided grey); the full verdict text as the cell's title."""
    if d is None:
        return _cell(None, "")
    if d["mean"] is None:
        return _cell(None, "no pairs", "unresolved")
    verdict = d.get("verdict") or ""
    css = {"higher": "better", "lower": "worse", "equivalent": "equivalent"}.get(verdict, "unresolved")
    text = (f'{d["mean"]:+.3g} <span class="ci">(one pair)</span>' if d["n"] < 2 else
            f'{d["mean"]:+.3g} <span class="ci">[{d["ci_low"]:+.3g}, {d["ci_high"]:+.3g}]</span>')
    if verdict:
        short = {"higher": "resolved ↑", "lower": "resolved ↓", "equivalent": f"equivalent ±{d['margin']:g}",
                 "interim": f"interim, {d.get('pending')} pairs to run"}.get(
            verdict, f"undecided, detectable ≥ {_detectable(d['mde'])}")
        text += f'<br><span class="verdict">{html.escape(short)}</span>'
    title = html.escape(f"{d['n']} seed pairs; {diff_label(d)}", quote=True)
    return f'<td class="diff {css}" data-value="{d["mean"]!r}" title="{title}">{text}</td>'


def _lr_cell(row: dict[str, Any]) -> str:
    """The chosen rate, with the grid it was chosen from as the cell's title (the headline stays narrow)."""
    if row.get("lr") is None:
        return _cell(None, "", "text")
    title = html.escape(lr_label(row), quote=True)
    return f'<td class="text" data-value="{row["lr"]!r}" title="{title}">{row["lr"]:.3g}</td>'


def _detectable(x: float | None) -> str:
    return "?" if x is None else ("∞" if x == float("inf") else f"{x:.2g}")


def _stat_cell(s: dict[str, Any] | None, n: int) -> str:
    if s is None:
        return _cell(None, "")
    k = s.get("n", n)  # the seeds that have this metric
    ci = "" if k < 2 else f' <span class="ci">[{_fmt(s["ci_low"])}, {_fmt(s["ci_high"])}]</span>'
    ci += "" if k >= n else f' <span class="ci">({k} of {n} seeds)</span>'
    return f'<td data-value="{s["mean"]!r}">{_fmt(s["mean"])}{ci}</td>'


def _headline(rows: list[dict[str, Any]], references: list[dict[str, Any]], paired: list[dict[str, Any]],
              cfg: CompareConfig) -> str:
    head = ['<th class="text">method</th>', '<th class="text">lr</th>', "<th>reached</th>",
            '<th title="the forget probe where the run stopped">forget at stop</th>',
            '<th title="higher is better">utility at match ↑</th>', '<th title="higher is better">trade-off ↑</th>',
            *(f"<th>{html.escape(cfg.primary)} vs {html.escape(b)}</th>" for b in cfg.baselines)]
    body = []
    for ref in references:
        probe, m = ref.get("probe") or {}, ref.get("metrics") or {}
        util = (m.get("match_utility") or {}).get("value")
        score = (m.get("tradeoff_score") or {}).get("value", 0.0 if ref.get("role") == "target" else None)
        body.append('<tr class="reference">' + _cell(f"{ref.get('role')} model", css="text") + _cell(None, "", "text")
                    + _cell(None, "") + _cell(probe.get("forget"), _fmt(probe.get("forget"))) + _cell(util, _fmt(util))
                    + _cell(score, _fmt(score)) + "".join(_cell(None, "") for _ in cfg.baselines) + "</tr>")
    for r in matched(rows):
        body.append("<tr>" + _cell(method_label(r), css="text") + _lr_cell(r) + _cell(*reached(r))
                    + _stat_cell(r["metrics"].get("match_forget"), r["n"])
                    + _stat_cell(r["metrics"].get("match_utility"), r["n"])
                    + _stat_cell(r["metrics"].get("tradeoff_score"), r["n"])
                    + "".join(_diff_cell(paired_lookup(paired, r, b, cfg.primary)) for b in cfg.baselines) + "</tr>")
    return (f'<table class="sortable headline"><thead><tr>{"".join(head)}</tr></thead>'
            f'<tbody>{"".join(body)}</tbody></table>')


def _paired_table(paired: list[dict[str, Any]]) -> str:
    head = "".join(f'<th class="text">{html.escape(h)}</th>' if i < 3 or h == "verdict" else
                   f"<th>{html.escape(h)}</th>" for i, h in enumerate(PAIRED_HEAD))
    body = "".join("<tr>" + "".join(_cell(c, css="text" if i < 3 or PAIRED_HEAD[i] == "verdict" else "")
                                    for i, c in enumerate(paired_cells(d))) + "</tr>" for d in paired)
    return (f'<div class="wide"><table class="sortable"><thead><tr>{head}</tr></thead><tbody>{body}</tbody>'
            "</table></div>")


def _metric_table(metrics: list[str], rows: list[dict[str, Any]], references: list[dict[str, Any]],
                  directions: dict[str, str]) -> str:
    head = ['<th class="text">method</th>', "<th>ratio</th>", '<th class="text">objective</th>', "<th>seeds</th>"]
    head += [f'<th title="{HINT.get(directions[m], "")}">{html.escape(m)} {ARROW.get(directions[m], "")}</th>'
             for m in metrics]
    body = []
    for ref in references:
        cells = [_cell(ref.get("role"), css="text"), _cell(None, ""), _cell(None, "", "text"), _cell(None, "")]
        for m in metrics:
            v = ((ref.get("metrics") or {}).get(m) or {}).get("value")
            cells.append(_cell(v, _fmt(v)))
        body.append(f'<tr class="reference">{"".join(cells)}</tr>')
    for row in rows:
        cells = [_cell(row["attribution"], css="text"), _cell(row["ratio"]), _cell(row["objective"], css="text"),
                 _cell(row["n"])]
        cells += [_stat_cell(row["metrics"].get(m), row["n"]) for m in metrics]
        body.append(f"<tr>{''.join(cells)}</tr>")
    return (f'<div class="wide"><table class="sortable"><thead><tr>{"".join(head)}</tr></thead>'
            f'<tbody>{"".join(body)}</tbody></table></div>')


def _img(png: bytes | None, css: str, alt: str) -> str:
    if not png:
        return ""
    return f'<img class="{css}" alt="{html.escape(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode()}">'


def task_section(task: str, rows: list[dict[str, Any]], references: list[dict[str, Any]],
                 directions: dict[str, str], tradeoff: bytes | None, density: bytes | None,
                 paired: list[dict[str, Any]] | None = None, plots: dict[str, bytes | None] | None = None,
                 cfg: CompareConfig | None = None) -> str:
    """The matched-forgetting headline and paired differences first (when the runs have them), then the plots,
    then every metric in collapsible groups (forget, utility, matched forgetting, details, timing)."""
    paired, plots, cfg = paired or [], plots or {}, cfg or CompareConfig()
    parts = [f'<section id="task-{html.escape(task)}"><h2>{html.escape(task)}</h2>']
    if matched(rows):
        lines = "".join(f"<li>{html.escape(line[2:])}</li>" for line in findings(paired))
        parts += ["<h3>Matched forgetting</h3>",
                  f"<p>Each run unlearns until its forget probe reaches {html.escape(level_text(rows, references))}"
                  "; methods are compared there. "
                  + html.escape(legend_text(rows, cfg)) + "</p>",
                  _headline(rows, references, paired, cfg), f'<h4>Verdicts</h4><ul class="verdicts">{lines}</ul>',
                  _img(plots.get("trajectory"), "trajectory", f"{task}: unlearning trajectories"),
                  _img(plots.get("ratios"), "ratios", f"{task}: trade-off score by ratio"),
                  "<details><summary>Paired differences: every test</summary>",
                  _paired_table(paired), "</details>"]
    parts.append(_img(tradeoff, "tradeoff", f"{task}: forgetting vs utility"))
    parts.append(_img(plots.get("axes"), "tradeoff", f"{task}: probed forgetting vs utility"))
    by_group: dict[str, list[str]] = {}
    for m in sorted(directions):
        group = next((r["metrics"][m].get("group") for r in rows if m in r["metrics"]), None) or next(
            (((ref.get("metrics") or {}).get(m) or {}).get("group") for ref in references
             if m in (ref.get("metrics") or {})), "info")
        by_group.setdefault(group if group in dict(GROUPS) else "info", []).append(m)
    open_first = not matched(rows)
    for key, title in GROUPS:
        if by_group.get(key):
            parts.append(f"<details{' open' if open_first and key == 'forget' else ''}><summary>{title}</summary>"
                         + _metric_table(by_group[key], rows, references, directions) + "</details>")
    if density:
        parts.append("<details><summary>Mask density (layer × module)</summary>"
                     + _img(density, "density", "mask density") + "</details>")
    parts.append("</section>")
    return "\n".join(parts)


def page(sections: list[str], n_records: int) -> str:
    return (f'<!doctype html>\n<html lang="en"><head><meta charset="utf-8"><title>unlearn-bench leaderboard</title>'
            f"<style>{STYLE}</style></head>\n<body><h1>unlearn-bench leaderboard</h1>\n"
            f"<p>Built from {n_records} run records alone. Each cell is the mean over seeds; with two or more seeds "
            f"the 95% Student t interval of the mean follows in brackets. Click a column to sort; arrows give each "
            f"metric's better direction. Reference rows are the target and retain models. Definitions: "
            f"docs/metrics.md.</p>\n"
            + "\n".join(sections) + f"\n<script>{SCRIPT}</script>\n</body></html>\n")
