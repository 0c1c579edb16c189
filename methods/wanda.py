"""Wanda (Sun et al. 2024) as a mask: |W_jk| · ‖X_k‖ on the decoder's linear layers, chosen per output row.

‖X_k‖² is the mean over calibration samples of the squared L2 norm of input feature k over a sample's
tokens (padding excluded). In each row the top `ratio` fraction of entries is updated (the set that Wanda's
pruning would keep at sparsity 1 - ratio). As in WAGLE's code, embeddings, norms and the output head are
updated densely unless `dense_outside` is false.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from harness.api import Attribution, AttributionData, AttributionResult
from harness.config import option
from harness.hookspecs import hookimpl
from harness.learn.data import to_device


@dataclass
class WandaConfig:
    calibration_samples: int = option(128, "forget samples used to measure input norms (reference: 128)")
    dense_outside: bool = option(True, "update embeddings, norms and the head densely (reference) or freeze them")

    def validate(self) -> None:
        if self.calibration_samples < 1:
            raise ValueError("calibration_samples must be >= 1")


def decoder_linears(model: torch.nn.Module) -> dict[str, torch.nn.Linear]:
    """Every nn.Linear except the output head, by module name."""
    head = model.get_output_embeddings()
    return {n: m for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and m is not head}


@torch.no_grad()
def input_norms(model: torch.nn.Module, batches, limit: int) -> dict[str, torch.Tensor]:
    """Mean over samples of Σ_tokens X_k² for each decoder linear layer's input feature k."""
    linears = decoder_linears(model)
    sums = {n: torch.zeros(m.in_features, dtype=torch.float64) for n, m in linears.items()}
    current: dict[str, torch.Tensor] = {}

    def hook(name):
        def record(module, args):
            x = args[0].float() * current["mask"][..., None]
            sums[name] += x.pow(2).sum(dim=(0, 1)).double().cpu()
        return record

    handles = [m.register_forward_pre_hook(hook(n)) for n, m in linears.items()]
    seen = 0
    try:
        for batch in batches:
            take = min(limit - seen, batch["input_ids"].shape[0])
            if take <= 0:
                break
            batch = to_device({k: v[:take] for k, v in batch.items()}, model.device)
            current["mask"] = batch["attention_mask"].float()
            model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
            seen += take
    finally:
        for h in handles:
            h.remove()
    return {n: (s / max(seen, 1)).float() for n, s in sums.items()}


class Wanda(Attribution):
    """Per output row of each decoder linear layer, the `ratio` fraction with the largest |W|·‖X‖."""

    name = "wanda"
    Config = WandaConfig

    def scores(self, data: AttributionData) -> AttributionResult:
        model = data.model
        norms = input_norms(model, data.forget, self.config.calibration_samples)
        weight_of = {f"{n}.weight": n for n in decoder_linears(model)}
        mask: dict[str, torch.Tensor] = {}
        for pname, p in model.named_parameters():
            if not p.requires_grad:
                continue
            if pname not in weight_of:
                mask[pname] = torch.full(p.shape, self.config.dense_outside, dtype=torch.bool)
                continue
            metric = p.detach().float().abs().cpu() * norms[weight_of[pname]].sqrt()[None, :]
            k = round(data.ratio * metric.shape[1])
            chosen = torch.zeros_like(metric, dtype=torch.bool)
            if k > 0:
                chosen.scatter_(1, torch.topk(metric, k, dim=1).indices, True)
            mask[pname] = chosen
        return AttributionResult(mask=mask, info={"row_ratio": data.ratio})


@hookimpl
def register_attributions(register) -> None:
    register(Wanda)
