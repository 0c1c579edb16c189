"""The whole head-to-head protocol on the tiny model: tuning runs on their own seed, the tune rule, test runs
that stop at the retain model's forgetting level, their records, paired statistics and the leaderboard."""

import csv
import json

import pytest

from harness.config import from_dict
from harness.run.records import Record
from harness.sweeps import sweep
from leaderboard import table

SWEEP = {
    "task": "tofu-mini", "model": "tiny-llama", "attributions": ["dense", "random"], "ratios": [0.5],
    "objectives": ["graddiff"], "seeds": [0, 1],
    "task_config": {"utility_limit": 2, "eval_limit": 6, "max_new_tokens": 2, "retain_authors": 1,
                    "probe_limit": 4},
    "train": {"lr": 3e-3, "max_steps": 6, "batch_size": 8, "schedule": "constant", "warmup_ratio": 0.0},
    "train_by_attribution": {"random": {"lr": 6e-3}},
    "prepare": {"epochs": 2, "lr": 3e-3},
    "match": {"enabled": True, "check_every": 1},
    "tune": {"enabled": True, "lr_factors": [1.0, 3.0], "seeds": [7]},  # two seeds: test_match, by hand
    "evaluate_seeds": [0],  # seed 1 stops at the match: the verdicts' numbers without the full evaluation
}


@pytest.fixture(scope="module")
def protocol(tmp_path_factory):
    results = tmp_path_factory.mktemp("protocol")
    cfg = from_dict(sweep.SweepConfig, SWEEP, "protocol")
    counts = sweep.run(cfg, results)
    records = [json.loads(p.read_text()) for p in sorted((results / "runs").glob("*.json"))]
    return cfg, results, counts, records


def test_tuning_runs_then_test_runs_at_the_selected_rate(protocol):
    cfg, _, counts, records = protocol
    headroom = cfg.tune.headroom
    # 2 methods x (2 rates on the tuning seed, then one rate outward, then 2 test seeds)
    assert counts == {"finished": 10, "skipped": 0, "failed": 0, "busy": 0}
    tune = [r for r in records if r["kind"] == "tune"]
    runs = [r for r in records if r["kind"] == "run"]
    assert len(tune) == 6 and len(runs) == 4
    assert {r["spec"]["seed"] for r in tune} == {7}  # the declared tuning seed, never a test seed
    assert all(not r["stats"] and "forget_rouge" not in r["metrics"] for r in tune)  # no test metric
    for attribution, base in (("dense", 3e-3), ("random", 6e-3)):
        grid = [Record.from_json(r, "test") for r in tune if r["spec"]["attribution"] == attribution]
        first = [r for r in grid if r.spec["train"]["lr"] in (pytest.approx(base), pytest.approx(3 * base))]
        edge = sweep.select(first, headroom=headroom)["lr"]  # a grid of two: always an edge, so it extends once
        outward = edge / 3 if edge == pytest.approx(base) else edge * 3
        lrs = sorted({r.spec["train"]["lr"] for r in grid})
        assert lrs == pytest.approx(sorted([base, 3 * base, outward])) and len(first) == 2
        chosen = sweep.select(grid, headroom=headroom)["lr"]
        tested = [r for r in runs if r["spec"]["attribution"] == attribution]
        assert {r["spec"]["train"]["lr"] for r in tested} == {chosen}
        assert all(r["spec"]["tuned_from"] == pytest.approx(lrs) for r in tested)
        assert sorted(r["spec"]["seed"] for r in tested) == [0, 1]


def test_runs_stop_at_the_level_and_record_the_trajectory(protocol):
    _, _, _, records = protocol
    retain = next(r for r in records if r.get("role") == "retain")
    target = next(r for r in records if r.get("role") == "target")
    level = retain["probe"]["forget"]
    assert target["probe"]["forget"] > level
    for r in (r for r in records if r["kind"] in ("run", "tune")):
        m, probes = r["match"], r["curves"]["probe"]
        assert m["level"] == level and probes[0] == {"step": 0, "forget": target["probe"]["forget"],
                                                    m["probe"]: target["probe"][m["probe"]]}
        assert [p["step"] for p in probes] == list(range(len(probes)))  # check_every 1
        assert len(r["curves"]["train"]) == len(probes) - 1
        if m["reached"]:  # stopped at the first check at or below the level, then bisected back to it
            assert m["stopped_at"] == m["step"] == probes[-1]["step"]
            assert probes[-1]["forget"] <= level < min(p["forget"] for p in probes[:-1])
            b = m["bisection"]
            assert (b["from_step"], b["to_step"]) == (m["step"] - 1, m["step"]) and 0 < b["alpha"] <= 1
            efficacy = r["metrics"]["match_efficacy"]["value"]
            assert b["within"] and abs(efficacy - 1.0) <= 0.02  # the tiny model lands within the tolerance
            assert b["probe"]["forget"] == r["metrics"]["match_forget"]["value"]
            if r["kind"] == "run":  # the utility at the match is the bisected model's own probe
                assert r["metrics"]["match_utility"]["value"] == b["probe"]["utility"]
        else:  # ran its whole budget
            assert m["stopped_at"] is None and len(probes) == 7 and all(p["forget"] > level for p in probes)
    runs = [r for r in records if r["kind"] == "run"]
    assert any(r["match"]["reached"] for r in runs)
    for r in runs:
        full = r["spec"]["seed"] == 0  # the full evaluation at the stopping point on evaluate_seeds only
        assert ("forget_quality" in r["metrics"]) == full and r["spec"]["full_evaluation"] == full
        assert (r["metrics"]["match_utility"]["value"] is None) == (not r["match"]["reached"])
        assert 0 <= r["metrics"]["tradeoff_score"]["value"]


def test_leaderboard_pairs_methods_and_shows_the_headline(protocol, tmp_path):
    _, results, _, _ = protocol
    files = {p.name: p for p in table.write_all(results, tmp_path / "board")}
    assert {"paired.csv", "trajectory-tofu-mini.png"} <= set(files)
    pairs = list(csv.DictReader(files["paired.csv"].open()))
    assert {(p["attribution"], p["baseline"], p["metric"]) for p in pairs} >= {
        ("random", "dense", "tradeoff_score"), ("random", "dense", "match_utility")}
    trade = next(p for p in pairs if p["metric"] == "tradeoff_score")
    assert trade["n"] == "2" and trade["role"] == "secondary" and trade["verdict"] == ""  # two baselines: no verdict
    md = files["leaderboard.md"].read_text()
    assert "### Matched forgetting" in md and "tradeoff_score vs dense" in md and "of {" in md
    methods = list(csv.DictReader(files["methods.csv"].open()))
    assert len(methods) == 2 and all(m["n"] == "2" for m in methods)  # probe-only seeds join their method's row
    page = files["index.html"].read_text()
    assert page.index("Matched forgetting") < page.index("<details")  # the headline comes first
    assert "validation_match_utility" not in md  # tuning runs are not methods of the leaderboard
    for p in pairs:  # per-question probe values reach the two-level bootstrap
        assert p["two_level_low"] and float(p["two_level_low"]) <= float(p["two_level_high"])
        assert 0.0 <= float(p["question_share"]) <= 1.0
    again = {p.name: p for p in table.write_all(results, tmp_path / "again")}
    assert all(files[n].read_bytes() == again[n].read_bytes() for n in files)


def test_records_keep_the_probe_per_question_and_replay_their_numbers(protocol):
    from leaderboard import questions

    _, _, _, records = protocol
    for r in (r for r in records if r["kind"] in ("run", "tune") and r["match"]["reached"]):
        q = r["match"]["questions"]
        assert len(q["checks"]) == len(r["curves"]["probe"]) - 1 and q["matched"] and q["target"] and q["retain"]
        assert len(q["clusters"]["forget"]) == len(q["target"]["forget"])
        prefix = "" if r["kind"] == "run" else "validation_"
        for metric in ("tradeoff_score", "match_utility"):  # every question once: the record's own number
            assert questions.replay(r, metric, questions.ones(q))[0] == pytest.approx(
                r["metrics"][prefix + metric]["value"], rel=1e-9)


def test_rerun_skips_tuning_and_test_runs(protocol, caplog):
    cfg, results, _, _ = protocol
    with caplog.at_level("INFO", logger="harness.sweeps.sweep"):
        assert sweep.run(cfg, results) == {"finished": 0, "skipped": 10, "failed": 0, "busy": 0}
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("run ")]
    assert lines[0].startswith("run 1 of 8 (dense (1) + graddiff, seed 7): skipped, ")  # planned: 4 + 4
    assert lines[-1].startswith("run 10 of 10 (random (0.5) + graddiff, seed 1): skipped, ") and "left" not in lines[-1]


def test_progress_says_how_much_is_left():
    """The time left is the mean time of the runs this sweep ran times the runs to come: skipped ones and the
    reference models' preparation cost none."""
    import time as clock

    now = clock.monotonic()
    tally = sweep.Tally(total=4, start=now - 1200)  # 20 minutes ago, of which 10 built the reference models
    tally.since = now - 600  # the runs began ten minutes ago
    assert tally.add("skipped").startswith("run 1 of 4: skipped, ")
    line = tally.add("finished")  # one run in 600 s: two to come, about 20 min
    assert line.startswith("run 2 of 4: finished, 20 min elapsed, about 20 min left"), line
    assert sweep.minutes(45) == "45 s" and sweep.minutes(5400) == "90 min"


def test_the_sweep_declares_its_comparisons_before_the_runs(protocol):
    _, results, _, _ = protocol
    declared = json.loads((results / "comparisons.json").read_text())
    assert declared["primary"] == "tradeoff_score" and declared["baselines"] == ["dense", "random"]
    assert declared["seeds"] == [0, 1]  # the plan: a verdict on fewer seed pairs is interim
    other = from_dict(sweep.SweepConfig, {**SWEEP, "compare": {"primary": "match_utility", "secondary": []}}, "other")
    with pytest.raises(sweep.SweepError, match="declares other comparisons"):
        sweep.run(other, results)


def test_a_plan_may_grow_but_not_shrink(tmp_path):
    cfg = from_dict(sweep.SweepConfig, SWEEP, "sweep")
    sweep.declare(cfg.compare, [0, 1], tmp_path)
    sweep.declare(cfg.compare, [0, 1, 2, 3], tmp_path)  # grown: logged, written
    assert json.loads((tmp_path / "comparisons.json").read_text())["seeds"] == [0, 1, 2, 3]
    assert json.loads((tmp_path / "events.jsonl").read_text())["event"] == "replan"
    with pytest.raises(sweep.SweepError, match=r"drops \[2, 3\]"):
        sweep.declare(cfg.compare, [0, 1], tmp_path)


def test_a_folder_made_by_other_code_is_not_resumed(protocol, tmp_path):
    """Runs whose provenance names another core digest would all run again beside the old ones: refused,
    naming the commit to resume from."""
    cfg, results, _, _ = protocol
    (tmp_path / "runs").mkdir()
    record = json.loads(next((results / "runs").glob("tofu-mini-dense-*.json")).read_text())
    record["provenance"].update(core="0123456789abcdef", git_commit="feedfacecafe")
    (tmp_path / "runs" / "old.json").write_text(json.dumps(record))
    with pytest.raises(sweep.SweepError, match=r"core 0123456789abcdef \(git commit feedfacecafe"):
        sweep.run(cfg, tmp_path)


def test_a_budget_that_ends_between_checks_is_probed_at_its_last_step(tmp_path):
    """max_steps 3 with checks every 2: the model after step 3 is probed too, and when it crosses the level the
    run bisects between the check at step 2 and it (the level set between the two steps' probes, read from a
    run checked at every step)."""
    from harness.run import runner
    from harness.run.spec import RunSpec

    base = {k: SWEEP[k] for k in ("task", "model", "task_config", "prepare")}
    base.update(attribution="dense", objective="graddiff", seed=0, evaluate=False,
                train={**SWEEP["train"], "max_steps": 3})
    every = runner.execute(from_dict(RunSpec, {**base, "match": {"enabled": True, "check_every": 1, "level": 0.0}},
                                     "test"), tmp_path / "every").to_json()
    forget = {p["step"]: p["forget"] for p in every["curves"]["probe"]}
    assert forget[3] < forget[2]
    level = (forget[2] + forget[3]) / 2
    spec = from_dict(RunSpec, {**base, "match": {"enabled": True, "check_every": 2, "level": level}}, "test")
    record = runner.execute(spec, tmp_path / "two").to_json()
    m = record["match"]
    assert [p["step"] for p in record["curves"]["probe"]] == [0, 2, 3]
    assert m["reached"] and m["stopped_at"] == 3 and m["step"] == 3
    assert (m["bisection"]["from_step"], m["bisection"]["to_step"]) == (2, 3) and m["bisection"]["within"]
