"""Extraction probe: how much of each forget answer the model still reproduces token by token, as
open-unlearning defines it (`src/evals/metrics/memorization.py`: `exact_memorization`, `extraction_strength`,
over `utils.py::tokenwise_vocab_logprobs`'s tokens: the answer's labelled tokens less the last, the EOS).

- exact memorization: the share of the answer's tokens that are the greedy (argmax) prediction given the
  true prefix;
- extraction strength: 1 - k/n for the smallest k from which every remaining token is the greedy prediction
  (1: the whole answer comes out; the floor 1/n when even the last token is missed, as the reference loop
  leaves it).
Means over the forget examples (`forget_exact_memorization`, `forget_extraction_strength`, lower is better),
with the retain model's as reference (`..._retain_model`, info) where the task has one.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from harness.api import Metric, Probe, ProbeContext
from harness.config import option, to_dict
from harness.hookspecs import hookimpl
from harness.measure import metrics
from harness.measure.scoring import token_stats


@dataclass
class ExtractionConfig:
    limit: int | None = option(None, "score only the first N forget examples; null: all")

    def validate(self) -> None:
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"limit must be >= 1 or null, got {self.limit}")


def memorization(model, tokenizer, examples, batch_size: int, max_length: int) -> dict[str, float]:
    """Mean exact memorization and extraction strength of the examples' answers."""
    hits = [s.hit[:-1] for s in token_stats(model, tokenizer, examples, batch_size, max_length)]
    if any(h.size == 0 for h in hits):
        raise ValueError("an answer with no scored token besides its EOS: extraction needs more")
    return {"exact_memorization": float(np.mean([metrics.exact_memorization(h) for h in hits])),
            "extraction_strength": float(np.mean([metrics.extraction_strength(h) for h in hits]))}


class Extraction(Probe):
    """Exact memorization and extraction strength of the forget answers (open-unlearning's definitions)."""

    name = "extraction"
    Config = ExtractionConfig

    def run(self, model, ctx: ProbeContext) -> dict[str, Metric]:
        task = ctx.task
        examples = task.forget_examples()[: self.config.limit]
        batch = max(1, ctx.batch_size // 2)
        ours = memorization(model, ctx.tokenizer, examples, batch, task.max_length)
        out = {f"forget_{k}": Metric(v, "lower") for k, v in ours.items()}
        if ctx.retain is not None:
            key = {"model": ctx.retain["model"], "config": to_dict(self.config), "task_config": to_dict(task.config)}
            ref = ctx.cached("extraction", key, lambda: memorization(ctx.load(ctx.retain["model"]), ctx.tokenizer,
                                                                     examples, batch, task.max_length))
            out.update({f"forget_{k}_retain_model": Metric(v, "info") for k, v in ref.items()})
        return out


@hookimpl
def register_probes(register) -> None:
    register(Extraction)
