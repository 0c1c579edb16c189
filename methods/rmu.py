"""RMU (Li et al. 2024, the WMDP paper): steer the forget activations at one layer towards a fixed random
direction, keep the retain activations where the frozen model has them, and update only chosen modules.

Defaults follow the WMDP recipe for Zephyr-7B: layer 7, updating layers 5-7's mlp.down_proj, steering
coefficient 6.5, retain weight 1200 (with lr 5e-5 in the train config). Under `train.order: topics` each
topic (WMDP: each forget corpus) is steered to a direction of its own, as in RMU's code; the coefficient and
retain weight are shared (the code takes one per topic; the Zephyr recipe gives both topics the same).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import torch

from harness.api import Batch, LossOutput, Objective, UnlearnBatch
from harness.config import option
from harness.hookspecs import hookimpl


@dataclass
class RmuConfig:
    layer: int = option(7, "decoder layer whose output activations are steered")
    steering_coeff: float = option(6.5, "norm c of the control vector c·u (WMDP: 20 by default, 6.5 for Zephyr)")
    retain_weight: float = option(1200.0, "α, weight of the retain activation MSE (WMDP Zephyr recipe: 1200)")
    update: list[str] = option([r"model\.layers\.(5|6|7)\.mlp\.down_proj\.weight"],
                               "regexes of the parameter names RMU may update (intersected with the mask)")
    seed: int = option(0, "seed of the random directions u (one per topic under train.order: topics)")

    def validate(self) -> None:
        if self.layer < 0:
            raise ValueError(f"layer must be >= 0, got {self.layer}")
        for pattern in self.update:
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ValueError(f"update regex {pattern!r}: {exc}") from None


def activations(model, batch: Batch, layer: int) -> torch.Tensor:
    """Output of decoder layer `layer`, read by a forward hook on it as WMDP's `rmu/unlearn.py` reads it (not
    `hidden_states[layer + 1]`, which for the last layer is after the model's final norm)."""
    layers = model.get_decoder().layers
    if layer >= len(layers):
        raise ValueError(f"rmu layer {layer}: the model has {len(layers)} decoder layers")
    kept: list[torch.Tensor] = []

    def keep(_module, _inputs, output) -> None:
        kept.append(output[0] if isinstance(output, tuple) else output)

    hook = layers[layer].register_forward_hook(keep)
    try:
        model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    finally:
        hook.remove()
    return kept[0]


def masked_mse(a: torch.Tensor, b: torch.Tensor, attention: torch.Tensor) -> torch.Tensor:
    """Mean over non-padding tokens of the per-token mean squared error."""
    per_token = (a.float() - b.float()).pow(2).mean(-1)
    return (per_token * attention).sum() / attention.sum().clamp_min(1)


class Rmu(Objective):
    """L = MSE(h_θ(forget), c·u_t) + α·MSE(h_θ(retain), h_frozen(retain)) at one layer; u_t is the batch's topic's."""

    name = "rmu"
    Config = RmuConfig
    needs_reference = True

    @classmethod
    def rehearsal_config(cls, config: dict[str, Any], layers: int) -> dict[str, Any]:
        """The steered layer moved to the stand-in's last, the updated MLPs to it and the two before it, as
        the Zephyr recipe updates layers 5-7 and steers 7."""
        last = min(config.get("layer", RmuConfig().layer), layers - 1)
        below = "|".join(str(k) for k in range(max(0, last - 2), last + 1))
        return {"layer": last, "update": [rf"model\.layers\.({below})\.mlp\.down_proj\.weight"]}

    def __init__(self, config: RmuConfig) -> None:
        super().__init__(config)
        self._patterns = [re.compile(p) for p in config.update]
        self._controls: list[torch.Tensor] = []

    def updates(self, parameter_name: str) -> bool:
        return any(p.fullmatch(parameter_name) for p in self._patterns)

    def control(self, hidden_size: int, device: torch.device, topic: int = 0) -> torch.Tensor:
        """c·u/‖u‖ for the topic: u ~ U[0, 1)^hidden, the topic-th draw of a generator seeded with `seed` (RMU's
        code draws one vector per forget corpus in order, `rmu/unlearn.py`)."""
        if len(self._controls) <= topic:
            g = torch.Generator().manual_seed(self.config.seed)
            self._controls = [torch.rand(hidden_size, generator=g) for _ in range(topic + 1)]
            self._controls = [self.config.steering_coeff * u / u.norm() for u in self._controls]
        return self._controls[topic].to(device)

    def loss(self, model, batch: UnlearnBatch, reference=None) -> LossOutput:
        if reference is None:
            raise ValueError("rmu needs the frozen reference model")
        layer = self.config.layer
        h_f = activations(model, batch.forget, layer)
        target = self.control(h_f.shape[-1], h_f.device, batch.topic).expand_as(h_f)
        forget = masked_mse(h_f, target, batch.forget["attention_mask"])
        h_r = activations(model, batch.retain, layer)
        with torch.no_grad():
            h_ref = activations(reference, batch.retain, layer)
        retain = masked_mse(h_r, h_ref, batch.retain["attention_mask"])
        return LossOutput(forget + self.config.retain_weight * retain,
                          {"forget_mse": float(forget.detach()), "retain_mse": float(retain.detach())})


@hookimpl
def register_objectives(register) -> None:
    register(Rmu)
