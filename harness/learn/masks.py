"""Masks: from attribution scores to a boolean "update" mask at an exact ratio, saved and reused.

The global top-k over every parameter is found by radix selection on the scores' float bits: four passes of
256-bin histograms over fixed-size chunks of each tensor, so the extra memory beyond the output mask is a few
chunk-sized temporaries (not a concatenated copy and an int64 index per weight, as a global argsort needs).
Ties at the threshold are broken in parameter order, so exactly k = round(ratio * N) weights are selected,
deterministically.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from harness.errors import UnlearnBenchError
from harness.io import atomic_write_json

Mask = dict[str, torch.Tensor]  # parameter name -> bool tensor, True = updated during unlearning


CHUNK = 1 << 20  # elements keyed at a time: the working memory is a few CHUNK-sized temporaries (8 MB each)


def _order_keys(x: torch.Tensor) -> torch.Tensor:
    """Map float32 values to int64 keys in [0, 2^32) with the same order (the float bits, sign-folded)."""
    bits = x.detach().float().contiguous().view(torch.int32).to(torch.int64)
    return torch.where(bits >= 0, bits + 2**31, 2**31 - 1 - (bits & 0x7FFFFFFF))


def _chunks(s: torch.Tensor):
    """Consecutive flat slices of `s` (views when `s` is contiguous), in parameter order."""
    flat = s.detach().reshape(-1)
    for start in range(0, flat.numel(), CHUNK):
        yield start, flat[start : start + CHUNK]


def kth_largest_key(scores: Mapping[str, torch.Tensor], k: int) -> tuple[int, int]:
    """(key of the k-th largest score, number of scores strictly above it), for 1 <= k <= N."""
    prefix, remaining = 0, k
    for shift in (24, 16, 8, 0):
        hist = torch.zeros(256, dtype=torch.int64)
        for s in scores.values():
            for _, part in _chunks(s):
                key = _order_keys(part)
                if shift < 24:
                    key = key[(key >> (shift + 8)) == prefix]
                hist += torch.bincount(((key >> shift) & 0xFF).cpu(), minlength=256)
        above = torch.flip(torch.cumsum(torch.flip(hist, [0]), 0), [0])  # above[b] = count in bins >= b
        bucket = int(torch.nonzero(above >= remaining).max())
        remaining -= int(above[bucket] - hist[bucket])
        prefix = (prefix << 8) | bucket
    return prefix, k - remaining


def top_fraction(scores: Mapping[str, torch.Tensor], ratio: float) -> Mask:
    """Boolean masks selecting exactly round(ratio * N) of the largest scores over all tensors."""
    if not 0.0 < ratio <= 1.0:
        raise UnlearnBenchError(f"ratio must be in (0, 1], got {ratio}")
    for name, s in scores.items():
        if not all(bool(torch.isfinite(part).all()) for _, part in _chunks(s)):
            raise UnlearnBenchError(f"attribution scores for {name} contain NaN or inf")
    total = sum(s.numel() for s in scores.values())
    k = round(ratio * total)
    if k == 0:
        raise UnlearnBenchError(f"ratio {ratio} selects no weight out of {total}")
    # the masks are allocated before any temporary, so the allocator can reuse and return the temporaries'
    # memory instead of leaving it stranded between long-lived masks
    mask: Mask = {name: torch.empty(s.shape, dtype=torch.bool, device=s.device) for name, s in scores.items()}
    threshold, n_above = kth_largest_key(scores, k)
    ties_left = k - n_above
    for name, s in scores.items():
        chosen = mask[name].view(-1)
        for start, part in _chunks(s):
            key = _order_keys(part)
            out = chosen[start : start + part.numel()]
            torch.gt(key, threshold, out=out)
            if ties_left > 0:
                tie = key == threshold
                if bool(tie.any()):
                    take = tie & (torch.cumsum(tie.to(torch.int64), 0) <= ties_left)
                    ties_left -= int(take.sum())
                    out |= take
    return mask


def density(mask: Mapping[str, torch.Tensor]) -> float:
    total = sum(m.numel() for m in mask.values())
    return sum(int(m.sum()) for m in mask.values()) / total


def mask_digest(mask: Mapping[str, torch.Tensor]) -> str:
    digest = hashlib.sha256()
    for name in sorted(mask):
        digest.update(name.encode())
        digest.update(mask[name].cpu().to(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]


def save(mask: Mask, folder: Path, metadata: dict[str, Any]) -> None:
    """mask.safetensors + mask.json (method, ratio, config, data hash, term norms, digest, density)."""
    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: v.cpu().contiguous() for k, v in mask.items()}, str(folder / "mask.safetensors"))
    meta = dict(metadata, digest=mask_digest(mask), density=density(mask))
    atomic_write_json(folder / "mask.json", meta)


def load(folder: Path) -> tuple[Mask, dict[str, Any]]:
    meta = json.loads((folder / "mask.json").read_text())
    return load_file(str(folder / "mask.safetensors")), meta


def check_covers(mask: Mapping[str, torch.Tensor], model: torch.nn.Module) -> None:
    """The mask has exactly one bool tensor per trainable parameter, of the same shape."""
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    missing, extra = sorted(set(params) - set(mask)), sorted(set(mask) - set(params))
    if missing or extra:
        raise UnlearnBenchError(f"mask does not match the model: missing {missing[:5]}, unknown {extra[:5]}")
    for name, p in params.items():
        if mask[name].shape != p.shape or mask[name].dtype != torch.bool:
            raise UnlearnBenchError(f"mask for {name}: {tuple(mask[name].shape)} {mask[name].dtype}, "
                                    f"parameter is {tuple(p.shape)}")
