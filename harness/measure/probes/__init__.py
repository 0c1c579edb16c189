"""Post-unlearning probes (docs/metrics.md, "Probes"): attacks and diagnostics run on the unlearned model
after its evaluation. A run spec lists them (`probes: [quantization, relearn, mia]`); each returns metrics
with their direction, which the run records under the group "probe" (and `record.probes` keeps each probe's
settings and time). Built-ins: `quantization`, `relearn`, `mia`, `extraction`; others register through
`register_probes`.
"""

from __future__ import annotations

import logging
import time
from dataclasses import replace
from typing import Any

from harness.api import EvalContext, Evaluation, Metric, ProbeContext, Task
from harness.cache import cache_root, stable_hash
from harness.config import to_dict
from harness.run import models, prepare
from harness.run.identity import core_digest

log = logging.getLogger(__name__)


def run(spec, registry, task: Task, model, tok, evaluation: Evaluation, references: dict[str, Any],
        backend) -> tuple[dict[str, Metric], dict[str, Any]]:
    """Every probe of `spec` on the unlearned `model`: (their metrics, group "probe"; per-probe settings and
    seconds). `references`: {"target": path, "retain": path or None, "retain_eval": the retain model's
    evaluation}."""
    ctx = context(spec, task, tok, evaluation, references, backend)
    metrics: dict[str, Metric] = {}
    info: dict[str, Any] = {}
    for name in spec.probes:
        probe = registry.build("probe", name, spec.probe_config.get(name), f"probe_config of {name!r}")
        log.info("probe %s on the unlearned model", name)
        t = time.perf_counter()
        out = probe.run(model, ctx)
        clash = sorted(set(out) & (set(metrics) | set(evaluation.metrics)))
        if clash:
            raise ValueError(f"probe {name!r} returned metrics {clash} that the run already has")
        metrics.update({k: replace(m, group="probe") for k, m in out.items()})
        info[name] = {"config": to_dict(probe.config), "seconds": time.perf_counter() - t, "metrics": sorted(out)}
    return metrics, info


def context(spec, task: Task, tok, evaluation: Evaluation, references: dict[str, Any], backend) -> ProbeContext:
    """The probes' view of a run: the task's evaluation with the run's settings, the reference models'
    evaluations (cached), loading with the run's dtype and device, and a cache for reference results."""
    retain_eval = references["retain_eval"]
    target_eval = prepare.reference_eval(task, references["target"], task.eval_batch_size,
                                         retain_eval if references["retain"] else None, spec.dtype, spec.device)

    def evaluate(m) -> Evaluation:
        return task.evaluate(m, tok, EvalContext(retain_eval["stats"], task.eval_batch_size, backend))

    def cached(name: str, key: dict[str, Any], compute) -> dict[str, Any]:
        full = dict(key, task=task.name, dtype=spec.dtype, core=core_digest())
        path = cache_root() / "probes" / f"{name}-{stable_hash(full, 16)}.json"
        return prepare.cached_json(path, compute)

    retain = {"model": references["retain"], "metrics": retain_eval["metrics"]} if references["retain"] else None
    return ProbeContext(task=task, tokenizer=tok, evaluate=evaluate, unlearned=dict(evaluation.metrics),
                        target={"model": references["target"], "metrics": target_eval["metrics"]}, retain=retain,
                        load=lambda path: models.load(path, spec.dtype, spec.device)[0], cached=cached,
                        seed=spec.seed, batch_size=task.eval_batch_size)


def undone(after: float | None, unlearned: float | None, target: float | None) -> float | None:
    """The fraction of unlearning's change to a metric that an attack undid: (after - unlearned) / (target -
    unlearned); 0: nothing came back, 1: back at the target's value. None where unlearning changed nothing."""
    if after is None or unlearned is None or target is None or target == unlearned:
        return None
    return (after - unlearned) / (target - unlearned)
