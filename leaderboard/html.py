"""A static leaderboard page that works offline: one section per task with the trade-off plot, a sortable
table of methods (mean over seeds, 95% bootstrap interval), reference models first, and mask densities.
Everything is inline (CSS, JS, PNGs as data URIs); no timestamps, so the same records give the same bytes."""

from __future__ import annotations

import base64
import html
from typing import Any

ARROW = {"higher": "↑", "lower": "↓", "zero": "→0"}
HINT = {"higher": "higher is better", "lower": "lower is better", "zero": "closer to 0 is better"}

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; }
table { border-collapse: collapse; font-size: 13px; margin: 1em 0; }
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


def task_section(task: str, rows: list[dict[str, Any]], references: list[dict[str, Any]],
                 directions: dict[str, str], tradeoff: bytes | None, density: bytes | None) -> str:
    metrics = sorted(directions)
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
        for m in metrics:
            s = row["metrics"].get(m)
            if s is None:
                cells.append(_cell(None, ""))
                continue
            ci = "" if row["n"] < 2 else f' <span class="ci">[{_fmt(s["ci_low"])}, {_fmt(s["ci_high"])}]</span>'
            cells.append(f'<td data-value="{s["mean"]!r}">{_fmt(s["mean"])}{ci}</td>')
        body.append(f"<tr>{''.join(cells)}</tr>")
    parts = [f'<section id="task-{html.escape(task)}"><h2>{html.escape(task)}</h2>']
    if tradeoff:
        parts.append(f'<img class="tradeoff" alt="{html.escape(task)}: forgetting vs utility" '
                     f'src="data:image/png;base64,{base64.b64encode(tradeoff).decode()}">')
    parts.append(f'<table class="sortable"><thead><tr>{"".join(head)}</tr></thead>'
                 f'<tbody>{"".join(body)}</tbody></table>')
    if density:
        parts.append(f'<h3>Mask density (layer × module)</h3><img class="density" alt="mask density" '
                     f'src="data:image/png;base64,{base64.b64encode(density).decode()}">')
    parts.append("</section>")
    return "\n".join(parts)


def page(sections: list[str], n_records: int) -> str:
    return (f'<!doctype html>\n<html lang="en"><head><meta charset="utf-8"><title>unlearn-bench leaderboard</title>'
            f"<style>{STYLE}</style></head>\n<body><h1>unlearn-bench leaderboard</h1>\n"
            f"<p>Built from {n_records} run records alone. Each cell is the mean over seeds; with two or more seeds "
            f"the 95% bootstrap interval of the mean follows in brackets. Click a column to sort; arrows give each "
            f"metric's better direction. Reference rows are the target and retain models.</p>\n"
            + "\n".join(sections) + f"\n<script>{SCRIPT}</script>\n</body></html>\n")
