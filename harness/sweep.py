"""Sweeps: a grid of runs from a YAML file, run in order, skipping runs that have a record; safe to kill
and to run in several processes on one results directory."""

from __future__ import annotations

import contextlib
import fcntl
import itertools
import json
import logging
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from harness import runner
from harness.config import from_dict, option
from harness.errors import ConfigError
from harness.plugins import get_registry
from harness.spec import PrepareConfig, RunSpec
from harness.train import TrainConfig

log = logging.getLogger(__name__)


@dataclass
class SweepConfig:
    task: str = option("tofu-mini", "registered task name")
    model: str = option("smollm2-135m", "base model: alias, local folder or hub id")
    attributions: list[str] = option(["dense", "wagle"], "attribution names")
    ratios: list[float] = option([0.5], "fractions of weights updated (ignored by dense)")
    objectives: list[str] = option(["graddiff", "npo"], "objective names")
    seeds: list[int] = option([0], "seeds")
    exclude: list[str] = option([], "attribution/objective pairs to leave out of the grid, e.g. random/npo")
    dtype: str = option("float32", "weights dtype: float32, bfloat16 or float16")
    device: str = option("auto", "auto (CUDA if present, else CPU), cpu, cuda, ...")
    task_config: dict[str, Any] = option({}, "the task's config")
    attribution_config: dict[str, Any] = option({}, "per attribution name: its config")
    objective_config: dict[str, Any] = option({}, "per objective name: its config")
    train: TrainConfig = option(TrainConfig(), "unlearning optimizer settings")
    prepare: PrepareConfig = option(PrepareConfig(), "fine-tuning settings for target and retain models")


def load(path: Path) -> SweepConfig:
    if not path.is_file():
        raise ConfigError(f"sweep file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({exc})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    return from_dict(SweepConfig, data, str(path))


def expand(cfg: SweepConfig, where: str = "sweep") -> list[RunSpec]:
    """The grid's run specs, deduplicated (dense at several ratios is one run), plugin names checked."""
    registry = get_registry()
    for name in cfg.attributions:
        registry.get("attribution", name)
    for name in cfg.objectives:
        registry.get("objective", name)
    registry.get("task", cfg.task)
    for field, names in (("attribution_config", cfg.attributions), ("objective_config", cfg.objectives)):
        stray = sorted(set(getattr(cfg, field)) - set(names))
        if stray:
            raise ConfigError(f"{where}: {field} names {', '.join(stray)}, which the grid does not run "
                              f"(it runs {', '.join(names)})")
    for pair in cfg.exclude:
        if pair.count("/") != 1:
            raise ConfigError(f"{where}: exclude entry {pair!r} is not attribution/objective")
    specs: dict[str, RunSpec] = {}
    for attribution, ratio, objective, seed in itertools.product(cfg.attributions, cfg.ratios, cfg.objectives,
                                                                 cfg.seeds):
        if not 0.0 < ratio <= 1.0:
            raise ConfigError(f"{where}: ratio must be in (0, 1], got {ratio}")
        if f"{attribution}/{objective}" in cfg.exclude:
            continue
        spec = runner.canonical(RunSpec(
            task=cfg.task, model=cfg.model, attribution=attribution, ratio=ratio, objective=objective, seed=seed,
            dtype=cfg.dtype, device=cfg.device,
            task_config=cfg.task_config, attribution_config=cfg.attribution_config.get(attribution, {}),
            objective_config=cfg.objective_config.get(objective, {}), train=cfg.train, prepare=cfg.prepare))
        try:
            spec.validate()
        except ValueError as exc:
            raise ConfigError(f"{where}: {exc}") from None
        specs.setdefault(spec.run_id(), spec)
    return list(specs.values())


def status(results_dir: Path, run_id: str) -> str | None:
    """The status in a run's record (finished, failed), or None when there is no readable record."""
    path = results_dir / "runs" / f"{run_id}.json"
    try:
        return json.loads(path.read_text()).get("status")
    except (OSError, ValueError, AttributeError):
        return None


def finished(results_dir: Path, run_id: str) -> bool:
    return status(results_dir, run_id) == "finished"


@contextlib.contextmanager
def run_lock(results_dir: Path, name: str, wait: bool = False) -> Iterator[bool]:
    """An exclusive lock on `results_dir/locks/name.lock` (flock: the kernel releases it when the holder
    dies, kill -9 included). Yields False at once if another process holds it and `wait` is False."""
    path = results_dir / "locks" / f"{name}.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def log_event(results_dir: Path, event: str, run_id: str, **extra: Any) -> None:
    """One line appended to results_dir/events.jsonl (a single O_APPEND write: lines never interleave)."""
    line = json.dumps({"time": round(time.time(), 3), "pid": os.getpid(), "event": event, "run": run_id, **extra})
    fd = os.open(results_dir / "events.jsonl", os.O_CREAT | os.O_WRONLY | os.O_APPEND, 0o644)
    try:
        os.write(fd, (line + "\n").encode())
    finally:
        os.close(fd)


def remove_stale_temporaries(results_dir: Path) -> int:
    """Delete temporary files left by writers that died (their pid is in the name and no longer alive)."""
    removed = 0
    for tmp in (results_dir / "runs").glob(".*.tmp"):
        pid = stale_pid(tmp.name)
        if pid is not None and not _alive(pid):
            tmp.unlink(missing_ok=True)
            removed += 1
    return removed


def stale_pid(name: str) -> int | None:
    parts = name.split(".")
    return int(parts[-3]) if len(parts) >= 4 and parts[-3].isdigit() else None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def run(cfg: SweepConfig, results_dir: Path, retry_failed: bool = False) -> dict[str, int]:
    """Run every spec without a finished record (and, with `retry_failed`, those whose record says failed).
    Each run holds its lock while it runs, so several sweep processes can share a results directory and
    never run the same spec twice; a failed run is recorded and the sweep goes on."""
    specs = expand(cfg)
    results_dir = Path(results_dir)
    results_dir.mkdir(parents=True, exist_ok=True)
    (results_dir / "runs").mkdir(exist_ok=True)
    if remove_stale_temporaries(results_dir):
        log.info("removed temporary files of writers that died")
    with run_lock(results_dir, "references", wait=True):
        runner.write_reference_records(specs[0], results_dir)
    counts = {"finished": 0, "skipped": 0, "failed": 0, "busy": 0}
    done = ("finished", "failed") if not retry_failed else ("finished",)
    for i, spec in enumerate(specs, start=1):
        run_id = spec.run_id()
        before = status(results_dir, run_id)
        if before in done:
            log.info("[%d/%d] %s: already %s, skipped", i, len(specs), run_id, before)
            counts["skipped"] += 1
            continue
        with run_lock(results_dir, run_id) as mine:
            if not mine:
                log.info("[%d/%d] %s: another sweep is running it, skipped", i, len(specs), run_id)
                counts["busy"] += 1
                continue
            if status(results_dir, run_id) in done:  # finished by another sweep since we looked
                counts["skipped"] += 1
                continue
            log.info("[%d/%d] %s: running", i, len(specs), run_id)
            log_event(results_dir, "start", run_id)
            try:
                runner.execute(spec, results_dir)
                log_event(results_dir, "finish", run_id)
                counts["finished"] += 1
            except Exception as exc:  # recorded by the runner; the sweep goes on
                log_event(results_dir, "fail", run_id, error=f"{type(exc).__name__}: {exc}")
                log.error("[%d/%d] %s failed: %s: %s", i, len(specs), run_id, type(exc).__name__, exc)
                counts["failed"] += 1
    return counts
