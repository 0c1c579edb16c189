"""The example plugin package installs from its own pyproject, is listed, runs, and passes conformance."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from harness.plugins import get_registry, reset_registry

ROOT = Path(__file__).resolve().parent.parent
TEMPLATE = ROOT / "examples" / "plugin-template"


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    target = tmp_path_factory.mktemp("site")
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                    "--target", str(target), str(TEMPLATE)], check=True, capture_output=True, timeout=300)
    sys.path.insert(0, str(target))
    old = os.environ.get("UNLEARN_BENCH_LOAD_PLUGINS")
    os.environ["UNLEARN_BENCH_LOAD_PLUGINS"] = "unlearn-bench-example"
    reset_registry()
    yield target
    sys.path.remove(str(target))
    os.environ["UNLEARN_BENCH_LOAD_PLUGINS"] = old if old is not None else ""
    sys.modules.pop("unlearn_bench_example", None)


def test_template_is_listed(installed):
    env = dict(os.environ, PYTHONPATH=str(installed))
    listed = subprocess.run([str(Path(sys.executable).parent / "unlearn-bench"), "list"], capture_output=True,
                            text=True, env=env, timeout=120, check=True)
    out = listed.stdout
    assert "late-layers" in out and "capped-ascent" in out and "unlearn-bench-example 0.1.0" in out
    # offline, bitsandbytes' CPU backend (imported through peft) warned twice about an optional Hub kernel
    assert " WARNING " not in listed.stderr, listed.stderr
    # the template README's conformance command
    out = subprocess.run([str(Path(sys.executable).parent / "unlearn-bench"), "check", "late-layers", "capped-ascent"],
                         capture_output=True, text=True, env=env, timeout=300, check=True).stdout
    assert "late-layers: attribution conforms" in out and "capped-ascent: objective conforms" in out


def test_template_runs_end_to_end_and_conforms(installed, tiny, tmp_path):
    from harness.api import Example
    from harness.config import from_dict
    from harness.conformance import check_attribution
    from harness.run import runner
    from harness.run.spec import RunSpec

    reset_registry()
    assert get_registry().get("attribution", "late-layers").distribution == "unlearn-bench-example"
    model, tok = tiny
    forget = [Example("Question: a?\nAnswer:", " b c d.")] * 3
    check_attribution("late-layers", model, tok, forget, forget, ratio=0.3)
    spec = from_dict(RunSpec, {
        "task": "tofu-mini", "model": "tiny-llama", "attribution": "late-layers", "ratio": 0.3,
        "objective": "capped-ascent", "train": {"epochs": 1, "batch_size": 20}, "prepare": {"epochs": 1},
        "task_config": {"utility_limit": 2, "eval_limit": 4, "max_new_tokens": 2, "retain_authors": 1}}, "t")
    record = runner.execute(spec, tmp_path).to_json()
    assert record["status"] == "finished"
    assert record["provenance"]["plugins"]["objective"]["distribution"] == "unlearn-bench-example"
