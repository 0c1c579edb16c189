"""The configs of a run's features (matched forgetting, offset unlearning, SPUNGE), beside the run spec that
holds them: the spec reads them without importing what implements them (harness/measure/match.py,
harness/learn/offset.py, harness/learn/spunge.py), and those modules read them from here."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from harness.config import option

MERGES = ("ties", "sum", "average", "fusion")


@dataclass
class MatchConfig:
    enabled: bool = option(False, "unlearn until the forget probe reaches the retain model's level (or "
                                  "train.max_steps runs out), then evaluate there; records the trajectory, "
                                  "utility at the match and the trade-off score")
    check_every: int = option(1, "optimizer steps between two probes")
    level: float | None = option(None, "forget-probe level to reach; null: the retain model's own forget probe, "
                                       "or the task's declared level where it has no retain model (WMDP: "
                                       "its probe_level, near chance)")
    bisect: bool = option(True, "when a check crosses the level, bisect in weight space between the last two "
                                "checked states (forget probe only) until forget efficacy is within ±tolerance of "
                                "1; the evaluation and the probes then run on that model")
    tolerance: float = option(0.02, "bisection's target: |forget efficacy − 1| at most this")
    max_bisections: int = option(12, "forget probes bisection may spend; past them it keeps the closest state "
                                     "at or past the level and records that it missed the tolerance")

    def validate(self) -> None:
        if self.check_every < 1:
            raise ValueError(f"check_every must be >= 1, got {self.check_every}")
        if not 0.0 < self.tolerance < 1.0:
            raise ValueError(f"tolerance must be in (0, 1), got {self.tolerance}")
        if self.max_bisections < 1:
            raise ValueError(f"max_bisections must be >= 1, got {self.max_bisections}")


@dataclass
class OffsetConfig:
    enabled: bool = option(False, "unlearn a small model and shift the large model's logits by the small "
                                  "pair's difference (δ-unlearning)")
    small_model: str = option("smollm2-offset", "the small model (alias, folder or hub id) sharing the large "
                                                "model's tokenizer; fine-tuned on the task as the target is")
    alpha: float = option(1.0, "α, the weight of the offset S_unlearned − S_original")
    prepare: dict[str, Any] = option({}, "fine-tuning settings of the small model replacing the run's `prepare` "
                                         "(a model built from a config needs a larger rate and more epochs)")

    def validate(self) -> None:
        if self.alpha <= 0:
            raise ValueError(f"offset.alpha must be > 0, got {self.alpha}")


@dataclass
class SpungeConfig:
    enabled: bool = option(False, "split the forget set, unlearn each part from the same model, merge them")
    by: str = option("task", "task (the task's own split: TOFU per author) or chunks (`parts` equal parts)")
    parts: int = option(2, "number of parts when by is chunks")
    merge: str = option("ties", "ties (TIES-merging), sum (task arithmetic: the sum of the task vectors), average "
                                "(their mean: each part's update divided by the number of parts) or fusion (EUL's "
                                "fusion of linear layers: the weight that best reproduces each part's outputs on its "
                                "own forget inputs)")
    density: float = option(0.2, "TIES: share of each task vector's largest-magnitude entries kept (TIES-merging's "
                                 "default, the top 20%; 1 keeps every entry)")
    scale: float = option(1.0, "λ on the merged task vector")

    def validate(self) -> None:
        if self.by not in ("task", "chunks"):
            raise ValueError(f"spunge.by {self.by!r}: choose task or chunks")
        if self.merge not in MERGES:
            raise ValueError(f"spunge.merge {self.merge!r}: choose {' or '.join(MERGES)}")
        if not 0 < self.density <= 1 or self.parts < 2:
            raise ValueError("spunge.density must be in (0, 1] and spunge.parts >= 2")
