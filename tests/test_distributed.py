"""One run on two CPU processes against the same run in one process: the same mask, the same training curve
and the same metrics, within the stated tolerances (docs/scale.md): summing gradients in another order moves
numbers by float rounding only. The processes come from accelerate's multi-process launcher
(`accelerate launch --multi_gpu --num_processes 2` on a machine without GPUs, gloo); its `--cpu` flag starts
a single process unless MPI is used."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from harness.learn import masks
from harness.run import models

BIN = Path(sys.executable).parent
SPEC = {
    "task": "tofu-mini", "model": "tiny-llama", "attribution": "wagle", "ratio": 0.3, "objective": "graddiff",
    "seed": 0,
    # 8 evaluation questions per side and 4-token answers: both processes score and generate a share
    "task_config": {"utility_limit": 8, "eval_limit": 8, "max_new_tokens": 4, "retain_authors": 1},
    "train": {"epochs": 2, "batch_size": 10, "lr": 1e-3},  # 10 rows: 5 per process
    "prepare": {"epochs": 1},
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(cmd: list[str], cache: Path, log: Path, extra_env: dict[str, str] | None = None) -> None:
    env = dict(os.environ, UNLEARN_BENCH_CACHE=str(cache), OMP_NUM_THREADS="1", **(extra_env or {}))
    done = subprocess.run(cmd, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT, timeout=900)
    assert done.returncode == 0, log.read_text()[-4000:]


def _record(results: Path) -> tuple[str, dict]:
    (path,) = (results / "runs").glob("tofu-mini-*wagle*.json")
    return path.stem, json.loads(path.read_text())


def _grid(spec: dict) -> dict:
    """The sweep file whose grid is exactly `spec`."""
    grid = {k: v for k, v in spec.items() if k not in ("attribution", "ratio", "objective", "seed")}
    return dict(grid, attributions=[spec["attribution"]], ratios=[spec["ratio"]], objectives=[spec["objective"]],
                seeds=[spec["seed"]])


def _launch(flags: list[str], command: list[str], cache: Path, log: Path) -> None:
    """`command` (a script and its arguments, or -m MODULE ...) under accelerate's launcher with two CPU
    processes."""
    _run([str(BIN / "accelerate"), "launch", *flags, "--num_processes", "2", "--num_machines", "1",
          "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(_free_port()),
          *command], cache, log, {"CUDA_VISIBLE_DEVICES": ""})


def _sweep(grid: Path, results: Path) -> list[str]:
    return ["-m", "harness.cli", "sweep", str(grid), "--results", str(results)]


def _check_same_run(a: dict, b: dict) -> None:
    """Training curve and every metric of `b` (two processes) against `a` (one), within the tolerances."""
    # training: the same samples per step (5 rows on each process), gradients averaged across processes
    losses1 = [row["loss"] for row in a["curves"]["train"]]
    losses2 = [row["loss"] for row in b["curves"]["train"]]
    assert len(losses1) == len(losses2) > 1
    assert losses2 == pytest.approx(losses1, rel=1e-4, abs=1e-5)
    norms1 = [row["grad_norm"] for row in a["curves"]["train"]]
    assert [row["grad_norm"] for row in b["curves"]["train"]] == pytest.approx(norms1, rel=1e-4)

    # evaluation split across the processes and gathered: every metric, and the per-question numbers
    assert a["metrics"].keys() == b["metrics"].keys()
    for name, metric in a["metrics"].items():
        assert b["metrics"][name]["value"] == pytest.approx(metric["value"], rel=1e-3, abs=1e-4), name
    assert [x["generation"] for x in b["samples"]] == [x["generation"] for x in a["samples"]]
    for name, values in a["stats"].items():  # per-question truth ratios, gathered back in question order
        assert b["stats"][name] == pytest.approx(values, rel=1e-4, abs=1e-5), name


@pytest.mark.slow
def test_two_processes_match_one(tmp_path):
    """One `run` in one process against a `sweep` of the same spec under a two-process launch, data parallel
    (DDP) and sharded (FSDP)."""
    spec, grid = tmp_path / "spec.yaml", tmp_path / "grid.yaml"
    spec.write_text(yaml.safe_dump(SPEC))
    grid.write_text(yaml.safe_dump(_grid(SPEC)))
    one, two, sharded = tmp_path / "cache1", tmp_path / "cache2", tmp_path / "cache3"
    tiny = Path(models.resolve("tiny-llama"))  # the session's tiny model (building it is another test's subject)
    shutil.copytree(tiny, one / "models" / tiny.name)
    _run([str(BIN / "unlearn-bench"), "run", "--spec", str(spec), "--results", str(tmp_path / "r1")], one,
         tmp_path / "one.log")
    # the same prepared models and reference evaluations; the mask is computed again, by two processes
    shutil.copytree(one, two, ignore=lambda folder, names: ["masks"] if Path(folder) == one else [])
    _launch(["--multi_gpu"], _sweep(grid, tmp_path / "r2"), two, tmp_path / "two.log")
    (id1, a), (id2, b) = _record(tmp_path / "r1"), _record(tmp_path / "r2")
    assert id1 == id2  # the same spec
    assert b["processes"] == 2 and b["parallelism"] == "ddp" and "processes" not in a
    # the main process writes: one run record (plus the target and retain rows), one start and one finish
    assert sorted(json.loads(p.read_text())["kind"] for p in (tmp_path / "r2" / "runs").glob("*.json")) == [
        "reference", "reference", "run"]
    events = [json.loads(line)["event"] for line in (tmp_path / "r2" / "events.jsonl").read_text().splitlines()]
    assert events == ["start", "finish"]

    # the mask: attribution gradients summed across the processes select the same weights
    (m1,), (m2,) = (list((c / "masks").iterdir()) for c in (one, two))
    mask1, mask2 = masks.load(m1)[0], masks.load(m2)[0]
    differ = sum(int((mask1[n] != mask2[n]).sum()) for n in mask1)
    total = sum(m.numel() for m in mask1.values())
    assert masks.density(mask1) == masks.density(mask2)  # exact ratio either way
    assert differ <= 1e-4 * total, f"{differ} of {total} weights selected differently"
    _check_same_run(a, b)

    # sharded: every parameter, gradient, mask and optimizer state split between the two processes (the
    # one-process mask, so that only the unlearning differs)
    shutil.copytree(one, sharded)
    _launch(["--use_fsdp", "--fsdp_version", "2"], _sweep(grid, tmp_path / "r3"), sharded, tmp_path / "fsdp.log")
    id3, c = _record(tmp_path / "r3")
    assert id3 == id1 and c["processes"] == 2 and c["parallelism"] == "fsdp"
    _check_same_run(a, c)


@pytest.mark.slow
def test_sharded_training_matches_one_process(tmp_path):
    """Under FSDP each process holds half of every mask, masked-out weights stay bit-identical, the weights,
    losses and clipped gradient norms match training in one process, and a run resumed from the processes'
    checkpoints ends exactly as an uninterrupted one."""
    script, cache = Path(__file__).with_name("fsdp_train.py"), tmp_path / "cache"
    (tmp_path / "one").mkdir()
    (tmp_path / "two").mkdir()
    # two processes first, on an empty cache: they build the tiny model together, the main one publishes it
    _launch(["--use_fsdp", "--fsdp_version", "2"], [str(script), str(tmp_path / "two")], cache,
            tmp_path / "two.log")
    _run([sys.executable, str(script), str(tmp_path / "one")], cache, tmp_path / "one.log")
    one, two = (torch.load(tmp_path / d / "weights.pt") for d in ("one", "two"))
    log1, log2 = (json.loads((tmp_path / d / "log.json").read_text()) for d in ("one", "two"))
    assert log1["share"] is None and 0.45 <= log2["share"] <= 0.55
    # a checkpoint file per process under FSDP; a stopped and resumed run ends as the uninterrupted one
    assert sorted(p.name for p in (tmp_path / "two").glob("checkpoint.pt*")) == [
        "checkpoint.pt.rank0-of-2", "checkpoint.pt.rank1-of-2"]
    assert log1["resumed_steps"] == log2["resumed_steps"] == [3, 4]  # continued after step 2
    for run in (one, two):
        for name, weights in run["after"].items():
            assert torch.equal(run["resumed"][name], weights), name
    changed = 0
    for name, mask in one["mask"].items():
        for run in (one, two):
            assert torch.equal(run["after"][name][~mask], run["before"][name][~mask]), name
        changed += int((one["after"][name] != one["before"][name]).sum())
        # Adam divides by sqrt(v): where a gradient entry is near zero, a rounding difference in its sum across
        # processes moves the step by a small fraction of lr (1e-2), hence an absolute 1e-5
        torch.testing.assert_close(two["after"][name], one["after"][name], rtol=1e-4, atol=1e-5)
    assert changed > 0.9 * sum(int(m.sum()) for m in one["mask"].values())
    for a, b in zip(log1["steps"], log2["steps"], strict=True):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-5)
        assert b["grad_norm"] == pytest.approx(a["grad_norm"], rel=1e-5)
        assert b["drift"] == pytest.approx(a["drift"], rel=1e-4, abs=1e-9)
    assert log1["steps"][-1]["drift"] > 0  # the reference is used and differs from the trained copy
    assert all(row["grad_norm"] > 0.2 for row in log1["steps"])  # clipping was active


def test_one_process_helpers_are_identities():
    from harness import distributed

    assert not distributed.active() and distributed.rank() == 0 and distributed.is_main()
    assert distributed.map_sharded(lambda xs: [x * 2 for x in xs], [1, 2, 3]) == [2, 4, 6]
    t = {"w": torch.ones(3)}
    distributed.sum_(t)
    assert torch.equal(t["w"], torch.ones(3))
    batch = {"input_ids": torch.arange(6).view(3, 2)}
    assert distributed.rows(batch) is batch
    assert distributed.broadcast("x") == "x" and distributed.mean([1.5, 2.0]) == [1.5, 2.0]
    assert distributed.agree(3)


@pytest.mark.parametrize("world,n", [(2, 5), (3, 7), (4, 2), (1, 3)])
def test_interleave_inverts_sharding(world, n):
    """Shares taken as `shard` takes them (every world-th item from the rank) come back in input order,
    including processes with nothing to do."""
    from harness import distributed

    items = list(range(100, 100 + n))
    assert distributed.interleave([items[r::world] for r in range(world)], n) == items
