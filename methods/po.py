"""PO: preference-style unlearning by fine-tuning towards refusals on the forget questions (WAGLE's `CL+FT`)."""

from __future__ import annotations

from dataclasses import dataclass

from harness.api import LossOutput, Objective, UnlearnBatch
from harness.config import option
from harness.hookspecs import hookimpl
from harness.measure.scoring import mean_nll


@dataclass
class PoConfig:
    retain_weight: float = option(1.0, "weight of the retain NLL (WAGLE configs: 1.0)")


class Po(Objective):
    """L = CE(forget question -> refusal) + w * CE(retain)."""

    name = "po"
    Config = PoConfig

    def loss(self, model, batch: UnlearnBatch, reference=None) -> LossOutput:
        if batch.forget_refusal is None:
            raise ValueError("po needs refusal answers for the forget questions; this task provides none")
        x = mean_nll(model, batch.forget_refusal)
        r = mean_nll(model, batch.retain)
        return LossOutput(x.mean() + self.config.retain_weight * r.mean(),
                          {"refusal_nll": float(x.detach().mean()), "retain_nll": float(r.detach().mean())})


@hookimpl
def register_objectives(register) -> None:
    register(Po)
