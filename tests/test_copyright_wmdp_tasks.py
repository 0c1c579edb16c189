"""MUSE-News, copyright-books and WMDP tasks: mini runs on the tiny model, data errors, `unlearn-bench eval`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from harness import cli
from harness.config import from_dict
from harness.errors import DataError
from harness.plugins import get_registry
from harness.run import models, runner
from harness.run.evaluate import evaluate_model
from harness.run.spec import RunSpec

MUSE_SMALL = {"texts_limit": 3, "qa_limit": 3, "chunk_words": 24, "max_length": 64, "verbmem_tokens": 6,
              "knowmem_tokens": 4}
QUICK = {"train": {"epochs": 1, "batch_size": 4, "lr": 1e-3}, "prepare": {"epochs": 1}}


def test_muse_news_mini_run_with_lm_eval_utility(tmp_path):
    spec = from_dict(RunSpec, {"task": "muse-news-mini", "model": "tiny-llama", "attribution": "wagle",
                               "ratio": 0.5, "task_config": MUSE_SMALL, "utility": ["mmlu_bundled"],
                               "utility_limit": 1, **QUICK}, "test")
    record = runner.execute(spec, tmp_path).to_json()
    m = {k: v["value"] for k, v in record["metrics"].items()}
    assert record["spec"]["objective"] == "graddiff"  # the task's default objective
    assert 0.0 <= m["verbmem_f"] <= 1.0 and 0.0 <= m["knowmem_f"] <= 1.0 and 0.0 <= m["knowmem_r"] <= 1.0
    assert 0.0 <= m["mia_auc"] <= 1.0
    assert m["privleak"] is not None and record["metrics"]["privleak"]["direction"] == "zero"
    assert record["lm_eval"]["lm_eval_version"] == "0.4.13" and record["lm_eval"]["tasks"]["mmlu_bundled"]["n"] == 57
    assert 0.0 <= m["mmlu_bundled_acc"] <= 1.0
    assert len(record["samples"]) == 3 and {"truth", "generation"} <= set(record["samples"][0])
    # the reference rows get the same lm-eval score, so the leaderboard compares utility with the target's
    runner.write_reference_records(spec, tmp_path)
    refs = [r for r in (json.loads(p.read_text()) for p in (tmp_path / "runs").glob("*.json"))
            if r["kind"] == "reference"]
    assert sorted(r["role"] for r in refs) == ["retain", "target"]
    for ref in refs:
        assert ref["spec"]["utility"] == ["mmlu_bundled"] and ref["lm_eval"]["tasks"]["mmlu_bundled"]["n"] == 57
        assert ref["metrics"]["mmlu_bundled_acc"]["value"] == ref["lm_eval"]["tasks"]["mmlu_bundled"]["acc"]


def test_muse_news_full_setting_reads_the_muse_layout():
    task = get_registry().build("task", "muse-news", {}, "test")
    assert task.provided_model("target") == "muse-bench/MUSE-News_target"
    assert len(task.forget_examples()) >= 889  # every article, cut into 1500-word chunks
    assert len(task._verbmem_items()) == 100
    with pytest.raises(DataError, match=r"raw/retain1\.json"):  # 4 MiB, not in the bundled copy
        task.retain_examples()
    # KnowMem as MUSE's metrics/knowmem.py asks: in-context pairs, then "Question: q\nAnswer: " (trailing space)
    prompt = task.knowmem_prompts("forget")[0]
    assert prompt.endswith("\nAnswer: ") and prompt.count("\nAnswer: ") > 1 and prompt.startswith("Question: ")
    assert get_registry().build("task", "muse-news-mini", {}, "test").knowmem_prompts("forget")[0].endswith(
        "\nAnswer:")


def test_muse_reads_the_retain_qa_under_the_name_its_script_writes(tmp_path):
    import shutil

    from tasks.muse import bundled_dir

    knowmem = tmp_path / "knowmem"
    knowmem.mkdir()
    for name in ("forget_qa", "forget_qa_icl"):
        shutil.copy(bundled_dir() / "knowmem" / f"{name}.json", knowmem)
    for name in ("qa", "qa_icl"):  # MUSE's load_data.py: retain_qa.json, retain_qa_icl.json
        shutil.copy(bundled_dir() / "knowmem" / f"retain2_{name}.json", knowmem / f"retain_{name}.json")
    bundled = get_registry().build("task", "muse-news", {}, "test")
    theirs = get_registry().build("task", "muse-news", {"data_dir": str(tmp_path)}, "test")
    assert theirs._qa("retain2") == bundled._qa("retain2") and len(bundled._qa("retain2")) > 0
    assert theirs.knowmem_prompts("retain2") == bundled.knowmem_prompts("retain2")


def test_verbmem_truth_is_cut_counting_the_bos_as_muse_does():
    from tasks.text import truncate_tokens

    _, tok = models.load("tiny-llama")
    tok.add_bos_token = True  # as Llama-2's tokenizer adds <s>
    words = " a b c d e f"
    assert len(tok(words, add_special_tokens=False)["input_ids"]) >= 4
    ids = tok(words, add_special_tokens=False)["input_ids"]
    assert truncate_tokens(tok, words, 4) == tok.decode(ids[:4])
    assert truncate_tokens(tok, words, 4, special=True) == tok.decode(ids[:3])  # BOS counted, 3 text tokens


def test_muse_mini_members_and_holdout_are_cut_alike():
    task = get_registry().build("task", "muse-news-mini", MUSE_SMALL, "test")
    members, holdout = task._mia_texts()
    assert len(members) == len(holdout) == 3
    assert all(len(t.split()) == 24 for t in members + holdout)
    prompt, truth = task._verbmem_items()[0]
    assert members[0] == prompt + truth


def _write_book(path, sentence: str, n: int) -> None:
    path.write_text(" ".join(f"{sentence} Line {i}." for i in range(n)))


def test_copyright_books_from_user_files(tmp_path):
    _write_book(tmp_path / "book.txt", "The lighthouse keeper counted the gulls at dawn.", 40)
    _write_book(tmp_path / "other.txt", "A baker sold warm bread to the sailors.", 40)
    (tmp_path / "qa.jsonl").write_text(json.dumps({"prompt": "The lighthouse keeper", "response": " counted"}) + "\n")
    config = {"forget_text": str(tmp_path / "book.txt"), "retain_text": str(tmp_path / "other.txt"),
              "forget_prompts": str(tmp_path / "qa.jsonl"), "chunk_words": 30, "prompt_words": 10,
              "max_new_tokens": 6, "eval_limit": 4}
    record = evaluate_model("tiny-llama", "copyright-books", config, results_dir=tmp_path / "results").to_json()
    assert set(record["metrics"]) == {"forget_bleu", "forget_rouge", "retain_bleu", "retain_rouge"}
    assert all(0.0 <= m["value"] <= 1.0 for m in record["metrics"].values())
    assert len(record["samples"]) == 1  # the one prompt of qa.jsonl
    assert json.loads(open(record["path"]).read())["kind"] == "eval"
    task = get_registry().build("task", "copyright-books", config, "test")
    assert len(task.forget_examples()) == 14  # 40 sentences × 10 words (incl. "Line i.") / 30 words


def test_copyright_books_needs_the_text():
    from harness.errors import ConfigError

    with pytest.raises(ConfigError, match="forget_text"):
        get_registry().build("task", "copyright-books", {}, "test")


def test_wmdp_mini_rmu_run_from_its_fine_tuned_target(tmp_path):
    spec = from_dict(RunSpec, {
        "task": "wmdp-mini", "model": "tiny-llama", "attribution": "dense",
        "objective_config": {"layer": 1, "update": [r"model\.layers\.1\.mlp\.down_proj\.weight"]},
        "task_config": {"utility_limit": 1, "corpus_limit": 4}, **QUICK}, "test")
    record = runner.execute(spec, tmp_path).to_json()
    assert record["spec"]["objective"] == "rmu"
    assert "wmdp-mini-target-" in record["models"]["target"] and "wmdp-mini-retain-" in record["models"]["retain"]
    m = {k: v for k, v in record["metrics"].items()}
    assert set(m) == {"wmdp_bio_acc", "wmdp_cyber_acc", "mmlu_bundled_acc"}  # wmdp-mini's two subjects
    assert m["wmdp_bio_acc"]["direction"] == "lower" and m["mmlu_bundled_acc"]["direction"] == "higher"
    assert record["stats"]["utility"]["lm_eval_version"] == "0.4.13"
    assert record["stats"]["wmdp"]["tasks"]["wmdp_bio_local"]["n"] == 4  # the measured split: 1st, 3rd, ...
    model, _ = models.load("tiny-llama")  # RMU touches one down_proj only
    down = model.model.layers[1].mlp.down_proj.weight.numel()
    assert record["mask"]["trained_fraction"] == pytest.approx(down / sum(p.numel() for p in model.parameters()))
    runner.write_reference_records(spec, tmp_path)
    roles = [json.loads(p.read_text()).get("role") for p in (tmp_path / "runs").glob("*.json")]
    assert sorted(r for r in roles if r) == ["retain", "target"]


def test_wmdp_matched_forgetting_reads_the_level_the_task_declares(tmp_path):
    """WMDP has no retain model: the level is the task's `probe_level`. The tiny base model does not know the
    fixtures' answers (its forget probe is near chance, below 0.3), so the run stops before unlearning and
    says why, with both numbers."""
    fixtures = {"forget_corpora": ["bundled:wmdp/forget.jsonl"], "retain_corpora": ["bundled:wmdp/retain.jsonl"],
                "questions_dir": "bundled:wmdp", "subjects": ["bio", "cyber"], "chunk_words": 64,
                "max_length": 128, "utility_limit": 1, "corpus_limit": 4, "probe_limit": 4}
    spec = from_dict(RunSpec, {"task": "wmdp", "model": "tiny-llama", "attribution": "dense",
                               "objective": "graddiff", "match": {"enabled": True}, "task_config": fixtures,
                               **QUICK}, "test")
    with pytest.raises(ValueError, match=r"forget probe \(0\.2\d+\) is already at or below the level \(0\.3\)"):
        runner.execute(spec, tmp_path)
    record = json.loads(next((tmp_path / "runs").glob("wmdp-*.json")).read_text())
    assert record["status"] == "failed" and "curves" not in record


def test_wmdp_hub_corpus_offline_names_the_corpus_and_the_way_out():
    task = get_registry().build("task", "wmdp", {"corpus_limit": 2}, "test")
    with pytest.raises(DataError, match=r"cais/wmdp-corpora:cyber-forget-corpus.*local \.jsonl path"):
        task.forget_examples()


def test_wmdp_fixture_with_bad_answer_names_file_and_row(tmp_path, tiny):
    for s in ("bio", "cyber", "chem"):  # two questions each: one to stop on, one to measure
        (tmp_path / f"{s}.jsonl").write_text(2 * (json.dumps({"question": "q", "choices": ["a", "b", "c", "d"],
                                                               "answer": 7 if s == "cyber" else 0}) + "\n"))
    task = get_registry().build("task", "wmdp-mini", {"questions_dir": str(tmp_path)}, "test")
    with pytest.raises(DataError, match=r"cyber\.jsonl, row 1"):
        task._question_tasks()


def test_eval_command_writes_a_record(tmp_path, capsys):
    cfg = tmp_path / "task.yaml"
    cfg.write_text(yaml.safe_dump({"utility_tasks": [], "subjects": ["bio"]}))
    code = cli.main(["-q", "eval", "tiny-llama", "--task", "wmdp-mini", "--task-config", str(cfg),
                     "--results", str(tmp_path / "results")])
    assert code == 0
    out = capsys.readouterr().out
    assert '"wmdp_bio_acc"' in out
    records = list((tmp_path / "results" / "runs").glob("wmdp-mini-eval-*.json"))
    assert len(records) == 1 and json.loads(records[0].read_text())["metrics"]["wmdp_bio_acc"]["value"] >= 0


def test_prepare_builds_nothing_for_wmdp_and_both_models_for_wmdp_mini(capsys):
    assert cli.main(["-q", "prepare", "wmdp", "--model", "tiny-llama"]) == 0
    assert "unlearns the base model itself" in capsys.readouterr().out
    assert cli.main(["-q", "prepare", "wmdp-mini", "--model", "tiny-llama"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(":")[0] for line in lines] == ["target", "retain"]
    task = get_registry().build("task", "wmdp-mini", {}, "test")
    assert task.finetune_examples("target") == task.forget_examples() + task.retain_examples()
    assert task.finetune_examples("retain") == task.retain_examples()


def test_mask_command_on_a_base_model_task_keys_the_mask_on_the_base_model(tmp_path, capsys):
    """WMDP unlearns the base model: `mask` fine-tunes nothing, keys the mask on the base model, and a run of
    the same spec finds that very mask."""
    from harness.cache import cache_root

    fixtures = {"forget_corpora": ["bundled:wmdp/forget.jsonl"], "retain_corpora": ["bundled:wmdp/retain.jsonl"],
                "questions_dir": "bundled:wmdp", "chunk_words": 64, "max_length": 64, "corpus_limit": 4}
    spec_file = tmp_path / "spec.yaml"
    spec_file.write_text(yaml.safe_dump({"task_config": fixtures, "seed": 7}))
    built = sorted((cache_root() / "models").glob("*")) if (cache_root() / "models").is_dir() else []
    args = ["-q", "mask", "--task", "wmdp", "--model", "tiny-llama", "--attribution", "gradient", "--ratio", "0.1"]
    assert cli.main([*args, "--spec", str(spec_file)]) == 0
    folder = capsys.readouterr().out.split(" (density")[0].strip()
    assert json.loads((Path(folder) / "mask.json").read_text())["model"] == models.versioned("tiny-llama")
    assert (sorted((cache_root() / "models").glob("*")) if (cache_root() / "models").is_dir() else []) == built
    spec = from_dict(RunSpec, {"task": "wmdp", "model": "tiny-llama", "attribution": "gradient", "ratio": 0.1,
                               "task_config": fixtures, "seed": 7}, "test")
    _, meta = runner.mask_for(spec)
    assert meta["path"] == folder and meta["cache_hit"]
