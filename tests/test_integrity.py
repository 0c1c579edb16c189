"""A run that cannot have unlearned is an error, not a finished record (docs/errors.md)."""

from __future__ import annotations

import json

import pytest

from harness import cli
from harness.config import from_dict
from harness.errors import ConfigError, NoUnlearningError
from harness.learn.settings import TrainConfig

TINY = ["run", "--task", "tofu-mini", "--model", "tiny-llama"]


@pytest.mark.parametrize(("field", "value", "needle"), [
    ("max_grad_norm", -1.0, "max_grad_norm must be a finite number > 0 or null"),
    ("max_grad_norm", 0.0, "0 freezes the model"),
    ("max_steps", 0, "max_steps must be >= 1 or null"),
    ("max_steps", -3, "max_steps must be >= 1 or null"),
    ("lr", float("nan"), "lr must be a finite number > 0, got nan"),
    ("lr", float("inf"), "lr must be a finite number > 0, got inf"),
    ("lr", 0.0, "lr must be a finite number > 0"),
])
def test_settings_that_cannot_unlearn_are_refused(field, value, needle):
    with pytest.raises(ConfigError, match=needle.replace("(", r"\(").replace(")", r"\)")):
        from_dict(TrainConfig, {field: value}, "train")


def test_a_nan_rate_from_a_spec_file_is_refused_before_the_run(tmp_path, capsys):
    spec = tmp_path / "spec.yaml"
    spec.write_text("task: tofu-mini\nmodel: tiny-llama\ntrain: {lr: .nan}\n")
    assert cli.main(["-q", "run", "--spec", str(spec), "--results", str(tmp_path / "r")]) == 2
    assert "lr must be a finite number > 0, got nan" in capsys.readouterr().err
    assert not (tmp_path / "r" / "runs").exists()


def test_corpus_limit_has_one_meaning():
    from tasks.wmdp import WmdpConfig

    with pytest.raises(ConfigError, match=r"corpus_limit must be >= 1 or null"):
        from_dict(WmdpConfig, {"corpus_limit": 0}, "task_config")


def test_empty_sets_are_refused():
    from harness.run.runner import check_sets
    from harness.run.spec import RunSpec
    from methods.ascent import GradientAscent
    from methods.graddiff import GradDiff

    spec = RunSpec(objective="graddiff")
    with pytest.raises(NoUnlearningError, match="empty forget set"):
        check_sets(spec, GradDiff(GradDiff.Config()), [], ["r"])
    with pytest.raises(NoUnlearningError, match="empty retain set"):
        check_sets(spec, GradDiff(GradDiff.Config()), ["f"], [])
    check_sets(spec, GradientAscent(GradientAscent.Config()), ["f"], [])  # no retain term: fine


def test_a_run_whose_weights_did_not_move_fails(tmp_path, capsys):
    """At lr 1e-30 no fp32 weight changes: the run fails with a message instead of recording the target's
    metrics as an unlearned model's."""
    results = tmp_path / "r"
    code = cli.main(["-q", *TINY, "--lr", "1e-30", "--max-steps", "1", "--results", str(results)])
    assert code == 2 and "no weight changed" in capsys.readouterr().err
    (path,) = (results / "runs").glob("tofu-mini-dense-*.json")
    record = json.loads(path.read_text())
    assert record["status"] == "failed" and "no weight changed" in record["error"]["message"]


def test_an_interrupted_cache_entry_is_rebuilt(tmp_path, monkeypatch):
    """A folder under the entry's name without the completion mark (a crash mid-publish, or an older harness)
    is not a hit: it is rebuilt and replaced; a complete entry is a hit; a failed build leaves nothing."""
    from harness.cache import COMPLETE, cached_dir

    monkeypatch.setenv("UNLEARN_BENCH_CACHE", str(tmp_path))
    final = tmp_path / "models" / "k"
    final.mkdir(parents=True)
    (final / "model.safetensors").write_text("trunc")
    path, hit = cached_dir("models", "k", lambda out: (out / "model.safetensors").write_text("whole"))
    assert not hit and path == final and (path / "model.safetensors").read_text() == "whole"
    assert (path / COMPLETE).is_file()
    path, hit = cached_dir("models", "k", lambda out: pytest.fail("a complete entry was rebuilt"))
    assert hit

    def broken(out):
        (out / "half").write_text("x")
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        cached_dir("models", "other", broken)
    assert sorted(p.name for p in (tmp_path / "models").iterdir()) == ["k"]


def test_unsafe_plugin_names_are_refused_at_registration():
    from dataclasses import dataclass

    from harness.api import Attribution
    from harness.plugins import PluginContractError, get_registry

    @dataclass
    class NoConfig:
        pass

    for bad in ("../evil", "a/b", ".hidden", ""):
        cls = type("Evil", (Attribution,), {"__doc__": "Evil.", "name": bad, "Config": NoConfig})
        with pytest.raises(PluginContractError):
            get_registry().add("attribution", cls)


def _board_record(runs, rid, task="tofu-mini", value=0.5):
    record = {"record_version": 2, "id": rid, "kind": "run", "status": "finished",
              "spec": {"task": task, "model": "m", "attribution": "dense", "ratio": 1.0, "objective": "graddiff",
                       "seed": 0, "train": {"lr": 1e-4}},
              "headline": {"forget": "forget_rouge", "utility": "model_utility"},
              "metrics": {"forget_rouge": {"value": value, "direction": "lower", "group": "forget"},
                          "model_utility": {"value": 0.4, "direction": "higher", "group": "utility"}},
              "mask": {"layer_module_density": {"0.q": 0.5}}}
    runs.mkdir(parents=True, exist_ok=True)
    (runs / f"{rid}.json").write_text(json.dumps(record))


def test_a_record_cannot_write_outside_the_leaderboard_or_crash_it(tmp_path, caplog):
    """A record whose task would name a file three folders up, or whose metric is a string, is skipped with a
    warning; the rest of the board is written, inside its folder."""
    from leaderboard import table

    runs = tmp_path / "a" / "b" / "c" / "results" / "runs"
    _board_record(runs, "good")
    _board_record(runs, "escape", task="/../../../escaped")
    _board_record(runs, "text", value="0.5")
    out = tmp_path / "a" / "b" / "c" / "board"
    written = table.write_all(runs.parent, out)
    assert all(p.resolve().is_relative_to(out.resolve()) for p in written)
    assert not list(tmp_path.rglob("escaped*"))
    assert "task '/../../../escaped'" in caplog.text and "'0.5', not a number" in caplog.text
    assert "good" in (out / "runs.csv").read_text() and "escape" not in (out / "runs.csv").read_text()


def test_records_are_standard_json(tmp_path):
    from harness.io import atomic_write_json

    atomic_write_json(tmp_path / "r.json", {"value": float("nan"), "curve": [1.0, float("inf")]})

    def refuse(constant):
        raise ValueError(constant)

    assert json.loads((tmp_path / "r.json").read_text(), parse_constant=refuse) == {"value": None,
                                                                                     "curve": [1.0, None]}


def test_a_sweep_file_cannot_choose_a_cluster_alone(tmp_path, capsys):
    from harness.sweeps import sweep

    path = tmp_path / "sweep.yaml"
    path.write_text("attributions: [dense]\nobjectives: [graddiff]\nexecutor: ray\n"
                    "executor_config: {address: 'ray://203.0.113.7:10001'}\n"
                    "grids: [{executor_config: {address: 'evil.example:6379'}}]\n")
    assert sweep.addresses(sweep.load(path)) == {"ray://203.0.113.7:10001", "evil.example:6379"}
    assert cli.main(["-q", "sweep", str(path), "--results", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert "names the cluster address evil.example:6379, ray://203.0.113.7:10001" in err and "--address" in err
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("flag", ["--spec", "--task-config"])
def test_malformed_yaml_is_a_clear_error(tmp_path, capsys, flag):
    bad = tmp_path / "bad.yaml"
    bad.write_text("task: [tofu-mini\n")
    argv = (["run", "--spec", str(bad)] if flag == "--spec"
            else ["eval", "tiny-llama", "--task", "tofu-mini", "--task-config", str(bad)])
    assert cli.main(["-q", *argv]) == 2
    assert "bad.yaml: not valid YAML" in capsys.readouterr().err


def test_a_tokenizer_without_pad_or_eos_is_named(tmp_path):
    import shutil

    from harness.errors import UnlearnBenchError
    from harness.run import models

    folder = tmp_path / "no-eos"
    shutil.copytree(models.resolve("tiny-llama"), folder)
    config = json.loads((folder / "tokenizer_config.json").read_text())
    for key in ("eos_token", "pad_token"):
        config.pop(key, None)
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    with pytest.raises(UnlearnBenchError, match="neither a pad nor an end-of-sequence token"):
        models.load(str(folder))


def test_two_sweeps_superseding_one_record_both_go_on(tmp_path):
    import shutil
    from pathlib import Path

    from harness.run import records

    runs = Path(__file__).parents[1] / "leaderboards" / "tofu-mini" / "records" / "runs"
    committed = next(runs.glob("tofu-mini-target-*.json"))
    (tmp_path / "runs").mkdir()
    shutil.copy(committed, tmp_path / "runs")
    old = records.read(tmp_path / "runs" / committed.name)
    records.supersede(tmp_path, [old], "new-run")
    records.supersede(tmp_path, [old], "new-run")  # the other sweep read it too: already moved, no error
    assert (tmp_path / records.SUPERSEDED / committed.name).is_file()


def test_temporaries_have_unique_names_and_a_dead_writers_are_removed(tmp_path):
    from harness.io import temp_path
    from harness.sweeps import sweep

    path = tmp_path / "checkpoints" / "run.pt"
    assert temp_path(path) != temp_path(path) and sweep.stale_pid(temp_path(path).name) is not None
    for sub in ("runs", "checkpoints", "weights"):
        (tmp_path / sub).mkdir(exist_ok=True)
        (tmp_path / sub / ".x.json.999999999.ab12.tmp").write_text("half")  # no such pid
    assert sweep.remove_stale_temporaries(tmp_path) == 3


def test_names_in_tables_cannot_become_formulas_or_markup(tmp_path):
    from harness.io import markdown_text, spreadsheet_safe
    from leaderboard import table

    assert spreadsheet_safe("=HYPERLINK('http://x')") == "'=HYPERLINK('http://x')"
    assert spreadsheet_safe("-0.25") == "-0.25" and spreadsheet_safe(-0.25) == -0.25
    assert markdown_text("a|b<script>`x`") == r"a\|b&lt;script&gt;\`x\`"
    runs = tmp_path / "results" / "runs"
    _board_record(runs, "r0")
    record = json.loads((runs / "r0.json").read_text())
    record["spec"]["model"] = "=cmd|' /C calc'!A0"
    (runs / "r0.json").write_text(json.dumps(record))
    table.write_all(runs.parent, tmp_path / "board")
    assert ",'=cmd|' /C calc'!A0," in (tmp_path / "board" / "runs.csv").read_text()


def _modules(package: str) -> set[str]:
    import pkgutil
    from pathlib import Path

    root = Path(__file__).parents[1] / package
    return {package, *(m.name for m in pkgutil.walk_packages([str(root)], prefix=f"{package}."))}


def test_every_module_is_digested_or_declared_outside():
    """Each module of the harness, the methods and the tasks is a plugin's own module (digested with the
    plugin), in CORE (the harness digest in every run id) or declared OUTSIDE: a new module must choose."""
    from harness.plugins import get_registry
    from harness.run import identity

    registry = get_registry()
    plugin_modules = {e.cls.__module__ for kind in registry.entries.values() for e in kind.values()}
    every = _modules("harness") | _modules("methods") | _modules("tasks")
    undecided = sorted(every - plugin_modules - set(identity.CORE) - set(identity.OUTSIDE))
    assert not undecided, f"modules neither plugin, CORE nor OUTSIDE: {undecided}"
    assert not set(identity.CORE) & set(identity.OUTSIDE)
    assert len({name.rsplit(".", 1)[-1] for name in identity.CORE}) == len(identity.CORE)  # the digest's keys


def test_a_fix_in_the_harness_core_changes_run_ids_but_not_the_experiment(monkeypatch):
    from harness.plugins import get_registry
    from harness.run import identity
    from harness.run.spec import RunSpec

    spec, registry = RunSpec(task="tofu-mini", model="tiny-llama"), get_registry()
    before, key = identity.run_id(spec, registry), identity.spec_key(spec, registry)
    original = identity.code_digest
    monkeypatch.setattr(identity, "code_digest", lambda name: "fixed" if name == "methods.losses" else original(name))
    identity.core_digest.cache_clear()
    try:
        assert identity.run_id(spec, registry) != before and identity.spec_key(spec, registry) == key
    finally:
        identity.core_digest.cache_clear()


def test_a_digest_ignores_docstrings_comments_and_imports():
    import ast

    from harness.run.identity import _strip

    def dump(source: str) -> str:
        return ast.dump(_strip(ast.parse(source)))

    base = dump("def f(x):\n    return x + 1\n")
    moved = '"""Doc."""\nimport os\nfrom a.b import c  # moved\n\ndef f(x):\n    """f."""\n    return x + 1\n'
    assert dump(moved) == base
    assert dump("def f(x):\n    return x + 2\n") != base


def test_models_are_keyed_on_their_contents_and_revision(tmp_path, monkeypatch):
    import shutil

    import huggingface_hub.constants
    import torch
    from safetensors.torch import load_file, save_file

    from harness.run import models

    source = models.resolve("tiny-llama")
    a, b = tmp_path / "a", tmp_path / "b"
    shutil.copytree(source, a)
    shutil.copytree(source, b)
    assert models.versioned(str(a)) == models.versioned(str(b))  # the same weights in two places: one model
    weights = load_file(str(a / "model.safetensors"))
    weights = {k: v + 1e-3 if v.dtype == torch.float32 else v for k, v in weights.items()}
    save_file(weights, str(a / "model.safetensors"), metadata={"format": "pt"})
    assert models.versioned(str(a)) != models.versioned(str(b))  # overwritten in place: a new model
    repo = tmp_path / "hub" / "models--org--name"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("abc123")
    (repo / "snapshots" / "abc123").mkdir(parents=True)
    (repo / "snapshots" / "abc123" / "config.json").write_text("{}")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    assert models.versioned("org/name") == "hub:org/name@abc123"
    assert models.versioned("org/other") == "hub:org/other@unresolved"


@pytest.mark.parametrize("match", [False, True], ids=["metrics", "probe"])
def test_a_reference_model_that_scores_otherwise_here_is_refused(tmp_path, match):
    """Resuming a folder on a machine whose fine-tuned target differs (another CPU's bf16, say) stops with
    the file and the number, instead of rewriting the reference record under runs made from the other model;
    rounding goes on, and the record is found by its spec whatever its file is called (another cache root)."""
    from harness.run import records, runner
    from harness.run.spec import RunSpec

    spec = from_dict(RunSpec, {"task": "tofu-mini", "model": "tiny-llama", "match": {"enabled": match}}, "spec")
    runner.write_reference_records(spec, tmp_path)
    made = next((tmp_path / "runs").glob("tofu-mini-target-*.json"))
    path = made.with_name("tofu-mini-target-elsewhere.json")  # as a cache at another path would have named it
    data = json.loads(made.read_text())
    made.unlink()
    numbers = data["probe"] if match else {k: m["value"] for k, m in data["metrics"].items()}
    assert bool(data.get("probe")) == match
    name = next(k for k, v in sorted(numbers.items()) if abs(v) > 1e-3)
    value = numbers[name]

    def stored(x: float) -> None:
        if match:
            data["probe"][name] = x
        else:
            data["metrics"][name]["value"] = x
        path.write_text(json.dumps(dict(data, id=path.stem)))

    stored(value * (1 + 1e-6))  # rounding across machines: resumed, the record kept as the first machine wrote it
    runner.write_reference_records(spec, tmp_path)
    assert sorted(p.name for p in (tmp_path / "runs").glob("tofu-mini-target-*")) == [path.name]
    stored(value * 1.01)  # a model that scores 1% otherwise: refused, nothing written
    before = path.read_text()
    with pytest.raises(records.ReferenceChangedError, match=rf"{path.name}: the target model prepared here .*"
                                                            rf"{name} {value * 1.01} in the record"):
        runner.write_reference_records(spec, tmp_path)
    assert path.read_text() == before
    assert sorted(p.name for p in (tmp_path / "runs").glob("tofu-mini-target-*")) == [path.name]
