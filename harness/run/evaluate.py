"""Scoring a model on a task without unlearning: published checkpoints, the target and retain references.
The result is an `eval` record beside the run records, so leaderboards can show it."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from harness import distributed
from harness.api import EvalContext
from harness.cache import stable_hash
from harness.config import to_dict
from harness.measure import lm_eval_bridge
from harness.plugins import get_registry
from harness.run import identity, models, prepare, records


def evaluate_model(model_name: str, task_name: str, task_config: dict[str, Any] | None = None,
                   utility: list[str] | None = None, utility_limit: int | None = None, retain: str | None = None,
                   dtype: str = "float32", device: str = "auto", results_dir: Path | None = None,
                   generation: str = "hf") -> records.Record:
    """The task's metrics (and lm-eval utility) of `model_name`; written as a record if `results_dir`."""
    registry = get_registry()
    entry = registry.get("task", task_name)
    task = registry.build("task", task_name, task_config or {}, "task_config")
    backend = registry.build("backend", generation, {}, "generation")
    batch = task.eval_batch_size
    started = time.perf_counter()
    reference = prepare.reference_eval(task, retain, batch, None, dtype, device) if retain else None
    model, tok = models.load(model_name, dtype, device)
    evaluation = task.evaluate(model, tok, EvalContext(reference["stats"] if reference else None, batch, backend))
    record = records.Record(
        kind="eval", role="eval", model=model_name, retain_model=retain, status="finished",
        spec={"task": task_name, "model": model_name, "task_config": to_dict(task.config), "utility": utility or [],
              "utility_limit": utility_limit, "dtype": dtype, "generation": generation})
    if utility and distributed.is_main():  # lm-eval runs on the main process under a multi-process launch
        record.lm_eval = lm_eval_bridge.evaluate(model, tok, utility, utility_limit, batch)
        evaluation.metrics.update(lm_eval_bridge.metrics(record.lm_eval))
    record.metrics = {k: vars(m) for k, m in evaluation.metrics.items()}
    record.stats, record.samples = evaluation.stats, evaluation.samples
    record.timings = {"evaluation_s": time.perf_counter() - started}
    record.memory = records.peak_memory_mb()
    record.provenance = records.provenance({"task": identity.fingerprint(entry)})
    if results_dir is not None and distributed.is_main():
        rid = f"{task_name}-eval-{stable_hash(dict(record.spec, retain=retain), 12)}"
        record.path = str(records.write(results_dir, rid, record))
    return record
