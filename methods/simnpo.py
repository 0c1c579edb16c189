"""SimNPO (Fan et al. 2024): NPO without a reference model, on the length-normalised forget NLL."""

from __future__ import annotations

from dataclasses import dataclass

from harness.api import LossOutput, Objective, UnlearnBatch
from harness.config import option
from harness.hookspecs import hookimpl
from harness.measure.scoring import mean_nll
from methods.losses import simnpo


@dataclass
class SimNpoConfig:
    """Defaults: Unlearn-Simple's TOFU/config/forget.yaml (forget05); its README gives forget10 β 4.5 and a
    forget weight 0.125 (experiments/tofu-forget10-llama2-simnpo.yaml)."""

    beta: float = option(2.5, "inverse temperature β")
    delta: float = option(0.0, "reward margin δ subtracted from the forget avgNLL (the reference's gamma)")
    forget_weight: float = option(0.1375, "weight c_f of the forget term (the reference's npo_coeff)")
    retain_weight: float = option(1.0, "weight of the retain NLL (the reference's grad_diff_coeff)")

    def validate(self) -> None:
        if self.beta <= 0:
            raise ValueError(f"beta must be > 0, got {self.beta}")


class SimNpo(Objective):
    """L = c_f · -(2/β) log σ(β (avgNLL_θ(f) - δ)) + w · CE(retain)."""

    name = "simnpo"
    Config = SimNpoConfig

    def loss(self, model, batch: UnlearnBatch, reference=None) -> LossOutput:
        f = mean_nll(model, batch.forget)
        r = mean_nll(model, batch.retain)
        forget_term = simnpo(f, self.config.beta, self.config.delta)
        return LossOutput(self.config.forget_weight * forget_term + self.config.retain_weight * r.mean(),
                          {"forget_simnpo": float(forget_term.detach()), "forget_nll": float(f.detach().mean()),
                           "retain_nll": float(r.detach().mean())})


@hookimpl
def register_objectives(register) -> None:
    register(SimNpo)
