"""The paper-scale experiment files use the reference code's conventions (docs/metrics.md, parity table):
RMU's constant rate without clipping, WAGLE's gradient scale and full-gradient clipping."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from harness import sweep
from harness.settings import TrainConfig, lr_factor
from harness.train import finetune_batches, train

ROOT = Path(__file__).resolve().parent.parent
WAGLE_PAPER = ["tofu-forget10-llama2-graddiff", "tofu-forget10-llama2-npo", "tofu-forget10-llama2-po",
               "tofu-forget10-llama2-simnpo",
               "wmdp-zephyr-graddiff", "wmdp-zephyr-npo", "wmdp-zephyr-rmu"]


def _load(name: str) -> sweep.SweepConfig:
    return sweep.load(ROOT / "experiments" / f"{name}.yaml")


@pytest.mark.parametrize("name", WAGLE_PAPER)
def test_wagle_paper_configs_use_the_reference_gradient_scale(name):
    cfg = _load(name)
    assert cfg.attribution_config["wagle"]["gradient_scale"] == 0.25
    if name != "wmdp-zephyr-rmu":  # WAGLE's HF Trainer: clip the whole gradient, linear warmup from 0
        assert (cfg.train.clip_scope, cfg.train.schedule, cfg.train.warmup_ratio) == ("full", "hf_linear", 0.1)


def test_rmu_config_is_the_wmdp_recipe():
    train_cfg = _load("wmdp-zephyr-rmu").train
    assert (train_cfg.schedule, train_cfg.warmup_ratio, train_cfg.max_grad_norm, train_cfg.adam_eps) == (
        "constant", 0.0, None, 1e-8)
    factor = lr_factor(train_cfg, 150)
    assert [factor(s) for s in range(150)] == [1.0] * 150  # the full rate from the first batch to the last
    cfg = _load("wmdp-zephyr-rmu")
    assert cfg.train.max_steps == 150 and cfg.task_config["retain_corpora"] == ["wikitext:wikitext-2-raw-v1:test"]


def test_a_constant_schedule_trains_at_the_full_rate_every_step(tiny):
    model, tok = tiny
    cfg = TrainConfig(lr=3e-3, epochs=2, batch_size=4, schedule="constant", warmup_ratio=0.0, max_grad_norm=None)
    log = train(model, finetune_batches(tok, _examples(), cfg, 64, seed=0),
                lambda m, b: _nll(m, b), cfg)
    assert len(log.steps) > 2 and {row["lr"] for row in log.steps} == {3e-3}
    assert all("grad_norm" not in row for row in log.steps)  # no clipping, as the WMDP code


def _examples():
    from harness.api import Example

    return [Example(f"Question {i}?", f" Answer {i}.") for i in range(12)]


def _nll(model, batch):
    from harness.api import LossOutput
    from harness.scoring import mean_nll

    return LossOutput(mean_nll(model, batch).mean())


def test_lr_factor_by_hand():
    linear = lr_factor(TrainConfig(warmup_ratio=0.2, schedule="linear"), 10)  # 2 warmup steps, then decay to 0
    assert [round(linear(s), 6) for s in range(10)] == [0.5, 1.0, 1.0, 0.875, 0.75, 0.625, 0.5, 0.375, 0.25, 0.125]


def test_hf_linear_is_transformers_schedule():
    from transformers import get_linear_schedule_with_warmup

    cfg = TrainConfig(lr=1.0, warmup_ratio=0.3, schedule="hf_linear")
    ours = lr_factor(cfg, 10)
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    theirs = get_linear_schedule_with_warmup(opt, num_warmup_steps=3, num_training_steps=10)
    rates = []
    for _ in range(10):
        rates.append(opt.param_groups[0]["lr"])
        opt.step()
        theirs.step()
    assert [ours(s) for s in range(10)] == pytest.approx(rates, abs=1e-12)
    assert rates[0] == 0.0  # transformers warms up from zero


def test_simnpo_paper_config_is_unlearn_simples_forget10_setting():
    cfg = _load("tofu-forget10-llama2-simnpo")
    assert cfg.objective_config["simnpo"] == {"beta": 4.5, "delta": 0.0, "forget_weight": 0.125,
                                               "retain_weight": 1.0}
    assert (cfg.train.lr, cfg.train.epochs, cfg.train.weight_decay) == (1e-5, 10, 0.01)


@pytest.mark.parametrize("objective", ["graddiff", "npo", "po", "simnpo"])
def test_tofu_paper_configs_evaluate_tofus_legacy_300_rows(objective):
    assert _load(f"tofu-forget10-llama2-{objective}").task_config["eval_limit"] == 300
