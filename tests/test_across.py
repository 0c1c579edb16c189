"""The across-task summary (leaderboard/across.py) against rliable's definitions computed by hand: IQM as a
25% trimmed mean over all runs, probability of improvement from pairwise comparisons, the stratified
bootstrap staying inside each task, performance profiles, and the command line."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from harness.cli import main
from leaderboard import across


def _run(runs: Path, task: str, attribution: str, seed: int, score: float, **spec_fields) -> None:
    spec = {"task": task, "model": "m", "attribution": attribution, "ratio": 1.0 if attribution == "dense" else 0.5,
            "objective": "graddiff", "seed": seed, **spec_fields}
    name = "-".join([task, attribution, str(seed), *map(str, spec_fields.values())])
    record = {"record_version": 1, "id": name, "kind": "run", "spec": spec,
              "status": "finished", "metrics": {"tradeoff_score": {"value": score, "direction": "higher"}}}
    runs.mkdir(parents=True, exist_ok=True)
    (runs / f"{record['id']}.json").write_text(json.dumps(record))


@pytest.fixture
def two_tasks(tmp_path) -> list[Path]:
    dirs = []
    values = {"a": {"dense": [0.5, 0.6, 0.7, 0.8], "wagle": [0.1, 0.3, 0.35, 0.4]},
              "b": {"dense": [0.9, 1.0, 1.1, 1.2], "wagle": [0.8, 0.9, 1.0, 1.3]}}
    for task, methods in values.items():
        for attribution, scores in methods.items():
            for seed, v in enumerate(scores):
                _run(tmp_path / task / "runs", task, attribution, seed, v)
        dirs.append(tmp_path / task)
    return dirs


def _records(dirs: list[Path]) -> list[dict]:
    return [json.loads(p.read_text()) for d in dirs for p in sorted((d / "runs").glob("*.json"))]


def test_iqm_and_probability_of_improvement_by_hand(two_tasks):
    rows = {r["method"]: r for r in across.summary(_records(two_tasks), resamples=300)}
    wagle = rows["wagle (0.5) + graddiff"]
    # all 8 wagle runs sorted: .1 .3 .35 .4 .8 .9 1.0 1.3; the middle 4 (trim 2 each side): .35 .4 .8 .9
    # (not the median .6, the mean of the per-task IQMs .6375 or the plain mean .64375)
    assert wagle["iqm"] == pytest.approx(0.6125) and wagle["runs"] == 8 and wagle["tasks"] == "a (4) b (4)"
    def p(x, y):  # P(X > Y) + P(X = Y) / 2, every pair counted
        return sum((a > b) + 0.5 * (a == b) for a in x for b in y) / (len(x) * len(y))
    expected = (p([0.1, 0.3, 0.35, 0.4], [0.5, 0.6, 0.7, 0.8]) + p([0.8, 0.9, 1.0, 1.3], [0.9, 1.0, 1.1, 1.2])) / 2
    assert wagle["poi"] == pytest.approx(expected)
    assert wagle["iqm_low"] < wagle["iqm"] < wagle["iqm_high"] and wagle["poi_low"] < expected < wagle["poi_high"]
    assert rows["dense (1) + graddiff"]["poi"] is None  # no improvement over itself
    assert across.improvement({"t": np.array([1.0, 2.0, 2.0])}, {"t": np.array([2.0])}) == pytest.approx(1 / 3)


def test_configurations_are_never_pooled_and_a_method_without_the_baseline_keeps_its_tasks(two_tasks, tmp_path):
    for seed, v in enumerate([0.2, 0.3]):  # a second dense configuration on task a, and wagle alone on task c
        _run(tmp_path / "a" / "runs", "a", "dense", seed, v, objective_config={"alpha": 2.0})
        _run(tmp_path / "c" / "runs", "c", "wagle", seed, v, objective="npo")
    rows = {r["method"]: r for r in across.summary(_records([*two_tasks, tmp_path / "c"]), resamples=50)}
    dense = [m for m in rows if m.startswith("dense (1) + graddiff")]
    assert len(dense) == 3 and "dense (1) + graddiff" in dense  # task b's one configuration keeps its name
    assert sorted(rows[m]["runs"] for m in dense) == [2, 4, 4]
    assert rows["wagle (0.5) + npo"]["tasks"] == "c (2)" and rows["wagle (0.5) + npo"]["poi"] is None
    # task a has two dense configurations, so which is the baseline there is not said: wagle is compared on b
    wagle = rows["wagle (0.5) + graddiff"]
    assert wagle["tasks"] == "b (4)" and wagle["poi"] is not None
    for seed, v in enumerate([0.6, 0.7]):  # a second wagle configuration on b: both keep their comparison on b
        _run(tmp_path / "b" / "runs", "b", "wagle", seed, v, objective_config={"alpha": 2.0})
    rows = {r["method"]: r for r in across.summary(_records([*two_tasks, tmp_path / "c"]), resamples=50)}
    wagles = [r for m, r in rows.items() if m.startswith("wagle (0.5) + graddiff #")]
    assert len(wagles) == 2 and all(r["poi"] is not None and r["tasks"].startswith("b (") for r in wagles)


def test_a_method_added_to_the_records_leaves_the_other_rows_as_they_were(two_tasks, tmp_path):
    before = across.summary(_records(two_tasks), resamples=100)
    for seed, v in enumerate([0.4, 0.5, 0.9]):
        _run(tmp_path / "a" / "runs", "a", "random", seed, v)
    after = {r["method"]: r for r in across.summary(_records(two_tasks), resamples=100)}
    assert len(after) == 3 and all(after[r["method"]] == r for r in before)


def test_stratified_bootstrap_draws_within_each_task_and_profiles_by_hand():
    per_task = {"a": np.array([0.1, 0.2]), "b": np.array([5.0, 6.0, 7.0])}
    drawn = across._resample(per_task, np.random.default_rng(0))
    assert set(drawn["a"]) <= {0.1, 0.2} and set(drawn["b"]) <= {5.0, 6.0, 7.0} and len(drawn["b"]) == 3
    many = across._resample(per_task, np.random.default_rng(0), 500)  # the (draws, runs) path summary uses
    assert many["a"].shape == (500, 2) and set(many["a"].ravel()) == {0.1, 0.2}
    assert set(many["b"].ravel()) == {5.0, 6.0, 7.0} and np.unique(many["b"], axis=0).shape[0] > 1
    taus = np.array([0.0, 0.15, 5.5, 10.0])
    # τ 0: all of a, all of b → 1; τ .15: half of a, all of b → .75; τ 5.5: none of a, 2/3 of b; τ 10: 0
    assert across.profile(per_task, taus) == pytest.approx([1.0, 0.75, 1 / 3, 0.0])


def test_summary_command_writes_its_files_from_records_alone(two_tasks, tmp_path):
    out = tmp_path / "summary"
    assert main(["summary", *map(str, two_tasks), "--out", str(out)]) == 0
    assert {p.name for p in out.iterdir()} == {"summary.csv", "summary.md", "profile.png"}
    first = {p.name: p.read_bytes() for p in out.iterdir()}
    assert main(["summary", *map(str, two_tasks), "--out", str(out)]) == 0
    assert first == {p.name: p.read_bytes() for p in out.iterdir()}  # byte for byte
    assert "| wagle (0.5) + graddiff | a (4) b (4) | 8 | 0.613 [" in (out / "summary.md").read_text()
    assert main(["summary", str(tmp_path / "nowhere"), "--out", str(out)]) == 2
