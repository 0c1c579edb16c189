"""Masked unlearning step against a dense one: time per optimizer step, and optimizer-state memory with
state for the selected weights only (ours) against state for every weight (dense AdamW).

    python -m benchmarks.train_step [--model smollm2-135m] [--ratio 0.5] [--steps 4]
"""

from __future__ import annotations

import itertools
import time

import torch

from benchmarks import common
from harness.learn import masks
from harness.learn.train import TrainConfig, train, unlearn_batches
from harness.learn.update import UpdatePlan
from harness.plugins import get_registry


def step_seconds(model, batches, objective, cfg, mask) -> float:
    """Median seconds per optimizer step, from the loop's own per-step timing (first step dropped)."""
    stamps = []
    train(model, batches, lambda m, b: objective.loss(m, b), cfg, UpdatePlan(mask),
          progress=lambda step, total, row: stamps.append(time.perf_counter()))
    gaps = sorted(b - a for a, b in itertools.pairwise(stamps))
    return gaps[len(gaps) // 2]


def state_mb(model, mask) -> tuple[float, float]:
    """Optimizer state after one step with random gradients, and the masks it reads (MB)."""
    update = UpdatePlan(mask).attach(model)
    opt = update.optimizer(TrainConfig(lr=1e-5))
    for p in update.trainable():
        p.grad = torch.randn_like(p)
    opt.step()
    for p in update.trainable():
        p.grad = None
    update.close()
    return opt.state_bytes() / 2**20, opt.mask_bytes() / 2**20


def main() -> None:
    p = common.parser(__doc__)
    p.add_argument("--ratio", type=float, default=0.5)
    p.add_argument("--steps", type=int, default=4)
    args = p.parse_args()
    common.header("masked vs dense unlearning step")
    task, model, tok = common.target_model(args.model)
    cfg = TrainConfig(epochs=args.steps + 1, batch_size=8, lr=1e-7, weight_decay=0.1, max_steps=args.steps + 1)
    batches = unlearn_batches(tok, task.forget_examples(), task.retain_examples(), cfg, task.config.max_length, 0)
    objective = get_registry().build("objective", "graddiff", {})
    g = torch.Generator().manual_seed(0)
    mask = masks.top_fraction({n: torch.rand(p.shape, generator=g) for n, p in model.named_parameters()},
                              args.ratio)
    dense_s, masked_s = [], []
    for _ in range(max(1, args.repeats // 2)):  # interleaved, so drift hits both alike
        dense_s.append(step_seconds(model, batches, objective, cfg, None))
        masked_s.append(step_seconds(model, batches, objective, cfg, mask))
    d, m = sorted(dense_s)[len(dense_s) // 2], sorted(masked_s)[len(masked_s) // 2]
    print(f"step (batch 8 forget + 8 retain, GradDiff): dense {d:.3f} s, masked at ratio {args.ratio:g} {m:.3f} s, "
          f"ratio {m / d:.3f}x (target <= 1.05x)")
    (dense_mb, _), (masked_mb, mask_mb) = state_mb(model, None), state_mb(model, mask)
    print(f"AdamW state: dense {dense_mb:.0f} MB, masked {masked_mb:.0f} MB, ratio {masked_mb / dense_mb:.3f} "
          f"(selected fraction {args.ratio:g}); with the boolean mask the optimizer reads (1 byte per weight, "
          f"{mask_mb:.0f} MB) {(masked_mb + mask_mb) / dense_mb:.3f}")


if __name__ == "__main__":
    main()
