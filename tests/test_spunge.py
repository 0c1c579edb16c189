"""SPUNGE: the split, PEFT's merges against hand computations, and unlearning by parts on a real model."""

from __future__ import annotations

import copy

import pytest
import torch

from harness.learn import spunge
from harness.learn.settings import TrainConfig
from harness.plugins import get_registry


def test_merges_by_hand():
    a, b = torch.tensor([1.0, -2.0, 0.5, 0.0]), torch.tensor([3.0, 1.0, -0.5, 0.0])
    c = torch.tensor([-1.0, 1.0, 1.0, 0.0])
    average = spunge.merge([a, b, c], spunge.SpungeConfig(merge="average"))
    assert average.tolist() == pytest.approx([1.0, 0.0, 1.0 / 3, 0.0])
    total = spunge.merge([a, b, c], spunge.SpungeConfig(merge="sum", scale=0.5))  # task arithmetic: λ·Σ τ_k
    assert total.tolist() == pytest.approx([1.5, 0.0, 0.5, 0.0])
    assert spunge.SpungeConfig().density == 0.2  # TIES-merging's default k: each vector's top 20%
    # TIES, density 1: the sign of each summed entry is elected, the agreeing values averaged
    # entry 0: sum 3 > 0, agreeing 1 and 3 -> 2; entry 1: sum 0 -> +, agreeing 1, 1 -> 1; entry 2: sum 1 > 0,
    # agreeing 0.5, 1 -> 0.75; entry 3: nothing to merge -> 0
    ties = spunge.merge([a, b, c], spunge.SpungeConfig(merge="ties", density=1.0, scale=2.0))
    assert ties.tolist() == pytest.approx([4.0, 2.0, 1.5, 0.0])  # λ = 2
    # density 0.5 keeps each vector's 2 largest magnitudes: a -> [1, -2, 0, 0], b -> [3, 1, 0, 0], and
    # d = [-1.2, 1.5, 1, 0] -> [-1.2, 1.5, 0, 0]; entry 0: sum 2.8 > 0, agreeing 1, 3 -> 2; entry 1: sum 0.5 > 0,
    # agreeing 1, 1.5 -> 1.25; entries 2, 3: nothing left -> 0
    d = torch.tensor([-1.2, 1.5, 1.0, 0.0])
    trimmed = spunge.merge([a, b, d], spunge.SpungeConfig(merge="ties", density=0.5))
    assert trimmed.tolist() == pytest.approx([2.0, 1.25, 0.0, 0.0])


def test_tofu_splits_per_author_and_chunks():
    task = get_registry().build("task", "tofu-mini", {})
    parts = spunge.split(task, 40, spunge.SpungeConfig(enabled=True))
    assert list(parts) == ["author1", "author2"] and parts["author2"] == list(range(20, 40))
    chunks = spunge.split(task, 10, spunge.SpungeConfig(enabled=True, by="chunks", parts=3))
    assert chunks == {"part1": [0, 1, 2, 3], "part2": [4, 5, 6, 7], "part3": [8, 9]}


def test_unlearning_by_parts_merges_the_parts_runs(tiny):
    from harness.learn.train import train, unlearn_batches
    from harness.learn.update import UpdatePlan

    model, tok = tiny
    task = get_registry().build("task", "tofu-mini", {"retain_authors": 1})
    objective = get_registry().build("objective", "graddiff")
    forget, retain = task.forget_examples(), task.retain_examples()[:8]
    cfg = TrainConfig(lr=1e-2, max_steps=2, batch_size=4)
    mask = {n: torch.rand(p.shape, generator=torch.Generator().manual_seed(2)) < 0.4
            for n, p in model.named_parameters()}
    start = copy.deepcopy(model)
    parts = []
    for indices in (range(0, 20), range(20, 40)):  # each author alone, from the same start
        alone = copy.deepcopy(start)
        train(alone, unlearn_batches(tok, [forget[i] for i in indices], retain, cfg, 128, 0), objective.loss, cfg,
              UpdatePlan(mask), 0)
        parts.append(dict(alone.named_parameters()))
    log, info = spunge.unlearn(model, task, tok, (forget, retain, []), objective.loss, cfg, UpdatePlan(mask), 0,
                               spunge.SpungeConfig(enabled=True, merge="average"), None)
    assert [p["name"] for p in info["parts"]] == ["author1", "author2"] and {r["part"] for r in log.steps} == {
        "author1", "author2"}
    for n, p in model.named_parameters():
        s = dict(start.named_parameters())[n].detach()
        want = s + ((parts[0][n].detach() - s) + (parts[1][n].detach() - s)) / 2
        assert torch.allclose(p.detach(), want, atol=1e-6), n
        assert torch.equal(p.detach()[~mask[n]], s[~mask[n]]), n  # masked out: untouched through the merge


def test_a_spunge_run_keeps_its_parts_in_the_record(tmp_path):
    from harness.config import from_dict
    from harness.errors import ConfigError
    from harness.run import runner
    from harness.run.spec import RunSpec
    from leaderboard import aggregate

    data = {"task": "tofu-mini", "model": "tiny-llama", "attribution": "random", "ratio": 0.5,
            "objective": "graddiff", "spunge": {"enabled": True, "density": 0.8},
            "task_config": {"utility_limit": 4, "eval_limit": 8, "max_new_tokens": 4, "retain_authors": 1},
            "train": {"epochs": 1, "batch_size": 8, "lr": 1e-3}, "prepare": {"epochs": 1}}
    record = runner.execute(from_dict(RunSpec, data, "test"), tmp_path)
    assert record.status == "finished" and [p["forget"] for p in record.spunge["parts"]] == [20, 20]
    assert record.spunge["merge"] == "ties" and record.spunge["density"] == 0.8
    assert aggregate.method_rows([record.to_json()])[0]["objective"] == "graddiff [spunge-ties]"
    with pytest.raises(ConfigError, match="spunge with matched forgetting"):
        from_dict(RunSpec, dict(data, match={"enabled": True}), "test")
