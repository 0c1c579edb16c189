"""Quantization probe (Zhang et al., ICLR 2025, arXiv 2410.16454): does round-to-nearest weight quantization
bring forgotten knowledge back? Unlearning that moves weights by less than half a quantization step is undone
by rounding: the quantized unlearned model is the quantized target.

For each setting (default: 8-bit per output channel, 4-bit in groups of 128 input columns), every nn.Linear
weight except those named in `skip` (the output head, as bitsandbytes, GPTQ and AWQ keep it) is quantized
and dequantized in place with torchao's affine primitives (`choose_qparams_affine`, `quantize_affine`,
`dequantize_affine`; asymmetric min-max by default, as RTN baselines use), the task evaluates the model, and
the weights are put back. Metrics, for each forget metric m of the task: `{tag}_{m}` (m after quantization,
m's direction) and `{tag}_{m}_undone` = (m_quantized - m_unlearned) / (m_target - m_unlearned) (lower is
better: 0 nothing came back, 1 back at the target). Tags: `int8`, `int4_g128`.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import Any

import torch

from harness.api import Metric, Probe, ProbeContext
from harness.config import option
from harness.hookspecs import hookimpl
from harness.probes import undone


@dataclass
class QuantizationConfig:
    settings: list[dict[str, Any]] = option([{"bits": 8, "group_size": None}, {"bits": 4, "group_size": 128}],
                                            "weight-only settings: bits (2-8) and group_size (input columns "
                                            "sharing a scale; null: one scale per output channel)")
    symmetric: bool = option(False, "symmetric quantization (no zero point); false: asymmetric min-max")
    skip: list[str] = option([r"lm_head"], "regexes of Linear module names kept in full precision")

    def validate(self) -> None:
        for s in self.settings:
            if set(s) - {"bits", "group_size"} or not isinstance(s.get("bits"), int) or not 2 <= s["bits"] <= 8:
                raise ValueError(f"quantization setting {s}: needs bits (an integer 2-8) and optionally group_size")
            if s.get("group_size") is not None and s["group_size"] < 1:
                raise ValueError(f"quantization setting {s}: group_size must be >= 1 or null")


def _primitives():
    """torchao's affine quantization functions (its optional GPU kernels' load warnings silenced)."""
    for name in ("torchao", "torch.utils._pytree"):
        logging.getLogger(name).setLevel(logging.ERROR)
    from torchao.quantization import quant_primitives

    return quant_primitives


def rtn(weight: torch.Tensor, bits: int, group_size: int | None, symmetric: bool = False) -> torch.Tensor:
    """`weight` [out, in] rounded to the nearest point of a `bits`-bit grid per output channel (group_size
    None) or per group of `group_size` input columns (where they do not divide the columns, the last group
    is narrower), returned dequantized in its own dtype."""
    columns = weight.shape[-1]
    group = columns if group_size is None else min(group_size, columns)
    whole = columns - columns % group
    if whole < columns:  # SmolLM2's 576 columns in groups of 128: four groups and a last one of 64
        return torch.cat([rtn(weight[:, :whole], bits, group, symmetric),
                          rtn(weight[:, whole:], bits, None, symmetric)], dim=1)
    qp = _primitives()
    block = (1, group)
    if symmetric:
        mapping, low, high = qp.MappingType.SYMMETRIC, -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
        qdtype = torch.int8
    else:
        mapping, low, high = qp.MappingType.ASYMMETRIC, 0, 2**bits - 1
        qdtype = torch.uint8
    w = weight.detach().float()
    scale, zero = qp.choose_qparams_affine(w, mapping, block, qdtype, quant_min=low, quant_max=high)
    q = qp.quantize_affine(w, block, scale, zero, qdtype, quant_min=low, quant_max=high)
    return qp.dequantize_affine(q, block, scale, zero, qdtype, quant_min=low, quant_max=high).to(weight.dtype)


def tag(setting: dict[str, Any]) -> str:
    group = setting.get("group_size")
    return f"int{setting['bits']}" + (f"_g{group}" if group is not None else "")


class Quantization(Probe):
    """Forget metrics after round-to-nearest weight quantization (8-bit, 4-bit g128), and the share undone."""

    name = "quantization"
    Config = QuantizationConfig

    def quantized_weights(self, model, setting: dict[str, Any]) -> dict[str, torch.Tensor]:
        skip = [re.compile(p) for p in self.config.skip]
        return {f"{name}.weight": rtn(module.weight, setting["bits"], setting.get("group_size"), self.config.symmetric)
                for name, module in model.named_modules()
                if isinstance(module, torch.nn.Linear) and not any(p.search(name) for p in skip)}

    def run(self, model, ctx: ProbeContext) -> dict[str, Metric]:
        forget = {k: m for k, m in ctx.unlearned.items() if m.group == "forget" and m.value is not None}
        params = dict(model.named_parameters())
        out: dict[str, Metric] = {}
        for setting in self.config.settings:
            new = self.quantized_weights(model, setting)
            saved = {name: params[name].detach().clone() for name in new}
            try:
                with torch.no_grad():
                    for name, w in new.items():
                        params[name].copy_(w)
                after = ctx.evaluate(model).metrics
            finally:
                with torch.no_grad():
                    for name, w in saved.items():
                        params[name].copy_(w)
            for k, m in forget.items():
                value = after[k].value if k in after else None
                target = (ctx.target["metrics"].get(k) or {}).get("value")
                out[f"{tag(setting)}_{k}"] = Metric(value, m.direction)
                out[f"{tag(setting)}_{k}_undone"] = Metric(undone(value, m.value, target), "lower")
        return out


@hookimpl
def register_probes(register) -> None:
    register(Quantization)
