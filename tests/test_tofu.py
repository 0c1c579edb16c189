import json

import pytest

from harness.errors import ConfigError, DataError
from harness.io import read_jsonl
from harness.plugins import get_registry
from tasks.tofu import data_dir

SPLITS = {"full": 4000, "forget01": 40, "forget05": 200, "forget10": 400, "retain90": 3600, "retain95": 3800,
          "retain99": 3960, "forget01_perturbed": 40, "forget05_perturbed": 200, "forget10_perturbed": 400,
          "retain_perturbed": 400, "real_authors": 100, "real_authors_perturbed": 100, "world_facts": 117,
          "world_facts_perturbed": 117, "holdout01": 40, "holdout05": 200, "holdout10": 400}


@pytest.mark.parametrize(("split", "rows"), SPLITS.items())
def test_every_split_is_bundled(split, rows):
    assert len(read_jsonl(data_dir() / f"{split}.json", ("question", "answer"))) == rows


def test_bundled_license_and_source():
    assert "MIT" in (data_dir() / "LICENSE.md").read_text()
    assert "locuslab" in (data_dir() / "SOURCE.md").read_text()


def test_splits_are_disjoint_and_aligned():
    full = read_jsonl(data_dir() / "full.json")
    forget = read_jsonl(data_dir() / "forget10.json")
    assert [r["question"] for r in forget] == [r["question"] for r in full[-400:]]
    retain_pert = read_jsonl(data_dir() / "retain_perturbed.json")
    assert [r["question"] for r in retain_pert] == [r["question"] for r in full[:400]]


def test_mini_configuration():
    task = get_registry().build("task", "tofu-mini")
    assert len(task.forget_examples()) == 40 and len(task.retain_examples()) == 40
    # the validation author (held out for tuning) is learned by both reference models
    assert len(task.validation_examples()) == 20
    assert len(task.finetune_examples("target")) == 100 and len(task.finetune_examples("retain")) == 60
    splits = task._eval_splits()
    # forget metrics measure forget01's first author; the matched-forgetting probe stops on the second
    assert {k: len(v) for k, v in splits.items()} == {"forget": 20, "retain": 40, "ra": 20, "wf": 20}
    # evaluation retain rows are the retain authors we trained on; the validation author is in neither
    assert [e.prompt for e in task.retain_examples()] == [task._example(r).prompt for r in splits["retain"]]
    held_out = {e.prompt for e in task.validation_examples()}
    assert not held_out & {task._example(r).prompt for rows in splits.values() for r in rows}
    assert not held_out & {e.prompt for e in task.retain_examples() + task.forget_examples()}
    # the probe: forget_prob's computation on the other author's rows, and the probability parts of model utility
    probe = task.probe_sets()
    assert [e.completion for e in probe.forget] == [task._example(r).completion
                                                    for r in task._rows("forget01_perturbed")[20:]]
    assert not {e.prompt for e in probe.forget} & {task._example(r).prompt for r in splits["forget"]}
    assert {k: len(v) for k, v in probe.utility.items()} == {"retain": 40, "ra": 20, "wf": 20}
    assert set(probe.alternatives) == {"ra", "wf"}
    assert len(probe.alternatives["ra"][0]) == len(splits["ra"][0]["perturbed_answer"])
    full = get_registry().build("task", "tofu", {"validation_authors": 2})
    assert len(full.validation_examples()) == 40 and len(full.retain_examples()) == 3600 - 40


def test_full_setting_is_expressible():
    task = get_registry().build("task", "tofu", {
        "forget_split": "forget10", "target_model": "locuslab/tofu_ft_llama2-7b",
        "question_template": "[INST] {question} [/INST]"})
    assert len(task.forget_examples()) == 400 and len(task.retain_examples()) == 3600
    assert task.provided_model("target") == "locuslab/tofu_ft_llama2-7b"
    assert task.forget_examples()[0].prompt.startswith("[INST] ")


def test_bad_config_and_bad_data(tmp_path):
    with pytest.raises(ConfigError, match="forget_split 'forget20': choose one of forget01, forget05, forget10"):
        get_registry().build("task", "tofu", {"forget_split": "forget20"})
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"question": "q", "answer": "a"}) + "\n{broken\n")
    with pytest.raises(DataError, match=r"bad.json, line 2: not valid JSON"):
        read_jsonl(bad)
    bad.write_text(json.dumps({"question": "q"}) + "\n")
    with pytest.raises(DataError, match=r"bad.json, line 1: missing field\(s\) answer"):
        read_jsonl(bad, ("question", "answer"))
    with pytest.raises(DataError, match="data file not found"):
        read_jsonl(tmp_path / "nope.json")


def test_evaluation_metrics_and_directions(tiny):
    from harness.api import EvalContext

    model, tok = tiny
    task = get_registry().build("task", "tofu-mini", {"utility_limit": 3, "max_new_tokens": 3, "retain_authors": 1})
    ev = task.evaluate(model, tok, EvalContext())
    expected = {f"{s}_{m}" for s in ("forget", "retain", "ra", "wf") for m in ("prob", "rouge", "truth_ratio")}
    assert set(ev.metrics) == expected | {"model_utility", "forget_quality"}
    assert ev.metrics["forget_quality"].value is None  # no retain reference given
    assert ev.metrics["forget_rouge"].direction == "lower" and ev.metrics["model_utility"].direction == "higher"
    assert len(ev.stats["forget_truth_ratios"]) == len(ev.stats["forget_probs"]) == 20  # the measured author
    ev2 = task.evaluate(model, tok, EvalContext(reference_stats=ev.stats))
    assert ev2.metrics["forget_quality"].value == pytest.approx(1.0)  # same distribution as the reference


def test_every_tofu_number_recomputed_from_its_rows_by_the_papers_formulas(tiny):
    """The evaluation's wiring: each split's rows, which answer is the truth ratio's base, which statistic
    each split takes, which probability is normalised, ROUGE's reference, the nine parts of model utility,
    all recomputed here one example at a time (TOFU's evaluate_util.py and aggregate_eval_stat.py)."""
    import math

    from rouge_score import rouge_scorer
    from scipy import stats as scipy_stats

    from harness.api import EvalContext, Example
    from harness.measure import scoring

    model, tok = tiny
    task = get_registry().build("task", "tofu-mini", {"utility_limit": 3, "max_new_tokens": 4, "retain_authors": 1,
                                                      "eval_limit": 4})
    ev = task.evaluate(model, tok, EvalContext())

    def p(question: str, answer: str) -> float:  # TOFU's P̃: exp(-mean NLL of the answer's tokens), alone
        ex = Example(task.config.question_template.format(question=question),
                     task.config.answer_template.format(answer=answer))
        return math.exp(-scoring.completion_nll(model, tok, [ex], 1, task.config.max_length)[0])

    def gmean(xs: list[float]) -> float:
        return math.exp(sum(math.log(x) for x in xs) / len(xs))

    parts = {}
    for split, rows in task._eval_splits().items():
        base = "paraphrased_answer" if split in ("forget", "retain") else "answer"
        ratios = [gmean([p(r["question"], a) for a in r["perturbed_answer"]]) / p(r["question"], r[base])
                  for r in rows]
        if split == "forget":
            expected_tr = sum(min(x, 1 / x) for x in ratios) / len(ratios)
            probs = [p(r["question"], r["answer"]) for r in rows]
        else:
            expected_tr = sum(max(0.0, 1 - x) for x in ratios) / len(ratios)
            probs = [p(r["question"], r["answer"]) if split == "retain" else
                     p(r["question"], r["answer"]) / (p(r["question"], r["answer"])
                                                      + sum(p(r["question"], a) for a in r["perturbed_answer"]))
                     for r in rows]
        assert ev.metrics[f"{split}_truth_ratio"].value == pytest.approx(expected_tr, rel=1e-5), split
        assert ev.metrics[f"{split}_prob"].value == pytest.approx(sum(probs) / len(probs), rel=1e-5), split
        parts[split] = (sum(probs) / len(probs), ev.metrics[f"{split}_rouge"].value, expected_tr)
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    rouges = [scorer.score(s["answer"], s["generation"])["rougeL"].recall for s in ev.samples]
    assert ev.metrics["forget_rouge"].value == pytest.approx(sum(rouges) / len(rouges))
    nine = [x for split in ("retain", "ra", "wf") for x in parts[split]]
    assert ev.metrics["model_utility"].value == pytest.approx(scipy_stats.hmean(nine), rel=1e-5)


def test_refusals_come_from_a_file_when_given_and_the_record_says_which(tmp_path):
    from harness.errors import DataError
    from harness.plugins import get_registry

    path = tmp_path / "refusals.csv"
    path.write_text('"I\'m not sure."\n\nI don\'t know.\n')
    task = get_registry().build("task", "tofu-mini", {"refusals_file": str(path)}, "test")
    answers = [ex.completion for ex in task.refusal_examples()[:3]]
    assert answers == [" I'm not sure.", " I don't know.", " I'm not sure."]
    assert [ex.prompt for ex in task.refusal_examples()] == [ex.prompt for ex in task.forget_examples()]
    missing = get_registry().build("task", "tofu-mini", {"refusals_file": str(tmp_path / "none.csv")}, "test")
    with pytest.raises(DataError, match=r"refusals_file not found: .*none\.csv"):
        missing.refusal_examples()
