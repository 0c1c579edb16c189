"""Run by tests/test_distributed.py, in one process and under `accelerate launch --use_fsdp`: train the tiny
Llama through a 30% mask with clipping and weight decay, on NLL plus the squared distance of its logits to
a frozen reference copy's (sharded too under FSDP), and save the weights before and after, the training log
and (under FSDP) the share of each partly masked parameter's mask that this process holds. Then train again
with a checkpoint every 2 steps, stopped after step 3, and resume it: the weights it ends with are saved as
"resumed"."""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import torch

from harness import distributed
from harness.api import LossOutput
from harness.learn import fsdp, masks
from harness.learn.train import TrainConfig, train
from harness.learn.update import UpdatePlan
from harness.run import models


def loss_fn(net: torch.nn.Module, batch: dict[str, torch.Tensor], reference: torch.nn.Module) -> LossOutput:
    out = net(**batch)
    with torch.no_grad():
        ref = reference(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    drift = (out.logits - ref).pow(2).mean()
    return LossOutput(out.loss + drift, {"drift": float(drift)})


class Stop(Exception):
    pass


def stop_after_3(step: int, total: int, row: dict) -> None:
    if step == 3:
        raise Stop


def main(out: Path) -> None:
    model, _ = models.load("tiny-llama")
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    mask = masks.top_fraction({n: torch.rand(p.shape, generator=torch.Generator().manual_seed(i))
                               for i, (n, p) in enumerate(model.named_parameters())}, 0.3)
    g = torch.Generator().manual_seed(1)
    batches = []
    for _ in range(4):  # four steps of four rows: two rows a process
        ids = torch.randint(0, model.config.vocab_size, (4, 12), generator=g)
        batches.append({"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids})
    share = None
    if fsdp.enabled():
        update = UpdatePlan(mask).attach(model)
        share = sum(m.numel() for m in update.partial.values()) / sum(mask[n].numel() for n in update.partial)
        update.close()
    cfg = TrainConfig(lr=1e-2, epochs=1, batch_size=4, warmup_ratio=0.0, weight_decay=0.1, max_grad_norm=0.2)
    reference = fsdp.frozen_copy(model)
    log = train(model, batches, lambda net, b: loss_fn(net, b, reference), cfg, plan=UpdatePlan(mask), seed=0)

    resumable = dataclasses.replace(cfg, checkpoint_every=2)
    resumed_steps: list[int] = []
    for attempt in range(2):
        again, _ = models.load("tiny-llama")
        try:
            train(again, batches, lambda net, b: loss_fn(net, b, reference), resumable, plan=UpdatePlan(mask), seed=0,
                  checkpoint=out / "checkpoint.pt",
                  progress=stop_after_3 if attempt == 0 else lambda step, total, row: resumed_steps.append(step))
        except Stop:
            pass
    if distributed.is_main():
        torch.save({"before": before, "after": {n: p.detach() for n, p in model.named_parameters()},
                    "resumed": {n: p.detach() for n, p in again.named_parameters()}, "mask": mask},
                   out / "weights.pt")
        (out / "log.json").write_text(json.dumps({"steps": log.steps, "share": share,
                                                  "resumed_steps": resumed_steps}))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
