"""An example unlearn-bench plugin: one attribution (`late-layers`) and one objective (`capped-ascent`)."""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch

from harness import (
    Attribution,
    AttributionData,
    AttributionResult,
    LossOutput,
    Objective,
    UnlearnBatch,
    hookimpl,
    mean_nll,
    option,
)

LAYER = re.compile(r"layers\.(\d+)\.")


@dataclass
class LateLayersConfig:
    head_last: bool = option(True, "rank the output head and final norm after every decoder layer")


class LateLayers(Attribution):
    """Prefers deeper weights: the score is the decoder layer index (embeddings lowest)."""

    name = "late-layers"
    Config = LateLayersConfig
    needs_data = False  # a rule of the architecture alone: no data pass, nothing to cache

    def scores(self, data: AttributionData) -> AttributionResult:
        depth = data.model.config.num_hidden_layers
        out = {}
        for name, p in data.model.named_parameters():
            if not p.requires_grad:
                continue
            match = LAYER.search(name)
            if match:
                level = int(match.group(1)) + 1
            elif "embed" in name:
                level = 0
            else:
                level = depth + 1 if self.config.head_last else 0
            out[name] = torch.full(p.shape, float(level))
        return AttributionResult(scores=out)


@dataclass
class CappedAscentConfig:
    cap: float = option(5.0, "forget NLL above which ascent stops")
    retain_weight: float = option(1.0, "weight of the retain NLL")


class CappedAscent(Objective):
    """L = -min(CE(forget), cap) + w * CE(retain), per sample."""

    name = "capped-ascent"
    Config = CappedAscentConfig

    def loss(self, model, batch: UnlearnBatch, reference=None) -> LossOutput:
        f = mean_nll(model, batch.forget)
        r = mean_nll(model, batch.retain)
        loss = -torch.clamp(f, max=self.config.cap).mean() + self.config.retain_weight * r.mean()
        return LossOutput(loss, {"forget_nll": float(f.detach().mean()), "retain_nll": float(r.detach().mean())})


@hookimpl
def register_attributions(register) -> None:
    register(LateLayers)


@hookimpl
def register_objectives(register) -> None:
    register(CappedAscent)
