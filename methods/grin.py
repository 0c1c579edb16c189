"""GRIN's gradient-ratio influence (Anjarlekar and Pombra 2025, "LLM Unlearning using Gradient Ratio-Based
Influence Estimation and Noise Injection", arXiv 2508.06467): S = |Ḡ_f| / (|Ḡ_r| + ε), weights the forget
loss is sensitive to and the retain loss is not; the top fraction is kept.

Ḡ is the mean over samples of each sample's next-token loss gradient (the summed gradient over the number of
samples), so that ε acts on one sample's gradient scale whatever the sizes of the two sets. No reference code
was published with the paper (docs/metrics.md): the score is the paper's formula. GRIN's second step, Gaussian
noise injected into the selected weights before unlearning, is not part of the mask and not included.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from harness.api import Attribution, AttributionData, AttributionResult
from harness.config import option
from harness.hookspecs import hookimpl
from harness.learn.attribution import summed_gradients


@dataclass
class GrinConfig:
    eps: float = option(1e-8, "ε in |Ḡ_f| / (|Ḡ_r| + ε), on the scale of one sample's gradient")

    def validate(self) -> None:
        if self.eps <= 0:
            raise ValueError(f"eps must be > 0, got {self.eps}")


def sample_count(batches) -> int:
    return sum(int(b["input_ids"].shape[0]) for b in batches)


class Grin(Attribution):
    """Scores |Ḡ_f| / (|Ḡ_r| + ε): the gradient ratio of forget to retain loss (GRIN)."""

    name = "grin-mask"
    Config = GrinConfig

    def scores(self, data: AttributionData) -> AttributionResult:
        if not data.forget or not data.retain:
            raise ValueError("grin-mask needs forget and retain batches")
        g_f = summed_gradients(data.model, data.forget, data.grad_buffers)
        g_r = summed_gradients(data.model, data.retain, data.grad_buffers)
        n_f, n_r = sample_count(data.forget), sample_count(data.retain)
        with torch.no_grad():
            return AttributionResult({n: g.div_(n_f).abs_().div_(g_r.pop(n).div_(n_r).abs_().add_(self.config.eps))
                                      for n, g in g_f.items()})


@hookimpl
def register_attributions(register) -> None:
    register(Grin)
