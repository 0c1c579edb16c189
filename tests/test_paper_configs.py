"""The paper-scale experiment files use the reference code's conventions (docs/metrics.md, parity table):
RMU's constant rate without clipping, WAGLE's gradient scale and full-gradient clipping."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

from harness.learn.settings import TrainConfig, lr_factor
from harness.learn.train import finetune_batches, train
from harness.sweeps import sweep

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
    assert (cfg.train.max_steps, cfg.train.batch_size, cfg.train.order) == (150, 4, "topics")
    tc = cfg.task_config
    assert tc["retain_corpora"] == ["wikitext:wikitext-2-raw-v1:test"] * 2 and len(tc["forget_corpora"]) == 2
    assert (tc["chunk_words"], tc["min_chars"], tc["forget_max_lengths"]) == (None, 0, [512, 768])


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
    from harness.measure.scoring import mean_nll

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


def test_rmu_batches_alternate_topics_in_file_order_as_rmus_code():
    from harness.learn.train import topic_batches

    # bio: 5 documents, cyber: 4; retain: 3 wikitext lines for bio, 2 for cyber; batches of 2. RMU's code takes
    # step k from topic k % 2, batch k // 2, with the same-numbered retain batch of that topic
    steps = topic_batches([0, 0, 0, 0, 0, 1, 1, 1, 1], [0, 0, 0, 1, 1], batch_size=2)
    assert steps == [(0, [0, 1], [0, 1]), (1, [5, 6], [3, 4]), (0, [2, 3], [2]), (1, [7, 8], [3, 4])]
    # a topic without retain text of its own takes the whole retain set
    assert topic_batches([0, 1], [0, 0, 0], batch_size=1) == [(0, [0], [0]), (1, [1], [0])]


def test_wmdp_topics_reach_rmu_as_the_reference_arranges_them(tiny, tmp_path):
    from harness.api import LossOutput
    from harness.learn.train import unlearn_batches
    from harness.plugins import get_registry

    model, tok = tiny
    bio, cyber, wiki = (tmp_path / f"{n}.jsonl" for n in ("bio", "cyber", "wiki"))
    write = lambda path, texts: path.write_text("".join(f'{{"text": "{t}"}}\n' for t in texts))  # noqa: E731
    write(bio, ["short", "protein  folding of a toxin " * 6, "viral vectors and their hosts " * 6])
    write(cyber, ["buffer overflow in the parser " * 6, "a kernel exploit chain " * 6])
    write(wiki, ["The river flows north past the old mill . " * 3, ""])
    task = get_registry().build("task", "wmdp", {
        "forget_corpora": [str(bio), str(cyber)], "retain_corpora": [str(wiki), str(wiki)], "chunk_words": None,
        "min_chars": 5, "forget_max_lengths": [6, 9], "max_length": 12}, "test")
    forget, retain = task.forget_examples(), task.retain_examples()
    assert [(e.topic, e.max_length) for e in forget] == [(0, 6), (0, 6), (1, 9), (1, 9)]  # "short": 5 chars
    assert forget[0].completion == "protein  folding of a toxin " * 6  # whole documents, as written
    assert [e.topic for e in retain] == [0, 1]  # the empty line is left out; corpus i serves topic i
    assert task.forget_splits() == {"topic1": [0, 1], "topic2": [2, 3]}  # SPUNGE's attribute on WMDP
    cfg = TrainConfig(batch_size=1, epochs=1, order="topics")
    batches = unlearn_batches(tok, forget, retain, cfg, task.max_length, seed=0)
    assert [b.topic for b in batches] == [0, 1, 0, 1]
    assert [b.forget["input_ids"].shape[1] for b in batches] == [6, 9, 6, 9]  # each corpus's own token cap
    assert all(b.retain["input_ids"].shape[1] == 12 for b in batches)
    seen = []
    rmu = get_registry().build("objective", "rmu", {"layer": 1, "update": [r"model\.layers\.1\.mlp.*"]})
    orig = rmu.control
    rmu.control = lambda size, device, topic=0: seen.append(topic) or orig(size, device, topic)
    frozen = copy.deepcopy(model)
    log = train(model, batches, lambda m, b: LossOutput(rmu.loss(m, b, frozen).loss), cfg)
    assert len(log.steps) == 4 and seen == [0, 1, 0, 1]
    size, cpu = model.config.hidden_size, torch.device("cpu")
    assert not torch.equal(rmu.control(size, cpu, 0), rmu.control(size, cpu, 1))


def test_a_hub_corpus_may_leave_its_config_empty(tmp_path):
    from tasks.wmdp import load_corpus

    (tmp_path / "data.jsonl").write_text('{"text": "a"}\n{"text": "b"}\n')
    assert load_corpus(f"{tmp_path}::train", None) == ["a", "b"]  # datasets.load_dataset(name, None, split)


def test_soul_paper_config_is_souls_tofu_setting():
    cfg = _load("tofu-forget10-llama2-soul")
    assert cfg.optimizers == ["adamw", "soul"] and cfg.optimizer_config["soul"] == {"betas": [0.9, 0.95], "rho": 0.04}
    assert (cfg.train.lr, cfg.train_by_objective["po"]["lr"], cfg.train.weight_decay) == (5e-6, 1e-5, 0.1)
    assert cfg.objective_config == {"graddiff": {"retain_weight": 2.0}, "po": {"retain_weight": 5.0}}
    assert (cfg.train.schedule, cfg.train.warmup_ratio, cfg.train.grad_accum) == ("hf_linear", 0.1, 4)


def test_hf_linear_without_warmup_is_the_trainers_default_schedule():
    factor = lr_factor(TrainConfig(schedule="hf_linear", warmup_ratio=0.0), 4)
    assert [factor(s) for s in range(4)] == [1.0, 0.75, 0.5, 0.25]  # (n - step) / n from the first step
