"""Optimizer plugins: SOUL's Sophia against its update by hand, under masks, and in unlearning runs."""

from __future__ import annotations

import pytest
import torch

from harness.learn.optim import MaskedOptimizer
from harness.plugins import get_registry


def _sophia_by_hand(theta, grads, lr, wd, beta1, beta2, rho, bs, twice=True):
    """SOUL's sophia.py step by step on plain floats: h and m averages (m twice), decay, clipped step."""
    theta, m, h = list(theta), [0.0] * len(theta), [0.0] * len(theta)
    for g in grads:
        for i, gi in enumerate(g):
            h[i] = beta2 * h[i] + (1 - beta2) * gi * gi
            for _ in range(2 if twice else 1):
                m[i] = beta1 * m[i] + (1 - beta1) * gi
            theta[i] *= 1 - lr * wd
            ratio = min(abs(m[i]) / (rho * bs * h[i] + 1e-15), 1.0)
            theta[i] -= lr * (1 if m[i] > 0 else -1 if m[i] < 0 else 0) * ratio
    return theta


@pytest.mark.parametrize("twice", [True, False])
def test_soul_is_sophias_update_by_hand_and_honours_the_mask(twice):
    rule = get_registry().build("optimizer", "soul", {"rho": 0.04, "batch_scale": 10.0, "double_average": twice})
    start = torch.tensor([[0.5, -1.0, 2.0], [0.1, 0.0, -0.3]], dtype=torch.float64)
    mask = torch.tensor([[True, False, True], [True, True, False]])
    grads = [torch.tensor([[0.2, 9.0, -0.1], [1e-3, -0.5, 9.0]], dtype=torch.float64),
             torch.tensor([[-0.3, 9.0, -0.2], [2e-3, 0.4, 9.0]], dtype=torch.float64),
             torch.tensor([[0.1, 9.0, 0.3], [-1e-3, 0.1, 9.0]], dtype=torch.float64)]
    p = torch.nn.Parameter(start.clone())
    opt = MaskedOptimizer([{"params": [p], "weight_decay": 0.1}], {id(p): mask}, lr=0.05, rule=rule)
    for g in grads:
        p.grad = g.clone()
        opt.step()
    want = _sophia_by_hand(start[mask].tolist(), [g[mask].tolist() for g in grads], 0.05, 0.1, 0.9, 0.95, 0.04,
                           10.0, twice)
    assert p.detach()[mask].tolist() == pytest.approx(want, abs=1e-12)
    assert torch.equal(p.detach()[~mask], start[~mask])  # masked out: never written, decay included
    assert {k: v.numel() for k, v in opt.state[p].items() if k != "step"} == {"exp_avg": 4, "hessian": 4}
    # the clip at 1: a large averaged gradient against a small Hessian estimate moves by lr (× sign) at most
    assert (p.detach() - start * (1 - 0.05 * 0.1) ** 3).abs().max() <= 3 * 0.05 + 1e-12


def test_adamw_rule_is_torchs_adamw():
    rule = get_registry().build("optimizer", "adamw", {"betas": [0.8, 0.99]})
    ours, ref = (torch.nn.Parameter(torch.linspace(-1, 1, 12).reshape(3, 4)) for _ in range(2))
    opt = MaskedOptimizer([{"params": [ours], "weight_decay": 0.1}], {}, lr=0.01, rule=rule)
    torch_opt = torch.optim.AdamW([ref], lr=0.01, betas=(0.8, 0.99), weight_decay=0.1, foreach=False)
    for i in range(3):
        g = torch.sin(torch.arange(12.0) * (i + 1)).reshape(3, 4)
        ours.grad, ref.grad = g.clone(), g.clone()
        opt.step()
        torch_opt.step()
    assert torch.equal(ours, ref)


@pytest.mark.parametrize("objective", ["graddiff", "npo", "po"])
def test_soul_unlearns_tofu_mini_with_each_objective(tiny, objective):
    import copy

    from harness.learn.settings import TrainConfig
    from harness.learn.train import train, unlearn_batches
    from harness.learn.update import UpdatePlan
    from harness.plugins import get_registry as registry

    model, tok = tiny
    task = registry().build("task", "tofu-mini", {"retain_authors": 1})
    obj = registry().build("objective", objective)
    reference = copy.deepcopy(model).requires_grad_(False) if obj.needs_reference else None
    cfg = TrainConfig(lr=1e-2, max_steps=3, batch_size=4, weight_decay=0.1)
    forget = task.forget_examples()[:8]
    refusal = task.refusal_examples()[:8]
    batches = unlearn_batches(tok, forget, task.retain_examples()[:8], cfg, 96, 0, refusal)
    mask = {n: torch.rand(p.shape, generator=torch.Generator().manual_seed(1)) < 0.3
            for n, p in model.named_parameters()}
    start = {n: p.detach().clone() for n, p in model.named_parameters()}
    log = train(model, batches, lambda m, b: obj.loss(m, b, reference), cfg, UpdatePlan(mask),
                optimizer=registry().build("optimizer", "soul"))
    assert len(log.steps) == 3 and all(torch.isfinite(torch.tensor(r["loss"])) for r in log.steps)
    for n, p in model.named_parameters():
        assert torch.equal(p.detach()[~mask[n]], start[n][~mask[n]]), n
    assert any(not torch.equal(p.detach()[mask[n]], start[n][mask[n]]) for n, p in model.named_parameters())


def test_a_run_names_its_optimizer_and_it_changes_the_run(tmp_path):
    from harness.config import from_dict
    from harness.run import runner
    from harness.run.spec import RunSpec

    base = {"task": "tofu-mini", "model": "tiny-llama", "attribution": "random", "ratio": 0.5,
            "objective": "graddiff",
            "task_config": {"utility_limit": 4, "eval_limit": 8, "max_new_tokens": 4, "retain_authors": 1},
            "train": {"epochs": 1, "batch_size": 8, "lr": 1e-3}, "prepare": {"epochs": 1}}
    spec = from_dict(RunSpec, dict(base, optimizer="soul", optimizer_config={"rho": 0.05}), "test")
    record = runner.execute(spec, tmp_path)
    assert record.status == "finished"
    assert record.spec["optimizer"] == "soul" and record.spec["optimizer_config"]["rho"] == 0.05
    assert record.provenance["plugins"]["optimizer"]["name"] == "soul"
    assert spec.run_id() != from_dict(RunSpec, base, "test").run_id()
    from leaderboard import aggregate

    assert aggregate.method_rows([record.to_json()])[0]["objective"] == "graddiff [soul]"  # told apart from AdamW
