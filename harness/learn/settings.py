"""The optimizer settings of a training run (unlearning, or fine-tuning a reference model) and the learning
rate schedule they describe. Specs and sweeps read these without importing the training loop."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from harness.config import option

SCHEDULES = ("linear", "constant", "hf_linear")
ORDERS = ("shuffled", "topics")


@dataclass
class TrainConfig:
    lr: float = option(2e-5, "peak learning rate of AdamW")
    epochs: int = option(5, "passes over the forget set (or the fine-tuning set)")
    max_steps: int | None = option(None, "optimizer steps; overrides epochs when set")
    batch_size: int = option(8, "forget (and retain) examples per micro-batch")
    grad_accum: int = option(1, "micro-batches per optimizer step")
    order: str = option("shuffled", "unlearning batches: shuffled (each epoch shuffles the forget set; retain "
                                    "examples drawn at random) or topics (file order, alternating over the "
                                    "forget examples' topics, each batch paired with the same-numbered batch of "
                                    "its topic's retain examples: RMU's code)")
    warmup_ratio: float = option(0.1, "fraction of steps with linear warmup (at least one step)")
    schedule: str = option("linear", "after warmup: linear (decay to 0 at the last step) or constant (the rate "
                                     "a run stopped early by matched forgetting has seen does not depend on its "
                                     "step budget); hf_linear: transformers' get_linear_schedule_with_warmup "
                                     "exactly (warmup from 0: the first step's rate is 0)")
    weight_decay: float = option(0.0, "AdamW decoupled weight decay (never applied to masked-out weights)")
    max_grad_norm: float | None = option(1.0, "clip the gradient norm; null: no clipping")
    clip_scope: str = option("selected", "the norm clipping measures: selected (the masked gradient unlearning "
                                         "applies) or full (every entry, then mask: WAGLE's code; fully "
                                         "masked-out parameters then compute gradients too)")
    adam_eps: float = option(1e-8, "AdamW's epsilon (torch's default)")
    master_weights: bool = option(False, "16-bit models: keep and update an fp32 copy of the trained weights "
                                         "(mixed precision); off: update the 16-bit weights directly, as the "
                                         "unlearning reference code does. No effect on fp32 models")
    checkpoint_every: int | None = option(None, "save a resumable checkpoint every N optimizer steps")
    gradient_checkpointing: bool = option(False, "recompute activations in backward (less memory, ~30% more "
                                                 "compute; for 7B models)")
    bf16_autocast: bool | None = option(False, "forward/backward in bf16 autocast (about 25x slower than fp32 on "
                                                "CPUs without AMX or AVX512-BF16); null: on where bf16 is fast "
                                                "(CUDA, such CPUs), so that the numbers depend on the machine "
                                                "(the record keeps what it resolved to)")

    def validate(self) -> None:
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"lr must be a finite number > 0, got {self.lr}")
        if self.batch_size < 1 or self.grad_accum < 1 or self.epochs < 1:
            raise ValueError("batch_size, grad_accum and epochs must be >= 1")
        if self.max_steps is not None and self.max_steps < 1:
            raise ValueError(f"max_steps must be >= 1 or null (epochs decide), got {self.max_steps}")
        if self.checkpoint_every is not None and self.checkpoint_every < 1:
            raise ValueError(f"checkpoint_every must be >= 1 or null (no checkpoints), got {self.checkpoint_every}")
        if self.max_grad_norm is not None and not (math.isfinite(self.max_grad_norm) and self.max_grad_norm > 0):
            raise ValueError(f"max_grad_norm must be a finite number > 0 or null (no clipping), got "
                             f"{self.max_grad_norm}: a negative norm flips every gradient, 0 freezes the model")
        if not 0 <= self.warmup_ratio < 1:
            raise ValueError(f"warmup_ratio must be in [0, 1), got {self.warmup_ratio}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule {self.schedule!r}: choose {' or '.join(SCHEDULES)}")
        if self.order not in ORDERS:
            raise ValueError(f"order {self.order!r}: choose {' or '.join(ORDERS)}")
        if self.clip_scope not in ("selected", "full"):
            raise ValueError(f"clip_scope {self.clip_scope!r}: choose selected or full")
        if self.adam_eps <= 0:
            raise ValueError(f"adam_eps must be > 0, got {self.adam_eps}")


def lr_factor(cfg: TrainConfig, n_steps: int) -> Callable[[int], float]:
    """The factor on cfg.lr at each step (0-based): linear warmup over max(1, warmup_ratio·n_steps) steps
    reaching the full rate on the last warmup step, then constant or linear decay to zero at the last step;
    `hf_linear` is transformers' formula, whose warmup starts from 0 (so its first step does not move), and
    with warmup_ratio 0 has no warmup (HF Trainer's default schedule: (n - step) / n)."""
    warmup = max(1, int(n_steps * cfg.warmup_ratio))
    if cfg.schedule == "hf_linear" and cfg.warmup_ratio == 0:
        warmup = 0  # HF Trainer without warmup: the full rate at the first step, linear decay to 0

    def factor(step: int) -> float:
        if cfg.schedule == "hf_linear":  # transformers.get_linear_schedule_with_warmup's lr_lambda
            if step < warmup:
                return step / max(1, warmup)
            return max(0.0, (n_steps - step) / max(1, n_steps - warmup))
        if step < warmup:
            return (step + 1) / warmup
        if cfg.schedule == "constant":
            return 1.0
        return max(0.0, (n_steps - step) / max(1, n_steps - warmup))

    return factor
