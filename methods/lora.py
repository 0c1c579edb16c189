"""LoRA (Hu et al. 2022) as the "where to unlearn" choice: only low-rank adapters train, merged before
evaluation. Defaults as in WAGLE's code: r = 8, alpha = 32, dropout 0.05, on q_proj and v_proj."""

from __future__ import annotations

from dataclasses import dataclass

from harness.api import Attribution, AttributionData, AttributionResult
from harness.config import option
from harness.hookspecs import hookimpl


@dataclass
class LoraConfig:
    r: int = option(8, "adapter rank")
    alpha: int = option(32, "scaling numerator lora_alpha")
    dropout: float = option(0.05, "dropout on the adapter input")
    target_modules: list[str] = option(["q_proj", "v_proj"], "module names that get adapters")

    def validate(self) -> None:
        if self.r < 1 or not self.target_modules:
            raise ValueError("r must be >= 1 and target_modules non-empty")


class Lora(Attribution):
    """Train rank-r adapters on the target modules only; the ratio is ignored."""

    name = "lora"
    adds_modules = "lora"
    Config = LoraConfig
    ignores_ratio = True
    needs_data = False

    def scores(self, data: AttributionData) -> AttributionResult:
        c = self.config
        return AttributionResult(lora={"r": c.r, "lora_alpha": c.alpha, "lora_dropout": c.dropout,
                                       "target_modules": list(c.target_modules), "bias": "none"})


@hookimpl
def register_attributions(register) -> None:
    register(Lora)
