"""The per-phase memory estimate: its arithmetic by hand, and each part against the tensors the harness
really allocates for a small model."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import torch

from harness.learn import masks, memory
from harness.learn.attribution import summed_gradients
from harness.learn.data import make_batches
from harness.learn.optim import MaskedAdamW


def test_estimate_by_hand():
    att, unl, ev = memory.estimate(1000, 300, "bfloat16", ratio=0.25, reference_copy=True, attribution_buffers="cpu")
    assert att.device == {"weights": 2000, "gradients": 2000}
    assert att.host == {"gradient sums (2 × fp32)": 8000, "scores being built (fp32, one tensor)": 1200}
    # k = 250 selected: 2 moments × 2 bytes × 250, 1 byte per weight of mask, the largest tensor's selected
    # positions while it is updated (int64: 8 × 0.25 × 300), the reference copy
    assert unl.device_bytes() == 2000 + 2000 + 1000 + 1000 + 600 + 2000
    assert ev.device_bytes() == 2000 and ev.host_bytes() == 0
    dense = memory.estimate(1000, 300, "float32", ratio=1.0)[1]
    assert dense.device_bytes() == 4000 + 4000 + 8000  # no mask, no positions, no reference


def test_fsdp_estimate_by_hand():
    """Four processes, 10 decoder layers: a quarter of weights, gradients, moments, mask and reference copy
    per process, two gathered layers (weights and gradients); the whole model, kept for evaluation, waits in
    host memory."""
    unl = memory.estimate(1000, 300, "bfloat16", ratio=0.25, reference_copy=True, fsdp_processes=4, layers=10)[1]
    assert unl.device == {"weight shard": 500, "gradient shard": 500, "Adam moments (selected, shard)": 250,
                          "mask shard (bool)": 250, "gathered layers (2, weights + gradients)": 800,
                          "reference copy": 500}
    assert unl.host == {"whole model (for evaluation)": 2000}


def test_estimate_matches_what_the_harness_allocates(tiny):
    model, tok = tiny
    n, largest = memory.shape_of(model.config)
    sizes = [p.numel() for p in model.parameters()]
    assert (n, largest) == (sum(sizes), max(sizes))
    att, unl, _ = memory.estimate(n, largest, "float32", ratio=0.3)
    assert att.device["weights"] == sum(p.numel() * p.element_size() for p in model.parameters())

    from harness.api import Example

    batches = make_batches(tok, [Example("Who wrote it?", "An author.")] * 4, 2, 32)
    sums = summed_gradients(model, batches)
    assert 2 * sum(g.numel() * g.element_size() for g in sums.values()) == att.device["gradient sums (2 × fp32)"]

    mask = masks.top_fraction({k: g.abs() for k, g in sums.items()}, 0.3)
    params = dict(model.named_parameters())
    opt = MaskedAdamW([{"params": list(params.values())}], {id(params[k]): m for k, m in mask.items()}, lr=1e-3)
    for p in params.values():
        p.grad = torch.randn_like(p)
    opt.step()
    moments = sum(t.numel() * t.element_size() for s in opt.state.values() for key, t in s.items() if key != "step")
    assert moments == unl.device["Adam moments (selected)"]
    assert opt.mask_bytes() == unl.device["mask (bool)"]  # every tensor is partly masked here


def test_memory_command_prints_every_phase():
    exe = str(Path(sys.executable).parent / "unlearn-bench")
    out = subprocess.run([exe, "memory", "tiny-llama", "--ratio", "0.5", "--attribution-buffers", "cpu"],
                         capture_output=True, text=True, check=True).stdout
    for phase in ("attribution", "unlearning", "evaluation", "reference copy", "host"):
        assert phase in out
