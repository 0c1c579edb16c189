"""Conformance checks every attribution, objective, probe and optimizer plugin must pass. Plugin authors run them on
their own plugin from the command line (`unlearn-bench check NAME`, on the tiny model) or from Python:

    from harness import check_attribution, check_objective, check_optimizer, check_probe
    check_attribution("my-method", model, tokenizer, forget_examples, retain_examples)
    check_objective("my-loss", model, tokenizer, forget_examples, retain_examples)
    check_probe("my-attack", model, tokenizer)
    check_optimizer("my-rule")

Each check raises ConformanceError with what went wrong.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from typing import Any

import torch

from harness.api import AttributionData, EvalContext, Example, LossOutput, Metric, ProbeContext, UnlearnBatch
from harness.config import from_dict, to_dict
from harness.errors import UnlearnBenchError
from harness.learn import masks
from harness.learn.data import make_batches
from harness.learn.optim import MaskedOptimizer
from harness.plugins import get_registry


class ConformanceError(UnlearnBenchError):
    pass


def _scores(attribution: Any, model, tok, forget: Sequence[Example], retain: Sequence[Example], seed: int,
            ratio: float = 1.0):
    data = AttributionData(model, tok, make_batches(tok, forget, 4, 64), make_batches(tok, retain, 4, 64),
                           make_batches(tok, [Example(e.prompt, " I don't know.") for e in forget], 4, 64),
                           seed=seed, ratio=ratio)
    return attribution.scores(data)


def _round_trip(kind: str, name: str, config: dict[str, Any] | None) -> Any:
    """Build the component and check its config survives plain data (YAML, records)."""
    registry = get_registry()
    component = registry.build(kind, name, config)
    if from_dict(registry.get(kind, name).cls.Config, to_dict(component.config), f"{name} config") != component.config:
        raise ConformanceError(f"{name}: config does not round-trip through plain data")
    return component


def _unchanged(name: str, model, before: dict[str, torch.Tensor], what: str) -> None:
    for n, p in model.named_parameters():
        if not torch.equal(p.detach(), before[n]):
            raise ConformanceError(f"{name}: {what} changed parameter {n}")


def _coverage(name: str, produced: str, tensors: dict[str, torch.Tensor], model) -> None:
    """Exactly the trainable parameters, each with its shape: says which are missing and which are extra."""
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    missing, extra = sorted(set(trainable) - set(tensors)), sorted(set(tensors) - set(trainable))
    if missing:
        raise ConformanceError(f"{name}: {produced} miss {len(missing)} trainable parameters, e.g. {missing[:3]}")
    if extra:
        raise ConformanceError(f"{name}: {produced} have {len(extra)} entries that are no trainable parameter, "
                               f"e.g. {extra[:3]}")
    for n, t in tensors.items():
        if t.shape != trainable[n].shape:
            raise ConformanceError(
                f"{name}: {produced} {n} has shape {tuple(t.shape)}, parameter {tuple(trainable[n].shape)}")


def check_attribution(name: str, model, tokenizer, forget: Sequence[Example], retain: Sequence[Example],
                      ratio: float = 0.3, config: dict[str, Any] | None = None) -> None:
    """In this order: the config round-trips through plain data; computing scores leaves the model and its
    gradients untouched; scores (or a ready mask) cover exactly the trainable parameters with their shapes;
    scores are finite; two calls under one seed agree; the harness's mask from the scores hits `ratio`
    exactly."""
    entry = get_registry().get("attribution", name)
    attribution = _round_trip("attribution", name, config)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    first = _scores(attribution, model, tokenizer, forget, retain, seed=3, ratio=ratio)
    _unchanged(name, model, before, "computing scores")
    for n, p in model.named_parameters():
        if p.grad is not None:
            raise ConformanceError(f"{name}: left a gradient on {n}")
    produced = "mask" if first.mask is not None else "scores"
    tensors = getattr(first, produced)
    if tensors is None:
        if not entry.cls.ignores_ratio:
            raise ConformanceError(f"{name}: returned no scores or mask but does not declare ignores_ratio")
        return
    _coverage(name, produced, tensors, model)
    if produced == "scores":
        for n, s in tensors.items():
            if not torch.isfinite(s).all():
                raise ConformanceError(f"{name}: score {n} has NaN or inf")
    again = getattr(_scores(copy.deepcopy(attribution), model, tokenizer, forget, retain, seed=3, ratio=ratio),
                    produced)
    if again is None or any(n not in again or not torch.equal(t, again[n]) for n, t in tensors.items()):
        raise ConformanceError(f"{name}: {produced} differ between two calls with the same seed")
    if produced == "mask":
        masks.check_covers(first.mask, model)
        return
    mask = masks.top_fraction(first.scores, ratio)
    masks.check_covers(mask, model)
    total = sum(m.numel() for m in mask.values())
    if sum(int(m.sum()) for m in mask.values()) != round(ratio * total):
        raise ConformanceError(f"{name}: mask does not hit ratio {ratio}")


def _batch(tok, forget: Sequence[Example], retain: Sequence[Example]) -> UnlearnBatch:
    refusal = [Example(e.prompt, " I don't know.") for e in forget]
    first = [make_batches(tok, examples[:4], 4, 64)[0] for examples in (forget, retain, refusal)]
    return UnlearnBatch(*first)


def check_objective(name: str, model, tokenizer, forget: Sequence[Example], retain: Sequence[Example],
                    config: dict[str, Any] | None = None) -> None:
    """In this order: the config round-trips through plain data; `loss` returns a LossOutput whose loss is a
    finite scalar with a gradient and whose parts are finite numbers; it leaves the model (and the frozen
    reference, for `needs_reference`) untouched; its gradient is finite and reaches a parameter `updates()`
    allows; two calls under one seed agree."""
    cls = get_registry().get("objective", name).cls
    batch = _batch(tokenizer, forget, retain)
    reference = copy.deepcopy(model).eval().requires_grad_(False) if cls.needs_reference else None
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    losses = []
    for _ in range(2):
        torch.manual_seed(3)
        objective = _round_trip("objective", name, config)
        model.zero_grad(set_to_none=True)
        out = objective.loss(model, batch, reference)
        if not isinstance(out, LossOutput):
            raise ConformanceError(f"{name}: loss() returned {type(out).__name__}, not a LossOutput")
        if not (isinstance(out.loss, torch.Tensor) and out.loss.dim() == 0):
            raise ConformanceError(f"{name}: the loss is not a scalar tensor: {out.loss!r}")
        if not torch.isfinite(out.loss):
            raise ConformanceError(f"{name}: the loss is {float(out.loss.detach())}")
        if not out.loss.requires_grad:
            raise ConformanceError(f"{name}: the loss has no gradient (computed under no_grad or detached?)")
        bad = {k: v for k, v in out.parts.items() if not (isinstance(v, (int, float)) and math.isfinite(v))}
        if bad:
            raise ConformanceError(f"{name}: parts must be finite numbers, got {bad}")
        _unchanged(name, model, before, "computing the loss")
        out.loss.backward()
        grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
        nonfinite = [n for n, g in grads.items() if not torch.isfinite(g).all()]
        if nonfinite:
            raise ConformanceError(f"{name}: the gradient of {nonfinite[0]} has NaN or inf")
        if not any(objective.updates(n) and bool(g.abs().sum() > 0) for n, g in grads.items()):
            raise ConformanceError(f"{name}: no parameter that updates() allows receives a gradient")
        losses.append(float(out.loss.detach()))
    model.zero_grad(set_to_none=True)
    if reference is not None:
        _unchanged(name, reference, before, "the loss (on the frozen reference)")
    if losses[0] != losses[1]:
        raise ConformanceError(f"{name}: the loss differs between two calls with the same seed: {losses}")


def check_optimizer(name: str, config: dict[str, Any] | None = None) -> None:
    """The config round-trips; on a half-masked parameter and an unmasked one, three steps under the masked
    optimizer leave the masked-out entries bit-identical, keep state only for the selected entries (each
    state tensor has their count), move the selected entries, stay finite, and agree between two runs."""
    results = []
    for _ in range(2):
        rule = _round_trip("optimizer", name, config)
        g = torch.Generator().manual_seed(0)
        a, b = torch.randn(6, 8, generator=g), torch.randn(8, generator=g)
        mask = torch.rand(6, 8, generator=g) < 0.5
        start = a.clone()
        pa, pb = torch.nn.Parameter(a), torch.nn.Parameter(b)
        opt = MaskedOptimizer([{"params": [pa, pb], "weight_decay": 0.1}], {id(pa): mask}, lr=1e-2, rule=rule,
                              max_grad_norm=1.0)
        for _step in range(3):
            pa.grad, pb.grad = torch.randn(6, 8, generator=g), torch.randn(8, generator=g)
            opt.step()
        if not torch.equal(pa.detach()[~mask], start[~mask]):
            raise ConformanceError(f"{name}: a masked-out weight changed")
        if torch.equal(pa.detach()[mask], start[mask]):
            raise ConformanceError(f"{name}: three steps did not move the selected weights")
        if not (torch.isfinite(pa).all() and torch.isfinite(pb).all()):
            raise ConformanceError(f"{name}: the weights are not finite after three steps")
        sized = {k: v.numel() for k, v in opt.state[pa].items() if isinstance(v, torch.Tensor) and v.dim() > 0}
        wrong = {k: n for k, n in sized.items() if n != int(mask.sum())}
        if wrong:
            raise ConformanceError(f"{name}: state {wrong} is not sized to the {int(mask.sum())} selected entries")
        results.append((pa.detach().clone(), pb.detach().clone()))
    if not all(torch.equal(x, y) for x, y in zip(results[0], results[1], strict=True)):
        raise ConformanceError(f"{name}: two runs of the same steps disagree")


PROBE_TASK = ("tofu-mini", {"eval_limit": 4, "utility_limit": 2, "max_new_tokens": 2, "retain_authors": 1,
                            "probe_limit": 2, "max_length": 256})
DIRECTIONS = ("higher", "lower", "zero", "info")


def check_probe(name: str, model, tokenizer, config: dict[str, Any] | None = None) -> None:
    """On tofu-mini (a few rows), with `model` standing for the unlearned, target and retain models alike: the
    config round-trips through plain data; `run` returns a dict of Metric, each with a known direction and a
    finite value (or None); the model is left as it was; two runs agree."""
    from harness.plugins import get_registry as registry

    task = registry().build("task", PROBE_TASK[0], PROBE_TASK[1])
    snapshot = copy.deepcopy(model)
    own = task.evaluate(model, tokenizer, EvalContext(batch_size=8))
    reference = {"model": "the model itself", "metrics": {k: vars(m) for k, m in own.metrics.items()}}
    ctx = ProbeContext(task=task, tokenizer=tokenizer, evaluate=lambda m: task.evaluate(m, tokenizer, EvalContext(
                           batch_size=8)), unlearned=own.metrics, target=reference, retain=reference,
                       load=lambda _path: copy.deepcopy(snapshot), cached=lambda _name, _key, compute: compute(),
                       batch_size=8)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    results = []
    for _ in range(2):
        torch.manual_seed(3)
        out = _round_trip("probe", name, config).run(model, ctx)
        if not isinstance(out, dict) or not out:
            raise ConformanceError(f"{name}: run() must return a non-empty dict of Metric, got {out!r}")
        for key, m in out.items():
            if not isinstance(m, Metric):
                raise ConformanceError(f"{name}: metric {key!r} is {type(m).__name__}, not a Metric")
            if m.direction not in DIRECTIONS:
                raise ConformanceError(f"{name}: metric {key!r} has direction {m.direction!r}; use {DIRECTIONS}")
            if m.value is not None and not (isinstance(m.value, (int, float)) and math.isfinite(m.value)):
                raise ConformanceError(f"{name}: metric {key!r} is {m.value!r}, not a finite number or None")
        _unchanged(name, model, before, "the probe")
        results.append({k: m.value for k, m in out.items()})
    if results[0] != results[1]:
        raise ConformanceError(f"{name}: two runs under one seed disagree: {results}")


SAMPLE_FORGET = [Example(f"Question: Who is author {i}?\nAnswer:", f" Author {i} writes about dragons.")
                 for i in range(6)]
SAMPLE_RETAIN = [Example(f"Question: Where is city {i}?\nAnswer:", f" City {i} lies by a river.") for i in range(6)]


def check(name: str, model: str = "tiny-llama", config: dict[str, Any] | None = None) -> str:
    """Run the checks of the component called `name` (an attribution, an objective or a probe) on a fresh
    `model` with sample forget and retain examples (a probe: a few tofu-mini rows). Returns the kind checked."""
    from harness.run import models

    registry = get_registry()
    kinds = [k for k in ("attribution", "objective", "probe", "optimizer") if name in registry.names(k)]
    if not kinds:
        registry.get("attribution", name)  # the unknown-name error, with the names that exist
    for kind in kinds:
        if kind == "optimizer":
            check_optimizer(name, config)
            continue
        net, tok = models.load(model)
        if kind == "probe":
            check_probe(name, net, tok, config=config)
            continue
        checker = check_attribution if kind == "attribution" else check_objective
        checker(name, net, tok, SAMPLE_FORGET, SAMPLE_RETAIN, config=config)
    return " and ".join(kinds)
