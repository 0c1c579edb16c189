"""The masked optimizer: any update rule (AdamW by default; an `optimizer` plugin, e.g. SOUL's Sophia) with
state only for the weights a mask lets unlearning update.

For a partly masked parameter the moments are vectors over its selected entries (k values, not N), and the
update touches only those entries, so masked-out weights stay bit-identical without a saved copy and the
optimizer's memory is about ratio × that of dense AdamW, plus the boolean mask (1 byte per weight). Each step
finds a parameter's selected positions from its mask twice, once to gather its gradient (all gradients are
gathered before clipping) and once to update it: a transient index for one parameter at a time, never kept,
since at ratio 0.95 a kept int32 index would cost as much as both bf16 moments. The update gathers the
weights there, updates them and writes them back. Gradient clipping happens here too, on the gathered
gradients, so it measures exactly the gradient that unlearning applies.

Two conventions of reference code are options: `clip_scope="full"` clips by the norm of the whole gradient
before masking (WAGLE's code), and `master_weights` keeps 16-bit parameters' selected entries in fp32 and
updates those (DeepSpeed's bf16 training, which built TOFU's models), writing the rounded result back.

Under FSDP (harness/learn/fsdp.py) a parameter is a shard: the optimizer works on each process's local part of the
weights and gradients with masks cut the same way, and the clipping norm is summed over the processes.

The rule only computes: `MaskedOptimizer` gathers, clips, applies decoupled weight decay (p ← p·(1 − lr·wd),
before the rule's step, as torch's AdamW and Sophia do), keeps master copies and scatters back. The built-in
rule `adamw` is torch's single-tensor AdamW arithmetic, so an unmasked parameter is updated exactly as
`torch.optim.AdamW(foreach=False)` updates it (tests/test_train.py).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import torch

from harness import api
from harness.config import option
from harness.hookspecs import hookimpl
from harness.learn.fsdp import global_norm, local

HALF = (torch.bfloat16, torch.float16)  # dtypes whose updates master weights keep in fp32


def clip_(grads: list[torch.Tensor], max_norm: float, sharded: bool = False,
          norms: list[torch.Tensor] | None = None) -> float:
    """Scale `grads` in place so their joint L2 norm is at most `max_norm` (torch's clip_grad_norm_ formula);
    returns the norm before clipping. With `norms` (the norms of the full gradients, masked-out entries
    included), the joint norm is theirs: clip the full gradient, then mask. `sharded`: each process holds
    shards of the gradients, and the norm is taken over all of them."""
    if not grads:
        return 0.0
    total = torch.nn.utils.get_total_norm(norms if norms is not None else grads, 2.0)  # clip_grad_norm_'s norm
    if sharded:
        total = global_norm(total)
    coef = torch.clamp(max_norm / (total + 1e-6), max=1.0)
    for g in grads:
        g.mul_(coef.to(g.device))
    return float(total)


@dataclass
class AdamWConfig:
    betas: list[float] = option([0.9, 0.999], "β1, β2: decay of the gradient's first and second moment averages")

    def validate(self) -> None:
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise ValueError(f"betas must be two numbers in [0, 1), got {self.betas}")


class AdamW(api.Optimizer):
    """AdamW (decoupled weight decay), torch's single-tensor arithmetic: the default update rule."""

    name = "adamw"
    Config = AdamWConfig

    def init_state(self, grad: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"exp_avg": torch.zeros_like(grad), "exp_avg_sq": torch.zeros_like(grad)}

    def update(self, data: torch.Tensor, grad: torch.Tensor, state: dict[str, torch.Tensor], step: int,
               group: dict[str, Any]) -> None:
        beta1, beta2 = self.config.betas
        exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
        exp_avg.lerp_(grad, 1 - beta1)
        exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        step_size = group["lr"] / (1 - beta1**step)
        denom = (exp_avg_sq.sqrt() / math.sqrt(1 - beta2**step)).add_(group["eps"])
        data.addcdiv_(exp_avg, denom, value=-step_size)


class MaskedOptimizer(torch.optim.Optimizer):
    def __init__(self, params: Iterable[Any], masks: Mapping[int, torch.Tensor], lr: float,
                 rule: api.Optimizer | None = None, eps: float = 1e-8, weight_decay: float = 0.0,
                 max_grad_norm: float | None = None, sharded: bool = False, clip_scope: str = "selected",
                 master_weights: bool = False) -> None:
        """`masks` maps id(parameter) to its boolean update mask (for a sharded parameter, the mask of its
        local shard); parameters without one update fully. `rule`: the update rule (default: AdamW). With
        `max_grad_norm`, the gradients are clipped to that joint norm first: the norm of the selected entries
        (`clip_scope` "selected"), or of the full gradients, masked-out entries included ("full", WAGLE's
        code: clip, then mask); `sharded`: the parameters are FSDP shards. `master_weights`: a 16-bit
        parameter's (selected) entries are kept and updated in fp32, with fp32 gradients and state, and
        written back rounded (mixed precision, as DeepSpeed's bf16 training keeps them): small updates
        accumulate instead of being rounded away."""
        super().__init__(params, {"lr": lr, "eps": eps, "weight_decay": weight_decay})
        self.rule = rule if rule is not None else AdamW(AdamWConfig())
        self.max_grad_norm = max_grad_norm
        self.clip_scope = clip_scope
        self.master_weights = master_weights
        self.full_norms: list[torch.Tensor] = []
        self.sharded = sharded
        self.masks = {id(p): masks[id(p)].to(local(p).device).reshape(-1)
                      for group in self.param_groups for p in group["params"] if id(p) in masks}
        self.last_grad_norm: float | None = None

    def _gather_grads(self) -> dict[int, torch.Tensor]:
        """Each parameter's gradient over its selected entries; a masked parameter's full gradient is freed."""
        grads = {}
        self.full_norms = []
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                if self.clip_scope == "full":
                    self.full_norms.append(torch.linalg.vector_norm(local(p.grad), 2.0, dtype=torch.float32))
                mask = self.masks.get(id(p))
                if mask is None:
                    grads[id(p)] = local(p.grad)
                else:
                    grads[id(p)] = local(p.grad).reshape(-1).index_select(0, mask.nonzero().squeeze(1))
                    p.grad = None
                if self._mastered(p):
                    grads[id(p)] = grads[id(p)].float()
        return grads

    @torch.no_grad()
    def step(self, closure: None = None) -> None:
        grads = self._gather_grads()
        if self.max_grad_norm is not None:
            self.last_grad_norm = clip_(list(grads.values()), self.max_grad_norm, self.sharded,
                                        self.full_norms if self.clip_scope == "full" else None)
        for group in self.param_groups:
            decay = 1 - group["lr"] * group["weight_decay"]
            for p in group["params"]:
                grad = grads.get(id(p))
                if grad is None:
                    continue
                state = self.state[p]
                mask = self.masks.get(id(p))
                data = local(p)
                index = None if mask is None else mask.nonzero().squeeze(1)
                if not state:
                    state["step"] = torch.tensor(0.0)
                    state.update(self.rule.init_state(grad))
                    if self._mastered(p):
                        entries = data.detach() if index is None else data.reshape(-1).index_select(0, index)
                        state["master"] = entries.float().clone()
                state["step"] += 1
                rule_state = {k: v for k, v in state.items() if k not in ("step", "master")}
                master = state.get("master")
                if master is not None:
                    self.rule.update(master.mul_(decay), grad, rule_state, int(state["step"]), group)
                if index is None:
                    if master is None:
                        self.rule.update(data.mul_(decay), grad, rule_state, int(state["step"]), group)
                    else:
                        data.copy_(master)
                else:
                    flat = data.view(-1)
                    if master is None:
                        selected = flat.index_select(0, index).mul_(decay)
                        self.rule.update(selected, grad, rule_state, int(state["step"]), group)
                    else:
                        selected = master.to(flat.dtype)
                    flat.index_put_((index,), selected)

    def _mastered(self, p: torch.Tensor) -> bool:
        """Whether `p`'s update goes through an fp32 master copy: master weights on and `p` is 16-bit."""
        return self.master_weights and p.dtype in HALF

    def state_bytes(self) -> int:
        """Bytes held in optimizer state tensors (the two moments and the step counters)."""
        return sum(t.numel() * t.element_size() for s in self.state.values() for t in s.values()
                   if isinstance(t, torch.Tensor))

    def mask_bytes(self) -> int:
        """Bytes held by the masks of partly masked parameters (1 per weight)."""
        return sum(m.numel() for m in self.masks.values())


class MaskedAdamW(MaskedOptimizer):
    """The masked optimizer with the AdamW rule at given betas (scripts, tests and benchmarks)."""

    def __init__(self, params: Iterable[Any], masks: Mapping[int, torch.Tensor], lr: float,
                 betas: tuple[float, float] = (0.9, 0.999), **kwargs: Any) -> None:
        super().__init__(params, masks, lr, AdamW(AdamWConfig(list(betas))), **kwargs)


@hookimpl
def register_optimizers(register) -> None:
    register(AdamW)
