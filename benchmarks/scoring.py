"""Batched teacher-forced scoring (sorted by length, right-padded) against one sequence at a time:
throughput, and the largest difference between the two (padding must not change the numbers).

    python -m benchmarks.scoring [--model smollm2-135m] [--batch 16]
"""

from __future__ import annotations

import numpy as np

from benchmarks import common
from harness.measure.scoring import completion_nll


def main() -> None:
    p = common.parser(__doc__)
    p.add_argument("--batch", type=int, default=16)
    args = p.parse_args()
    common.header("batched vs one-at-a-time scoring")
    task, model, tok = common.target_model(args.model)
    rows = task._eval_splits()["forget"]
    pairs = [task._example(r) for r in rows] + [task._example({"question": r["question"], "answer": a})
                                                 for r in rows for a in r["perturbed_answer"]]
    holder = {}
    batched = common.median_time(lambda: holder.update(b=completion_nll(model, tok, pairs, args.batch)), args.repeats)
    single = common.median_time(lambda: holder.update(s=completion_nll(model, tok, pairs, 1)), 1)
    diff = float(np.max(np.abs(holder["b"] - holder["s"])))
    print(f"{len(pairs)} sequences (tofu-mini forget answers and perturbed answers): batched ({args.batch}) "
          f"{batched:.2f} s = {len(pairs) / batched:.1f} seq/s; one at a time {single:.2f} s = "
          f"{len(pairs) / single:.1f} seq/s; speed-up {single / batched:.1f}x (target >= 5x); "
          f"max |difference| {diff:.2e}")


if __name__ == "__main__":
    main()
