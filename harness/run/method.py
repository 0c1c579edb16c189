"""What a method is, defined once: which spec fields say where a run executes (never part of anything's
identity), which say what a run measures (part of its run id, not of its method), and the `MethodKey` that
the sweep, the run ids' labels and every leaderboard table, page and plot group and name runs by.

A leaderboard row is exactly what splits a run id, less the seed and what the run measures (its probes and
whether the full evaluation ran: a sweep probes some seeds only and stops the extra seeds at the match, and
those runs are one method). Task and model are the board's own columns, not part of the method.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from harness.cache import stable_hash

# Where a run executes and what it keeps: neither its run id nor its method.
PLACEMENT = ("device", "attribution_buffers", "save_model", "keep_weights")
PLACEMENT_TRAIN = ("gradient_checkpointing",)
# What a run measures after it unlearns: part of its run id, not of its method.
MEASUREMENT = ("seed", "probes", "probe_config", "full_evaluation")
# The board's own columns.
SETTING = ("task", "model")


def keyed(spec: dict[str, Any]) -> dict[str, Any]:
    """A spec (plain data) without its placement fields: what a run id hashes."""
    out = {k: v for k, v in spec.items() if k not in PLACEMENT}
    out["train"] = {k: v for k, v in (out.get("train") or {}).items() if k not in PLACEMENT_TRAIN}
    return out


def _mode(spec: dict[str, Any]) -> str:
    """How the run unlearns when it is not one model trained in place: SPUNGE's split-and-merge, offset
    unlearning through a small model."""
    tags = []
    if (spec.get("spunge") or {}).get("enabled"):
        tags.append(f"spunge-{spec['spunge'].get('merge', 'ties')}")
    if (spec.get("offset") or {}).get("enabled"):
        tags.append(f"offset via {spec['offset'].get('small_model')}")
    return ", ".join(tags)


@dataclass(frozen=True, order=True)
class MethodKey:
    """One method: its mask (attribution at a ratio), objective, update rule, unlearning mode, and a digest
    of every other field that splits a run id (train settings, component configs, tuning grid, ...)."""

    attribution: str
    ratio: float
    objective: str
    optimizer: str = "adamw"
    mode: str = ""
    config: str = ""

    @classmethod
    def of(cls, spec: dict[str, Any], digest: bool = True) -> MethodKey:
        """The key of a spec in plain data (a record's `spec`); without the digest: the sweep's grid point."""
        rest = {k: v for k, v in keyed(spec).items() if k not in MEASUREMENT and k not in SETTING}
        return cls(attribution=str(spec.get("attribution")), ratio=float(spec.get("ratio", 1.0)),
                   objective=str(spec.get("objective")), optimizer=spec.get("optimizer") or "adamw",
                   mode=_mode(spec), config=stable_hash(rest, 8) if digest else "")

    @property
    def objective_text(self) -> str:
        """The objective with its update rule when that is not AdamW and its mode (`graddiff [soul]`,
        `npo [spunge-ties]`)."""
        tags = [t for t in (None if self.optimizer == "adamw" else self.optimizer, self.mode) if t]
        return f"{self.objective} [{', '.join(tags)}]" if tags else self.objective

    @property
    def label(self) -> str:
        """`attribution (ratio) + objective [update rule, mode]`."""
        return f"{self.attribution} ({self.ratio:g}) + {self.objective_text}"

    @property
    def family(self) -> str:
        """The label without the ratio: the line a ratio plot draws through the key's ratios."""
        return f"{self.attribution} + {self.objective_text}"


def labels(keys: list[MethodKey]) -> dict[MethodKey, str]:
    """Each key's label, with its config digest appended where two keys of the list share a label (two
    methods never share a name on one board)."""
    seen: dict[str, set[MethodKey]] = {}
    for k in keys:
        seen.setdefault(k.label, set()).add(k)
    return {k: k.label if len(seen[k.label]) == 1 else f"{k.label} #{k.config}" for k in keys}
