"""Memory per phase of a run, from the model's shape alone (no weights are loaded).

Counts the tensors the harness holds in each phase; activations are left out, as they scale with batch size
× sequence length (and shrink with train.gradient_checkpointing). docs/scale.md has the 7B figures.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
GB = 1e9


@dataclass
class Phase:
    """Bytes held on the model's device and in host memory during one phase, by what holds them."""

    name: str
    device: dict[str, int] = field(default_factory=dict)
    host: dict[str, int] = field(default_factory=dict)

    def device_bytes(self) -> int:
        return sum(self.device.values())

    def host_bytes(self) -> int:
        return sum(self.host.values())


def shape_of(config) -> tuple[int, int]:
    """(parameter count, largest parameter's element count) of a transformers config, built on the meta
    device (no memory)."""
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    sizes = [p.numel() for p in model.parameters()]
    return sum(sizes), max(sizes)


def estimate(n_params: int, largest: int, dtype: str = "bfloat16", ratio: float = 1.0,
             reference_copy: bool = False, attribution_buffers: str = "model", fsdp_processes: int = 1,
             layers: int = 1) -> list[Phase]:
    """The harness's tensors in each phase of a run of a model with `n_params` weights.

    attribution: the weights, one backward's gradients (weights' dtype), the two fp32 gradient sums (WAGLE:
    forget and retain), fp32 scores that replace the sums tensor by tensor, then the boolean mask; the
    sums and scores live on `attribution_buffers` (model or cpu).
    unlearning: the weights, their gradients, Adam's two moments for the selected k = ratio × N weights (in
    the weights' dtype, as torch's AdamW keeps them), the boolean mask, the selected positions of the
    tensor being updated (transient), and a frozen copy of the weights for objectives with a reference
    model (NPO, GradDiff with KL).
    evaluation: the weights (vLLM loads its own copy while the HF copy waits in host memory).
    With `fsdp_processes` > 1 (accelerate launch --use_fsdp, harness/learn/fsdp.py), unlearning holds per process
    1/P of the weights, gradients, moments, mask and reference copy and two gathered decoder layers (of
    `layers`) with their gradients, while the whole model that attribution and evaluation use waits in host
    memory.
    """
    w = BYTES[dtype]
    k = round(ratio * n_params)
    sums = {"gradient sums (2 × fp32)": 8 * n_params, "scores being built (fp32, one tensor)": 4 * largest}
    attribution = Phase("attribution", {"weights": w * n_params, "gradients": w * n_params})
    (attribution.device if attribution_buffers == "model" else attribution.host).update(sums)
    masked = ratio < 1.0
    p = fsdp_processes
    if p > 1:
        unlearning = Phase(f"unlearning (FSDP, 1 of {p} processes)", {
            "weight shard": w * n_params // p,
            "gradient shard": w * n_params // p, "Adam moments (selected, shard)": 2 * w * k // p,
            "mask shard (bool)": n_params // p if masked else 0,
            "gathered layers (2, weights + gradients)": 2 * 2 * w * n_params // max(1, layers)},
            {"whole model (for evaluation)": w * n_params})
    else:
        unlearning = Phase("unlearning", {
            "weights": w * n_params, "gradients": w * n_params, "Adam moments (selected)": 2 * w * k,
            "mask (bool)": n_params if masked else 0,
            "selected positions (int64, one tensor)": 8 * round(ratio * largest) if masked else 0})
    if reference_copy:
        unlearning.device["reference copy"] = w * n_params // p
    evaluation = Phase("evaluation", {"weights": w * n_params})
    return [attribution, unlearning, evaluation]


def table(phases: list[Phase]) -> str:
    """A plain-text table: one line per phase with its device and host totals in GB, then the parts."""
    lines = []
    width = max(len(ph.name) for ph in phases)
    for ph in phases:
        totals = f"device {ph.device_bytes() / GB:7.1f} GB   host {ph.host_bytes() / GB:7.1f} GB"
        lines.append(f"{ph.name:{width}s} {totals}")
        for where, parts in (("device", ph.device), ("host", ph.host)):
            lines += [f"    {where:6s} {name:40s} {b / GB:7.2f} GB" for name, b in parts.items() if b]
    lines.append("(activations not included: they scale with batch × length; see docs/scale.md)")
    return "\n".join(lines)
