"""WAGLE attribution: our mask selection (radix select over the float bits, one tensor at a time) against the
reference approach (concatenate every score, global argsort), and attribution time against one unlearning
epoch over the same data.

    python -m benchmarks.attribution [--model smollm2-135m] [--ratio 0.5]
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from benchmarks import common
from harness.api import AttributionData
from harness.learn import masks
from harness.learn.train import TrainConfig, train, unlearn_batches
from harness.plugins import get_registry


def reference_top_fraction(scores: dict[str, torch.Tensor], ratio: float) -> dict[str, torch.Tensor]:
    """The reference approach: one concatenated score vector, a stable descending argsort, the first k."""
    flat = torch.cat([s.flatten() for s in scores.values()])
    k = round(ratio * flat.numel())
    chosen = torch.zeros(flat.numel(), dtype=torch.bool)
    chosen[torch.argsort(flat, descending=True, stable=True)[:k]] = True
    out, start = {}, 0
    for name, s in scores.items():
        out[name] = chosen[start : start + s.numel()].view(s.shape)
        start += s.numel()
    return out


def _selection(path: str, ratio: float, which: str):
    def setup():
        # load_file maps the file and pages it in on first touch: copy, so the scores are resident before the
        # measurement starts and only what selection adds is counted
        return {k: v.clone() for k, v in load_file(path).items()}

    def run(scores):
        mask = masks.top_fraction(scores, ratio) if which == "ours" else reference_top_fraction(scores, ratio)
        return masks.mask_digest(mask)

    return setup, run


def main() -> None:
    p = common.parser(__doc__)
    p.add_argument("--ratio", type=float, default=0.5)
    args = p.parse_args()
    common.header("attribution")
    task, model, tok = common.target_model(args.model)
    forget, retain = common.batches(task, tok)
    wagle = get_registry().build("attribution", "wagle", {})
    data = AttributionData(model, tok, forget, retain, seed=0, ratio=args.ratio)
    holder = {}
    attribution_s = common.median_time(lambda: holder.update(r=wagle.scores(data)), 1)
    scores = holder["r"].scores
    n = sum(s.numel() for s in scores.values())

    cfg = TrainConfig(epochs=1, batch_size=8, lr=1e-5)
    epoch = unlearn_batches(tok, task.forget_examples(), task.retain_examples(), cfg, task.config.max_length, 0)
    objective = get_registry().build("objective", "graddiff", {})
    epoch_s = common.median_time(lambda: train(model, epoch, lambda m, b: objective.loss(m, b), cfg), 1)
    print(f"WAGLE scores ({len(task.forget_examples())} forget + {len(task.forget_examples())} retain examples): "
          f"{attribution_s:.1f} s; one GradDiff epoch over the same forget set ({len(epoch)} steps): "
          f"{epoch_s:.1f} s; ratio {attribution_s / epoch_s:.2f}x (target <= 1.3x)")

    with tempfile.TemporaryDirectory() as folder:
        path = str(Path(folder) / "scores.safetensors")
        save_file({k: v.contiguous() for k, v in scores.items()}, path)
        ours_s, ours_mb, ours_digest = common.peak_extra_mb(_selection, path, args.ratio, "ours")
        ref_s, ref_mb, ref_digest = common.peak_extra_mb(_selection, path, args.ratio, "reference")
    print(f"selection of the top {args.ratio:g} of {n:,} scores ({n * 4 / 2**20:.0f} MB):")
    print(f"  ours (radix select)     {ours_s:6.2f} s   extra peak memory {ours_mb:7.0f} MB")
    print(f"  reference (argsort)     {ref_s:6.2f} s   extra peak memory {ref_mb:7.0f} MB")
    print(f"  time ratio {ours_s / ref_s:.2f}x; memory ratio {ours_mb / max(ref_mb, 1e-9):.3f}x (target <= 0.1x)")
    print(f"  same mask: {ours_digest == ref_digest} (digest {ours_digest[:16]})")


if __name__ == "__main__":
    main()
