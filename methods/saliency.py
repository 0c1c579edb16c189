"""Gradient saliency on the forget loss: `gradient` (SalUn-style |G_f|) and `snip` (|θ ⊙ G_f|, WAGLE
without its retain term). G_f is the summed gradient of the next-token loss over the forget samples."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from harness.api import Attribution, AttributionData, AttributionResult
from harness.hookspecs import hookimpl
from harness.learn.attribution import summed_gradients


@dataclass
class SaliencyConfig:
    pass


class Gradient(Attribution):
    """Scores |G_f| (SalUn-style saliency): weights the forget loss is most sensitive to."""

    name = "gradient"
    Config = SaliencyConfig

    def scores(self, data: AttributionData) -> AttributionResult:
        grads = summed_gradients(data.model, data.forget, data.grad_buffers)
        return AttributionResult({n: g.abs_() for n, g in grads.items()})


class Snip(Attribution):
    """Scores |θ ⊙ G_f| (SNIP on the forget loss; WAGLE's first term alone)."""

    name = "snip"
    Config = SaliencyConfig

    def scores(self, data: AttributionData) -> AttributionResult:
        grads = summed_gradients(data.model, data.forget, data.grad_buffers)
        with torch.no_grad():
            return AttributionResult({n: grads[n].mul_(p.detach().to(grads[n].device, torch.float32)).abs_()
                                      for n, p in data.model.named_parameters() if n in grads})


@hookimpl
def register_attributions(register) -> None:
    register(Gradient)
    register(Snip)
