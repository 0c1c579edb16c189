"""Offset (δ-) unlearning: the composed logits by the formula, greedy generation on them, and a real run."""

from __future__ import annotations

import copy

import pytest
import torch

from harness.learn.offset import OffsetModel
from harness.measure.generation import greedy

PROMPTS = ["Question: Who wrote the saga?\nAnswer:", "Hi", "A longer prompt that needs left padding here:"]


def _three(tiny):
    model, tok = tiny
    small, original = copy.deepcopy(model), copy.deepcopy(model)
    with torch.no_grad():
        for i, m in enumerate((small, original)):
            g = torch.Generator().manual_seed(i)
            for p in m.parameters():
                p.add_(0.3 * torch.randn(p.shape, generator=g))
    return model, small, original, tok


def test_offset_logits_are_large_plus_alpha_times_the_small_difference(tiny):
    large, small, original, tok = _three(tiny)
    batch = tok(PROMPTS, return_tensors="pt", padding=True)
    with torch.no_grad():
        got = OffsetModel(large, small, original, 0.7)(**batch).logits
        want = large(**batch).logits + 0.7 * (small(**batch).logits - original(**batch).logits)
    assert torch.allclose(got, want, atol=1e-6)


def test_offset_generation_is_greedy_on_the_composed_logits(tiny):
    large, small, original, tok = _three(tiny)
    # α → 0: the composition is the large model, and so is its generation (HF generate's, left-padded)
    assert greedy(OffsetModel(large, small, original, 1e-12), tok, PROMPTS, 8, 3) == greedy(large, tok, PROMPTS, 8, 3)
    composed = OffsetModel(large, small, original, 2.0)
    tok.padding_side = "left"
    enc = tok(PROMPTS, return_tensors="pt", padding=True)
    out = composed.generate(**enc, max_new_tokens=8, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
    width = enc["input_ids"].shape[1]
    for row in range(len(PROMPTS)):  # each new token is the argmax of the composed logits of the text before it
        start = int((enc["attention_mask"][row] == 0).sum())  # left padding
        for k in range(width, out.shape[1]):
            if out[row, k - 1] == tok.eos_token_id and k > width:
                break
            prefix = out[row, start:k][None]
            with torch.no_grad():
                logits = composed(input_ids=prefix, attention_mask=torch.ones_like(prefix)).logits[0, -1]
            assert int(out[row, k]) == int(logits.argmax()), (row, k)
    assert greedy(composed, tok, PROMPTS, 8, 3) != greedy(large, tok, PROMPTS, 8, 3)  # the offset changes text


def test_an_offset_run_unlearns_the_small_model_and_evaluates_the_composition(tmp_path):
    from harness.config import from_dict
    from harness.errors import ConfigError
    from harness.plugins import get_registry
    from harness.run import prepare, runner
    from harness.run.spec import RunSpec
    from leaderboard import aggregate

    data = {"task": "tofu-mini", "model": "tiny-llama", "attribution": "dense", "objective": "graddiff",
            "offset": {"enabled": True, "small_model": "tiny-llama", "alpha": 1.0, "prepare": {"epochs": 2}},
            "task_config": {"utility_limit": 4, "eval_limit": 8, "max_new_tokens": 4, "retain_authors": 1},
            "train": {"epochs": 1, "batch_size": 8, "lr": 1e-2}, "prepare": {"epochs": 1}}
    spec = from_dict(RunSpec, data, "test")
    record = runner.execute(spec, tmp_path)
    # the small model is the same alias fine-tuned with its own settings (2 epochs, the target 1)
    assert record.status == "finished" and record.models["offset_small"] != record.models["target"]
    # the composition starts as the target (S_u = S_o); unlearning the small model lowered its forget probability
    task = get_registry().build("task", "tofu-mini", data["task_config"])
    target_eval = prepare.reference_eval(task, record.models["target"], task.eval_batch_size)
    assert record.metrics["forget_prob"]["value"] < target_eval["metrics"]["forget_prob"]["value"]
    assert aggregate.method_rows([record.to_json()])[0]["objective"] == "graddiff [offset via tiny-llama]"
    with pytest.raises(ConfigError, match="offset unlearning evaluates a composition"):
        from_dict(RunSpec, dict(data, probes=["mia"]), "test")


def test_the_offset_alias_is_a_small_model_with_smollm2s_tokenizer():
    from transformers import AutoTokenizer

    from harness.run import models

    small, tok = models.load("smollm2-offset")
    assert 3.0e6 < sum(p.numel() for p in small.parameters()) < 3.5e6
    assert tok.get_vocab() == AutoTokenizer.from_pretrained(models.resolve("smollm2-135m")).get_vocab()


def _composer(large, original, alpha: float):
    from harness.learn import offset
    from harness.run.features import OffsetConfig

    composer = offset.Composer.__new__(offset.Composer)  # the run loads both from paths; here: in memory
    composer.cfg, composer.large, composer.original = OffsetConfig(enabled=True, alpha=alpha), large, original
    for m in (large, original):
        m.eval().requires_grad_(False)
    return composer


def _batch(tok):
    from harness.api import Example
    from harness.learn.settings import TrainConfig
    from harness.learn.train import unlearn_batches

    forget = [Example("Question: Who wrote the saga?\nAnswer:", " Basil Mahfouz"), Example("Q: Hi\nA:", " hello")]
    retain = [Example("Question: Capital of France?\nAnswer:", " Paris"), Example("Q: 2+2\nA:", " four")]
    return unlearn_batches(tok, forget, retain, TrainConfig(batch_size=2, epochs=1), 64, 0)[0]


class _HandComposition(torch.nn.Module):
    """L + α(S_u − S_o) written out again, independently of OffsetModel."""

    def __init__(self, large, small, original, alpha):
        super().__init__()
        self.large, self.small, self.original, self.alpha = large, small, original, alpha

    def forward(self, input_ids, attention_mask=None, **_):
        from types import SimpleNamespace

        args = {"input_ids": input_ids, "attention_mask": attention_mask}
        with torch.no_grad():
            constant = self.large(**args).logits - self.alpha * self.original(**args).logits
        return SimpleNamespace(logits=constant + self.alpha * self.small(**args).logits)


def test_offset_unlearning_trains_the_small_model_through_the_composition(tiny):
    """GradDiff's gradient on the small model is the gradient of the loss of the composed logits (autograd
    through a hand-written composition), not the one of the small model trained alone; NPO's reference is the
    black box, so at S_u = S_o its forget term is exactly (2/β)·log 2."""
    import math

    from harness.plugins import get_registry
    from harness.run.runner import unlearning_loss

    large, small, original, tok = _three(tiny)
    batch, alpha = _batch(tok), 0.7
    graddiff = get_registry().build("objective", "graddiff", {})

    def grads(loss_of) -> dict[str, torch.Tensor]:
        small.zero_grad(set_to_none=True)
        loss_of().backward()
        return {n: p.grad.clone() for n, p in small.named_parameters()}

    ours = grads(lambda: unlearning_loss(graddiff, small, _composer(large, original, alpha))(small, batch).loss)
    hand = grads(lambda: graddiff.loss(_HandComposition(large, small, original, alpha), batch).loss)
    alone = grads(lambda: graddiff.loss(small, batch).loss)
    for n in ours:
        assert torch.allclose(ours[n], hand[n], rtol=1e-4, atol=1e-6), n
    assert not all(torch.allclose(ours[n], alone[n], rtol=1e-2) for n in ours)

    npo = get_registry().build("objective", "npo", {"beta": 0.1, "retain_weight": 0.0})
    start = copy.deepcopy(original).requires_grad_(True)  # S_u = S_o: the composition is the black box
    out = unlearning_loss(npo, start, _composer(large, original, alpha))(start, batch)
    assert out.parts["forget_npo"] == pytest.approx(2 / 0.1 * math.log(2), rel=1e-5)
