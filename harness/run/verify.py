"""Replay: rerun some of a results folder's records from their stored specs and say whether their metrics
reproduce, so a submitted leaderboard can be checked without trusting its numbers.

Each chosen record's spec (the resolved spec it stores) is run again into a scratch results folder, with the
models of this machine's cache (built the way the spec says when absent). Every metric the record holds is
compared: equal within `tolerance` (absolute; 0, the default, asks for the same number, which runs on the same
kind of machine give), else the record is reported as differing, with the metrics that differ. A rebuilt spec
whose run id differs from the record's means the plugins' code changed since the record was written: said,
and the run is still compared.
"""

from __future__ import annotations

import math
import random
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.config import from_dict
from harness.errors import UnlearnBenchError
from harness.run import records, runner
from harness.run.spec import RunSpec


@dataclass
class Replay:
    id: str
    same_id: bool
    reproduced: bool
    max_diff: float
    differing: dict[str, tuple[float | None, float | None]] = field(default_factory=dict)
    seconds: float = 0.0


def choose(results_dir: Path, sample: int | None, seed: int = 0, ids: list[str] | None = None) -> list[records.Record]:
    """The finished run and tuning records (those named by `ids`, when given), sorted by id; `sample` of them
    drawn with a seeded generator."""
    found = sorted((r for r in records.read_all(results_dir) if r.kind in ("run", "tune") and r.finished),
                   key=lambda r: r.id)
    if not found:
        raise UnlearnBenchError(f"{results_dir}: no finished run records to verify")
    if ids:
        missing = sorted(set(ids) - {r.id for r in found})
        if missing:
            raise UnlearnBenchError(f"{results_dir}: no finished record {', '.join(missing)}; it has "
                                    f"{', '.join(r.id for r in found[:10])}{' ...' if len(found) > 10 else ''}")
        found = [r for r in found if r.id in ids]
    if sample is None or sample >= len(found):
        return found
    return sorted(random.Random(seed).sample(found, sample), key=lambda r: r.id)


def _differ(a: Any, b: Any, tolerance: float) -> bool:
    if a is None or b is None:
        return a is not b
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return False
    return abs(float(a) - float(b)) > tolerance


def replay(record: records.Record, tolerance: float = 0.0) -> Replay:
    """Run `record`'s spec again into a scratch folder and compare its metrics with the record's."""
    spec = from_dict(RunSpec, record.spec, f"record {record.id}: spec")
    t = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="unlearn-bench-verify-") as scratch:
        again = runner.execute(spec, Path(scratch))
    old = {k: (m or {}).get("value") for k, m in record.metrics.items()}
    new = {k: (m or {}).get("value") for k, m in again.metrics.items()}
    differing = {k: (old.get(k), new.get(k)) for k in sorted(set(old) | set(new))
                 if _differ(old.get(k), new.get(k), tolerance)}
    diffs = [abs(float(a) - float(b)) for a, b in ((old[k], new[k]) for k in old if k in new)
             if a is not None and b is not None and not (math.isnan(float(a)) and math.isnan(float(b)))]
    return Replay(record.id, again.id == record.id, not differing, max(diffs, default=0.0), differing,
                  time.perf_counter() - t)
