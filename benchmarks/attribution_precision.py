"""Attribution at float32's precision floor: WAGLE masks of tofu-mini's target from batches of 1 and of 8,
with the attribution loss as float32 cross-entropy (the earlier way), as harness.measure.scoring.exact_mean_nll (what
attribution uses: float32 without the cancellation) and with its log-softmax in float64, and once from the
whole model run in float64; the Jaccard overlap of each pair, and what each costs in time and peak memory.

    python -m benchmarks.attribution_precision [--model smollm2-135m] [--ratio 0.5]
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator

import torch

from benchmarks import common
from harness.api import AttributionData
from harness.learn import attribution, masks
from harness.measure import scoring
from harness.measure.mask_report import jaccard
from harness.plugins import get_registry

LOSSES = {"float32": scoring.mean_nll, "exact": scoring.exact_mean_nll,
          "float64": lambda model, batch: scoring.mean_nll(model, batch, torch.float64)}


@contextlib.contextmanager
def softmax_in(name: str) -> Iterator[None]:
    """The attribution loss computed as `name` (float32: the unlearning losses' own)."""
    kept = attribution.exact_mean_nll
    attribution.exact_mean_nll = LOSSES[name]
    try:
        yield
    finally:
        attribution.exact_mean_nll = kept


def scores(model, tok, task, size: int, softmax: str, ratio: float):
    forget, retain = common.batches(task, tok, size)
    with softmax_in(softmax):
        return get_registry().build("attribution", "wagle", {}).scores(
            AttributionData(model, tok, forget, retain, seed=0, ratio=ratio)).scores


def _memory(base: str, size: int, softmax: str, ratio: float):
    def setup():
        return common.target_model(base)

    def run(state) -> None:
        task, model, tok = state
        scores(model, tok, task, size, softmax, ratio)

    return setup, run


def main() -> None:
    p = common.parser(__doc__)
    p.add_argument("--ratio", type=float, default=0.5)
    args = p.parse_args()
    common.header("attribution precision")
    task, model, tok = common.target_model(args.model)
    found, seconds = {}, {}
    for softmax, size in (("float32", 1), ("float32", 8), ("exact", 1), ("exact", 8), ("float64", 8)):
        start = time.perf_counter()
        found[softmax, size] = masks.top_fraction(scores(model, tok, task, size, softmax, args.ratio), args.ratio)
        seconds[softmax, size] = time.perf_counter() - start
    n = sum(m.numel() for m in found["exact", 8].values())
    print(f"WAGLE masks at ratio {args.ratio:g} over {n:,} weights, batches of 1 against batches of 8:")
    for softmax in ("float32", "exact"):
        print(f"  loss as {softmax}: Jaccard {jaccard(found[softmax, 1], found[softmax, 8]):.6f}   "
              f"({seconds[softmax, 1]:.0f} s and {seconds[softmax, 8]:.0f} s)")
    for softmax in ("float32", "exact"):
        print(f"  {softmax} against log-softmax in float64 (batches of 8): "
              f"Jaccard {jaccard(found[softmax, 8], found['float64', 8]):.6f}")
    model.double()
    whole = masks.top_fraction(scores(model, tok, task, 8, "float64", args.ratio), args.ratio)
    for softmax in LOSSES:
        print(f"the model in float64 against the float32 model with the loss as {softmax} (batches of 8): "
              f"Jaccard {jaccard(whole, found[softmax, 8]):.6f}")
    costs = {s: common.peak_extra_mb(_memory, args.model, 8, s, args.ratio) for s in LOSSES}
    t32, mb32, _ = costs["float32"]
    print("cost per WAGLE attribution (batches of 8, each in a fresh process), against float32 cross-entropy "
          f"({t32:.0f} s, {mb32:.0f} MB extra peak memory):")
    for softmax in ("exact", "float64"):
        t, mb, _ = costs[softmax]
        print(f"  {softmax}: {t:.0f} s ({t / t32:.2f}x), {mb:.0f} MB ({mb / max(mb32, 1e-9):.2f}x)")


if __name__ == "__main__":
    torch.manual_seed(0)
    main()
