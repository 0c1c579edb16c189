"""Mask analysis: density per module type and per layer, pairwise overlap (Jaccard), and a heatmap."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import BinaryIO

import torch

MODULE_TYPES = (  # (type, pattern on the parameter name), first match wins
    ("q", r"q_proj"), ("k", r"k_proj"), ("v", r"v_proj"), ("o", r"o_proj"), ("gate", r"gate_proj"),
    ("up", r"up_proj"), ("down", r"down_proj"), ("embedding", r"embed"), ("head", r"lm_head"), ("norm", r"norm"),
)
LAYER = re.compile(r"layers\.(\d+)\.")


def module_type(name: str) -> str:
    for kind, pattern in MODULE_TYPES:
        if re.search(pattern, name):
            return kind
    return "other"


def layer_of(name: str) -> int | None:
    match = LAYER.search(name)
    return int(match.group(1)) if match else None


def density_by(mask: Mapping[str, torch.Tensor], key) -> dict:
    """Fraction of selected weights grouped by key(name)."""
    chosen: dict = {}
    total: dict = {}
    for name, m in mask.items():
        k = key(name)
        chosen[k] = chosen.get(k, 0) + int(m.sum())
        total[k] = total.get(k, 0) + m.numel()
    return {k: chosen[k] / total[k] for k in total}


def _in_layers(mask: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The parameters that belong to a numbered decoder layer."""
    return {n: m for n, m in mask.items() if layer_of(n) is not None}


def layer_module_density(mask: Mapping[str, torch.Tensor]) -> dict[tuple[int, str], float]:
    return density_by(_in_layers(mask), lambda n: (layer_of(n), module_type(n)))


def jaccard(a: Mapping[str, torch.Tensor], b: Mapping[str, torch.Tensor]) -> float:
    """|A ∩ B| / |A ∪ B| over the selected weights of two masks of one model."""
    if set(a) != set(b):
        raise ValueError("masks cover different parameters (different models?)")
    inter = sum(int((a[n] & b[n]).sum()) for n in a)
    union = sum(int((a[n] | b[n]).sum()) for n in a)
    return inter / union if union else 1.0


def report(masks: Sequence[tuple[str, Mapping[str, torch.Tensor]]]) -> str:
    """A plain-text report: per-module-type and per-layer density of each mask, then pairwise Jaccard."""
    lines = []
    types = [t for t, _ in MODULE_TYPES] + ["other"]
    header = f"{'mask':<28}" + "".join(f"{t:>10}" for t in types)
    lines += ["density per module type", header]
    for label, m in masks:
        d = density_by(m, module_type)
        lines.append(f"{label:<28}" + "".join(f"{d[t]:>10.3f}" if t in d else f"{'-':>10}" for t in types))
    lines.append("")
    lines.append("density per layer")
    for label, m in masks:
        d = density_by(_in_layers(m), layer_of)
        lines.append(f"{label:<28}" + " ".join(f"{d[k]:.2f}" for k in sorted(d)))
    if len(masks) > 1:
        lines += ["", "pairwise Jaccard overlap"]
        for i, (la, a) in enumerate(masks):
            for lb, b in masks[i + 1 :]:
                lines.append(f"{la} vs {lb}: {jaccard(a, b):.4f}")
    return "\n".join(lines) + "\n"


def heatmap(masks: Sequence[tuple[str, Mapping[str, torch.Tensor]]], out: Path | BinaryIO) -> None:
    """One layer × module-type density heatmap per mask, side by side, as a PNG."""
    density_heatmap([(label, layer_module_density(m)) for label, m in masks], out)


def density_heatmap(items: Sequence[tuple[str, Mapping[tuple[int, str], float]]], out: Path | BinaryIO) -> None:
    """Heatmaps of (layer, module type) -> fraction updated, side by side, as a PNG (file or stream)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    types = ["q", "k", "v", "o", "gate", "up", "down", "norm"]
    fig, axes = plt.subplots(1, len(items), figsize=(3.2 * len(items) + 1, 6), squeeze=False)
    for ax, (label, d) in zip(axes[0], items, strict=True):
        layers = sorted({layer for layer, _ in d})
        grid = [[d.get((layer, t), float("nan")) for t in types] for layer in layers]
        image = ax.imshow(grid, aspect="auto", vmin=0, vmax=1, cmap="viridis")
        ax.set_xticks(range(len(types)), types, rotation=45)
        ax.set_title(label, fontsize=9)
    axes[0][0].set_ylabel("layer")
    fig.colorbar(image, ax=axes[0].tolist(), label="fraction updated")
    if isinstance(out, Path):
        out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110, format="png", metadata={"Software": None})
    plt.close(fig)
