"""WAGLE weight attribution (Jia et al., NeurIPS 2024): S = |(θ - s·G_r/γ) ⊙ s·G_f|.

G_f and G_r are the summed gradients of the plain next-token loss over the forget and the retain samples; s
(`gradient_scale`, default 1) is 1/4 in the reference code (`src/unlearn/generate_mask.py`), whose
`accelerator.backward` divides each loss by its 4 accumulation steps: the paper configurations set it.
The harness keeps the top `ratio` fraction of |S| over all parameters as the weights unlearning updates.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from harness.api import Attribution, AttributionData, AttributionResult
from harness.config import option
from harness.hookspecs import hookimpl
from harness.learn.attribution import summed_gradients


@dataclass
class WagleConfig:
    gamma: float = option(1e-6, "γ, the Hessian diagonal estimate H ≈ γI of the retain loss (reference: 1e-6)")
    gradient_scale: float = option(1.0, "factor s on both gradient sums: S = |(θ - s·G_r/γ) ⊙ s·G_f|. The "
                                        "reference code sums losses divided by its 4 accumulation steps "
                                        "(accelerator.backward): s = 0.25 reproduces it, its γ then acting as "
                                        "4γ on plain sums")
    forget_target: str = option("answer", "forget loss on the true answers, or on refusals (the variant for PO)")

    def validate(self) -> None:
        if self.gamma <= 0 or self.gradient_scale <= 0:
            raise ValueError(f"gamma and gradient_scale must be > 0, got {self.gamma}, {self.gradient_scale}")
        if self.forget_target not in ("answer", "refusal"):
            raise ValueError(f"forget_target {self.forget_target!r}: choose answer or refusal")


class Wagle(Attribution):
    """Scores |(θ - ∇ℓ_r/γ) ⊙ ∇ℓ_f|: forget sensitivity corrected for retain utility."""

    name = "wagle"
    Config = WagleConfig

    def scores(self, data: AttributionData) -> AttributionResult:
        forget = data.forget_refusal if self.config.forget_target == "refusal" else data.forget
        if not forget:
            raise ValueError(f"wagle: no forget batches for forget_target {self.config.forget_target!r}")
        g_f = summed_gradients(data.model, forget, data.grad_buffers)
        g_r = summed_gradients(data.model, data.retain, data.grad_buffers)
        scores: dict[str, torch.Tensor] = {}
        snip_sq = retain_sq = 0.0
        with torch.no_grad():
            for name, p in data.model.named_parameters():
                if name not in g_f:
                    continue
                theta = p.detach().to(g_f[name].device, torch.float32)
                forget = g_f[name].mul_(self.config.gradient_scale)
                snip = theta * forget
                retain = g_r.pop(name).mul_(self.config.gradient_scale / self.config.gamma).mul_(forget)
                snip_sq += float(snip.pow(2).sum())
                retain_sq += float(retain.pow(2).sum())
                scores[name] = snip.sub_(retain).abs_()
                del g_f[name]
        return AttributionResult(scores, {"snip_term_norm": snip_sq ** 0.5, "retain_term_norm": retain_sq ** 0.5})


@hookimpl
def register_attributions(register) -> None:
    register(Wagle)
