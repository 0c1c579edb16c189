"""The registry and the plugin door: built-ins, a real third-party distribution, errors."""

import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from harness.errors import UnknownPluginError
from harness.hookspecs import hookimpl
from harness.plugins import DuplicatePluginError, Registry, get_registry, make_plugin_manager, reset_registry

BUILTINS = {
    "attribution": {"dense", "random", "magnitude", "gradient", "snip", "wanda", "lora", "wagle"},
    "objective": {"ga", "graddiff", "npo", "simnpo", "po", "rmu"},
    "task": {"tofu", "tofu-mini", "muse-news", "muse-news-mini", "copyright-books", "wmdp", "wmdp-mini"},
}

PLUGIN_SOURCE = textwrap.dedent('''
    """A third-party plugin: one attribution and one objective."""
    from dataclasses import dataclass

    import torch

    from harness.api import Attribution, AttributionResult, LossOutput, Objective
    from harness.config import option
    from harness.hookspecs import hookimpl
    from harness.measure.scoring import mean_nll


    @dataclass
    class LastLayerConfig:
        scale: float = option(1.0, "score multiplier")


    class LastLayer(Attribution):
        """Scores weights by their layer index: later layers first."""
        name = "last-layer"
        Config = LastLayerConfig

        def scores(self, data):
            out = {}
            for i, (n, p) in enumerate(data.model.named_parameters()):
                out[n] = torch.full(p.shape, float(i) * self.config.scale)
            return AttributionResult(out)


    @dataclass
    class AscentConfig:
        pass


    class Ascent(Objective):
        """Plain gradient ascent on the forget set."""
        name = "plain-ascent"
        Config = AscentConfig

        def loss(self, model, batch, reference=None):
            return LossOutput(-mean_nll(model, batch.forget).mean())


    @hookimpl
    def register_attributions(register):
        register(LastLayer)


    @hookimpl
    def register_objectives(register):
        register(Ascent)
''')


@pytest.fixture
def third_party(tmp_path, monkeypatch):
    """A throwaway distribution `ub-extra` 0.3 with an `unlearn_bench` entry point, on sys.path."""
    site = tmp_path / "site"
    (site / "ub_extra").mkdir(parents=True)
    (site / "ub_extra" / "__init__.py").write_text(PLUGIN_SOURCE)
    info = site / "ub_extra-0.3.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: ub-extra\nVersion: 0.3\n")
    (info / "entry_points.txt").write_text("[unlearn_bench]\nextra = ub_extra\n")
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setenv("UNLEARN_BENCH_LOAD_PLUGINS", "ub-extra")
    reset_registry()
    yield site
    sys.modules.pop("ub_extra", None)


def test_builtins_register_through_the_hooks():
    registry = get_registry()
    for kind, names in BUILTINS.items():
        assert names <= set(registry.names(kind))
        for name in names:
            entry = registry.get(kind, name)
            assert entry.distribution == "unlearn-bench" and entry.plugin.startswith(("methods.", "tasks."))


def test_allowlist_keeps_installed_plugins_out(third_party, monkeypatch):
    monkeypatch.setenv("UNLEARN_BENCH_LOAD_PLUGINS", "")
    reset_registry()
    assert "last-layer" not in get_registry().names("attribution")


def test_third_party_plugin_is_listed_with_its_version(third_party):
    registry = get_registry()
    entry = registry.get("attribution", "last-layer")
    assert (entry.plugin, entry.distribution, entry.version) == ("extra", "ub-extra", "0.3")
    assert registry.get("objective", "plain-ascent").distribution == "ub-extra"
    import contextlib
    import io

    from harness.cli import main

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        main(["list"])
    assert "last-layer" in buf.getvalue() and "ub-extra 0.3" in buf.getvalue()


def test_third_party_plugin_runs_end_to_end(third_party, tmp_path):
    from harness.config import from_dict
    from harness.run import runner
    from harness.run.spec import RunSpec

    spec = from_dict(RunSpec, {
        "task": "tofu-mini", "model": "tiny-llama", "attribution": "last-layer", "ratio": 0.25,
        "objective": "plain-ascent", "train": {"epochs": 1}, "prepare": {"epochs": 1},
        "task_config": {"utility_limit": 4, "eval_limit": 8, "max_new_tokens": 4, "retain_authors": 1}}, "test")
    record = runner.execute(spec, tmp_path / "results").to_json()
    assert record["status"] == "finished"
    assert record["mask"]["density"] == pytest.approx(0.25, abs=1e-6)
    provided = record["provenance"]["plugins"]["attribution"]
    assert {k: provided[k] for k in ("name", "plugin", "distribution", "version")} == {
        "name": "last-layer", "plugin": "extra", "distribution": "ub-extra", "version": "0.3"}
    assert re.fullmatch(r"[0-9a-f]{16}", provided["code"])
    assert record["spec"]["attribution_config"] == {"scale": 1.0}  # the resolved config, defaults included


def test_a_plugin_whose_code_version_or_defaults_change_gets_a_new_run_id(third_party):
    from harness.run.spec import RunSpec

    source = third_party / "ub_extra" / "__init__.py"

    def installed(text: str, version: str = "0.3") -> None:
        source.write_text(text)
        (third_party / "ub_extra-0.3.dist-info" / "METADATA").write_text(
            f"Metadata-Version: 2.1\nName: ub-extra\nVersion: {version}\n")
        sys.modules.pop("ub_extra", None)
        reset_registry()

    spec = RunSpec(task="tofu-mini", model="tiny-llama", attribution="last-layer", ratio=0.25,
                   objective="plain-ascent")
    first = spec.run_id()
    assert RunSpec(**{**vars(spec), "attribution_config": {"scale": 1.0}}).run_id() == first  # default spelled out
    installed(PLUGIN_SOURCE.replace("Scores weights by their layer index", "Scores weights by layer")
              .replace("out = {}", "out = {}  # one score tensor per parameter"))
    assert spec.run_id() == first  # docstrings and comments are not code
    variants = {"formula": (PLUGIN_SOURCE.replace("float(i) * self.config", "float(i + 1) * self.config"), "0.3"),
                "default": (PLUGIN_SOURCE.replace("option(1.0, ", "option(2.0, "), "0.3"),
                "version": (PLUGIN_SOURCE, "0.4")}
    ids = {first}
    for what, (text, version) in variants.items():
        installed(text, version)
        ids.add(spec.run_id())
        assert len(ids) == 2, what
        installed(PLUGIN_SOURCE)
        assert spec.run_id() == first
        ids = {first}


def test_where_a_plugin_module_lives_does_not_change_run_ids(monkeypatch):
    """Moving a built-in plugin's module (here: the optimizer's and the backend's, which every run uses)
    keeps run ids; the provenance still says which module registered each component."""
    from dataclasses import replace

    from harness.plugins import get_registry
    from harness.run import identity
    from harness.run.spec import RunSpec

    spec = RunSpec(task="tofu-mini", model="tiny-llama", attribution="random", ratio=0.5, objective="graddiff")
    first = spec.run_id()
    registry = get_registry()
    for kind, name in (("optimizer", "adamw"), ("backend", "hf")):
        moved = replace(registry.get(kind, name), plugin="harness.somewhere.else")
        monkeypatch.setitem(registry.entries[kind], name, moved)
    assert spec.run_id() == first
    assert identity.plugins(spec, registry)["optimizer"]["plugin"] == "harness.somewhere.else"


def test_a_record_of_the_same_spec_under_an_older_run_id_is_moved_aside(tmp_path, caplog):
    from harness.run import records

    plugins = {"attribution": {"name": "wagle", "version": "0.1.0", "code": "new"}}

    def record(key: str, code: str) -> records.Record:
        fingerprint = {"name": "wagle", "plugin": "methods.wagle", "distribution": "unlearn-bench", "version": "0.1.0",
                       "code": code}
        return records.Record(kind="run", spec={}, spec_key=key, status="failed", memory={},
                              headline={"forget": "f", "utility": "u"},
                              error={"type": "E", "message": "", "traceback": ""},
                              provenance={"plugins": {"attribution": fingerprint}})

    records.write(tmp_path, "old-run", record("k1", "old"))
    records.write(tmp_path, "other-spec", record("k2", "new"))
    records.write(tmp_path, "new-run", record("k1", "new"))
    [old] = records.same_spec(tmp_path, "k1", "new-run")
    assert records.what_changed(old, plugins) == "attribution 'wagle' code old -> new"
    with caplog.at_level("WARNING"):
        records.supersede(tmp_path, [old], "new-run")
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["new-run.json", "other-spec.json"]
    assert (tmp_path / "superseded" / "old-run.json").is_file()  # kept, out of the leaderboard's way
    assert "old-run is superseded by new-run" in caplog.text


def test_a_duplicate_name_names_both_plugins_and_skips_the_later_one():
    class Again:
        @hookimpl
        def register_attributions(self, register):
            from methods.wagle import Wagle

            register(Wagle)

    pm, origin, broken = make_plugin_manager()
    pm.register(Again(), name="again")
    registry = Registry(pm, origin, broken)
    assert re.search(r"'wagle' is registered twice: by plugin 'methods.wagle'.*'again'", registry.broken["again"])
    assert registry.get("attribution", "wagle").plugin == "methods.wagle"
    origin["again"] = ("unlearn-bench", "0")  # a built-in that breaks the contract is our bug: it raises
    with pytest.raises(DuplicatePluginError):
        Registry(pm, origin, broken)


BROKEN = {
    "hook typo": (PLUGIN_SOURCE.replace("def register_attributions", "def register_attribution"),
                  "unknown hook 'register_attribution' (did you mean 'register_attributions'?)"),
    "import error": ("import not_a_module_anywhere\n" + PLUGIN_SOURCE, "No module named 'not_a_module_anywhere'"),
    "no docstring": (PLUGIN_SOURCE.replace('"""Scores weights by their layer index: later layers first."""', ""),
                     "attribution 'last-layer' (LastLayer) has no docstring"),
    "bare field": (PLUGIN_SOURCE.replace('option(1.0, "score multiplier")', "1.0"),
                   "attribution 'last-layer': Config fields ['scale'] have no help text"),
    "wrong base": (PLUGIN_SOURCE.replace("class LastLayer(Attribution):", "class LastLayer:"),
                   "is not a subclass of harness.api.Attribution"),
}


@pytest.mark.parametrize("case", BROKEN)
def test_a_broken_plugin_is_reported_and_skipped_and_the_rest_works(third_party, case, capsys):
    import contextlib
    import io

    from harness.cli import main

    source, why = BROKEN[case]
    (third_party / "ub_extra" / "__init__.py").write_text(source)
    sys.modules.pop("ub_extra", None)
    reset_registry()
    registry = get_registry()
    assert why in registry.broken["extra"]
    assert "last-layer" not in registry.names("attribution")  # nothing of a broken plugin is half-registered
    assert "plain-ascent" not in registry.names("objective")
    assert {"wagle", "dense"} <= set(registry.names("attribution"))
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert main(["list"]) == 0
    assert "skipped plugins:" in buf.getvalue() and why in buf.getvalue()
    with pytest.raises(UnknownPluginError, match=r"skipped as broken: plugin 'extra' \(ub-extra\)"):
        registry.get("attribution", "last-layer")


def test_registry_add_checks_the_contract():
    from harness.api import Objective
    from harness.plugins import PluginContractError
    from methods.ascent import AscentConfig

    class Undocumented(Objective):
        name = "undocumented"
        Config = AscentConfig

    with pytest.raises(PluginContractError, match="has no docstring"):
        get_registry().add("objective", Undocumented)
    Undocumented.__doc__ = "Now documented."
    assert get_registry().add("objective", Undocumented).plugin == "runtime"
    assert get_registry().build("objective", "undocumented").name == "undocumented"


def test_unknown_names_list_the_known_ones():
    registry = get_registry()
    known = (r"Known attributions: dense, gradient, grin-mask, lora, magnitude, random, salun, snip, "
             r"unlearning-layers, wagle, wanda")
    with pytest.raises(UnknownPluginError, match=r"unknown attribution 'wagel'. Did you mean 'wagle'\? " + known):
        registry.get("attribution", "wagel")
    objectives = r"Known objectives: eul, ga, graddiff, npo, po, random-label, rmu, simnpo"
    with pytest.raises(UnknownPluginError, match=objectives):
        registry.get("objective", "gd")
    tasks = r"Known tasks: copyright-books, muse-news, muse-news-mini, tofu, tofu-mini, wmdp, wmdp-mini"
    with pytest.raises(UnknownPluginError, match=tasks):
        registry.get("task", "muse")
    with pytest.raises(UnknownPluginError, match=r"Known optimizers: adamw, soul"):
        registry.get("optimizer", "sophia")
    with pytest.raises(UnknownPluginError, match=r"Known probes: extraction, mia, quantization, relearn"):
        registry.get("probe", "quant")


def test_cli_reports_unknown_names_without_a_traceback(tmp_path):
    exe = Path(sys.executable).parent / "unlearn-bench"
    out = subprocess.run([str(exe), "run", "--task", "tofu-mini", "--attribution", "wagl", "--model", "tiny-llama",
                          "--results", str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 2
    assert "error: unknown attribution 'wagl'. Did you mean 'wagle'? Known attributions: dense, gradient" in out.stderr
    assert "Traceback" not in out.stderr


def test_every_hook_is_documented():
    from harness import hookspecs

    docs = (Path(__file__).resolve().parent.parent / "docs" / "plugins.md").read_text()
    hooks = [name for name in dir(hookspecs) if name.startswith("register_")]
    assert hooks and all(f"`{name}(register)`" in docs for name in hooks)
    assert all(getattr(hookspecs, name).__doc__ for name in hooks)


def test_records_of_every_kind_follow_the_schema_and_version_1_still_reads(tmp_path, records_follow_the_schema):
    import json

    from harness.run import records

    before = len(records_follow_the_schema)
    for kind, extra in (("reference", {"role": "target", "model": "m", "headline": {"forget": "f", "utility": "u"}}),
                        ("eval", {"role": "eval", "model": "m"})):
        records.write(tmp_path, kind, records.Record(kind=kind, spec={}, status="finished", **extra))
    assert len(records_follow_the_schema) == before + 2  # checked on write
    with pytest.raises(Exception, match="is not one of"):
        records.write(tmp_path, "bad", records.Record(kind="run", spec={}, status="done"))
    v1 = {"record_version": 1, "id": "old", "spec": {"task": "t"}, "status": "finished", "metrics": {}}
    (tmp_path / "runs" / "old.json").write_text(json.dumps(v1))
    (tmp_path / "runs" / "odd.json").write_text(json.dumps(dict(v1, record_version=7)))
    read = {r.id: r for r in records.read_all(tmp_path)}
    assert sorted(read) == ["eval", "old", "reference"]  # version 7 is skipped, with a warning
    assert read["old"].kind == "run" and read["old"].finished
