"""`sweep --executor ray` on a local Ray cluster started here (`ray start --head`): every run is a Ray task on
the cluster's workers, with the local executor's guarantees: all runs recorded once, a failed run recorded
while the sweep goes on, a run whose worker died recorded by the driver and run again by the next sweep."""

from __future__ import annotations

import collections
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from harness.config import from_dict
from harness.sweeps import sweep

pytest.importorskip("ray")
# `ray stop --force` ends every Ray process of the machine, so one test owns the one cluster: under two pytest
# workers, two tests with a cluster each could end each other's

BIN = Path(sys.executable).parent
GRID = {
    "task": "tofu-mini", "model": "tiny-llama", "attributions": ["dense", "random"], "ratios": [0.5],
    # RMU updates layers 5-7 by default, which the 2-layer tiny model lacks: that run fails on its worker
    "objectives": ["graddiff", "rmu"], "exclude": ["random/rmu"], "seeds": [0],
    "task_config": {"utility_limit": 2, "eval_limit": 4, "max_new_tokens": 2, "retain_authors": 1},
    "train": {"epochs": 1, "batch_size": 20, "lr": 1e-3}, "prepare": {"epochs": 1},
    "executor": "ray", "executor_config": {"cpus_per_run": 1},
}


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def ray_cluster():
    """A one-node Ray cluster with 2 CPUs, its workers seeing this test's environment; stopped afterwards."""
    port = _port()
    env = dict(os.environ, RAY_USAGE_STATS_ENABLED="0")
    temp = Path("/tmp") / f"ray-{port}"  # Ray's socket paths must stay short
    subprocess.run([str(BIN / "ray"), "start", "--head", f"--port={port}", "--num-cpus=2", "--num-gpus=0",
                    "--include-dashboard=false", "--object-store-memory=100000000", f"--temp-dir={temp}",
                    "--disable-usage-stats"], env=env, check=True, capture_output=True, timeout=180)
    try:
        yield f"127.0.0.1:{port}"
    finally:
        subprocess.run([str(BIN / "ray"), "stop", "--force"], env=env, capture_output=True, timeout=120)


@pytest.mark.slow
def test_sweeps_on_a_local_ray_cluster(tmp_path, ray_cluster):
    """Both scenarios on one cluster: a sweep with a failing run, then a worker killed mid-run."""
    sweep_with_a_failed_run(tmp_path / "failed", ray_cluster)
    a_killed_worker_is_recorded_and_rerun(tmp_path / "killed", ray_cluster)


def sweep_with_a_failed_run(tmp_path, ray_cluster):
    tmp_path.mkdir()
    cfg, results, log = tmp_path / "grid.yaml", tmp_path / "results", tmp_path / "sweep.log"
    cfg.write_text(yaml.safe_dump(GRID))
    cmd = [str(BIN / "unlearn-bench"), "sweep", str(cfg), "--results", str(results), "--address", ray_cluster]
    env = dict(os.environ, RAY_USAGE_STATS_ENABLED="0")
    driver = subprocess.Popen(cmd, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT)
    code = driver.wait(timeout=900)
    text = log.read_text()
    assert code == 1, text[-4000:]  # one run failed: the sweep says so, after running the rest
    assert "sweep done: 2 finished, 0 skipped, 1 failed" in text, text[-4000:]

    ids = {s.run_id() for s in sweep.expand(from_dict(sweep.SweepConfig, GRID, "grid"))}
    records = {p.stem: json.loads(p.read_text()) for p in (results / "runs").glob("*.json")}
    runs = {k: r for k, r in records.items() if r["kind"] == "run"}
    assert set(runs) == ids
    assert sorted(r["status"] for r in runs.values()) == ["failed", "finished", "finished"]
    assert {r["kind"] for r in records.values()} == {"run", "reference"}
    events = [json.loads(line) for line in (results / "events.jsonl").read_text().splitlines()]
    assert collections.Counter(e["event"] for e in events) == {"start": 3, "finish": 2, "fail": 1}
    assert all(e["pid"] != driver.pid for e in events)  # the runs ran in Ray's worker processes
    # Skipping finished runs is decided in the driver before anything is sent to an executor: tested with the
    # local executor (test_end_to_end, test_sweep_faults); a second Ray sweep here would cost 20 s of the suite.


def a_killed_worker_is_recorded_and_rerun(tmp_path, ray_cluster):
    """The worker running a run is killed (SIGKILL, as a lost node would be): the driver records the run as
    failed with "worker lost" and ends; the next sweep runs it to the end, once."""
    tmp_path.mkdir()
    grid = dict(GRID, attributions=["dense"], objectives=["graddiff"], exclude=[])  # a run of several seconds
    cfg, results, log = tmp_path / "grid.yaml", tmp_path / "results", tmp_path / "sweep.log"
    cfg.write_text(yaml.safe_dump(grid))
    cmd = [str(BIN / "unlearn-bench"), "sweep", str(cfg), "--results", str(results), "--address", ray_cluster]
    env = dict(os.environ, RAY_USAGE_STATS_ENABLED="0")
    driver = subprocess.Popen(cmd, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT)
    events = results / "events.jsonl"
    deadline = time.monotonic() + 600
    while not (events.is_file() and events.read_text()):  # the run's start, written by its worker
        assert driver.poll() is None and time.monotonic() < deadline, log.read_text()[-4000:]
        time.sleep(0.05)
    (start,) = [json.loads(line) for line in events.read_text().splitlines()]
    assert start["event"] == "start"
    os.kill(start["pid"], signal.SIGKILL)
    assert driver.wait(timeout=300) == 1
    text = log.read_text()
    assert "sweep done: 0 finished, 0 skipped, 1 failed" in text, text[-4000:]
    fail = json.loads(events.read_text().splitlines()[-1])
    assert (fail["event"], fail["run"], fail["error"]) == ("fail", start["run"], "worker lost")
    assert fail["pid"] == driver.pid  # recorded by the driver: the worker could not
    assert not (results / "runs" / f"{start['run']}.json").exists()

    again = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert "sweep done: 1 finished, 0 skipped, 0 failed" in again.stdout, again.stdout + again.stderr[-3000:]
    record = json.loads((results / "runs" / f"{start['run']}.json").read_text())
    assert record["status"] == "finished"
    assert [json.loads(line)["event"] for line in events.read_text().splitlines()] == [
        "start", "fail", "start", "finish"]
