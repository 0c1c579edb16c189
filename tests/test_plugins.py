"""The registry and the plugin door: built-ins, a real third-party distribution, errors."""

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
    from harness.scoring import mean_nll


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
    from harness import runner
    from harness.config import from_dict
    from harness.spec import RunSpec

    spec = from_dict(RunSpec, {
        "task": "tofu-mini", "model": "tiny-llama", "attribution": "last-layer", "ratio": 0.25,
        "objective": "plain-ascent", "train": {"epochs": 1}, "prepare": {"epochs": 1},
        "task_config": {"utility_limit": 4, "eval_limit": 8, "max_new_tokens": 4, "retain_authors": 1}}, "test")
    record = runner.execute(spec, tmp_path / "results")
    assert record["status"] == "finished"
    assert record["mask"]["density"] == pytest.approx(0.25, abs=1e-6)
    assert record["provenance"]["plugins"]["attribution"] == {
        "name": "last-layer", "plugin": "extra", "distribution": "ub-extra", "version": "0.3"}


def test_duplicate_name_names_both_plugins():
    class Again:
        @hookimpl
        def register_attributions(self, register):
            from methods.wagle import Wagle

            register(Wagle)

    pm, origin = make_plugin_manager()
    pm.register(Again(), name="again")
    with pytest.raises(DuplicatePluginError, match=r"'wagle' is registered twice: by plugin 'methods.wagle'.*'again'"):
        Registry(pm, origin)


def test_unknown_names_list_the_known_ones():
    registry = get_registry()
    known = r"Known attributions: dense, gradient, lora, magnitude, random, snip, wagle, wanda"
    with pytest.raises(UnknownPluginError, match=r"unknown attribution 'wagel'. Did you mean 'wagle'\? " + known):
        registry.get("attribution", "wagel")
    with pytest.raises(UnknownPluginError, match=r"Known objectives: ga, graddiff, npo, po, rmu, simnpo"):
        registry.get("objective", "gd")
    tasks = r"Known tasks: copyright-books, muse-news, muse-news-mini, tofu, tofu-mini, wmdp, wmdp-mini"
    with pytest.raises(UnknownPluginError, match=tasks):
        registry.get("task", "muse")


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
