"""Sweeps survive faults: kill -9 at several points then resume (nothing lost, duplicated or half-written),
two sweep processes on one results directory (no run twice), failed runs retried only on request."""

from __future__ import annotations

import collections
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from harness.config import from_dict
from harness.sweeps import sweep

GRID = {
    "task": "tofu-mini", "model": "tiny-llama", "attributions": ["dense", "random", "magnitude"], "ratios": [0.5],
    "objectives": ["graddiff"], "seeds": [0],
    "task_config": {"utility_limit": 2, "eval_limit": 4, "max_new_tokens": 2, "retain_authors": 1},
    "train": {"epochs": 1, "batch_size": 20, "lr": 1e-3}, "prepare": {"epochs": 1},
}
EXE = str(Path(sys.executable).parent / "unlearn-bench")


def _start(cfg: Path, results: Path, log: Path) -> subprocess.Popen:
    return subprocess.Popen([EXE, "sweep", str(cfg), "--results", str(results)], stdout=log.open("a"),
                            stderr=subprocess.STDOUT, env=os.environ.copy())


def _events(results: Path) -> list[dict]:
    path = results / "events.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []


def _wait_for(results: Path, event: str, count: int, proc: subprocess.Popen, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while sum(e["event"] == event for e in _events(results)) < count:
        if proc.poll() is not None:
            raise AssertionError(f"sweep ended before {count} {event} events")
        if time.monotonic() > deadline:
            raise AssertionError(f"no {count} {event} events after {timeout} s")
        time.sleep(0.05)


def _check_complete(cfg_dict: dict, results: Path) -> None:
    ids = {s.run_id() for s in sweep.expand(from_dict(sweep.SweepConfig, cfg_dict, "grid"))}
    records = {}
    for path in (results / "runs").iterdir():
        assert not path.name.endswith(".tmp"), f"half-written file left: {path.name}"
        records[path.stem] = json.loads(path.read_text())  # every file parses
    runs = {k: r for k, r in records.items() if r["kind"] == "run"}
    assert set(runs) == ids and all(r["status"] == "finished" for r in runs.values())
    finishes = collections.Counter(e["run"] for e in _events(results) if e["event"] == "finish")
    assert set(finishes) == ids and set(finishes.values()) == {1}  # no finished run was ever run again
    assert not list((results / "checkpoints").glob("*")) if (results / "checkpoints").exists() else True


def test_kill_9_at_several_points_then_resume(tmp_path):
    cfg, results, log = tmp_path / "grid.yaml", tmp_path / "results", tmp_path / "sweep.log"
    cfg.write_text(yaml.safe_dump(GRID))
    # 1: during start-up (imports, reference models); 2: inside the first run; 3: right after a run finished
    proc = _start(cfg, results, log)
    time.sleep(1.5)
    proc.kill()
    proc.wait()
    proc = _start(cfg, results, log)
    _wait_for(results, "start", 1, proc)
    proc.kill()
    proc.wait()
    killed_run = _events(results)[-1]["run"]
    proc = _start(cfg, results, log)
    _wait_for(results, "finish", 2, proc)
    proc.kill()
    proc.wait()
    # a temporary file as a killed writer leaves it (its pid is dead): the resumed sweep removes it
    stale = results / "runs" / f".{killed_run}.json.{proc.pid}.abcd1234.tmp"
    stale.write_text('{"half": ')
    proc = _start(cfg, results, log)
    assert proc.wait(timeout=600) == 0, log.read_text()[-3000:]
    assert not stale.exists()
    _check_complete(GRID, results)
    starts = collections.Counter(e["run"] for e in _events(results) if e["event"] == "start")
    assert starts[killed_run] >= 2  # the run in flight was lost and run again; nothing else
    # a rerun of the finished sweep runs nothing
    assert sweep.run(from_dict(sweep.SweepConfig, GRID, "grid"), results)["finished"] == 0


def test_two_sweeps_on_one_results_dir_never_run_a_run_twice(tmp_path):
    grid = dict(GRID, seeds=[1])
    cfg, results = tmp_path / "grid.yaml", tmp_path / "results"
    cfg.write_text(yaml.safe_dump(grid))
    procs = [_start(cfg, results, tmp_path / f"sweep{i}.log") for i in range(2)]
    for i, p in enumerate(procs):
        assert p.wait(timeout=600) == 0, (tmp_path / f"sweep{i}.log").read_text()[-3000:]
    _check_complete(grid, results)
    starts = collections.Counter(e["run"] for e in _events(results) if e["event"] == "start")
    assert set(starts.values()) == {1}


def test_failed_runs_are_kept_and_retried_on_request(tmp_path):
    # RMU updates layers 5-7 by default, which the 2-layer tiny model lacks: the run fails, the sweep goes on
    grid = dict(GRID, attributions=["dense"], objectives=["rmu", "graddiff"])
    cfg = from_dict(sweep.SweepConfig, grid, "grid")
    assert sweep.run(cfg, tmp_path) == {"finished": 1, "skipped": 0, "failed": 1, "busy": 0}
    failed = [json.loads(p.read_text()) for p in (tmp_path / "runs").glob("*rmu*.json")]
    assert failed[0]["status"] == "failed" and "allows no parameter" in failed[0]["error"]["message"]
    assert "Traceback" in failed[0]["error"]["traceback"]
    assert sweep.run(cfg, tmp_path) == {"finished": 0, "skipped": 2, "failed": 0, "busy": 0}
    assert sweep.run(cfg, tmp_path, retry_failed=True) == {"finished": 0, "skipped": 1, "failed": 1, "busy": 0}


def test_stale_temporaries_of_live_writers_are_kept(tmp_path):
    runs = tmp_path / "runs"
    runs.mkdir()
    mine = runs / f".x.json.{os.getpid()}.abc.tmp"
    mine.write_text("{")
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead = runs / f".y.json.{int(done.stdout)}.abc.tmp"
    dead.write_text("{")
    assert sweep.remove_stale_temporaries(tmp_path) == 1
    assert mine.exists() and not dead.exists()


@pytest.mark.parametrize("name,pid", [(".a.json.123.x_y.tmp", 123), (".r-1.json.9.k.tmp", 9), ("a.json", None)])
def test_stale_pid_parsing(name, pid):
    assert sweep.stale_pid(name) == pid
