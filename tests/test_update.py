"""The update plan: from an attribution's result to the weights that train, and back to a plain model."""

import pytest
import torch

from harness.api import AttributionResult
from harness.learn.update import UpdatePlan
from harness.plugins import get_registry


def test_plan_from_scores_hits_the_ratio_and_is_restricted_to_the_objective(tiny):
    model, _ = tiny
    g = torch.Generator().manual_seed(0)
    scores = {n: torch.rand(p.shape, generator=g) for n, p in model.named_parameters()}
    plan = UpdatePlan.from_result(AttributionResult(scores), 0.25, model)
    assert plan.trained_fraction() == pytest.approx(0.25, abs=1e-6)
    down = r"model\.layers\.1\.mlp\.down_proj\.weight"
    rmu = get_registry().build("objective", "rmu", {"layer": 1, "update": [down]})
    assert plan.wrap(model, rmu) is model  # a mask plan trains the model itself
    kept = {n for n, m in plan.mask.items() if m.any()}
    assert kept == {"model.layers.1.mlp.down_proj.weight"}
    assert plan.mask["model.layers.1.mlp.down_proj.weight"].equal(
        UpdatePlan.from_result(AttributionResult(scores), 0.25, model).mask["model.layers.1.mlp.down_proj.weight"])


def test_lora_plan_trains_adapters_only_and_merges_back_to_the_base_names(tiny):
    model, _ = tiny
    names = [n for n, _ in model.named_parameters()]
    q_before = model.model.layers[0].self_attn.q_proj.weight.detach().clone()
    plan = UpdatePlan.from_result(AttributionResult(lora={"r": 2, "target_modules": ["q_proj"]}), 1.0, model)
    assert plan.mask is None
    net = plan.wrap(model)
    trained = [n for n, p in net.named_parameters() if p.requires_grad]
    assert trained and all("lora_" in n for n in trained)
    with torch.no_grad():
        for n, p in net.named_parameters():
            if "lora_B" in n:
                p.fill_(0.1)
    merged = plan.merge(net)
    assert [n for n, _ in merged.named_parameters()] == names
    assert not torch.equal(merged.model.layers[0].self_attn.q_proj.weight, q_before)


def test_attached_plan_freezes_unselected_parameters_for_the_run_only(tiny):
    model, _ = tiny
    mask = {n: torch.zeros(p.shape, dtype=torch.bool) for n, p in model.named_parameters()}
    mask["model.norm.weight"][:2] = True
    attached = UpdatePlan(mask).attach(model)
    assert [p.shape for p in attached.trainable()] == [model.model.norm.weight.shape]
    assert list(attached.partial) == ["model.norm.weight"]
    attached.close()
    assert all(p.requires_grad for p in model.parameters())
