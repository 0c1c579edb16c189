"""Saved unlearned models: a plain Hugging Face folder that loads with AutoModelForCausalLM, scores under
`unlearn-bench eval` exactly as the run did, and runs under lm-eval's own command line; `export` rebuilds the
same folder later from the weights a run kept."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from harness import cli
from harness.config import from_dict
from harness.measure import lm_eval_bridge
from harness.run import runner
from harness.run.evaluate import evaluate_model
from harness.run.spec import RunSpec

TASK_CONFIG = {"utility_limit": 2, "eval_limit": 4, "max_new_tokens": 2, "retain_authors": 1}
DOWN = "model.layers.1.mlp.down_proj.weight"


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    results = tmp_path_factory.mktemp("results")
    spec = from_dict(RunSpec, {
        "task": "tofu-mini", "model": "tiny-llama", "attribution": "random", "ratio": 0.5, "objective": "rmu",
        "objective_config": {"layer": 1, "update": [DOWN.replace(".", r"\.")]}, "keep_weights": True,
        "train": {"epochs": 1, "batch_size": 20, "lr": 1e-2}, "prepare": {"epochs": 1}, "task_config": TASK_CONFIG},
        "export")
    record = runner.execute(spec, results, save_to=results / "saved")
    return results, record


def test_saved_folder_loads_and_scores_as_the_run_did(saved):
    _, record = saved
    folder = Path(record.saved_model)
    assert {"model.safetensors", "config.json", "tokenizer.json", "README.md"} <= {p.name for p in folder.iterdir()}
    assert record.id in (folder / "README.md").read_text()
    model = AutoModelForCausalLM.from_pretrained(folder)
    target = AutoModelForCausalLM.from_pretrained(record.models["target"])
    pairs = zip(model.named_parameters(), target.parameters(), strict=True)
    moved = {n for (n, p), q in pairs if not torch.equal(p, q)}
    assert moved == {DOWN}  # RMU's module under the random mask, nothing else
    again = evaluate_model(str(folder), "tofu-mini", TASK_CONFIG, retain=record.models["retain"]).metrics
    for name in ("forget_prob", "forget_rouge", "forget_quality", "model_utility"):
        assert again[name]["value"] == pytest.approx(record.metrics[name]["value"], abs=1e-6), name


def test_export_rebuilds_the_folder_from_the_kept_weights(saved, tmp_path, capsys):
    results, record = saved
    assert set(load_file(record.kept_weights)) == {DOWN}  # only what unlearning could change is kept
    assert cli.main(["-q", "export", record.id, str(tmp_path / "out"), "--results", str(results)]) == 0
    exported = load_file(str(tmp_path / "out" / "model.safetensors"))
    direct = load_file(str(Path(record.saved_model) / "model.safetensors"))
    assert exported.keys() == direct.keys() and all(torch.equal(exported[k], direct[k]) for k in direct)


def test_export_says_what_is_missing(saved, tmp_path):
    from harness.errors import UnlearnBenchError
    from harness.run.export import export

    results, record = saved
    with pytest.raises(UnlearnBenchError, match="no readable record"):
        export(results, "no-such-run", tmp_path / "out")
    bare = tmp_path / "results"
    (bare / "runs").mkdir(parents=True)
    (bare / "runs" / f"{record.id}.json").write_text((results / "runs" / f"{record.id}.json").read_text())
    with pytest.raises(UnlearnBenchError, match=r"kept no weights .* keep_weights: true"):
        export(bare, record.id, tmp_path / "out")


def test_lm_eval_command_line_scores_the_saved_folder(saved):
    _, record = saved
    # three of the bundled MMLU subjects as their own group: lm-eval's command line reads them as it reads all 57
    three = lm_eval_bridge.LocalGroup("mmlu_three", lm_eval_bridge.mmlu_bundled().tasks[:3])
    tasks = lm_eval_bridge.write_task_dir([three])
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    out = subprocess.run([sys.executable, "-m", "lm_eval", "--model", "hf", "--model_args",
                          f"pretrained={record.saved_model}", "--tasks", "mmlu_three", "--include_path", str(tasks),
                          "--limit", "1", "--batch_size", "4", "--device", "cpu"],
                         capture_output=True, text=True, env=env, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "mmlu_three" in out.stdout and "acc" in out.stdout
    json.dumps(record.to_json())  # the record stays plain JSON with the saved paths in it


def _listing(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_an_export_never_replaces_what_the_harness_did_not_write(saved, tmp_path, monkeypatch):
    """`.`, a results folder and a folder with a stray file are refused before anything is written or removed;
    an absent folder, an empty one and an earlier export are written."""
    results, record = saved
    stray = tmp_path / "stray"
    stray.mkdir()
    (stray / "notes.txt").write_text("mine")
    copy = tmp_path / "results-copy"
    copy.mkdir()
    (copy / "runs").mkdir()
    (copy / "runs" / f"{record.id}.json").write_text((results / "runs" / f"{record.id}.json").read_text())
    monkeypatch.chdir(stray)
    for out in (Path("."), copy, stray, stray / "notes.txt"):
        before = _listing(out if out.is_dir() else out.parent)
        assert cli.main(["-q", "export", record.id, str(out), "--results", str(results)]) == 2
        assert _listing(out if out.is_dir() else out.parent) == before  # nothing touched
    (tmp_path / "empty").mkdir()
    for out in (tmp_path / "new", tmp_path / "empty", tmp_path / "new"):  # the third: an earlier export
        assert cli.main(["-q", "export", record.id, str(out), "--results", str(results)]) == 0
    assert (tmp_path / "new" / "model.safetensors").is_file()


def test_run_save_model_refuses_a_foreign_folder_before_it_runs(tmp_path, capsys):
    other = tmp_path / "other-model"
    other.mkdir()
    (other / "model.safetensors").write_bytes(b"another model")
    code = cli.main(["-q", "run", "--task", "tofu-mini", "--model", "tiny-llama", "--results", str(tmp_path / "r"),
                     "--save-model", str(other)])
    assert code == 2 and "not an earlier export" in capsys.readouterr().err
    assert (other / "model.safetensors").read_bytes() == b"another model"
    assert not (tmp_path / "r" / "runs").exists()  # refused before the run started


def test_an_exported_folder_holds_no_forget_set_text(saved):
    """The record in a published model folder leaves the evaluation's questions, answers and generations out
    and says so; the results folder keeps them."""
    results, record = saved
    full = json.loads((results / "runs" / f"{record.id}.json").read_text())
    forget_text = [s["question"] for s in full["samples"]] + [s["answer"] for s in full["samples"]]
    assert forget_text
    folder = Path(record.saved_model)
    published = "".join(p.read_text(errors="ignore") for p in folder.iterdir() if p.suffix in (".json", ".md"))
    assert not [t for t in forget_text if t in published]
    kept = json.loads((folder / "unlearn_bench_record.json").read_text())
    assert "samples" not in kept and "samples" in kept["omitted"] and kept["metrics"] == full["metrics"]


def test_files_and_folders_follow_the_umask(saved, tmp_path):
    """Records, pages and exported folders are readable by others under the default umask 022 (mkstemp and
    mkdtemp alone would make them 0600 / 0700)."""
    from harness.io import atomic_write_text

    old = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "page.html", "<p>")
        assert (tmp_path / "page.html").stat().st_mode & 0o777 == 0o644
    finally:
        os.umask(old)
    results, record = saved
    assert (results / "runs" / f"{record.id}.json").stat().st_mode & 0o777 == 0o644 & ~old
    assert Path(record.saved_model).stat().st_mode & 0o777 == 0o755 & ~old
