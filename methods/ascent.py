"""Gradient ascent (GA): raise the forget loss, with no retain term."""

from __future__ import annotations

from dataclasses import dataclass

from harness.api import LossOutput, Objective, UnlearnBatch
from harness.hookspecs import hookimpl
from harness.measure.scoring import mean_nll
from methods.losses import gradient_ascent


@dataclass
class AscentConfig:
    pass


class GradientAscent(Objective):
    """L = -CE(forget)."""

    name = "ga"
    Config = AscentConfig
    needs_retain = False

    def loss(self, model, batch: UnlearnBatch, reference=None) -> LossOutput:
        f = mean_nll(model, batch.forget)
        return LossOutput(gradient_ascent(f), {"forget_nll": float(f.detach().mean())})


@hookimpl
def register_objectives(register) -> None:
    register(GradientAscent)
