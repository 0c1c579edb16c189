"""AdamW that keeps optimizer state only for the weights a mask lets unlearning update.

For a partly masked parameter the moments are vectors over its selected entries (k values, not N), and the
update touches only those entries, so masked-out weights stay bit-identical without a saved copy and the
optimizer's memory is about ratio × that of dense AdamW. The arithmetic is torch's single-tensor AdamW
(decoupled weight decay), so an unmasked parameter is updated exactly as `torch.optim.AdamW(foreach=False)`
updates it (tests/test_train.py).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

import torch


class MaskedAdamW(torch.optim.Optimizer):
    def __init__(self, params: Iterable[Any], masks: Mapping[int, torch.Tensor], lr: float,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8, weight_decay: float = 0.0) -> None:
        """`masks` maps id(parameter) to its boolean update mask; parameters without one update fully."""
        super().__init__(params, {"lr": lr, "betas": betas, "eps": eps, "weight_decay": weight_decay})
        self.masks = dict(masks)

    @torch.no_grad()
    def step(self, closure: None = None) -> None:
        for group in self.param_groups:
            lr, eps, wd = group["lr"], group["eps"], group["weight_decay"]
            beta1, beta2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                mask = self.masks.get(id(p))
                grad = p.grad if mask is None else p.grad[mask]
                state = self.state[p]
                if not state:
                    state["step"] = torch.tensor(0.0)
                    state["exp_avg"] = torch.zeros_like(grad)
                    state["exp_avg_sq"] = torch.zeros_like(grad)
                state["step"] += 1
                t = float(state["step"])
                exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
                exp_avg.lerp_(grad, 1 - beta1)
                exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
                step_size = lr / (1 - beta1 ** t)
                denom = (exp_avg_sq.sqrt() / math.sqrt(1 - beta2 ** t)).add_(eps)
                if mask is None:
                    p.mul_(1 - lr * wd).addcdiv_(exp_avg, denom, value=-step_size)
                else:
                    selected = p[mask].mul_(1 - lr * wd).addcdiv_(exp_avg, denom, value=-step_size)
                    p.masked_scatter_(mask, selected)

    def state_bytes(self) -> int:
        """Bytes held in optimizer state tensors."""
        return sum(t.numel() * t.element_size() for s in self.state.values() for t in s.values()
                   if isinstance(t, torch.Tensor))
