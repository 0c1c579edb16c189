"""Sweeps carry every run setting: a sweep's config is the run settings plus its grid, so a field added to a
run reaches sweep files without a hand copy, and lm-eval utility (MMLU) reaches a sweep's records and its
leaderboard."""

import csv
from dataclasses import fields

import pytest

from harness.config import from_dict, to_dict
from harness.run.spec import RunSettings, RunSpec
from harness.sweeps import sweep
from leaderboard import table


def test_every_run_field_can_be_set_from_a_sweep_file():
    """Each RunSpec field is a shared setting (a sweep field of the same name), a grid axis, a per-name
    config of a grid axis, or decided by the sweep itself: a new run field that is none of these fails here."""
    shared = {f.name for f in fields(RunSettings)}
    sweep_fields = {f.name for f in fields(sweep.SweepConfig)}
    assert shared <= sweep_fields
    for f in fields(RunSpec):
        if f.name in shared:
            continue
        if f.name in sweep.GRID:
            assert sweep.GRID[f.name] in sweep_fields
        elif f.name in sweep.BY_NAME:
            assert f.name in sweep_fields and sweep.BY_NAME[f.name] in sweep.GRID
        else:
            assert f.name in sweep.DECIDED, f"RunSpec.{f.name} cannot be set from a sweep file"


def test_shared_settings_reach_every_run():
    """Every shared setting a sweep file sets arrives in its runs' specs unchanged; lm-eval utility, like the
    probes, only in the fully evaluated test runs; tuning runs keep nothing."""
    data = {"task": "tofu-mini", "model": "tiny-llama", "attributions": ["dense"], "objectives": ["graddiff"],
            "seeds": [0, 1], "evaluate_seeds": [0], "utility": ["mmlu_bundled"], "utility_limit": 2,
            "generation": "hf", "generation_config": {}, "save_model": True, "keep_weights": True,
            "eval_every": 3, "dtype": "bfloat16", "device": "cpu", "attribution_buffers": "cpu",
            "probes": ["mia"], "match": {"enabled": True, "check_every": 3}, "task_config": {"eval_limit": 4},
            "train": {"max_steps": 7}, "prepare": {"epochs": 2}, "tune": {"enabled": True, "lr_factors": [1.0]}}
    cfg = from_dict(sweep.SweepConfig, data, "sweep")
    specs = {s.seed: to_dict(s) for s in sweep.expand(cfg)}
    settings = to_dict(cfg)
    for f in fields(RunSettings):
        assert specs[0][f.name] == settings[f.name], f.name
    assert specs[1]["utility"] == [] and specs[1]["probes"] == [] and not specs[1]["full_evaluation"]
    assert specs[1]["save_model"] and specs[1]["utility_limit"] == 2
    tuning = [to_dict(s) for runs in sweep.tuning_grid(cfg).values() for s in runs]
    assert len(tuning) == 2 and all(t["utility"] == [] and not t["save_model"] and not t["keep_weights"]
                                    for t in tuning)


@pytest.mark.slow
def test_a_sweep_scores_mmlu_into_every_record_and_the_leaderboard(tmp_path):
    data = {"task": "tofu-mini", "model": "tiny-llama", "attributions": ["dense", "random"], "ratios": [0.5],
            "objectives": ["graddiff"], "seeds": [0], "utility": ["mmlu_bundled"], "utility_limit": 1,
            "task_config": {"utility_limit": 4, "eval_limit": 8, "max_new_tokens": 4, "retain_authors": 1},
            "train": {"epochs": 1, "batch_size": 8, "lr": 1e-3}, "prepare": {"epochs": 1}}
    results = tmp_path / "results"
    assert sweep.run(from_dict(sweep.SweepConfig, data, "sweep"), results)["finished"] == 2
    runs = [r for r in table.read_records(results) if r["kind"] == "run"]
    assert len(runs) == 2
    for r in runs:
        acc = r["metrics"]["mmlu_bundled_acc"]["value"]
        assert 0.0 <= acc <= 1.0 and r["lm_eval"]["tasks"]["mmlu_bundled"]["acc"] == acc
    table.write_all(results, tmp_path / "board")
    with (tmp_path / "board" / "methods.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2 and all(row["mmlu_bundled_acc ↑ mean"] != "" for row in rows)
