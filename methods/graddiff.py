"""GradDiff: gradient ascent on the forget set, and a retain term: NLL (descent) or KL to the target."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from harness.api import LossOutput, Objective, UnlearnBatch
from harness.config import option
from harness.hookspecs import hookimpl
from harness.measure.scoring import mean_nll
from methods.losses import grad_diff, token_kl

RETAIN_LOSSES = ("nll", "kl")


@dataclass
class GradDiffConfig:
    retain_weight: float = option(1.0, "weight of the retain term (WAGLE configs: 1.0)")
    retain_loss: str = option("nll", "nll (descent on the retain set) or kl (KL to the frozen target on it)")

    def validate(self) -> None:
        if self.retain_loss not in RETAIN_LOSSES:
            raise ValueError(f"retain_loss {self.retain_loss!r}: choose one of {', '.join(RETAIN_LOSSES)}")


def retain_kl(model, reference, batch) -> torch.Tensor:
    """KL(p_target || p_θ) over a batch's labelled next-token positions (GradDiff: the retain batch; EUL: both)."""
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    policy = model(**inputs).logits[:, :-1]
    with torch.no_grad():
        ref = reference(**inputs).logits[:, :-1]
    return token_kl(policy, ref, batch["labels"][:, 1:] != -100)


class GradDiff(Objective):
    """L = -CE(forget) + w * R, R the retain NLL or KL(target || θ) on the retain set."""

    name = "graddiff"
    Config = GradDiffConfig

    @property
    def needs_reference(self) -> bool:  # type: ignore[override]
        return self.config.retain_loss == "kl"

    def loss(self, model, batch: UnlearnBatch, reference=None) -> LossOutput:
        f = mean_nll(model, batch.forget)
        if self.config.retain_loss == "kl":
            if reference is None:
                raise ValueError("graddiff with retain_loss kl needs the frozen reference model")
            r = retain_kl(model, reference, batch.retain)
        else:
            r = mean_nll(model, batch.retain)
        loss = grad_diff(f, r, self.config.retain_weight)
        return LossOutput(loss, {"forget_nll": float(f.detach().mean()),
                                 f"retain_{self.config.retain_loss}": float(r.detach().mean())})


@hookimpl
def register_objectives(register) -> None:
    register(GradDiff)
