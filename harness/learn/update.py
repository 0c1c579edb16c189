"""Which weights unlearning moves, in one place: the update plan.

A plan is built from what the attribution decided (a ready mask, scores ranked to the run's ratio, or a LoRA
config) and lives through the run:

1. `wrap(model, objective)`: LoRA adapters are added (a LoRA plan), and the mask is restricted to the
   parameters the objective may update (RMU's modules), over the names of the model that trains;
2. `attach(model)`, inside the training loop: fully masked-out parameters are frozen, partly masked ones
   keep their update masks (cut as FSDP shards their parameters), and the network that trains is the model,
   its DDP wrapper or its FSDP shards; the optimizer sees exactly the selected entries;
3. `merge(model)`: adapters are merged back, so evaluation sees a plain model.
"""

from __future__ import annotations

import re
from typing import Any

import peft
import torch

from harness import api, distributed
from harness.api import AttributionResult
from harness.learn import adapters, fsdp, masks
from harness.learn.masks import Mask
from harness.learn.optim import HALF, MaskedOptimizer
from harness.learn.settings import TrainConfig


def base_name(name: str) -> str:
    """The base model's parameter name for a (possibly LoRA-wrapped) parameter: a LoRA adapter counts as
    the weight it adapts."""
    name = name.removeprefix("base_model.model.")
    return re.sub(r"\.lora_[AB]\.[^.]+\.weight$", ".weight", name)


def restrict(mask: Mask | None, objective: Any, model: torch.nn.Module) -> Mask | None:
    """The mask intersected with the parameters the objective may update (e.g. RMU's chosen modules)."""
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    allowed = {n: objective.updates(base_name(n)) for n in params}
    if all(allowed.values()):
        return mask
    if not any(allowed.values()):
        raise ValueError(f"objective {objective.name!r} allows no parameter of this model to be updated")
    base = mask or {n: torch.ones_like(p, dtype=torch.bool) for n, p in params.items()}
    return {n: base[n] if allowed[n] else torch.zeros_like(base[n]) for n in params}


class UpdatePlan:
    """The weights a run updates: `mask` (None: every weight) over the trained model's parameters, LoRA
    adapters (`lora`, a peft LoraConfig dict) trained in place of the weights, or EUL's unlearning layers
    (`adapters`, {"reduction": r}: harness/learn/adapters.py), which stay in the model."""

    def __init__(self, mask: Mask | None = None, lora: dict[str, Any] | None = None,
                 adapters: dict[str, Any] | None = None) -> None:
        self.mask, self.lora, self.adapters = mask, lora, adapters
        self.touched: set[str] = set()  # after `wrap`: base-model parameters unlearning may change

    @classmethod
    def from_result(cls, result: AttributionResult, ratio: float, model: torch.nn.Module) -> UpdatePlan:
        """The attribution's ready mask, or the top `ratio` fraction of its scores, checked against the model;
        its LoRA config; neither: update everything."""
        mask = result.mask
        if mask is None and result.scores is not None:
            mask = masks.top_fraction(result.scores, ratio)
        if mask is not None:
            masks.check_covers(mask, model)
        return cls(mask, result.lora, result.adapters)

    def wrap(self, model: torch.nn.Module, objective: Any | None = None) -> torch.nn.Module:
        """The model that trains: with LoRA adapters added for a LoRA plan; the mask restricted to what the
        objective may update."""
        if self.lora is not None:
            model = peft.get_peft_model(model, peft.LoraConfig(task_type="CAUSAL_LM", **self.lora))
        if self.adapters is not None:
            adapters.insert(model, int(self.adapters["reduction"]))
        if objective is not None:
            self.mask = restrict(self.mask, objective, model)
        self.touched = {base_name(n) for n, p in model.named_parameters()
                        if p.requires_grad and (self.mask is None or bool(self.mask[n].any()))}
        return model

    def merge(self, model: torch.nn.Module) -> torch.nn.Module:
        """The model for evaluation: LoRA adapters merged into their weights; unlearning layers stay."""
        return model.merge_and_unload() if self.lora is not None else model

    def trained_fraction(self) -> float:
        return 1.0 if self.mask is None else masks.density(self.mask)

    def attach(self, model: torch.nn.Module, freeze: bool = True) -> Attached:
        """The plan applied for a training run; `freeze` false: fully masked-out parameters keep computing
        gradients (for clipping the full gradient, `clip_scope: full`), with an all-false update mask."""
        return Attached(model, self.mask, freeze)


class Attached:
    """A plan applied to one model for the duration of a training run. Parameters with no masked-in weight
    leave the optimizer; partly masked ones keep optimizer state for their selected entries only, are clipped
    on those entries' gradients and updated only there (harness/learn/optim.py), so masked-out weights stay
    bit-identical, weight decay included. `params` are the trained parameters by name (FSDP: this process's
    shards), `net` the network the loop runs (the model, its DDP wrapper or its sharded copy, whose weights
    come back to the model in `finish`)."""

    def __init__(self, model: torch.nn.Module, mask: Mask | None, freeze: bool = True) -> None:
        self.model = model
        self.device = next(model.parameters()).device
        self.params = {n: p for n, p in model.named_parameters() if p.requires_grad}
        self.partial: dict[str, torch.Tensor] = {}  # name -> update mask
        self.frozen: list[torch.nn.Parameter] = []
        for name, p in self.params.items():
            m = None if mask is None else mask[name].to(p.device)
            if m is None or bool(m.all()):
                continue
            if not bool(m.any()) and freeze:
                p.requires_grad_(False)
                self.frozen.append(p)
            else:
                self.partial[name] = m
        self.sharded = fsdp.enabled()
        if self.sharded:
            self.net = fsdp.shard(model)  # which parameters are frozen was decided on whole masks: same everywhere
            sharded = dict(self.net.named_parameters())
            self.params = {n: sharded[n] for n in self.params}
            self.partial = {n: fsdp.cut_as(m, self.params[n]) for n, m in self.partial.items()}
            model.to("cpu")  # the whole model waits in host memory while its shards train
        else:
            self.net = distributed.wrap(model)  # DistributedDataParallel under a launch: shares the parameters

    def trainable(self) -> list[torch.nn.Parameter]:
        return [p for p in self.params.values() if p.requires_grad]

    def optimizer(self, cfg: TrainConfig, rule: api.Optimizer | None = None) -> MaskedOptimizer:
        """`rule` (default AdamW) over the selected entries only; no weight decay on vectors (norms, biases)."""
        decay = [p for p in self.trainable() if p.ndim >= 2]
        no_decay = [p for p in self.trainable() if p.ndim < 2]
        return MaskedOptimizer(
            [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            {id(self.params[n]): m for n, m in self.partial.items()}, lr=cfg.lr, rule=rule,
            eps=cfg.adam_eps, max_grad_norm=cfg.max_grad_norm, sharded=self.sharded, clip_scope=cfg.clip_scope,
            master_weights=cfg.master_weights)

    def mixed_precision(self, cfg: TrainConfig) -> bool:
        """Whether this run keeps fp32 master weights: asked for, and some trained parameter is 16-bit."""
        return cfg.master_weights and any(p.dtype in HALF for p in self.trainable())

    def whole(self) -> torch.nn.Module:
        """The whole model with the current weights, on its device, in eval mode (for a check between steps)."""
        self.net.eval()
        if self.sharded:
            fsdp.gather_into(self.net, self.model)
            self.model.to(self.device)
        return self.model.eval()

    def resume(self) -> None:
        """Back to training after `whole`."""
        if self.sharded:
            self.model.to("cpu")
        self.net.train()

    def finish(self) -> None:
        """The trained weights into the model (FSDP: gathered from the shards)."""
        if self.sharded:
            fsdp.gather_into(self.net, self.model)

    def close(self) -> None:
        """The model back on its device with every parameter trainable again (also after a failure)."""
        self.model.to(self.device)
        for p in self.frozen:
            p.requires_grad_(True)
