"""SalUn's weight saliency (Fan et al., ICLR 2024, "SalUn: Empowering Machine Unlearning via Gradient-based
Weight Saliency"): S = |Σ_b ∇ ℓ_f(b)|, the gradient of the forget loss accumulated over the forget batches
(each batch's mean loss), then the top fraction of |S| over all weights kept.

Matched: OPTML-Group/Unlearn-Saliency `Classification/generate_mask.py::save_gradient_ratio` (loss
−CE(batch) per forget batch, `gradients[name] += param.grad`, `torch.abs_`, one global ranking, mask 1 for the
top `threshold` share). The sign of the loss does not matter under the absolute value. Differences (declared
in docs/metrics.md): the batches are the harness's attribution batches (8 examples; the reference's loader
batch size is its training batch size) and the kept count is round(ratio·N), where the reference takes
int(ratio·N). `gradient` is the same saliency summed per sample instead of per batch.
"""

from __future__ import annotations

from dataclasses import dataclass

from harness.api import Attribution, AttributionData, AttributionResult
from harness.hookspecs import hookimpl
from harness.learn.attribution import summed_gradients


@dataclass
class SalunConfig:
    pass


class Salun(Attribution):
    """Scores |Σ_batches ∇ℓ_f(batch)| (SalUn's saliency, as its generate_mask.py accumulates it)."""

    name = "salun"
    Config = SalunConfig

    def scores(self, data: AttributionData) -> AttributionResult:
        grads = summed_gradients(data.model, data.forget, data.grad_buffers, per="batch")
        return AttributionResult({n: g.abs_() for n, g in grads.items()})


@hookimpl
def register_attributions(register) -> None:
    register(Salun)
