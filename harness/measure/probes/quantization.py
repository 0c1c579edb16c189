"""Quantization probe (Zhang et al., ICLR 2025, arXiv 2410.16454): does weight quantization bring forgotten
knowledge back? Unlearning that moves weights by less than half a quantization step is undone by rounding:
the quantized unlearned model is the quantized target.

Every nn.Linear weight except those named in `skip` (the output head, as bitsandbytes, GPTQ and AWQ keep it)
is quantized and dequantized in place, the task evaluates the model, and the weights are put back. Schemes:

- `fp4` and `nf4`: bitsandbytes' 4-bit weights, what the paper's code loads (zzwjames/FailureLLMUnlearning
  `utils.py::load_model`: `BitsAndBytesConfig(load_in_4bit=True)`, whose defaults are FP4, blocks of 64, no
  double quantization): absmax over blocks of `blocksize` consecutive weights (row-major), each scaled by
  the reciprocal of its absmax and rounded to the nearest code of the 4-bit table (bitsandbytes
  `functional.get_4bit_type`; ties to the smaller magnitude, as `dQuantizeFP4`/`dQuantizeNF4` compare
  strictly against the midpoints), dequantized as code × absmax;
- `llm_int8`: `load_in_8bit=True` (LLM.int8): each output row of the fp16 weight scaled by 127 / its absmax
  and rounded half to even. The outlier threshold (6.0) acts on activations at inference: the weight columns it
  selects are the same int8 weights dequantized, so every weight is rounded;
- `rtn`: round-to-nearest with torchao's affine primitives (`choose_qparams_affine`, `quantize_affine`,
  `dequantize_affine`) at `bits`, per output channel or in groups of `group_size` input columns, asymmetric
  min-max by default, as RTN baselines use.

Metrics, for each forget metric m of the task: `{tag}_{m}` (m after quantization, m's direction) and
`{tag}_{m}_undone` = (m_quantized - m_unlearned) / (m_target - m_unlearned) (lower is better: 0 nothing came
back, 1 back at the target). Tags: `llm_int8`, `fp4_b64`, `nf4_b64`, and `int8`, `int4_g128` for RTN.
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
from harness.measure.probes import undone

SCHEMES = ("llm_int8", "fp4", "nf4", "rtn")
FP4 = (0.0, 0.005208333333, 0.1666666667, 0.25, 0.3333333333, 0.5, 0.6666666667, 1.0)  # magnitudes, ascending
FP4_PIVOTS = (0.00260417, 0.0859375, 0.20833333, 0.29166667, 0.4166667, 0.583333, 0.8333333)  # dQuantizeFP4's
NF4 = (-1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635,
       -0.18477343022823334, -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725,
       0.24611230194568634, 0.33791524171829224, 0.44070982933044434, 0.5626170039176941, 0.7229568362236023,
       1.0)


@dataclass
class QuantizationConfig:
    settings: list[dict[str, Any]] = option([{"scheme": "llm_int8"}, {"scheme": "fp4", "blocksize": 64}],
                                            "weight-only settings: scheme llm_int8, fp4 or nf4 (bitsandbytes' "
                                            "8-bit and 4-bit loading; 4-bit with blocksize, default 64), or rtn "
                                            "with bits (2-8) and group_size (input columns sharing a scale; "
                                            "null: one scale per output channel)")
    symmetric: bool = option(False, "rtn: symmetric quantization (no zero point); false: asymmetric min-max")
    skip: list[str] = option([r"lm_head"], "regexes of Linear module names kept in full precision")

    def validate(self) -> None:
        keys = {"llm_int8": {"scheme"}, "fp4": {"scheme", "blocksize"}, "nf4": {"scheme", "blocksize"},
                "rtn": {"scheme", "bits", "group_size"}}
        for s in self.settings:
            scheme = s.get("scheme", "rtn")
            if scheme not in SCHEMES:
                raise ValueError(f"quantization setting {s}: scheme must be one of {', '.join(SCHEMES)}")
            if set(s) - keys[scheme]:
                raise ValueError(f"quantization setting {s}: {scheme} takes {', '.join(sorted(keys[scheme]))}")
            if scheme == "rtn" and (not isinstance(s.get("bits"), int) or not 2 <= s["bits"] <= 8):
                raise ValueError(f"quantization setting {s}: needs bits (an integer 2-8) and optionally group_size")
            if (s.get("group_size") is not None and s["group_size"] < 1) or s.get("blocksize", 64) < 1:
                raise ValueError(f"quantization setting {s}: group_size and blocksize must be >= 1")


def fp4_code(x: torch.Tensor) -> torch.Tensor:
    """The FP4 value nearest each x in [-1, 1]: the sign, then the magnitude by dQuantizeFP4's pivots."""
    pivots = torch.tensor(FP4_PIVOTS, dtype=torch.float32)
    magnitude = torch.tensor(FP4, dtype=torch.float32)[torch.bucketize(x.abs(), pivots)]  # equal to a pivot: lower
    return torch.where(x < 0, -magnitude, magnitude)


def nf4_code(x: torch.Tensor) -> torch.Tensor:
    """The NF4 value nearest each x in [-1, 1] (equal to a midpoint: the lower value)."""
    table = torch.tensor(NF4, dtype=torch.float64)
    midpoints = ((table[1:] + table[:-1]) / 2).float()
    return table.float()[torch.bucketize(x, midpoints)]


def absmax_4bit(weight: torch.Tensor, code, blocksize: int = 64) -> torch.Tensor:
    """`weight` through bitsandbytes' blockwise 4-bit quantization and back, in its own dtype: absmax per
    block of `blocksize` consecutive values (row-major; the last block may be shorter), x · (1/absmax) rounded
    to the table by `code`, times absmax (fp32 throughout)."""
    w = weight.detach().float().reshape(-1)
    n = w.numel()
    blocks = torch.nn.functional.pad(w, (0, -n % blocksize)).view(-1, blocksize)
    absmax = blocks.abs().amax(1, keepdim=True)
    scaled = blocks * (1.0 / absmax.clamp_min(torch.finfo(torch.float32).tiny))
    out = torch.where(absmax > 0, code(scaled) * absmax, torch.zeros_like(blocks))
    return out.reshape(-1)[:n].view_as(weight).to(weight.dtype)


def llm_int8(weight: torch.Tensor) -> torch.Tensor:
    """`weight` [out, in] through LLM.int8's weight quantization and back, in its own dtype: the fp16 weight,
    each row scaled by 127 / its absmax, rounded half to even, times absmax / 127."""
    w = weight.detach().to(torch.float16).float()
    absmax = w.abs().amax(1, keepdim=True)
    q = torch.round(w * (127.0 / absmax.clamp_min(torch.finfo(torch.float32).tiny)))
    return torch.where(absmax > 0, q * (absmax / 127.0), torch.zeros_like(w)).to(weight.dtype)


def quantize(weight: torch.Tensor, setting: dict[str, Any], symmetric: bool = False) -> torch.Tensor:
    """One weight through a setting's quantization and back (its dequantized values, in its dtype)."""
    scheme = setting.get("scheme", "rtn")
    if scheme == "llm_int8":
        return llm_int8(weight)
    if scheme in ("fp4", "nf4"):
        return absmax_4bit(weight, fp4_code if scheme == "fp4" else nf4_code, setting.get("blocksize", 64))
    return rtn(weight, setting["bits"], setting.get("group_size"), symmetric)


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
    scheme = setting.get("scheme", "rtn")
    if scheme == "llm_int8":
        return scheme
    if scheme in ("fp4", "nf4"):
        return f"{scheme}_b{setting.get('blocksize', 64)}"
    group = setting.get("group_size")
    return f"int{setting['bits']}" + (f"_g{group}" if group is not None else "")


class Quantization(Probe):
    """Forget metrics after weight quantization (bitsandbytes' LLM.int8 and FP4 by default), and the share
    undone."""

    name = "quantization"
    Config = QuantizationConfig

    def quantized_weights(self, model, setting: dict[str, Any]) -> dict[str, torch.Tensor]:
        skip = [re.compile(p) for p in self.config.skip]
        return {f"{name}.weight": quantize(module.weight, setting, self.config.symmetric)
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
