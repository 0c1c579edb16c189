"""A real sweep on the tiny model: prepare, masks, both objectives, records, leaderboard, resume."""

import csv
import json
import shutil

import pytest

from harness.config import from_dict, to_dict
from harness.errors import ConfigError
from harness.run.method import MethodKey
from harness.sweeps import sweep
from leaderboard import table

SWEEP = {  # NPO as a second grid of the same sweep: the same six runs as both objectives in one grid
    "task": "tofu-mini", "model": "tiny-llama", "attributions": ["dense", "wagle"], "ratios": [0.5, 0.8],
    "objectives": ["graddiff"], "grids": [{"objectives": ["npo"]}], "seeds": [0],
    "task_config": {"utility_limit": 4, "eval_limit": 8, "max_new_tokens": 4, "retain_authors": 1},
    "train": {"epochs": 1, "batch_size": 8, "lr": 1e-3}, "prepare": {"epochs": 1},
}


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    results = tmp_path_factory.mktemp("results")
    cfg = from_dict(sweep.SweepConfig, SWEEP, "test sweep")
    counts = sweep.run(cfg, results)
    return cfg, results, counts


def test_sweep_runs_the_deduplicated_grid(swept):
    _, results, counts = swept
    # dense ignores the ratio: 2 dense runs + 2 ratios x 2 objectives wagle runs
    assert counts == {"finished": 6, "skipped": 0, "failed": 0, "busy": 0}
    records = [json.loads(p.read_text()) for p in (results / "runs").glob("*.json")]
    runs = [r for r in records if r["kind"] == "run"]
    assert len(runs) == 6 and {r["role"] for r in records if r["kind"] == "reference"} == {"target", "retain"}
    for r in runs:
        assert r["status"] == "finished"
        assert set(r["timings"]) >= {"attribution_s", "unlearning_s", "evaluation_s", "total_s"}
        assert r["memory"]["host_peak_rss_mb"] > 0
        assert r["provenance"]["packages"]["torch"] and r["provenance"]["hardware"]["cpu_count"]
        assert all(m["direction"] in ("higher", "lower", "zero") for m in r["metrics"].values())
        assert r["metrics"]["forget_quality"]["value"] is not None
        assert r["curves"]["train"][0]["forget_nll"] > 0
    wagle = [r for r in runs if r["spec"]["attribution"] == "wagle"]
    assert sorted(r["mask"]["density"] for r in wagle) == pytest.approx([0.5, 0.5, 0.8, 0.8], abs=1e-4)  # round(r·N)
    assert all(r["mask"]["info"]["retain_term_norm"] > 0 for r in wagle)
    # the second objective at a ratio reuses the cached mask (both may hit a cache left by an earlier session)
    by_ratio: dict = {}
    for r in wagle:
        by_ratio.setdefault(r["spec"]["ratio"], []).append(r["mask"])
    for same in by_ratio.values():
        assert len({m["digest"] for m in same}) == 1 and sum(not m["cache_hit"] for m in same) <= 1


def test_rerun_skips_finished_runs(swept):
    cfg, results, _ = swept
    assert sweep.run(cfg, results) == {"finished": 0, "skipped": 6, "failed": 0, "busy": 0}


def test_leaderboard_from_records_alone(swept, tmp_path):
    _, results, _ = swept
    copy = tmp_path / "copy"
    shutil.copytree(results, copy)
    (copy / "runs" / "junk.json").write_text("{not json")
    (copy / "runs" / "foreign.json").write_text('{"hello": 1}')
    out = tmp_path / "board.csv"
    assert table.write(copy, out) == 8
    rows = list(csv.DictReader(out.open()))
    assert [r["kind"] for r in rows[:2]] == ["target", "retain"] and len(rows) == 8
    assert "forget_rouge ↓" in rows[0] and "model_utility ↑" in rows[0]
    first = out.read_bytes()
    table.write(copy, out)
    assert out.read_bytes() == first  # byte-identical on regeneration
    files = table.write_all(copy, tmp_path / "board")
    again = table.write_all(results, tmp_path / "board2")
    assert [p.read_bytes() for p in files] == [p.read_bytes() for p in again]
    assert {p.name for p in files} >= {"methods.csv", "index.html", "tradeoff-tofu-mini.png", "masks-tofu-mini.png"}


def test_bad_sweep_files(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text("task: tofu-mini\nattributions: [wagle]\nratio: [0.5]\n")
    with pytest.raises(ConfigError, match=r"s.yaml: unknown key\(s\) ratio; known keys: .*ratios"):
        sweep.load(path)
    path.write_text("task: tofu-mini\nratios: [0.0]\n")
    with pytest.raises(ConfigError, match=r"ratio must be in \(0, 1\], got 0.0"):
        sweep.expand(sweep.load(path))


def test_grid_expansion_dedupes_and_excludes():
    cfg = from_dict(sweep.SweepConfig, {
        "task": "tofu-mini", "model": "tiny-llama", "attributions": ["dense", "wagle", "random"],
        "ratios": [0.5, 0.8], "objectives": ["graddiff", "npo"], "exclude": ["random/npo"], "eval_every": 3},
        "grid")
    specs = sweep.expand(cfg)
    assert {s.eval_every for s in specs} == {3}
    pairs = sorted((s.attribution, s.ratio, s.objective) for s in specs)
    assert pairs == [("dense", 1.0, "graddiff"), ("dense", 1.0, "npo"),
                     ("random", 0.5, "graddiff"), ("random", 0.8, "graddiff"),
                     ("wagle", 0.5, "graddiff"), ("wagle", 0.5, "npo"), ("wagle", 0.8, "graddiff"),
                     ("wagle", 0.8, "npo")]
    typo = from_dict(sweep.SweepConfig, {"attributions": ["wagle"], "attribution_config": {"wagel": {}}}, "grid")
    with pytest.raises(ConfigError, match="attribution_config names wagel, which the grid does not run"):
        sweep.expand(typo)
    bad = from_dict(sweep.SweepConfig, {"exclude": ["random-npo"]}, "grid")
    with pytest.raises(ConfigError, match="exclude entry 'random-npo' is not attribution/objective"):
        sweep.expand(bad)


def test_grids_merge_over_the_file_and_share_per_name_settings():
    cfg = from_dict(sweep.SweepConfig, {
        "task": "tofu-mini", "model": "tiny-llama", "attributions": ["dense", "wagle"], "objectives": ["graddiff"],
        "attribution_config": {"wagle": {"gamma": 1e-6}, "unlearning-layers": {"reduction": 8}},
        "train": {"lr": 1e-4, "batch_size": 4}, "match": {"enabled": True, "check_every": 2},
        "grids": [{"attributions": ["unlearning-layers"], "objectives": ["eul"], "train": {"lr": 1e-3}},
                  {"attributions": ["dense"], "match": {"enabled": False}, "spunge": {"enabled": True}}]}, "f.yaml")
    first, eul, spunge = sweep.grids(cfg, "f.yaml")
    assert first.attribution_config == {"wagle": {"gamma": 1e-6}} and first.grids == []  # each keeps its own names
    assert eul.attribution_config == {"unlearning-layers": {"reduction": 8}}
    assert eul.attributions == ["unlearning-layers"]
    assert (eul.train.lr, eul.train.batch_size) == (1e-3, 4) and eul.match.check_every == 2  # merged one level
    assert spunge.match.enabled is False and spunge.match.check_every == 2 and spunge.spunge.enabled
    assert [(s.attribution, s.objective) for s in sweep.expand(eul)] == [("unlearning-layers", "eul")]
    for grids, message in (([{"attributions": ["dense"], "grids": []}], r"f.yaml: grids\[0\]: a grid cannot hold"),
                           ([{"atributions": ["dense"]}], r"f.yaml: grids\[0\]: unknown key\(s\) atributions"),
                           ([{"attributions": ["salun"]}], "attribution_config names unlearning-layers, which no "
                                                           "grid runs")):
        bad = from_dict(sweep.SweepConfig, {**to_dict(cfg), "grids": grids}, "f.yaml")
        with pytest.raises(ConfigError, match=message):
            sweep.grids(bad, "f.yaml")


def test_per_method_train_overrides_and_tune_block_checks():
    cfg = from_dict(sweep.SweepConfig, {
        "task": "tofu-mini", "model": "tiny-llama", "attributions": ["dense", "lora"],
        "objectives": ["graddiff", "npo"],
        "train": {"lr": 1e-4, "batch_size": 4}, "train_by_objective": {"npo": {"lr": 5e-5, "batch_size": 2}},
        "train_by_attribution": {"lora": {"lr": 1e-3}}}, "grid")
    trains = {(s.attribution, s.objective): (s.train.lr, s.train.batch_size) for s in sweep.expand(cfg)}
    assert trains == {("dense", "graddiff"): (1e-4, 4), ("dense", "npo"): (5e-5, 2),
                      ("lora", "graddiff"): (1e-3, 4), ("lora", "npo"): (1e-3, 2)}  # the attribution's wins
    with pytest.raises(ConfigError, match="train_by_attribution names wagle, which the grid does not run"):
        sweep.expand(from_dict(sweep.SweepConfig, {"attributions": ["dense"], "train_by_attribution": {"wagle": {}}},
                               "grid"))
    with pytest.raises(ConfigError, match="train for lora/graddiff: unknown key"):
        sweep.expand(from_dict(sweep.SweepConfig, {"attributions": ["lora"], "objectives": ["graddiff"],
                                                   "train_by_attribution": {"lora": {"learning_rate": 1}}}, "grid"))
    with pytest.raises(ConfigError, match=r"tune needs match\.enabled"):
        sweep.tuning_grid(from_dict(sweep.SweepConfig, {"tune": {"enabled": True}}, "grid"))
    tuned = from_dict(sweep.SweepConfig, {"attributions": ["dense", "wagle"], "ratios": [0.5, 0.8],
                                          "objectives": ["graddiff"], "seeds": [0, 4], "match": {"enabled": True},
                                          "tune": {"enabled": True, "lr_factors": [0.5, 2.0]}}, "grid")
    grid = sweep.tuning_grid(tuned)
    assert [m.label for m in sorted(grid)] == ["dense (1) + graddiff", "wagle (0.5) + graddiff",
                                               "wagle (0.8) + graddiff"]
    assert all(not s.evaluate for g in grid.values() for s in g)
    dense = grid[MethodKey("dense", 1.0, "graddiff")]  # each factor of 2e-5 on each fixed tuning seed
    assert [(s.train.lr, s.seed) for s in dense] == [(1e-5, 1000), (1e-5, 1001), (4e-5, 1000), (4e-5, 1001)]
    assert sweep.TuneConfig().lr_factors == pytest.approx([1 / 3, 1, 3])
    with pytest.raises(ConfigError, match=r"tune\.seeds and seeds share \[1000\]"):
        sweep.tuning_grid(from_dict(sweep.SweepConfig, {"seeds": [0, 1000], "match": {"enabled": True},
                                                        "tune": {"enabled": True}}, "grid"))


def test_verify_replays_records_and_catches_a_changed_number(swept, tmp_path, capsys):
    """`verify` reruns a record from its stored spec: one whose metric was edited after the run differs in
    that metric alone (every other number reproduces exactly on this machine), and the command fails."""
    from harness.cli import main

    _, results, _ = swept
    copy = tmp_path / "copy"
    shutil.copytree(results, copy)
    path = next(p for p in sorted((copy / "runs").glob("*.json")) if json.loads(p.read_text())["kind"] == "run")
    record = json.loads(path.read_text())
    record["metrics"]["forget_rouge"]["value"] += 0.125
    path.write_text(json.dumps(record))
    assert main(["verify", str(copy), "--id", record["id"]]) == 1
    out = capsys.readouterr().out
    assert f"{record['id']}: DIFFERS in 1 metric(s): forget_rouge" in out and "0 of 1 reproduced" in out
    assert main(["verify", str(copy), "--id", "no-such-run"]) == 2


def test_extra_seeds_stop_at_the_match_and_their_settings_are_checked():
    from harness.run.spec import RunSpec

    cfg = from_dict(sweep.SweepConfig, {"attributions": ["dense"], "objectives": ["graddiff"], "seeds": [0, 1, 2],
                                        "evaluate_seeds": [0], "probes": ["mia"], "match": {"enabled": True}}, "g")
    specs = {s.seed: s for s in sweep.expand(cfg)}
    assert specs[0].full_evaluation and specs[0].probes == ["mia"]
    assert not specs[1].full_evaluation and specs[1].probes == [] and not specs[2].full_evaluation
    with pytest.raises(ConfigError, match=r"evaluate_seeds names \[5\]"):
        sweep.expand(from_dict(sweep.SweepConfig, {"seeds": [0], "evaluate_seeds": [5],
                                                   "match": {"enabled": True}}, "g"))
    with pytest.raises(ConfigError, match=r"evaluate_seeds needs match\.enabled"):
        sweep.expand(from_dict(sweep.SweepConfig, {"seeds": [0, 1], "evaluate_seeds": [0]}, "g"))
    with pytest.raises(ValueError, match=r"needs match\.enabled"):
        RunSpec(full_evaluation=False).validate()


def test_checkpoints_fall_on_check_steps_when_the_run_bisects():
    from harness.run.spec import RunSpec

    refused = r"s: train\.checkpoint_every \(3\) must be a multiple of match\.check_every \(2\)"
    with pytest.raises(ConfigError, match=refused):
        from_dict(RunSpec, {"match": {"enabled": True, "check_every": 2}, "train": {"checkpoint_every": 3}},
                  "s")
    with pytest.raises(ConfigError, match=r"checkpoint_every must be >= 1 or null \(no checkpoints\), got -2"):
        from_dict(RunSpec, {"train": {"checkpoint_every": -2}}, "s")
    for ok in ({"match": {"enabled": True, "check_every": 2}, "train": {"checkpoint_every": 4}},
               {"match": {"enabled": True, "check_every": 2, "bisect": False}, "train": {"checkpoint_every": 3}}):
        from_dict(RunSpec, ok, "s")  # validates
