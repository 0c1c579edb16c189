"""Matched forgetting: efficacy, utility at the match and the trade-off score against hand computations, the
probe against the scoring it is built on, the tune rule, and paired differences."""

import numpy as np
import pytest

from harness.api import Example, ProbeSets
from harness.measure import match, scoring
from harness.sweeps.sweep import select
from leaderboard.paired import differences


def traj(forget, utility):
    return [{"step": i, "forget": f, "utility": u} for i, (f, u) in enumerate(zip(forget, utility, strict=True))]


def test_straight_trajectory_by_hand():
    # e = 0, 0.5, 1; u = 1, 0.8, 0.6: area = 0.5 (1 + 0.8) / 2 + 0.5 (0.8 + 0.6) / 2 = 0.8
    s = match.summarize(traj([1.0, 0.5, 0.0], [1.0, 0.8, 0.6]), "utility", level=0.0, reference=1.0)
    assert s["tradeoff"] == pytest.approx(0.8)
    assert s["at_match"] == pytest.approx(0.6) and s["reached"] and s["step"] == 2


def test_overshoot_is_interpolated_and_visible():
    # level 0.2 from 1.0: e = 0, 0.5, 1.5; u = 1, 0.8, 0.4 (reference 2: raw utilities 2, 1.6, 0.8)
    s = match.summarize(traj([1.0, 0.6, -0.2], [2.0, 1.6, 0.8]), "utility", level=0.2, reference=2.0)
    assert s["at_match_relative"] == pytest.approx(0.6)  # 0.8 + (0.4 - 0.8) * 0.5
    assert s["at_match"] == pytest.approx(1.2)
    assert s["tradeoff"] == pytest.approx(0.45 + 0.35)
    assert s["efficacy_at_stop"] == pytest.approx(1.5)  # past the level: shown, not hidden


def test_a_run_that_falls_back_is_credited_once():
    points = [(0, 1.0), (0.6, 0.5), (0.2, 0.9), (0.8, 0.7), (1.0, 0.6)]
    u_at_06 = 0.9 + (0.7 - 0.9) * (0.6 - 0.2) / 0.6
    expected = 0.6 * (1 + 0.5) / 2 + 0.2 * (u_at_06 + 0.7) / 2 + 0.2 * (0.7 + 0.6) / 2
    assert match.tradeoff_score(points) == pytest.approx(expected)
    assert match.at_match(points) == pytest.approx(0.6)


def test_unreached_level_gets_no_area_beyond_and_no_utility_at_match():
    s = match.summarize(traj([1.0, 0.5], [1.0, 1.0]), "utility", level=0.0, reference=1.0)
    assert not s["reached"] and s["step"] is None and s["at_match"] is None
    assert s["tradeoff"] == pytest.approx(0.5)


def test_the_retain_model_scores_one():
    assert match.tradeoff_score([(0.0, 1.0), (1.0, 1.0)]) == pytest.approx(1.0)


def test_nothing_to_unlearn_is_an_error():
    with pytest.raises(ValueError, match="nothing to unlearn"):
        match.efficacy(0.1, start=0.1, level=0.2)


def test_probe_is_the_mean_probability_and_harmonic_mean_of_parts(tiny):
    model, tok = tiny
    exs = [Example(f"Question: q{i}?\nAnswer:", f" answer number {i}") for i in range(9)]
    # part b is normalised by two wrong answers per example, as TOFU's ra_prob and wf_prob
    sets = ProbeSets(forget=exs[:2], utility={"a": exs[2:4], "b": exs[4:5]}, validation=exs[5:6],
                     alternatives={"b": [exs[6:8]]})
    got = match.probe(model, tok, sets, ("forget", "utility", "validation"), batch_size=4, max_length=64)
    p = np.exp(-scoring.completion_nll(model, tok, exs, 1, 64))
    assert got["forget"] == pytest.approx(p[:2].mean(), rel=1e-6)
    b = p[4] / (p[4] + p[6] + p[7])
    assert got["utility"] == pytest.approx(2 / (1 / p[2:4].mean() + 1 / b), rel=1e-6)
    assert got["validation"] == pytest.approx(p[5], rel=1e-6)
    with pytest.raises(ValueError, match="validation"):
        match.probe(model, tok, ProbeSets(exs[:1], {"a": exs[1:2]}), ("validation",), 4, 64)


def test_a_probe_that_is_not_finite_stops_the_run(tiny):
    import torch

    from harness.errors import NonFiniteLossError
    from harness.measure.matcher import Matcher

    model, tok = tiny
    exs = [Example(f"Question: q{i}?\nAnswer:", f" answer number {i}") for i in range(3)]
    matcher = Matcher.__new__(Matcher)  # the check alone: no task, no reference models
    matcher.tok, matcher.composer, matcher.key, matcher.seconds = tok, None, "utility", 0.0
    matcher.sets = ProbeSets(forget=exs[:2], utility={"a": exs[2:]})
    matcher.task = type("T", (), {"eval_batch_size": 4, "max_length": 64})()
    assert set(matcher.check(model)) == {"forget", "utility"}
    with torch.no_grad():
        model.lm_head.weight.fill_(float("nan"))
    with pytest.raises(NonFiniteLossError, match=r"not finite \(forget nan"):
        matcher.check(model)


def _tune_record(lr, reached, validation_utility, validation_tradeoff, status="finished", seed=1000, step=None):
    from harness.run.records import Record

    return Record(kind="tune", id=f"r{lr}-{seed}", status=status,
                  spec={"train": {"lr": lr, "max_steps": 30}, "seed": seed}, match={"reached": reached, "step": step},
                  metrics={"validation_match_utility": {"value": validation_utility},
                           "validation_tradeoff_score": {"value": validation_tradeoff}})


def test_tune_rule_prefers_reaching_then_the_validation_metric_then_smaller_rate():
    records = [_tune_record(1e-5, False, None, 0.9), _tune_record(3e-5, True, 0.5, 0.6),
               _tune_record(1e-4, True, 0.7, 0.5), _tune_record(3e-4, True, 0.7, 0.4),
               _tune_record(1e-3, True, 0.99, 0.99, status="failed")]
    # by default on the verdicts' primary metric, the trade-off score; 1e-5 is better but never reached
    assert select(records) == {"lr": 3e-5, "reached": True, "runs": ["r3e-05-1000"], "score": 0.6}
    # on utility at the match: a tie between 1e-4 and 3e-4 goes to the smaller rate
    assert select(records, "match_utility") == {"lr": 1e-4, "reached": True, "runs": ["r0.0001-1000"], "score": 0.7}
    # none reached: the best validation trade-off score
    assert select([_tune_record(1e-5, False, None, 0.2), _tune_record(3e-5, False, None, 0.4)])["lr"] == 3e-5
    assert select([_tune_record(1e-5, True, 0.5, 0.5, status="failed")]) is None
    # two tuning seeds: a rate counts as reaching when every seed did, and is scored by the mean over seeds
    two = [_tune_record(1e-5, True, 0.5, 0.5), _tune_record(1e-5, True, 0.7, 0.5, seed=1001),
           _tune_record(3e-5, True, 0.9, 0.9), _tune_record(3e-5, False, None, 0.4, seed=1001),
           _tune_record(1e-4, True, 0.65, 0.5), _tune_record(1e-4, True, 0.5, 0.5, seed=1001)]
    assert select(two, "match_utility") == {"lr": 1e-5, "reached": True,
                                            "runs": ["r1e-05-1000", "r1e-05-1001"], "score": pytest.approx(0.6)}
    # headroom: a rate whose tuning runs reach the level only near the end of their 30 steps is not counted as
    # reaching (a test seed needing a step or two more would not); 24 steps is 0.8 of the budget, 26 is past it
    late = [_tune_record(3e-5, True, 0.5, 0.9, step=24), _tune_record(3e-5, True, 0.5, 0.95, seed=1001, step=26),
            _tune_record(1e-4, True, 0.5, 0.85, step=12), _tune_record(1e-4, True, 0.5, 0.9, seed=1001, step=10)]
    assert select(late)["lr"] == 3e-5 and select(late, headroom=0.8)["lr"] == 1e-4
    assert select(late[:1] + late[2:3], headroom=0.8)["lr"] == 3e-5  # step 24 is within 0.8 × 30
    # every rate reached past the headroom: the one that reached soonest, not the slowest the score favours
    later = [_tune_record(3e-5, True, 0.5, 0.9, step=28), _tune_record(3e-5, True, 0.5, 0.9, seed=1001, step=30),
             _tune_record(1e-4, True, 0.5, 0.85, step=25), _tune_record(1e-4, True, 0.5, 0.85, seed=1001, step=26)]
    assert select(later, headroom=0.8) == {"lr": 1e-4, "reached": True, "runs": ["r0.0001-1000", "r0.0001-1001"],
                                           "score": pytest.approx(0.85)}


def test_a_rate_is_chosen_from_the_whole_grid_never_at_a_rate_that_failed_and_extended_at_an_edge(tmp_path):
    from harness.config import from_dict, to_dict
    from harness.run import records
    from harness.sweeps import plan, sweep

    cfg = from_dict(sweep.SweepConfig, {"task": "tofu-mini", "model": "tiny-llama", "attributions": ["dense"],
                                        "objectives": ["graddiff"], "seeds": [0, 1], "train": {"lr": 1e-4},
                                        "match": {"enabled": True}, "tune": {"enabled": True}}, "sweep")
    grid = sweep.tuning_grid(cfg)  # ×{1/3, 1, 3} of 1e-4 on tuning seeds 1000 and 1001
    (method, tuning), = grid.items()
    score = {1e-4 / 3: 0.5, 1e-4: 0.7, 3e-4: 0.9, 9e-4: 0.8}

    def write(spec, status="finished"):
        lr = spec.train.lr
        value = next(v for k, v in score.items() if k == pytest.approx(lr))
        records.write(tmp_path, spec.run_id(), records.Record(
            kind="tune", status=status, spec=to_dict(spec), spec_key=spec.run_id(), memory={},
            headline={"forget": "forget_prob", "utility": "model_utility"}, match={"level": 0.1, "reached": True},
            error={"type": "NonFiniteLossError", "message": "diverged", "traceback": ""} if status == "failed"
            else None,
            metrics={"validation_tradeoff_score": {"value": value, "direction": "higher", "group": "match"},
                     "validation_match_utility": {"value": 0.4, "direction": "higher", "group": "match"}}))

    for spec in tuning[:-1]:
        write(spec)
    specs, missing = sweep.tuned_specs(cfg, tmp_path, grid)  # one tuning run without a record: no choice yet
    assert specs == [] and missing[method][0] == "busy" and "has no record yet" in missing[method][1]
    assert sweep.extension(cfg, tmp_path, grid) == {}
    write(tuning[-1], status="failed")  # 3e-4, the best score, diverged on one of the two seeds
    assert tuning[-1].train.lr == pytest.approx(3e-4)
    specs, missing = sweep.tuned_specs(cfg, tmp_path, grid)
    assert missing == {} and {s.seed for s in specs} == {0, 1}
    assert all(s.train.lr == pytest.approx(1e-4) and s.tuned_from == pytest.approx([1e-4 / 3, 1e-4, 3e-4])
               for s in specs)
    assert sweep.extension(cfg, tmp_path, grid) == {}  # the middle of the grid: nothing to extend
    write(tuning[-1])  # the same run finished: 3e-4 is chosen, an edge, so 9e-4 is tried on both tuning seeds
    more = sweep.extension(cfg, tmp_path, grid)[method]
    assert [(s.train.lr, s.seed) for s in more] == [(pytest.approx(9e-4), 1000), (pytest.approx(9e-4), 1001)]
    # `sweep --plan` lists what the sweep will run: the extension, then test runs at the base rate until the
    # extension has records, then at the chosen rate
    planned, tests = plan.runs_of(cfg, tmp_path)
    assert len(planned) == 8 and all(s.train.lr == pytest.approx(1e-4) and not s.tuned_from for s in tests)
    for spec in more:
        write(spec)
    tests = plan.runs_of(cfg, tmp_path)[1]
    assert [s.seed for s in tests] == [0, 1] and all(s.train.lr == pytest.approx(3e-4) for s in tests)
    assert tests[0].tuned_from == pytest.approx([1e-4 / 3, 1e-4, 3e-4, 9e-4])
    for spec in tuning:  # every rate failed on some seed: no rate, and neither the sweep nor its plan has test runs
        write(spec, status="failed")
    assert sweep.tuned_specs(cfg, tmp_path, grid)[1][method][0] == "failed"
    assert plan.runs_of(cfg, tmp_path)[1] == []


def _runs(values):
    return {seed: {"metrics": {"m": {"value": v}}} for seed, v in enumerate(values)}


def test_paired_differences_by_hand():
    assert differences(_runs([0.5, 0.6, 0.7]), _runs([0.4, 0.5, 0.5]), "m") == pytest.approx([0.1, 0.1, 0.2])
    # a seed without a value (never reached the level) is left out of the pairs, as is a seed one side lacks
    assert differences(_runs([0.9, 0.8, None]), _runs([0.1, 0.2, 0.3]), "m") == pytest.approx([0.8, 0.6])
    assert differences(_runs([0.9]), _runs([0.1, 0.2]), "m") == pytest.approx([0.8])


def test_bisection_lands_within_the_tolerance_on_the_line_between_two_states():
    """F(θ) = 1 − w on a one-weight model, from w = 0 (F 1) to w = 1 (F 0), level 0.37: e = w / 0.63, so the
    match is at α = 0.63; bisection stops within ±0.02 of e = 1 and leaves the model there."""
    import torch

    net = torch.nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        net.weight.fill_(0.0)
    before = match.snapshot(net)
    with torch.no_grad():
        net.weight.fill_(1.0)
    calls = []

    def forget_of(m):
        calls.append(float(m.weight.detach()))
        return 1.0 - float(m.weight.detach())

    cfg = match.MatchConfig(enabled=True)
    found = match.bisect(net, before, forget_of, 1.0, 0.37, cfg)
    assert found["within"] and abs(found["alpha"] / 0.63 - 1.0) <= 0.02
    assert [t["alpha"] for t in found["tried"]] == calls == [0.5, 0.75, 0.625]  # halving the bracket each probe
    assert float(net.weight.detach()) == pytest.approx(found["alpha"])
    # out of probes: the closest state tried at or past the level, and the record says the tolerance was missed
    with torch.no_grad():
        net.weight.fill_(1.0)
    missed = match.bisect(net, before, forget_of, 1.0, 0.37, match.MatchConfig(enabled=True, max_bisections=1))
    assert not missed["within"] and missed["alpha"] == 1.0 and float(net.weight.detach()) == 1.0
    # summarize with the bisected model: it stands at e = 1, its utility is the utility at the match
    trajectory = [{"step": 0, "forget": 1.0, "utility": 0.5}, {"step": 2, "forget": 0.6, "utility": 0.45},
                  {"step": 4, "forget": 0.1, "utility": 0.2}]
    matched = {"from_step": 2, "probe": {"forget": 0.372, "utility": 0.4}}
    s = match.summarize(trajectory, "utility", 0.37, 0.5, matched)
    assert s["at_match"] == pytest.approx(0.4) and s["forget_at_stop"] == 0.372
    assert s["efficacy_at_stop"] == pytest.approx(0.628 / 0.63)
    e1 = 0.4 / 0.63  # area: (0,1) → (e1, 0.9) → (1, 0.8)
    assert s["tradeoff"] == pytest.approx(e1 * (1 + 0.9) / 2 + (1 - e1) * (0.9 + 0.8) / 2)


def test_the_forget_probe_stops_on_rows_the_forget_metrics_never_measure():
    from harness.plugins import get_registry
    from tasks.tofu import stop_and_measure

    rows = list(range(60))  # three authors of 20
    assert stop_and_measure(rows, "authors") == (rows[40:], rows[:40])  # the second half of the authors stops
    assert stop_and_measure(rows, "rows") == (rows[1::2], rows[0::2])
    assert stop_and_measure(rows, "none") == (rows, rows)
    task = get_registry().build("task", "tofu-mini", {"eval_limit": 20}, "test")
    stop = {ex.prompt for ex in task.probe_sets().forget}
    measured = {task._example(r).prompt for r in task._eval_splits()["forget"]}
    assert len(stop) == len(measured) == 20 and not stop & measured  # forget01: author 2 stops, author 1 measures
    paper = get_registry().build("task", "tofu", {"forget_split": "forget01"}, "test")
    assert len(paper.probe_sets().forget) == len(paper._eval_splits()["forget"]) == 40  # TOFU's evaluation: none
    with pytest.raises(Exception, match="stop_split 'halves'"):
        get_registry().build("task", "tofu-mini", {"stop_split": "halves"}, "test")


def test_wmdp_stops_on_questions_its_accuracy_never_measures(tmp_path):
    from harness.errors import DataError
    from harness.plugins import get_registry

    mini = get_registry().build("task", "wmdp-mini", {"probe_limit": 57}, "test")
    stop = {ex.prompt for ex in mini.probe_sets().forget}
    _, groups, rename = mini._question_tasks()
    measured = {_wmdp_prompt(g.tasks[0].description, r) for g in groups for r in g.tasks[0].rows}
    assert len(stop) == len(measured) == 8 and not stop & measured  # bio and cyber: 4 questions stop, 4 measure
    assert rename == {"wmdp_bio_local": "wmdp_bio", "wmdp_cyber_local": "wmdp_cyber"}
    whole = get_registry().build("task", "wmdp-mini", {"probe_limit": 57, "stop_split": "none"}, "test")
    assert len(whole.probe_sets().forget) == sum(len(g.tasks[0].rows) for g in whole._question_tasks()[1]) == 16
    with pytest.raises(Exception, match="stop_split 'rows'"):
        get_registry().build("task", "wmdp", {"stop_split": "rows"}, "test")
    folder = tmp_path / "one"
    folder.mkdir()
    (folder / "bio.jsonl").write_text('{"question": "q", "choices": ["a", "b", "c", "d"], "answer": 0}\n')
    few = get_registry().build("task", "wmdp-mini", {"questions_dir": str(folder), "subjects": ["bio"]}, "test")
    with pytest.raises(DataError, match="bio: 1 question"):
        few.probe_sets()


def _wmdp_prompt(description: str, row: dict) -> str:
    """The probe's prompt of a question (tasks/wmdp.py, choice_examples), to compare sets of questions."""
    from tasks.wmdp import choice_examples

    return choice_examples(description, row)[0].prompt
