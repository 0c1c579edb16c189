"""Shared mechanics for attribution plugins: summed loss gradients over a set of batches."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from harness import distributed
from harness.api import Batch
from harness.learn.data import to_device
from harness.measure.scoring import exact_mean_nll


def summed_gradients(model: torch.nn.Module, batches: Sequence[Batch],
                     buffer_device: torch.device | str | None = None, per: str = "sample") -> dict[str, torch.Tensor]:
    """G = Σ_samples ∇ CE(sample), CE the token-mean next-token loss of one sample (computed without float32's
    cancellation: harness.measure.scoring.exact_mean_nll), summed in fp32; with
    `per="batch"`, G = Σ_batches ∇ mean_{samples of the batch} CE (SalUn's `generate_mask.py`, which
    accumulates each batch's mean loss gradient).

    With per="sample" batching does not change G: each sample's mean is taken before summing. Under a
    multi-process launch each process sums every world-th batch and the sums are added across processes.
    `buffer_device` keeps G elsewhere than the model (the CPU, for a 7B model on one GPU); default: with
    each parameter.
    """
    if per not in ("sample", "batch"):
        raise ValueError(f"per {per!r}: choose sample or batch")
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    grads = {n: torch.zeros(p.shape, dtype=torch.float32, device=buffer_device or p.device)
             for n, p in params.items()}
    was_training = model.training
    model.eval()  # no dropout, as in the reference
    try:
        for batch in distributed.shard(batches):
            model.zero_grad(set_to_none=True)
            batch = to_device(batch, model.device)
            losses = exact_mean_nll(model, batch)
            (losses.sum() if per == "sample" else losses.mean()).backward()
            for n, p in params.items():
                if p.grad is not None:
                    grads[n] += p.grad.to(grads[n].device, torch.float32)
    finally:
        model.zero_grad(set_to_none=True)
        model.train(was_training)
    distributed.sum_(grads)
    return grads
