"""Building and caching the models a task needs: the target (has learned the forget data) and the retain
reference (never saw it), plus the reference evaluations that forget quality is measured against.

Each is cached under a key hashing everything that determines it; a second call is a cache hit.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from harness import distributed
from harness.api import EvalContext, LossOutput, Task
from harness.cache import cache_root, cached_dir, stable_hash
from harness.config import to_dict
from harness.io import atomic_write_json
from harness.learn.data import examples_hash
from harness.learn.train import autocast_on, finetune_batches, log_step, train
from harness.measure.scoring import mean_nll
from harness.run import models
from harness.run.identity import code_digest, core_digest
from harness.run.spec import PrepareConfig

log = logging.getLogger(__name__)
Which = Literal["target", "retain"]


def _finetune_loss(model, batch) -> LossOutput:
    return LossOutput(mean_nll(model, batch).mean())


def model_key(task: Task, base: str, which: Which, cfg: PrepareConfig) -> str:
    examples = task.finetune_examples(which)
    max_length = task.max_length
    return stable_hash({"base": models.versioned(base), "task": task.name, "which": which,
                        "examples": examples_hash(examples),
                        "max_length": max_length, "prepare": _determining(cfg), "core": core_digest(), "format": 1})


def _determining(cfg: PrepareConfig) -> dict:
    """The settings that determine a fine-tuned model (`order` arranges unlearning batches only)."""
    return {k: v for k, v in to_dict(cfg).items() if k != "order"}


def ensure_model(task: Task, base: str, which: Which, cfg: PrepareConfig, dtype: str = "float32",
                 device: str = "auto", provided: bool = True) -> tuple[str, bool]:
    """Path (or hub id) of the task's `which` model, fine-tuning `base` on first use; `provided` false ignores
    a model the task config names (offset unlearning's small model is built from its own base). Returns
    (path, hit)."""
    provided = task.provided_model(which) if provided else None
    if provided:
        return provided, True
    if cfg.bf16_autocast is None:  # null resolves here, so that the cache key names what the model computed
        cfg = dataclasses.replace(cfg, bf16_autocast=autocast_on(cfg, models.pick_device(device)))
    key = f"{task.name}-{which}-{model_key(task, base, which, cfg)}"
    if dtype != "float32":
        key += f"-{dtype}"

    def build(out: Path) -> None:
        log.info("fine-tuning the %s model of %s from %s (cache key %s)", which, task.name, base, key)
        model, tok = models.load(base, dtype, device)
        examples = task.finetune_examples(which)
        batches = finetune_batches(tok, examples, cfg, task.max_length, cfg.seed)
        result = train(model, batches, _finetune_loss, cfg, seed=cfg.seed, progress=log_step)
        model.save_pretrained(out)
        tok.save_pretrained(out)
        atomic_write_json(out / "unlearn_bench_prepare.json", {
            "task": task.name, "which": which, "base": base, "prepare": to_dict(cfg),
            "examples": len(examples), "seconds": result.seconds, "bf16_autocast": result.bf16_autocast,
            "master_weights": result.master_weights,
            "final_loss": result.steps[-1]["loss"] if result.steps else None})

    path, hit = cached_dir("prepared", key, build)
    return str(path), hit


def reference_eval(task: Task, model_path: str, batch_size: int, against: dict | None = None,
                   dtype: str = "float32", device: str = "auto") -> dict:
    """The task's evaluation of a reference model (target or retain), cached by model and task config.

    `against` is the retain model's reference evaluation, for forget quality (None for the retain model
    itself).
    """
    key = stable_hash({"model": models.versioned(model_path), "task": task.name, "config": to_dict(task.config),
                       "code": code_digest(type(task).__module__), "core": core_digest(),
                       "against": against["model"] if against else None, "dtype": dtype, "format": 1})

    def compute() -> dict:
        log.info("evaluating %s on %s (once: the result is cached)", model_path, task.name)
        model, tok = models.load(model_path, dtype, device)
        stats = against["stats"] if against else None
        evaluation = task.evaluate(model, tok, EvalContext(reference_stats=stats, batch_size=batch_size))
        return {"model": model_path, "metrics": {k: vars(m) for k, m in evaluation.metrics.items()},
                "stats": evaluation.stats, "samples": evaluation.samples}

    return cached_json(cache_root() / "evals" / f"{task.name}-{key}.json", compute, collective=True)


def _reference_probe(task: Task, model_path: str, batch_size: int, dtype: str, device: str) -> dict[str, Any]:
    """The matched-forgetting probe (harness/measure/match.py) of a reference model, every part the task has: per
    question and combined, cached by model and task config."""
    from harness.measure import match

    key = stable_hash({"model": models.versioned(model_path), "task": task.name, "config": to_dict(task.config),
                       "dtype": dtype, "code": code_digest(type(task).__module__), "core": core_digest(),
                       "format": 4})  # 4: per-question values kept beside the combined ones

    def compute() -> dict:
        log.info("probing %s on %s for matched forgetting (once: the result is cached)", model_path, task.name)
        model, tok = models.load(model_path, dtype, device)
        sets = task.probe_sets()
        parts = ("forget", "utility", "validation") if sets.validation else ("forget", "utility")
        questions = match.probe_questions(model, tok, sets, parts, batch_size, task.max_length)
        return {"values": match.combine(questions), "questions": questions}

    return cached_json(cache_root() / "evals" / f"probe-{task.name}-{key}.json", compute, collective=True)


def reference_probe(task: Task, model_path: str, batch_size: int, dtype: str = "float32",
                    device: str = "auto") -> dict[str, float]:
    """The matched-forgetting probe values of a reference model (cached)."""
    return _reference_probe(task, model_path, batch_size, dtype, device)["values"]


def reference_probe_questions(task: Task, model_path: str, batch_size: int, dtype: str = "float32",
                              device: str = "auto") -> dict[str, list[float]]:
    """The same probe per question (the leaderboard's question-level bootstrap reads them from run records)."""
    return _reference_probe(task, model_path, batch_size, dtype, device)["questions"]


def reference_utility(model_path: str, tasks: list[str], limit: int | None, batch_size: int,
                      dtype: str = "float32", device: str = "auto") -> dict:
    """lm-eval's numbers for a reference model (target or retain) on a run spec's `utility` tasks, cached by
    model, tasks, limit, dtype and lm-eval version. Runs in the calling process only (the main one)."""
    from importlib.metadata import version

    from harness.measure import lm_eval_bridge

    key = stable_hash({"model": models.versioned(model_path), "tasks": sorted(tasks), "limit": limit,
                       "dtype": dtype, "lm_eval": version("lm_eval"), "core": core_digest()})

    def compute() -> dict:
        log.info("lm-eval utility of %s on %s (once: the result is cached)", model_path, ", ".join(tasks))
        model, tok = models.load(model_path, dtype, device)
        return lm_eval_bridge.evaluate(model, tok, tasks, limit, batch_size)

    return cached_json(cache_root() / "evals" / f"utility-{key}.json", compute, collective=False)


def cached_json(path: Path, compute: Callable[[], dict], collective: bool = False) -> dict:
    """The JSON at `path`, computed and written atomically first when absent. `collective`: every process of
    a launch takes part in `compute`, so the main process's view of the cache decides for all."""
    exists = distributed.broadcast(path.is_file()) if collective else path.is_file()
    if exists:
        return json.loads(path.read_text())
    out = compute()
    atomic_write_json(path, out)
    return out
