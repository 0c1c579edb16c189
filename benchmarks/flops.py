"""Achieved FLOP/s of the unlearning step against this machine's measured matmul throughput, in fp32 and
in bf16 (autocast). FLOPs of a step: 6 × parameters × trained tokens (forward 2, backward 4) for the
forget and the retain batch.

    python -m benchmarks.flops [--model smollm2-135m] [--bf16]
"""

from __future__ import annotations

import torch

from benchmarks import common
from benchmarks.train_step import step_seconds
from harness.learn.train import TrainConfig, unlearn_batches
from harness.plugins import get_registry
from harness.sweeps.plan import matmul_flops


def main() -> None:
    p = common.parser(__doc__)
    p.add_argument("--bf16", action="store_true", help="also time the step under bf16 autocast (slow on CPUs "
                                                       "without bf16 instructions)")
    args = p.parse_args()
    common.header("achieved FLOP/s")
    task, model, tok = common.target_model(args.model)
    n_params = sum(p.numel() for p in model.parameters())
    objective = get_registry().build("objective", "graddiff", {})
    for bf16 in ([False, True] if args.bf16 else [False]):
        cfg = TrainConfig(epochs=2, batch_size=8, lr=1e-7, max_steps=4, bf16_autocast=bf16)
        batches = unlearn_batches(tok, task.forget_examples(), task.retain_examples(), cfg, task.config.max_length, 0)
        tokens = sum(int(b.forget["attention_mask"].sum() + b.retain["attention_mask"].sum()) for b in batches[:4]) / 4
        seconds = step_seconds(model, batches, objective, cfg, None)
        achieved = 6 * n_params * tokens / seconds
        peak = matmul_flops(torch.bfloat16 if bf16 else torch.float32, 2048)
        name = "bf16 autocast" if bf16 else "fp32"
        print(f"{name}: step {seconds:.2f} s on {tokens:.0f} tokens = {achieved / 1e9:.1f} GFLOP/s; matmul "
              f"{peak / 1e9:.1f} GFLOP/s; {100 * achieved / peak:.0f}% of matmul throughput (target >= 50%)")


if __name__ == "__main__":
    main()
