"""Every attribution and every objective run end to end on the tiny model (pairs over the registry): each
attribution with GradDiff, and each objective with a partial mask (random) and with LoRA adapters, the two
ways a method changes what the optimizer sees."""

import json

import pytest

from harness.config import from_dict
from harness.plugins import get_registry, reset_registry
from harness.run import prepare, runner
from harness.run.spec import RunSpec

reset_registry()
ATTRIBUTIONS = get_registry().names("attribution")
OBJECTIVES = get_registry().names("objective")
OBJECTIVE_CONFIG = {"rmu": {"layer": 1, "update": [r"model\.layers\.1\..*"]}}  # lora adapts q/v of layer 1
TASK_CONFIG = {"utility_limit": 2, "eval_limit": 4, "max_new_tokens": 2, "retain_authors": 1}


PAIRS = sorted({(a, "graddiff") for a in ATTRIBUTIONS} | {(a, o) for a in ("random", "lora") for o in OBJECTIVES})


@pytest.mark.parametrize(("attribution", "objective"), PAIRS)
def test_objective_with_attribution(attribution, objective, tmp_path):
    spec = from_dict(RunSpec, {
        "task": "tofu-mini", "model": "tiny-llama", "attribution": attribution, "ratio": 0.3,
        "objective": objective, "objective_config": OBJECTIVE_CONFIG.get(objective, {}),
        "train": {"epochs": 1, "batch_size": 20, "lr": 1e-3}, "prepare": {"epochs": 1},
        "task_config": TASK_CONFIG}, "matrix")
    record = runner.execute(spec, tmp_path).to_json()
    assert record["status"] == "finished"
    assert len(record["curves"]["train"]) == 2
    # unlearning moved the model that was evaluated: its forget probability is not the target's
    task = get_registry().build("task", "tofu-mini", TASK_CONFIG)
    target = prepare.reference_eval(task, record["models"]["target"], task.eval_batch_size, None)
    assert record["metrics"]["forget_prob"]["value"] != target["metrics"]["forget_prob"]["value"]
    saved = json.loads((tmp_path / "runs" / f"{runner.canonical(spec).run_id()}.json").read_text())
    assert saved["metrics"] == record["metrics"]


def test_eval_curve_during_unlearning(tmp_path):
    spec = from_dict(RunSpec, {
        "task": "tofu-mini", "model": "tiny-llama", "attribution": "dense", "objective": "ga", "eval_every": 1,
        "train": {"epochs": 1, "batch_size": 20}, "prepare": {"epochs": 1}, "task_config": TASK_CONFIG}, "curve")
    record = runner.execute(spec, tmp_path).to_json()
    curve = record["curves"]["eval"]
    assert [row["step"] for row in curve] == [1, 2]
    assert set(curve[0]) >= {"forget_rouge", "model_utility", "forget_quality"}


def test_failed_run_is_recorded_with_its_error(tmp_path):
    from harness.api import LossOutput, Objective
    from harness.errors import NonFiniteLossError
    from harness.measure.scoring import mean_nll
    from methods.ascent import AscentConfig

    class NanAfterOne(Objective):
        """A broken objective: NaN from the second step on."""

        name = "nan-after-one"
        Config = AscentConfig
        calls = 0

        def loss(self, model, batch, reference=None):
            NanAfterOne.calls += 1
            loss = mean_nll(model, batch.forget).mean()
            return LossOutput(loss * (float("nan") if NanAfterOne.calls > 1 else 1.0))

    get_registry().add("objective", NanAfterOne, plugin="tests")
    spec = from_dict(RunSpec, {
        "task": "tofu-mini", "model": "tiny-llama", "attribution": "dense", "objective": "nan-after-one",
        "train": {"epochs": 1, "batch_size": 20}, "prepare": {"epochs": 1}, "task_config": TASK_CONFIG}, "nan")

    with pytest.raises(NonFiniteLossError):
        runner.execute(spec, tmp_path)
    record = json.loads(next((tmp_path / "runs").glob("*.json")).read_text())
    assert record["status"] == "failed" and record["error"]["type"] == "NonFiniteLossError"
    assert "loss is" in record["error"]["message"] and "Traceback" in record["error"]["traceback"]


def test_two_runs_of_one_spec_give_the_same_metrics(tmp_path):
    spec = from_dict(RunSpec, {
        "task": "tofu-mini", "model": "tiny-llama", "attribution": "random", "ratio": 0.5, "objective": "npo",
        "seed": 7, "train": {"epochs": 1, "batch_size": 10, "lr": 1e-3}, "prepare": {"epochs": 1},
        "task_config": TASK_CONFIG}, "twice")
    first = runner.execute(spec, tmp_path / "a").to_json()
    second = runner.execute(spec, tmp_path / "b").to_json()
    assert first["metrics"] == second["metrics"]
    assert first["curves"]["train"] == second["curves"]["train"]
