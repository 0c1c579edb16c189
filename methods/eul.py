"""EUL (Chen and Yang 2023, "Unlearn What You Want to Forget: Efficient Unlearning for LLMs", EMNLP):
lightweight unlearning layers trained with a selective teacher-student objective, the base model frozen.

- `unlearning-layers` (attribution): a bottleneck adapter after every decoder layer's MLP, width d /
  `reduction` (harness/learn/adapters.py); only these train, and they stay in the model for evaluation.
- `eul` (objective), with the frozen target as teacher F and the model with its layers as student F_u:
      L = α·KL(F ‖ F_u)[retain] − KL(F ‖ F_u)[forget] + λ·CE(F_u)[retain] − γ·CE(F_u)[forget],
  KL the mean over answer tokens of the next-token KL, CE the answers' token-mean NLL: stay with the teacher
  and the task on retain data, move away from both on forget data (the paper's L_KL + L_TASK + L_LM).
The official repository (SALT-NLP/Efficient_Unlearning) ships an adapter-transformers training script
(`src/models/run.py`: `AdapterConfig` with a reduction factor, `train_adapter`) but not the objective; the
objective follows the paper's equations and its weights α, λ, γ are ours (docs/metrics.md). Fusing layers
trained for several requests is SPUNGE's split with `merge: fusion` (harness/learn/spunge.py).
"""

from __future__ import annotations

from dataclasses import dataclass

from harness.api import Attribution, AttributionData, AttributionResult, LossOutput, Objective, UnlearnBatch
from harness.config import option
from harness.hookspecs import hookimpl
from harness.measure.scoring import mean_nll
from methods.graddiff import retain_kl


@dataclass
class LayersConfig:
    reduction: int = option(16, "bottleneck width = hidden size / reduction (adapter-transformers' reduction_factor)")

    def validate(self) -> None:
        if self.reduction < 1:
            raise ValueError(f"reduction must be >= 1, got {self.reduction}")


class UnlearningLayers(Attribution):
    """Train EUL's unlearning layers (an adapter after each MLP) in place of the frozen weights."""

    name = "unlearning-layers"
    adds_modules = "layers"
    Config = LayersConfig
    ignores_ratio = True
    needs_data = False

    def scores(self, data: AttributionData) -> AttributionResult:
        return AttributionResult(adapters={"reduction": self.config.reduction})


@dataclass
class EulConfig:
    retain_kl: float = option(1.0, "α, weight of KL(teacher ‖ student) on retain answers")
    retain_ce: float = option(1.0, "λ, weight of the task loss (NLL) on retain answers")
    forget_ce: float = option(1.0, "γ, weight of the NLL ascended on forget answers")


class Eul(Objective):
    """α·KL_retain − KL_forget + λ·CE_retain − γ·CE_forget against the frozen teacher (EUL's objective)."""

    name = "eul"
    Config = EulConfig
    needs_reference = True

    def loss(self, model, batch: UnlearnBatch, reference=None) -> LossOutput:
        if reference is None:
            raise ValueError("eul needs the frozen teacher (the target model)")
        c = self.config
        kl_r, kl_f = retain_kl(model, reference, batch.retain), retain_kl(model, reference, batch.forget)
        ce_r, ce_f = mean_nll(model, batch.retain).mean(), mean_nll(model, batch.forget).mean()
        loss = c.retain_kl * kl_r - kl_f + c.retain_ce * ce_r - c.forget_ce * ce_f
        return LossOutput(loss, {"kl_retain": float(kl_r.detach()), "kl_forget": float(kl_f.detach()),
                                 "retain_nll": float(ce_r.detach()), "forget_nll": float(ce_f.detach())})


@hookimpl
def register_attributions(register) -> None:
    register(UnlearningLayers)


@hookimpl
def register_objectives(register) -> None:
    register(Eul)
