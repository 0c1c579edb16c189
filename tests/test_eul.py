"""EUL: unlearning layers (identity at start, the only trained weights), the selective teacher-student loss by
hand, the fusion of layers by its normal equations, and a run with two requests fused."""

from __future__ import annotations

import copy

import pytest
import torch

from harness.api import Example, UnlearnBatch
from harness.learn import adapters, spunge
from harness.learn.data import make_batches
from harness.plugins import get_registry

FORGET = [Example(f"Question: Who is author {i}?\nAnswer:", f" Author {i} writes about dragons.") for i in range(4)]
RETAIN = [Example(f"Question: Where is city {i}?\nAnswer:", f" City {i} lies by a river.") for i in range(4)]


def test_unlearning_layers_start_as_the_identity_and_are_all_that_trains(tiny):
    model, tok = tiny
    batch = make_batches(tok, FORGET, 4, 64)[0]
    with torch.no_grad():
        before = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    names = adapters.insert(model, reduction=4)
    with torch.no_grad():
        after = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    assert torch.equal(before, after)  # W_up = 0: a fresh layer changes nothing
    d, w = model.config.hidden_size, model.config.hidden_size // 4
    assert sorted(names) == sorted(f"model.layers.{i}.mlp.unlearning_layer.{m}.{t}" for i in range(2)
                                   for m in ("down", "up") for t in ("weight", "bias"))
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == 2 * (d * w + w + w * d + d)


def _nll(model, batch):
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
    labels = batch["labels"][:, 1:]
    lp = torch.log_softmax(logits.float(), -1)
    out = []
    for row in range(labels.shape[0]):
        keep = labels[row] != -100
        out.append(-lp[row][keep].gather(-1, labels[row][keep][:, None]).mean())
    return torch.stack(out).mean()


def _kl(student, teacher, batch):
    kw = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    s, t = (torch.log_softmax(m(**kw).logits[:, :-1].float(), -1) for m in (student, teacher))
    keep = batch["labels"][:, 1:] != -100
    kl = (t.exp() * (t - s)).sum(-1)
    return kl[keep].mean()


def test_eul_loss_by_hand(tiny):
    model, tok = tiny
    teacher = copy.deepcopy(model)
    adapters.insert(model, reduction=4)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.3 * torch.randn_like(p))
    eul = get_registry().build("objective", "eul", {"retain_kl": 2.0, "retain_ce": 0.5, "forget_ce": 0.25})
    batch = UnlearnBatch(make_batches(tok, FORGET, 4, 64)[0], make_batches(tok, RETAIN, 4, 64)[0])
    with torch.no_grad():
        got = eul.loss(model, batch, teacher)
        want = (2.0 * _kl(model, teacher, batch.retain) - _kl(model, teacher, batch.forget)
                + 0.5 * _nll(model, batch.retain) - 0.25 * _nll(model, batch.forget))
    assert float(got.loss) == pytest.approx(float(want), rel=1e-5)
    assert got.parts["kl_forget"] > 0  # the student differs from the teacher


def test_fusion_solves_its_normal_equations():
    g = torch.Generator().manual_seed(0)
    w1, w2 = torch.randn(3, 4, generator=g), torch.randn(3, 4, generator=g)
    x1 = torch.zeros(4, 10)
    x1[:2] = torch.randn(2, 10, generator=g)  # request 1 uses input dimensions 0 and 1
    x2 = torch.zeros(4, 10)
    x2[2:] = torch.randn(2, 10, generator=g)  # request 2 dimensions 2 and 3
    fused = spunge.fuse([w1, w2], [x1 @ x1.T, x2 @ x2.T])
    assert torch.allclose(fused @ x1, w1 @ x1, atol=1e-4) and torch.allclose(fused @ x2, w2 @ x2, atol=1e-4)
    same = torch.randn(4, 10, generator=g)  # one input distribution: the mean weight
    assert torch.allclose(spunge.fuse([w1, w2], [same @ same.T] * 2), (w1 + w2) / 2, atol=1e-4)


def test_an_eul_run_fuses_the_layers_of_two_requests(tmp_path):
    from harness.config import from_dict
    from harness.run import runner
    from harness.run.spec import RunSpec

    data = {"task": "tofu-mini", "model": "tiny-llama", "attribution": "unlearning-layers",
            "attribution_config": {"reduction": 4}, "objective": "eul",
            "spunge": {"enabled": True, "merge": "fusion"},
            "task_config": {"utility_limit": 4, "eval_limit": 8, "max_new_tokens": 4, "retain_authors": 1},
            "train": {"epochs": 1, "batch_size": 8, "lr": 1e-2}, "prepare": {"epochs": 1}}
    record = runner.execute(from_dict(RunSpec, data, "test"), tmp_path)
    assert record.status == "finished" and [p["name"] for p in record.spunge["parts"]] == ["author1", "author2"]
    assert record.mask["trainable_params"] == 2 * (12 * 3 + 3 + 3 * 12 + 12)
    with pytest.raises(ValueError, match="does not combine with a mask"):
        runner.execute(from_dict(RunSpec, dict(data, attribution="random", ratio=0.5, attribution_config={}),
                                 "test"), tmp_path)
