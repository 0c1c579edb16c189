"""SOUL (Jia et al. 2024, "SOUL: Unlocking the Power of Second-Order Optimization for LLM Unlearning", arXiv
2404.18239): unlearning with Sophia, a clipped diagonal-Hessian preconditioned update, in place of AdamW.

Per selected weight, each step, with g its (clipped) gradient, as SOUL's `src/optim/sophia.py` (SophiaG) does:
    h ← β2·h + (1 − β2)·g²                         (update_hessian: the Hessian diagonal estimate, every step)
    m ← β1·m + (1 − β1)·g                          (update_exp_avg, and once more in _single_tensor_sophiag:
    m ← β1·m + (1 − β1)·g                           the reference averages g into m twice per step)
    θ ← θ − lr · sign(m) · min(|m| / (ρ·bs·h + 1e-15), 1)
after the decoupled weight decay θ ← θ·(1 − lr·wd) the harness applies. bs is SophiaG.step's default 5120
(SOUL's trainer calls `step()` without it). `double_average: false` averages once (the Sophia paper). The
harness's masks apply as for AdamW: m and h exist for the selected entries only and masked-out weights are
never written. Defaults: SOUL's TOFU configs (`configs/TOFU/SO_*.json`: betas 0.9/0.95, ρ 0.04).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from harness.api import Optimizer
from harness.config import option
from harness.hookspecs import hookimpl


@dataclass
class SoulConfig:
    betas: list[float] = option([0.9, 0.95], "β1 (gradient average), β2 (Hessian estimate average); SOUL's "
                                             "TOFU configs: 0.9, 0.95")
    rho: float = option(0.04, "ρ, the clipping scale of the preconditioned step (SOUL's TOFU configs: 0.04)")
    batch_scale: float = option(5120.0, "bs in ρ·bs·h (SophiaG.step's default, which SOUL's trainer keeps)")
    double_average: bool = option(True, "average g into m twice per step, as SOUL's sophia.py does; false: once")

    def validate(self) -> None:
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise ValueError(f"betas must be two numbers in [0, 1), got {self.betas}")
        if self.rho <= 0 or self.batch_scale <= 0:
            raise ValueError(f"rho and batch_scale must be > 0, got {self.rho}, {self.batch_scale}")


class Soul(Optimizer):
    """SOUL's Sophia: sign(m)·min(|m| / (ρ·bs·h), 1) steps, h an EMA of g² (second-order unlearning)."""

    name = "soul"
    Config = SoulConfig

    def init_state(self, grad: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"exp_avg": torch.zeros_like(grad), "hessian": torch.zeros_like(grad)}

    def update(self, data: torch.Tensor, grad: torch.Tensor, state: dict[str, torch.Tensor], step: int,
               group: dict[str, Any]) -> None:
        beta1, beta2 = self.config.betas
        m, h = state["exp_avg"], state["hessian"]
        h.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        for _ in range(2 if self.config.double_average else 1):
            m.mul_(beta1).add_(grad, alpha=1 - beta1)
        ratio = (m.abs() / (self.config.rho * self.config.batch_scale * h + 1e-15)).clamp(None, 1)
        data.addcmul_(m.sign(), ratio, value=-group["lr"])


@hookimpl
def register_optimizers(register) -> None:
    register(Soul)
