"""Sweeps: a grid of runs from a YAML file, run in order, skipping runs that have a record; safe to kill
and to run in several processes on one results directory."""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import functools
import itertools
import json
import logging
import math
import os
import time
import typing
from collections.abc import Iterator
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any, Literal

from harness import distributed
from harness.config import from_dict, option, to_dict, yaml_mapping
from harness.errors import ConfigError, UnlearnBenchError
from harness.io import atomic_write_text
from harness.learn.settings import TrainConfig
from harness.plugins import get_registry
from harness.run import combine, identity, records, runner
from harness.run.method import MethodKey
from harness.run.spec import RunSettings, RunSpec
from leaderboard.verdicts import PROTOCOL_FILE, CompareConfig, load_protocol

log = logging.getLogger(__name__)
OUTCOMES = ("finished", "skipped", "failed", "busy")


class SweepError(UnlearnBenchError):
    """A sweep could not start its runs."""


@dataclass
class TuneConfig:
    enabled: bool = option(False, "tune each method's learning rate before its test runs (needs match.enabled)")
    lr_factors: list[float] = option([1 / 3, 1.0, 3.0], "multiples of each method's learning rate (after the "
                                                        "per-attribution and per-objective overrides) tried on "
                                                        "every tuning seed")
    extend: bool = option(True, "when the selected rate is the grid's smallest or largest, try one more step "
                                "outward (the ratio between the edge and its neighbour) and select again")
    seeds: list[int] = option([1000, 1001], "seeds of the tuning runs, fixed and never a test seed (adding a test "
                                            "seed does not move them); the rule averages over them")
    metric: Literal["tradeoff_score", "match_utility"] = option(
        "tradeoff_score", "the validation metric a rate is chosen on among the rates that reached the level: the "
                          "trade-off score (the whole path to the level, as the verdicts' default primary metric) or "
                          "utility at the match (the end point only)")
    headroom: float = option(0.8, "a rate counts as reaching the level only where every tuning run reached it "
                                  "within this share of its step budget (train.max_steps), so that test seeds, "
                                  "which may need a few steps more, reach it too; 1: anywhere in the budget")

    def validate(self) -> None:
        if not self.lr_factors or any(not f > 0 for f in self.lr_factors):
            raise ValueError(f"lr_factors must be positive numbers, got {self.lr_factors}")
        if not 0 < self.headroom <= 1:
            raise ValueError(f"headroom must be in (0, 1], got {self.headroom}")
        if not self.seeds:
            raise ValueError("seeds must name at least one tuning seed")


TUNE_RULE = ("per rate, over the tuning seeds: among the rates whose every tuning run finished and reached the "
             "retain model's forgetting level within `tune.headroom` of its step budget, the highest mean "
             "validation `tune.metric` (default the trade-off score; ties: the smaller rate); if every rate "
             "that reached did so later, the one that reached soonest; if none reached, the highest mean "
             "validation trade-off score among the rates without a failed run; chosen once every "
             "tuning run has a record; with extend, a choice on the grid's edge adds one rate outward and the "
             "rule runs again over all")


TUNABLE = typing.get_args(typing.get_type_hints(TuneConfig)["metric"])  # the metrics a rate can be chosen on


@dataclass
class SweepConfig(RunSettings):
    """A sweep file: the settings its runs share (RunSettings, every one of them), the grid (attributions ×
    ratios × objectives × optimizers × seeds) with per-name configs, and what the sweep itself decides
    (tuning, comparisons, which seeds get the full evaluation and which probes, where runs execute)."""

    attributions: list[str] = option(["dense", "wagle"], "attribution names")
    ratios: list[float] = option([0.5], "fractions of weights updated (ignored by dense)")
    objectives: list[str] = option(["graddiff", "npo"], "objective names")
    optimizers: list[str] = option(["adamw"], "update rules (adamw, soul, or a plugin's): each method runs with each")
    seeds: list[int] = option([0], "seeds")
    attribution_config: dict[str, Any] = option({}, "per attribution name: its config")
    objective_config: dict[str, Any] = option({}, "per objective name: its config")
    optimizer_config: dict[str, Any] = option({}, "per optimizer name: its config")
    evaluate_seeds: list[int] = option([], "test seeds whose runs run the task's full evaluation and the probes; "
                                           "the other seeds' runs stop at the match with the utility probe and "
                                           "trade-off score the verdicts compare (cheap extra seed pairs); empty: "
                                           "every seed")
    exclude: list[str] = option([], "attribution/objective pairs to leave out of the grid, e.g. random/npo")
    probe_seeds: dict[str, list[int]] = option({}, "per probe name: the seeds whose test runs it probes (e.g. "
                                                   "relearn: [0]); a probe not named probes every seed")
    train_by_objective: dict[str, Any] = option({}, "per objective name: train settings replacing the sweep's")
    train_by_attribution: dict[str, Any] = option({}, "per attribution name: train settings replacing the "
                                                      "sweep's and the objective's (LoRA needs a larger lr)")
    tune: TuneConfig = option(TuneConfig(), f"learning-rate tuning per method; the rule: {TUNE_RULE}")
    compare: CompareConfig = option(CompareConfig(), "the comparisons declared before the runs: primary metric, "
                                                     "baselines, equivalence margin, α (docs/metrics.md, Verdicts); "
                                                     "written to the results folder as comparisons.json")
    executor: str = option("local", "where runs execute: local (this process, in order) or ray (Ray tasks)")
    executor_config: dict[str, Any] = option({}, "the executor's config (ray: address, gpus_per_run, ...)")
    grids: list[dict[str, Any]] = option([], "further grids run after this one into the same results folder (e.g. "
                                             "methods that need their own offset or spunge block): each a mapping "
                                             "of this file's fields, merged over them (see `grids`)")


# How each RunSpec field that is not a shared setting is set from a sweep: the grid field it ranges over, the
# per-name field it is looked up in, or what the sweep decides (tests/test_sweep_settings.py checks that
# every RunSpec field is one of these).
GRID = {"attribution": "attributions", "ratio": "ratios", "objective": "objectives", "optimizer": "optimizers",
        "seed": "seeds"}
BY_NAME = {"attribution_config": "attribution", "objective_config": "objective", "optimizer_config": "optimizer"}
DECIDED = {"evaluate": "tune (tuning runs)", "full_evaluation": "evaluate_seeds",
           "tuned_from": "tune (the grid a rate was chosen from)"}


def load(path: Path) -> SweepConfig:
    return from_dict(SweepConfig, yaml_mapping(path, "sweep"), str(path))


# Per-name settings and the grid field whose names they key.
PER_NAME = {"attribution_config": "attributions", "objective_config": "objectives", "probe_config": "probes",
            "probe_seeds": "probes", "optimizer_config": "optimizers", "train_by_attribution": "attributions",
            "train_by_objective": "objectives"}


def grids(cfg: SweepConfig, where: str = "sweep") -> list[SweepConfig]:
    """The file's own grid, then one per entry of its `grids`: the file's fields with the entry's merged over
    them (a mapping field such as train, match or attribution_config takes the entry's keys over the file's;
    any other field is replaced). Per-name settings are shared: each grid keeps those of the names it runs,
    and a name no grid runs is an error."""
    if not cfg.grids:
        return [cfg]
    base = to_dict(cfg)
    base.pop("grids")
    merged = [base]
    for i, entry in enumerate(cfg.grids):
        here = f"{where}: grids[{i}]"
        if not isinstance(entry, dict):
            raise ConfigError(f"{here}: expected a mapping of sweep fields, got {entry!r}")
        if "grids" in entry:
            raise ConfigError(f"{here}: a grid cannot hold grids of its own")
        merged.append({**base, **{k: {**base[k], **v} if isinstance(base.get(k), dict) and isinstance(v, dict)
                                  else v for k, v in entry.items()}})
    for i, m in enumerate(merged[1:]):  # the entry's unknown keys and wrong types, before what they would name
        from_dict(SweepConfig, m, f"{where}: grids[{i}]")
    for field, kind in PER_NAME.items():
        names = set().union(*(m[kind] for m in merged))
        stray = sorted(set().union(*(m[field] for m in merged)) - names)
        if stray:
            raise ConfigError(f"{where}: {field} names {', '.join(stray)}, which no grid runs "
                              f"(they run {', '.join(sorted(names))})")
    out = []
    for i, m in enumerate(merged):
        for field, kind in PER_NAME.items():
            m[field] = {k: v for k, v in m[field].items() if k in m[kind]}
        out.append(from_dict(SweepConfig, m, where if i == 0 else f"{where}: grids[{i - 1}]"))
    return out


def addresses(cfg: SweepConfig) -> set[str]:
    """The cluster addresses the file's grids name in executor_config (joining one runs what it sends back)."""
    return {str(g.executor_config["address"]) for g in grids(cfg) if g.executor_config.get("address")}


def _check(cfg: SweepConfig, where: str) -> None:
    registry = get_registry()
    for name in cfg.attributions:
        registry.get("attribution", name)
    for name in cfg.objectives:
        registry.get("objective", name)
    registry.get("task", cfg.task)
    for name in cfg.probes:
        registry.get("probe", name)
    for name in cfg.optimizers:
        registry.get("optimizer", name)
    for field, kind in PER_NAME.items():
        names = getattr(cfg, kind)
        stray = sorted(set(getattr(cfg, field)) - set(names))
        if stray:
            raise ConfigError(f"{where}: {field} names {', '.join(stray)}, which the grid does not run "
                              f"(it runs {', '.join(names)})")
    for pair in cfg.exclude:
        if pair.count("/") != 1:
            raise ConfigError(f"{where}: exclude entry {pair!r} is not attribution/objective")
    stray = sorted(set(cfg.evaluate_seeds) - set(cfg.seeds))
    if stray:
        raise ConfigError(f"{where}: evaluate_seeds names {stray}, which are not among the seeds {cfg.seeds}")
    if cfg.evaluate_seeds and not cfg.match.enabled:
        raise ConfigError(f"{where}: evaluate_seeds needs match.enabled (the other seeds keep only the match)")
    if cfg.tune.enabled and not cfg.match.enabled:
        raise ConfigError(f"{where}: tune needs match.enabled (it selects on utility at matched forgetting)")
    shared = sorted(set(cfg.tune.seeds) & set(cfg.seeds)) if cfg.tune.enabled else []
    if shared:
        raise ConfigError(f"{where}: tune.seeds and seeds share {shared}: a test run must not be the one tuned on")


def method_train(cfg: SweepConfig, attribution: str, objective: str, where: str = "sweep") -> TrainConfig:
    """The sweep's train settings with the objective's, then the attribution's overrides applied."""
    data = {**to_dict(cfg.train), **cfg.train_by_objective.get(objective, {}),
            **cfg.train_by_attribution.get(attribution, {})}
    return from_dict(TrainConfig, data, f"{where}: train for {attribution}/{objective}")


def _methods(cfg: SweepConfig) -> list[MethodKey]:
    """The grid's methods (attribution, ratio, objective, optimizer), less the excluded attribution/objective
    pairs."""
    return [MethodKey(a, r, o, u) for a, r, o, u in itertools.product(cfg.attributions, cfg.ratios,
                                                                      cfg.objectives, cfg.optimizers)
            if f"{a}/{o}" not in cfg.exclude]


def _spec(cfg: SweepConfig, method: MethodKey, seed: int, train: TrainConfig, where: str, **extra: Any) -> RunSpec:
    attribution, ratio, objective, optimizer = method.attribution, method.ratio, method.objective, method.optimizer
    if not 0.0 < ratio <= 1.0:
        raise ConfigError(f"{where}: ratio must be in (0, 1], got {ratio}")
    full = extra.get("evaluate", True) and (not cfg.evaluate_seeds or seed in cfg.evaluate_seeds)
    if extra.get("evaluate", True) and not full:
        extra["full_evaluation"] = False
    probes = [p for p in cfg.probes if seed in cfg.probe_seeds.get(p, [seed])] if full else []
    settings = {f.name: getattr(cfg, f.name) for f in fields(RunSettings)}
    if not full:  # lm-eval utility, like the probes, scores the fully evaluated test runs only
        settings["utility"] = []
    if not extra.get("evaluate", True):  # a tuning run keeps nothing
        settings.update(save_model=False, keep_weights=False)
    spec = runner.canonical(RunSpec(**{
        **settings, "attribution": attribution, "ratio": ratio, "objective": objective, "optimizer": optimizer,
        "seed": seed, "attribution_config": cfg.attribution_config.get(attribution, {}),
        "objective_config": cfg.objective_config.get(objective, {}),
        "optimizer_config": cfg.optimizer_config.get(optimizer, {}), "train": train, "probes": probes,
        "probe_config": {p: c for p, c in cfg.probe_config.items() if p in probes}, **extra}))
    try:
        spec.validate()
        combine.run_rules(spec, get_registry())
    except ValueError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    return spec


def _dedup(specs: list[RunSpec]) -> list[RunSpec]:
    out: dict[str, RunSpec] = {}
    for spec in specs:
        out.setdefault(spec.run_id(), spec)
    return list(out.values())


def expand(cfg: SweepConfig, where: str = "sweep") -> list[RunSpec]:
    """The grid's test run specs at each method's own learning rate (without tuning), deduplicated (dense at
    several ratios is one run), plugin names checked."""
    _check(cfg, where)
    return _dedup([_spec(cfg, m, seed, method_train(cfg, m.attribution, m.objective, where), where)
                   for seed in cfg.seeds for m in _methods(cfg)])  # seed by seed: a cut sweep still pairs


def _tuning_runs(cfg: SweepConfig, m: MethodKey, lr: float, where: str) -> list[RunSpec]:
    train = replace(method_train(cfg, m.attribution, m.objective, where), lr=lr)
    return [_spec(cfg, m, seed, train, where, evaluate=False) for seed in cfg.tune.seeds]


def tuning_grid(cfg: SweepConfig, where: str = "sweep") -> dict[MethodKey, list[RunSpec]]:
    """Per method, its tuning runs: every tuning seed at each lr factor, probes only (evaluate false)."""
    _check(cfg, where)
    grid = {}
    for m in _methods(cfg):
        base = method_train(cfg, m.attribution, m.objective, where).lr
        specs = [s for f in cfg.tune.lr_factors for s in _tuning_runs(cfg, m, base * f, where)]
        grid[MethodKey.of(to_dict(specs[0]), digest=False)] = specs  # keyed as canonical (dense: ratio 1)
    return grid


def select(tuning: list[records.Record], metric: str = "tradeoff_score", headroom: float = 1.0
           ) -> dict[str, Any] | None:
    """The tune rule (TUNE_RULE) over one method's tuning records (any seeds), choosing among the rates whose
    every run finished and reached the level within `headroom` of its step budget, on validation `metric`; a
    rate with a failed run (a loss or probe that diverged at that rate on some seed) is never chosen; None when
    no rate has only finished runs."""
    by_lr: dict[float, list[records.Record]] = {}
    for r in tuning:
        by_lr.setdefault(r.spec["train"]["lr"], []).append(r)
    complete = {lr: runs for lr, runs in by_lr.items() if all(r.finished for r in runs)}
    if not complete:
        return None

    def mean(runs: list[records.Record], name: str) -> float:
        values = [r.value(name) for r in runs]
        ok = all(v is not None and math.isfinite(v) for v in values)
        return sum(values) / len(values) if ok else float("-inf")

    def early(r: records.Record) -> bool:  # reached the level within headroom × its step budget
        budget, step = r.spec["train"].get("max_steps"), r.match.get("step")
        return r.match["reached"] and (budget is None or step is None or step <= headroom * budget)

    def slowest(runs: list[records.Record]) -> float:  # the last step at which its runs reached the level
        return max(r.match.get("step") or 0 for r in runs)

    reached = {lr: runs for lr, runs in complete.items() if all(early(r) for r in runs)}
    late = {lr: runs for lr, runs in complete.items() if all(r.match["reached"] for r in runs)}
    if reached:
        pool, name, rank = reached, f"validation_{metric}", lambda x: (mean(pool[x], name), -x)
    elif late:  # every rate that reached did so past the headroom: the one that reached soonest
        pool, name, rank = late, f"validation_{metric}", lambda x: (-slowest(pool[x]), mean(pool[x], name), -x)
    else:
        pool, name, rank = complete, "validation_tradeoff_score", lambda x: (mean(pool[x], name), -x)
    lr = max(pool, key=rank)
    return {"lr": lr, "reached": bool(late), "runs": sorted(r.id for r in pool[lr]), "score": mean(pool[lr], name)}


def recorded(results_dir: Path, specs: list[RunSpec]) -> bool:
    """Whether every one of `specs` has a record (finished or failed): a rate is chosen from the whole grid only,
    never from the part another process has not finished yet or a worker lost."""
    return all(status(results_dir, s.run_id()) in ("finished", "failed") for s in specs)


def _found(results_dir: Path, specs: list[RunSpec]) -> list[records.Record]:
    return [r for r in (records.find(results_dir, s.run_id()) for s in specs) if r is not None]


def extension(cfg: SweepConfig, results_dir: Path, grid: dict[MethodKey, list[RunSpec]],
              where: str = "sweep") -> dict[MethodKey, list[RunSpec]]:
    """Per method whose selected rate is an edge of its grid: the tuning runs one step further out (the ratio
    between that edge and its neighbour). Decided from the grid's own records, so a resumed sweep extends the
    same way."""
    out = {}
    for m, tuning in grid.items() if cfg.tune.extend else ():
        lrs = sorted({s.train.lr for s in tuning})
        done = recorded(results_dir, tuning)
        choice = select(_found(results_dir, tuning), cfg.tune.metric, cfg.tune.headroom) if done else None
        if choice is None or len(lrs) < 2 or lrs[0] < choice["lr"] < lrs[-1]:
            continue
        edge, inner = (lrs[0], lrs[1]) if choice["lr"] == lrs[0] else (lrs[-1], lrs[-2])
        out[m] = _tuning_runs(cfg, m, edge * edge / inner, where)
        log.info("%s: the selected rate %g is the grid's edge; trying %g", m.label, edge, edge * edge / inner)
    return out


def tuned_specs(cfg: SweepConfig, results_dir: Path, grid: dict[MethodKey, list[RunSpec]],
                where: str = "sweep") -> tuple[list[RunSpec], dict[MethodKey, tuple[str, str]]]:
    """The test runs at each method's selected rate, and the methods left out, each with its outcome and why:
    busy, a tuning run without a record yet (another process holds it, or its worker was lost: a resume runs
    it); failed, no rate whose tuning runs all finished."""
    chosen, missing = {}, {}
    for m, tuning in grid.items():
        if not recorded(results_dir, tuning):
            missing[m] = ("busy", f"{m.label}: a tuning run has no record yet (another process holds it, or its "
                                  "worker was lost), so no rate is chosen and its test runs wait for a resume")
            continue
        choice = select(_found(results_dir, tuning), cfg.tune.metric, cfg.tune.headroom)
        if choice is None:
            missing[m] = ("failed", f"{m.label}: a run failed at every rate of its tuning grid, so it has no "
                                    "selected rate and no test runs")
            continue
        chosen[m] = (replace(tuning[0].train, lr=choice["lr"]), sorted({s.train.lr for s in tuning}))
        log.info("%s: lr %g chosen from %s (%s)", m.label, choice["lr"], chosen[m][1],
                 "reached the level" if choice["reached"] else "no rate reached the level")
    specs = [_spec(cfg, m, seed, train, where, tuned_from=lrs)  # seed by seed: a cut sweep still pairs
             for seed in cfg.seeds for m, (train, lrs) in chosen.items()]
    return _dedup(specs), missing


def status(results_dir: Path, run_id: str) -> str | None:
    """The status in a run's record (finished, failed), or None when there is no readable record."""
    record = records.find(results_dir, run_id)
    return None if record is None else record.status


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
    """Delete temporary files left by writers that died (their pid is in the name and no longer alive): records,
    checkpoints, kept weights. (Pids are this host's: across hosts, a live writer elsewhere could look dead, so
    one results folder takes sweeps from one host at a time, or a cluster's driver alone.)"""
    removed = 0
    temporaries = [p for sub in ("runs", "checkpoints", "weights") for p in (results_dir / sub).glob(".*.tmp")]
    for tmp in temporaries:
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


@contextlib.contextmanager
def _claim(results_dir: Path, run_id: str, done: tuple[str, ...]) -> Iterator[str | None]:
    """Holds the run's lock and yields None when this sweep should run it, else why not (skipped, busy).
    Under a multi-process launch the main process decides and holds the lock; all processes run."""
    if not distributed.is_main():
        yield distributed.broadcast(None)
        return
    if status(results_dir, run_id) in done:
        yield distributed.broadcast("skipped")
        return
    with run_lock(results_dir, run_id) as mine:
        if not mine:
            yield distributed.broadcast("busy")
        elif status(results_dir, run_id) in done:  # finished by another sweep since we looked
            yield distributed.broadcast("skipped")
        else:
            yield distributed.broadcast(None)


def run_one(spec: RunSpec, results_dir: Path, done: tuple[str, ...]) -> str:
    """Run `spec` unless its record says one of `done` or another sweep is running it; the outcome:
    finished, failed, skipped or busy. A failure is recorded by the runner and logged, never raised."""
    run_id = spec.run_id()
    main = distributed.is_main()
    with _claim(results_dir, run_id, done) as why_not:
        if why_not is not None:
            return why_not
        log.info("%s: running", run_id)
        if main:
            log_event(results_dir, "start", run_id)
        try:
            runner.execute(spec, results_dir)
        except Exception as exc:
            if main:
                log_event(results_dir, "fail", run_id, error=f"{type(exc).__name__}: {exc}")
            log.error("%s failed: %s: %s", run_id, type(exc).__name__, exc)
            return "failed"
        if main:
            log_event(results_dir, "finish", run_id)
        return "finished"


def write_references(spec: RunSpec, results_dir: Path) -> str:
    """The target and retain models' records (built first if needed), one writer at a time; a folder whose
    reference models this machine does not reproduce comes back as the refusal's text (from any executor)."""
    main = distributed.is_main()  # under a launch the main process holds the lock; all take part
    try:
        with run_lock(results_dir, "references", wait=True) if main else contextlib.nullcontext():
            runner.write_reference_records(spec, results_dir)
    except records.ReferenceChangedError as exc:
        return f"refused: {exc}"
    return "finished"


def run(cfg: SweepConfig, results_dir: Path, retry_failed: bool = False) -> dict[str, int]:
    """Run every spec without a finished record (and, with `retry_failed`, those whose record says failed),
    on the sweep's executor, grid after grid (`grids`). With a tune block, each method's tuning runs come
    first and its test runs use the rate the tune rule selects. Each run holds its lock while it runs, so
    several sweeps can share a results directory and never run the same spec twice; a failed run is
    recorded and the sweep goes on."""
    results_dir = Path(results_dir).resolve()  # absolute: executors' workers may start in another folder
    every = grids(cfg)
    if results_dir.is_dir():
        check_code(results_dir)
    declare(cfg.compare, cfg.seeds, results_dir)
    if cfg.tune.enabled and cfg.compare.primary in TUNABLE and cfg.tune.metric != cfg.compare.primary:
        log.warning("rates are chosen on validation %s while the verdicts test %s (tune.metric, compare.primary)",
                    cfg.tune.metric, cfg.compare.primary)
    tally = Tally(sum(planned(one) for one in every))
    for i, one in enumerate(every):
        if len(every) > 1:
            log.info("grid %d of %d: %s x %s", i + 1, len(every), ", ".join(one.attributions),
                     ", ".join(one.objectives))
        _run_grid(one, results_dir, retry_failed, tally)
    return tally.counts


def planned(cfg: SweepConfig) -> int:
    """The runs a grid plans before any has run: its tuning runs (without the extensions an edge may add)
    and its test runs."""
    return (sum(len(runs) for runs in tuning_grid(cfg).values()) if cfg.tune.enabled else 0) + len(expand(cfg))


@dataclass
class Tally:
    """A sweep's outcome counts and its progress: `run 7 of 18 (wagle (0.5) + graddiff, seed 2): finished, 41
    min elapsed, about 55 min left`, the time left from the mean time of the runs this sweep ran (skipped ones
    take none; preparing the reference models is not a run's time)."""

    total: int
    counts: dict[str, int] = dataclasses.field(default_factory=lambda: dict.fromkeys(OUTCOMES, 0))
    start: float = dataclasses.field(default_factory=time.monotonic)
    running: float = 0.0  # seconds spent in runs (not in preparing the reference models)
    since: float | None = None

    def runs_begin(self) -> None:
        """The runs of a grid start (its reference models are ready)."""
        self.since = time.monotonic()

    def add(self, outcome: str, spec: RunSpec | None = None) -> str:
        now = time.monotonic()
        if self.since is not None:
            self.running, self.since = self.running + now - self.since, now
        self.counts[outcome] += 1
        done = sum(self.counts.values())
        self.total = max(self.total, done)
        ran = done - self.counts["skipped"]
        what = "" if spec is None else f" ({MethodKey.of(to_dict(spec), digest=False).label}, seed {spec.seed})"
        left = (f", about {minutes(self.running / ran * (self.total - done))} left"
                if ran and self.running and done < self.total else "")
        return f"run {done} of {self.total}{what}: {outcome}, {minutes(now - self.start)} elapsed{left}"


def minutes(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.0f} min"


def declare(compare: CompareConfig, seeds: list[int], results_dir: Path) -> None:
    """Write the declared comparisons, with the test seeds the sweep plans, into the results folder before
    any run. A folder that declared other comparisons is refused (a family chosen after seeing results is not
    a declared family); its plan may grow (the event is logged: more seeds after a look is the one liberty a
    growing sweep takes) but not lose seeds (that would decide at a look of one's choosing)."""
    path = results_dir / PROTOCOL_FILE
    planned = replace(compare, seeds=sorted(seeds))
    text = json.dumps(to_dict(planned), indent=1, sort_keys=True) + "\n"
    if path.is_file() and path.read_text() != text:
        before = load_protocol(results_dir)
        if replace(before, seeds=[]) != replace(planned, seeds=[]):
            raise SweepError(f"{path} declares other comparisons than this sweep's compare block "
                             f"({path.read_text()!r} vs {text!r}): declare them before the runs, in a new results "
                             "folder")
        dropped = sorted(set(before.seeds) - set(planned.seeds))
        if dropped:
            raise SweepError(f"{path} plans seeds {before.seeds} and this sweep drops {dropped}: a plan may grow "
                             "but not shrink once results exist; run every planned seed, or use a new results folder")
        log.warning("%s: the planned seeds grow from %d to %d", path, len(before.seeds), len(planned.seeds))
        if distributed.is_main():
            log_event(results_dir, "replan", "", seeds_before=len(before.seeds), seeds_after=len(planned.seeds))
    if distributed.is_main() and (not path.is_file() or path.read_text() != text):
        results_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, text)


def check_code(results_dir: Path) -> None:
    """Refuse to resume a results folder whose finished runs another version of the harness made: their run
    ids hold that version's core digest, so this code would run every one of them again beside the old ones
    (and the leaderboard refuses two runs of one seed). Resume from the commit that made them, or start a new
    folder."""
    core = identity.core_digest()
    other = {}
    for r in records.read_all(results_dir):
        if r.kind in ("run", "tune") and r.status == "finished" and r.provenance.get("core") != core:
            other.setdefault(r.provenance.get("core"), (r.provenance.get("git_commit"), r.id))
    if other:
        made = "; ".join(f"core {c or 'unrecorded'} (git commit {g or 'unknown'}, e.g. {i})"
                         for c, (g, i) in sorted(other.items(), key=lambda kv: str(kv[0])))
        raise SweepError(f"{results_dir} holds finished runs made by other code: {made}. This checkout is core "
                         f"{core}, so every run would run again beside them. Resume from that commit (git worktree "
                         "add DIR COMMIT; run the same sweep command in DIR) or use a new results folder")


def _run_grid(cfg: SweepConfig, results_dir: Path, retry_failed: bool, tally: Tally) -> None:
    grid = tuning_grid(cfg) if cfg.tune.enabled else None
    specs = expand(cfg) if grid is None else [s for g in grid.values() for s in g]
    executor = get_registry().build("executor", cfg.executor, cfg.executor_config, "sweep: executor_config")
    results_dir.mkdir(parents=True, exist_ok=True)
    (results_dir / "runs").mkdir(exist_ok=True)
    if distributed.is_main() and remove_stale_temporaries(results_dir):
        log.info("removed temporary files of writers that died")
    for _, outcome in executor.run([functools.partial(write_references, specs[0], results_dir)]):
        if outcome != "finished":
            raise SweepError(f"the reference models could not be prepared ({outcome}); see the log above")
    done = ("finished", "failed") if not retry_failed else ("finished",)
    tally.runs_begin()
    if grid is not None:
        log.info("tuning: %d runs (%d methods x lr factors %s x seeds %s)", len(specs), len(grid),
                 cfg.tune.lr_factors, cfg.tune.seeds)
        _run_specs(specs, results_dir, done, executor, tally)
        more = extension(cfg, results_dir, grid)
        tally.total += sum(len(runs) for runs in more.values())
        _run_specs([s for runs in more.values() for s in runs], results_dir, done, executor, tally)
        grid = {m: runs + more.get(m, []) for m, runs in grid.items()}
        specs, missing = tuned_specs(cfg, results_dir, grid)
        for outcome, reason in missing.values():
            (log.error if outcome == "failed" else log.warning)("%s", reason)
            log.info(tally.add(outcome))
    _run_specs(specs, results_dir, done, executor, tally)


def _run_specs(specs: list[RunSpec], results_dir: Path, done: tuple[str, ...], executor: Any, tally: Tally) -> None:
    pending = []
    for spec in specs:  # a first look; run_one decides again under the run's lock
        before = status(results_dir, spec.run_id())
        if before in done:
            log.info("%s: already %s, skipped", spec.run_id(), before)
            log.info(tally.add("skipped", spec))
        else:
            pending.append(spec)
    pending = distributed.broadcast(pending)  # under a launch, every process walks the main process's list
    jobs = [functools.partial(run_one, spec, results_dir, done) for spec in pending]
    for i, outcome in executor.run(jobs):
        run_id = pending[i].run_id()
        if outcome == "lost":  # the worker died before the run could record anything
            log_event(results_dir, "fail", run_id, error="worker lost")
            outcome = "failed"
        log.info("%s: %s", run_id, outcome)
        log.info(tally.add(outcome, pending[i]))
