"""Where a sweep's time went, from its records alone: per kind of run (tuning, fully evaluated test runs,
match-only test runs), the count and the summed and mean wall time of each phase, and the total.

    .venv/bin/python benchmarks/demo_time.py leaderboards/tofu-mini/records

Times are as each run recorded them: runs that shared the CPU with other work ran slower than alone.
"""

from __future__ import annotations

import argparse
import collections
from pathlib import Path

from harness.run import records

PHASES = ("prepare_s", "attribution_s", "unlearning_s", "evaluation_s", "probes_s", "total_s")


def kind(record: records.Record) -> str:
    if record.kind == "tune":
        return "tuning"
    return "test, full evaluation" if record.spec.get("full_evaluation", True) else "test, match only"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("results", type=Path)
    args = p.parse_args()
    sums: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    counts: collections.Counter = collections.Counter()
    for r in records.read_all(args.results):
        if r.kind in ("run", "tune") and r.finished:
            counts[kind(r)] += 1
            sums[kind(r)].update({k: r.timings.get(k, 0.0) for k in PHASES})
    print(f"{'runs':<24}{'n':>4}" + "".join(f"{k[:-2]:>14}" for k in PHASES) + f"{'mean total':>14}")
    for name in sorted(counts):
        n = counts[name]
        print(f"{name:<24}{n:>4}" + "".join(f"{sums[name][k] / 60:>13.1f}m" for k in PHASES)
              + f"{sums[name]['total_s'] / n / 60:>13.1f}m")
    total = sum(s["total_s"] for s in sums.values())
    print(f"all runs: {sum(counts.values())} runs, {total / 3600:.2f} h of run time (reference models and their "
          "evaluations are cached before the runs and not in these records' timings)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
