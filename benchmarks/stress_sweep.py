"""A fault test to leave running: several sweep processes on one results folder, killed (SIGKILL) at random
moments and restarted, then one last sweep without kills; it checks that every run has exactly one finished
record, that no temporary file is left, that every record parses, that no run finished twice, and that the
leaderboard regenerates byte for byte. Bounded in time (--minutes). Prints the counts; exits 1 on any loss.

    .venv/bin/python benchmarks/stress_sweep.py --kills 50 --minutes 20
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

EXE = str(Path(sys.executable).parent / "unlearn-bench")


def grid(seeds: int) -> dict:
    return {"task": "tofu-mini", "model": "tiny-llama", "attributions": ["dense", "random", "magnitude"],
            "ratios": [0.5], "objectives": ["graddiff"], "seeds": list(range(seeds)),
            "task_config": {"utility_limit": 2, "eval_limit": 4, "max_new_tokens": 2, "retain_authors": 1},
            "train": {"epochs": 1, "batch_size": 20, "lr": 1e-3}, "prepare": {"epochs": 1}}


def start(cfg: Path, results: Path, log: Path) -> subprocess.Popen:
    return subprocess.Popen([EXE, "-q", "sweep", str(cfg), "--results", str(results)], stdout=log.open("a"),
                            stderr=subprocess.STDOUT)


def events(results: Path) -> list[dict]:
    path = results / "events.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []


def check(cfg_dict: dict, results: Path) -> dict[str, int]:
    """Counts of what the folder holds against what the grid asks for."""
    from harness.config import from_dict
    from harness.sweeps import sweep
    from leaderboard import table

    ids = {s.run_id() for s in sweep.expand(from_dict(sweep.SweepConfig, cfg_dict, "grid"))}
    leftovers = [p for sub in ("runs", "checkpoints", "weights") for p in (results / sub).glob(".*")]
    unreadable, finished = 0, collections.Counter()
    for path in (results / "runs").glob("*.json"):
        try:
            record = json.loads(path.read_text())
        except ValueError:
            unreadable += 1
            continue
        if record.get("kind") == "run" and record.get("status") == "finished":
            finished[record["id"]] += 1
    finishes = collections.Counter(e["run"] for e in events(results) if e["event"] == "finish")
    with tempfile.TemporaryDirectory() as a, tempfile.TemporaryDirectory() as b:
        first = {p.name: p.read_bytes() for p in table.write_all(results, Path(a))}
        second = {p.name: p.read_bytes() for p in table.write_all(results, Path(b))}
    return {"runs": len(ids), "records": sum(finished.values()), "lost": len(ids - set(finished)),
            "duplicated": sum(n - 1 for n in finished.values()) + sum(n - 1 for n in finishes.values() if n > 1),
            "foreign": len(set(finished) - ids), "unreadable": unreadable, "leftovers": len(leftovers),
            "board_differs": int(first != second)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--kills", type=int, default=50, help="kills to reach before the last, unkilled sweep")
    p.add_argument("--minutes", type=float, default=20.0, help="stop killing after this long, whatever the count")
    p.add_argument("--processes", type=int, default=3, help="sweep processes running at once")
    p.add_argument("--seeds", type=int, default=12, help="seeds of the 3-attribution grid (runs: 3 per seed)")
    p.add_argument("--results", help="results folder (default: a new temporary one)")
    p.add_argument("--seed", type=int, default=0, help="seed of the kill times")
    p.add_argument("--min-wait", type=float, default=1.0, help="shortest wait between kills, seconds")
    p.add_argument("--max-wait", type=float, default=12.0, help="longest wait between kills, seconds (kills fall in "
                                                               "start-up, fine-tuning, unlearning and writing)")
    args = p.parse_args()
    rng = random.Random(args.seed)
    work = Path(args.results or tempfile.mkdtemp(prefix="stress-"))
    work.mkdir(parents=True, exist_ok=True)
    results, cfg = work / "results", work / "grid.yaml"
    cfg_dict = grid(args.seeds)
    cfg.write_text(yaml.safe_dump(cfg_dict))
    deadline = time.monotonic() + 60 * args.minutes
    procs = [start(cfg, results, work / f"sweep{i}.log") for i in range(args.processes)]
    kills = 0
    while kills < args.kills and time.monotonic() < deadline:
        time.sleep(rng.uniform(args.min_wait, args.max_wait))
        i = rng.randrange(len(procs))
        if procs[i].poll() is None:
            procs[i].kill()
            kills += 1
        procs[i].wait()
        procs[i] = start(cfg, results, work / f"sweep{i}.log")
    for proc in procs:
        proc.wait()
    last = start(cfg, results, work / "last.log")
    code = last.wait()
    counts = {"kills": kills, "last_sweep_exit": code, **check(cfg_dict, results)}
    print(" ".join(f"{k}={v}" for k, v in counts.items()), f"(folder: {work})")
    bad = counts["lost"] + counts["duplicated"] + counts["foreign"] + counts["unreadable"] + counts["leftovers"]
    return int(bool(bad or counts["board_differs"] or code))


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    sys.exit(main())
