"""`sweep --plan`: every run with its state and an estimate from token passes, checked by hand and against the
measured time of the committed demo's runs on the reference CPU."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from harness.config import from_dict, to_dict
from harness.plugins import get_registry
from harness.run import records
from harness.sweeps import plan, sweep

ROOT = Path(__file__).resolve().parents[1]
REFERENCE_CPU = 167e9 * plan.CPU_EFFICIENCY  # docs/performance.md: the 2048² fp32 matmul rate of that machine


def test_token_passes_by_hand():
    cfg = from_dict(sweep.SweepConfig, {"task": "tofu-mini", "model": "tiny-llama", "attributions": ["wagle"],
                                        "ratios": [0.5], "objectives": ["npo"], "seeds": [0],
                                        "train": {"batch_size": 8, "epochs": 6, "max_steps": 20}}, "plan")
    (spec,) = sweep.expand(cfg)
    task = get_registry().build("task", "tofu-mini", {})
    assert plan.budget(spec, 40) == 20  # 6 epochs of 5 batches, cut at 20
    passes = plan.run_passes(spec, task, get_registry(), 10.0, 20)
    assert passes["attribution"] == plan.Passes(2 * 40 * 10.0, 2 * 40 * 10.0)  # forget and as many retain
    per_step = 8 * 2 * 10.0  # a forget and a retain example each, 10 tokens
    assert passes["unlearning"] == plan.Passes(20 * per_step * 1.5, 20 * per_step)  # NPO's reference forward
    scored, generated = task.evaluation_size()
    assert passes["evaluation"] == plan.Passes(scored * 10.0 + generated)
    assert plan.Passes(3, 1).flops(100) == 2 * 100 * 3 + 4 * 100 * 1


@pytest.mark.parametrize("evaluate", [True, False], ids=["test", "tuning"])
def test_probe_passes_by_hand(evaluate):
    """Each check scores the forget set and the compared one (utility, or validation in a tuning run) with
    their wrong alternatives; one more check where the budget ends between checks; bisection's 8 forget probes
    and the pair once more only with bisection."""
    cfg = from_dict(sweep.SweepConfig, {"task": "tofu-mini", "model": "tiny-llama", "attributions": ["dense"],
                                        "objectives": ["graddiff"], "seeds": [0],
                                        "match": {"enabled": True, "check_every": 2}}, "plan")
    (spec,) = sweep.expand(cfg)
    spec = dataclasses.replace(spec, evaluate=evaluate)
    task = get_registry().build("task", "tofu-mini", {})
    sets = task.probe_sets()
    compared = sets.utility if evaluate else {"validation": sets.validation}
    pair = len(sets.forget) + sum(len(v) for v in compared.values())
    pair += sum(len(a) for k in ("forget", *compared) for a in sets.alternatives.get(k, ()))
    forget = len(sets.forget) + sum(len(a) for a in sets.alternatives.get("forget", ()))
    for steps, checks in ((6, 3), (7, 4)):  # checks at 2, 4, 6 (and 7)
        passes = plan.run_passes(spec, task, get_registry(), 10.0, steps)["probes"]
        assert passes == plan.Passes(10.0 * (checks * pair + plan.BISECTION_PROBES * forget + pair)), steps
    plain = dataclasses.replace(spec, match=dataclasses.replace(spec.match, bisect=False))
    assert plan.run_passes(plain, task, get_registry(), 10.0, 6)["probes"] == plan.Passes(10.0 * 3 * pair)


def test_the_demo_estimate_is_within_a_factor_of_two_of_its_measured_time():
    """The committed demo's runs took 2.65 hours of run time (their records' total_s, on a 2-core AVX-512 EPYC);
    the plan's estimate at the reference CPU's rate (2.67 hours) lies within a factor of two."""
    cfg = sweep.load(ROOT / "experiments" / "demo-tofu-mini.yaml")
    found = plan.rows(cfg, ROOT / "leaderboards" / "tofu-mini" / "records")
    estimated = sum(r.flops for r in found) / REFERENCE_CPU
    measured = sum(r.timings["total_s"] for r in records.read_all(ROOT / "leaderboards" / "tofu-mini" / "records")
                   if r.kind in ("run", "tune"))
    # tuning first (three rates of each method, one step further at dense's and random's edges), then 7 × 3
    assert [r.kind for r in found[:11]] == ["tune"] * 11 and len(found) == 11 + 21
    assert 0.5 < estimated / measured < 2.0, (estimated, measured)


def test_the_plan_says_which_runs_are_done(tmp_path, capsys):
    from harness.cli import main

    file = tmp_path / "sweep.yaml"
    file.write_text(json.dumps({"task": "tofu-mini", "model": "tiny-llama", "attributions": ["dense", "random"],
                                "ratios": [0.5], "objectives": ["graddiff"], "seeds": [0, 1]}))
    specs = sweep.expand(sweep.load(file))
    runs = tmp_path / "results" / "runs"
    runs.mkdir(parents=True)
    (runs / f"{specs[0].run_id()}.json").write_text(json.dumps(
        {"record_version": 1, "id": specs[0].run_id(), "kind": "run", "spec": to_dict(specs[0]), "status": "finished"}))
    assert main(["sweep", str(file), "--results", str(tmp_path / "results"), "--plan", "--gpu", "A100"]) == 0
    printed = capsys.readouterr().out
    assert "  done     " in printed.splitlines()[1] and specs[0].run_id() in printed.splitlines()[1]
    assert "4 runs: 1 done, 0 failed, 3 pending" in printed and "on one A100" in printed
    with pytest.raises(ValueError, match="no peak known for the GPU 'TPU'"):
        plan.gpu_rate("TPU")
    assert plan.gpu_rate("NVIDIA H100 80GB HBM3", bf16=False) == 67e12 * plan.GPU_EFFICIENCY  # fp32 runs
    found = plan.rows(sweep.load(file), tmp_path / "results")
    assert not any(r.bf16 for r in found)  # fp32 by default: the fp32 peak applies to them
