"""Random-label unlearning for causal LMs (the RL of SalUn, Fan et al., ICLR 2024): fine-tune the forget
questions towards wrong answers. As OPTML-Group's LLM version does it (SOUL, `src/unlearn/RL.py` with
`src/dataset/Base.py::UnlearnDataset`: each forget question gets the answer of a retain example drawn at
random, plain NLL, no retain term), the answer is that of the retain example the batch pairs with each forget
example (drawn at random by the unlearning batches), tokenized after the forget question
(harness.learn.data.swap_answers: SOUL's construction overwrites the answer in place, so questions of different
lengths misalign; ours puts it right after the question). `retain_weight` adds the retain NLL, as SalUn's
classification RL trains on the retain set alongside (1); SOUL's LLM variant has none (0, the default).
"""

from __future__ import annotations

from dataclasses import dataclass

from harness.api import LossOutput, Objective, UnlearnBatch
from harness.config import option
from harness.hookspecs import hookimpl
from harness.learn.data import swap_answers
from harness.measure.scoring import mean_nll


@dataclass
class RandomLabelConfig:
    retain_weight: float = option(0.0, "weight of the retain NLL (SOUL's LLM random labels: 0; SalUn's "
                                       "classification RL trains on the retain set too: 1)")

    def validate(self) -> None:
        if self.retain_weight < 0:
            raise ValueError(f"retain_weight must be >= 0, got {self.retain_weight}")


class RandomLabel(Objective):
    """L = CE(forget question -> a random retain example's answer) + w * CE(retain)."""

    name = "random-label"
    Config = RandomLabelConfig

    def loss(self, model, batch: UnlearnBatch, reference=None) -> LossOutput:
        relabeled = mean_nll(model, swap_answers(batch.forget, batch.retain))
        loss, parts = relabeled.mean(), {"relabeled_nll": float(relabeled.detach().mean())}
        if self.config.retain_weight:
            retain = mean_nll(model, batch.retain)
            loss = loss + self.config.retain_weight * retain.mean()
            parts["retain_nll"] = float(retain.detach().mean())
        return LossOutput(loss, parts)


@hookimpl
def register_objectives(register) -> None:
    register(RandomLabel)
