"""Leaderboard tables as a pure function of a directory of run records."""

from __future__ import annotations

import csv
import io
import json
import logging
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)
ARROW = {"higher": "↑", "lower": "↓", "zero": "→0"}
KEY_COLUMNS = ["id", "kind", "task", "model", "attribution", "ratio", "objective", "seed", "status"]
TIME_COLUMNS = ["attribution_s", "unlearning_s", "evaluation_s"]


def read_records(results_dir: Path) -> list[dict[str, Any]]:
    """Every readable record under results_dir/runs; corrupt or foreign files are skipped with a warning."""
    out = []
    for path in sorted((Path(results_dir) / "runs").glob("*.json")):
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            log.warning("skipping %s: not readable JSON (%s)", path, exc)
            continue
        if not isinstance(record, dict) or "record_version" not in record or "spec" not in record:
            log.warning("skipping %s: not an unlearn-bench run record", path)
            continue
        out.append(record)
    return out


def _row(record: dict[str, Any]) -> dict[str, Any]:
    spec = record["spec"]
    reference = record.get("kind") in ("reference", "eval")
    row = {
        "id": record.get("id"), "kind": record.get("role") if reference else "run", "task": spec.get("task"),
        "model": spec.get("model"), "attribution": "" if reference else spec.get("attribution"),
        "ratio": "" if reference else spec.get("ratio"), "objective": "" if reference else spec.get("objective"),
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
        writer.writerow({k: row.get(k, "") for k in writer.fieldnames})
    return buf.getvalue()


def write(results_dir: Path, out: Path, task: str | None = None) -> int:
    from harness.io import atomic_write_text

    records = [r for r in read_records(results_dir) if task is None or r["spec"].get("task") == task]
    atomic_write_text(out, runs_csv(records))
    return len(records)
