"""Matched forgetting: unlearn until the forgetting of the retain model is reached, then compare methods there.

A cheap teacher-forced probe (the task's `ProbeSets`: each set scored as the mean over its examples of
P̃ = exp(-token-mean NLL)) runs every `check_every` optimizer steps. The run stops at the first check whose
forget probe F is at or below the level L (the retain model's own forget probe), or when its step budget
(`train.max_steps`) runs out. With `bisect` (default), the model is then moved back along the straight line
between the last check above L and the one that crossed it, θ(α) = θ_prev + α (θ_next − θ_prev), bisecting α on
the forget probe until forget efficacy is within ±tolerance of 1: one real model at the level, on which the
utility probe, the full evaluation and every probe run. From the trajectory (step 0 is the target model):

- forget efficacy e = (F_0 - F) / (F_0 - L): 0 at the target, 1 at the retain level, above 1 past it;
- utility at the match: the bisected model's utility probe; without bisection, the utility probe linearly
  interpolated (in F) between the last check above L and the first check at or below it; undefined (None)
  when the level was never reached;
- trade-off score: the area under u(e) for e in [0, 1], where u is the utility probe divided by the retain
  model's and u(e) is the utility at the first moment the run reached efficacy e (a run that falls back and
  advances again is not credited twice). The retain model scores 1 (it sits at e = 1 with u = 1 all the
  way); a run that never reaches the level gets no area beyond the efficacy it reached.

Definitions and their tests: docs/metrics.md ("Matched forgetting").
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from harness.api import ProbeSets
from harness.measure import metrics, scoring
from harness.run.features import MatchConfig


def probe_questions(model, tokenizer, sets: ProbeSets, parts: Sequence[str], batch_size: int,
                    max_length: int) -> dict[str, list[float]]:
    """Per question, the probe value of each set of `parts` (forget, utility, validation) for `model`, from one
    batched scoring pass: P̃, or P̃ / (P̃ + Σ P̃(wrong)) where the set has alternatives. Keys: forget, validation
    and `utility/<part>` for each utility part. Examples are cut to `sets.max_length` tokens where the task sets
    it, else to `max_length`."""
    if "validation" in parts and not sets.validation:
        raise ValueError("the task has no validation examples for tuning (TOFU: set "
                         "task_config.validation_authors)")
    named = {"forget": sets.forget, "validation": sets.validation}
    groups = {k: named[k] for k in ("forget", "validation") if k in parts}
    if "utility" in parts:
        groups.update(sets.utility)
    groups.update({f"wrong/{k}": [ex for alts in sets.alternatives[k] for ex in alts]
                   for k in list(groups) if k in sets.alternatives})
    examples = [ex for g in groups.values() for ex in g]
    nll = scoring.completion_nll(model, tokenizer, examples, batch_size, sets.max_length or max_length)
    p = metrics.probability(nll)
    values, start = {}, 0
    for name, g in groups.items():
        values[name] = p[start : start + len(g)]
        start += len(g)

    def per_question(k: str) -> list[float]:
        true = values[k]
        if k not in sets.alternatives:
            return true.tolist()
        wrong = values[f"wrong/{k}"].reshape(len(true), -1).sum(axis=1)
        return (true / (true + wrong + 1e-10)).tolist()

    out = {k: per_question(k) for k in ("forget", "validation") if k in parts}
    if "utility" in parts:
        out.update({f"utility/{k}": per_question(k) for k in sets.utility})
    return out


def combine(questions: dict[str, Sequence[float]]) -> dict[str, float]:
    """Set values from per-question values: the mean of each set; utility, the harmonic mean of its parts'."""
    out = {k: float(np.mean(v)) for k, v in questions.items() if "/" not in k}
    parts = [float(np.mean(v)) for k, v in questions.items() if k.startswith("utility/")]
    if parts:
        out["utility"] = metrics.harmonic_mean(parts)
    return out


def probe(model, tokenizer, sets: ProbeSets, parts: Sequence[str], batch_size: int,
          max_length: int) -> dict[str, float]:
    """The probe values of `parts` for `model` (`combine` of `probe_questions`)."""
    return combine(probe_questions(model, tokenizer, sets, parts, batch_size, max_length))


def efficacy(forget: float, start: float, level: float) -> float:
    """(F_0 - F) / (F_0 - L): 0 at the target, 1 at the retain level."""
    if start <= level:
        raise ValueError(f"the target's forget probe ({start:.4g}) is already at or below the level "
                         f"({level:.4g}): nothing to unlearn")
    return (start - forget) / (start - level)


def _segments(points: list[tuple[float, float]]):
    """Each segment's part that advances the running maximum of e, clipped to [0, 1]: (lo, u(lo), hi, u(hi))."""
    reach = 0.0
    for (e1, u1), (e2, u2) in itertools.pairwise(points):
        if e2 > reach:
            lo, hi = max(e1, reach), min(e2, 1.0)
            if hi > lo:
                slope = (u2 - u1) / (e2 - e1)
                yield lo, u1 + slope * (lo - e1), hi, u1 + slope * (hi - e1)
            reach = e2
        if reach >= 1.0:
            return


def tradeoff_score(points: list[tuple[float, float]]) -> float:
    """Area under u(e) over e in [0, 1] along the first-reach envelope (trapezoids between checks)."""
    return float(sum((hi - lo) * (ua + ub) / 2 for lo, ua, hi, ub in _segments(points)))


def at_match(points: list[tuple[float, float]]) -> float | None:
    """u at e = 1, interpolated on the segment that first reaches it; None when e never reaches 1."""
    for _, _, hi, ub in _segments(points):
        if hi >= 1.0:
            return ub
    return None


def summarize(trajectory: list[dict[str, Any]], key: str, level: float, reference: float,
              matched: dict[str, Any] | None = None) -> dict[str, Any]:
    """Matched-forgetting numbers of one run. `trajectory`: probe rows in step order, the first the target
    (step 0); `key`: the utility probe to compare (utility, or validation for tuning); `reference`: the
    retain model's value of that probe (u = value / reference). `matched`: the bisected model (`bisect`), which
    replaces the check that crossed the level: it counts as e = 1 when it is within the tolerance of it (else it
    stands at its own efficacy, past 1, and the utility at the match is interpolated), and the stop is there."""
    start = trajectory[0]["forget"]
    rows = trajectory if matched is None else [r for r in trajectory if r["step"] <= matched["from_step"]]
    points = [(efficacy(row["forget"], start, level), row[key] / reference) for row in rows]
    if matched is not None:  # within the tolerance it stands for e = 1; past it (out of probes), where it is
        e = 1.0 if matched.get("within", True) else efficacy(matched["probe"]["forget"], start, level)
        points.append((e, matched["probe"][key] / reference))
    reached = next((row["step"] for row in trajectory if row["forget"] <= level), None)
    rel = at_match(points)
    last = trajectory[-1] if matched is None else matched["probe"]
    return {"level": level, "start": start, "probe": key, "reference": reference,
            "reached": reached is not None, "step": reached, "checks": len(trajectory) - 1,
            "at_match": None if rel is None else rel * reference, "at_match_relative": rel,
            "tradeoff": tradeoff_score(points), "efficacy_at_stop": efficacy(last["forget"], start, level),
            "forget_at_stop": last["forget"], "max_efficacy": max(e for e, _ in points),
            "bisection": matched}


def snapshot(net: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A CPU copy of the weights a run trains (those that require gradients), by name."""
    return {n: p.detach().to("cpu", copy=True) for n, p in net.named_parameters() if p.requires_grad}


def bisect(net: torch.nn.Module, before: dict[str, torch.Tensor], forget_of: Callable[[torch.nn.Module], float],
           start: float, level: float, cfg: MatchConfig) -> dict[str, Any]:
    """Put `net` (whose weights are past the level) at θ(α) = θ_before + α (θ_now − θ_before), the α in (0, 1]
    whose forget efficacy is within ±cfg.tolerance of 1, found by bisection on the forget probe alone. Past
    cfg.max_bisections, the smallest α known to be past the level (1 if no probe tried was). Returns α, the
    probes tried and whether the tolerance was met; `net` is left at the chosen α."""
    params = {n: p for n, p in net.named_parameters() if n in before}
    after = {n: p.detach().to("cpu", copy=True) for n, p in params.items()}

    def place(alpha: float) -> None:
        with torch.no_grad():
            for n, p in params.items():
                p.copy_(torch.lerp(before[n].float(), after[n].float(), alpha).to(p.device, p.dtype))

    low, high, tried = 0.0, 1.0, []
    for _ in range(cfg.max_bisections):
        alpha = (low + high) / 2
        place(alpha)
        e = efficacy(forget_of(net), start, level)
        tried.append({"alpha": alpha, "efficacy": e})
        if abs(e - 1.0) <= cfg.tolerance:
            return {"alpha": alpha, "within": True, "tried": tried}
        low, high = (low, alpha) if e > 1.0 else (alpha, high)
    place(high)
    return {"alpha": high, "within": False, "tried": tried}
