"""NPO (Zhang et al. 2024) with a retain NLL term, against a frozen copy of the target model."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from harness.api import LossOutput, Objective, UnlearnBatch
from harness.config import option
from harness.hookspecs import hookimpl
from harness.measure.scoring import mean_nll, sum_nll
from methods.losses import npo

REDUCTIONS = {"token_mean": mean_nll, "sequence_sum": sum_nll}


@dataclass
class NpoConfig:
    beta: float = option(0.1, "inverse temperature β (reference: 0.1)")
    retain_weight: float = option(1.0, "weight of the retain NLL")
    reduction: str = option("token_mean", "per-sample NLL: token_mean (WAGLE's code) or sequence_sum (NPO paper)")

    def validate(self) -> None:
        if self.beta <= 0:
            raise ValueError(f"beta must be > 0, got {self.beta}")
        if self.reduction not in REDUCTIONS:
            raise ValueError(f"reduction {self.reduction!r}: choose one of {', '.join(REDUCTIONS)}")


class Npo(Objective):
    """L = -(2/β) log σ(β (NLL_θ(f) - NLL_ref(f))) + w * CE(retain)."""

    name = "npo"
    Config = NpoConfig
    needs_reference = True

    def loss(self, model, batch: UnlearnBatch, reference=None) -> LossOutput:
        if reference is None:
            raise ValueError("npo needs the frozen reference model")
        nll = REDUCTIONS[self.config.reduction]
        policy = nll(model, batch.forget)
        with torch.no_grad():
            ref = nll(reference, batch.forget)
        retain = mean_nll(model, batch.retain)
        forget_term = npo(policy, ref, self.config.beta)
        loss = forget_term + self.config.retain_weight * retain.mean()
        return LossOutput(loss, {"forget_npo": float(forget_term.detach()), "forget_nll": float(policy.detach().mean()),
                                 "retain_nll": float(retain.detach().mean())})


@hookimpl
def register_objectives(register) -> None:
    register(Npo)
