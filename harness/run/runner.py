"""One run, in order: task data and models, attribution (mask), unlearning, evaluation, record."""

from __future__ import annotations

import contextlib
import functools
import logging
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from harness import cache, distributed
from harness.api import AttributionData, EvalContext, Evaluation, Metric, Objective, Task
from harness.cache import cached_dir, stable_hash
from harness.config import from_dict, to_dict
from harness.errors import NoUnlearningError
from harness.learn import fsdp, masks, offset, spunge
from harness.learn.data import examples_hash, make_batches
from harness.learn.train import log_step, remove_checkpoint, train, unlearn_batches
from harness.learn.update import UpdatePlan
from harness.measure import lm_eval_bridge, mask_report
from harness.measure.matcher import Matcher, match_metrics, reference_probes
from harness.measure.probes import run as run_probes
from harness.plugins import Registry, get_registry
from harness.run import combine, export, identity, models, prepare, records
from harness.run.spec import PrepareConfig, RunSpec

log = logging.getLogger(__name__)

ATTRIBUTION_BATCH = 8


def canonical(spec: RunSpec, registry: Registry | None = None) -> RunSpec:
    """The spec as keyed (harness/run/identity.py): the task's default objective filled in, ratio 1 for methods
    without a mask."""
    return identity.canonical(spec, registry or get_registry())


def _retain_sample(task: Task, n: int, seed: int) -> list:
    retain = task.retain_examples()
    g = torch.Generator().manual_seed(seed)
    return [retain[i] for i in torch.randint(len(retain), (n,), generator=g).tolist()]


def check_sets(spec: RunSpec, objective: Any, forget: list, retain: list) -> None:
    """A run needs something to forget, and a retain set when its objective has a retain term."""
    if not forget:
        raise NoUnlearningError(f"task {spec.task!r} gave an empty forget set (task_config "
                                f"{spec.task_config}): nothing to unlearn")
    if not retain and objective.needs_retain:
        raise NoUnlearningError(f"task {spec.task!r} gave an empty retain set (task_config "
                                f"{spec.task_config}), and objective {spec.objective!r} has a retain term")


def weight_sums(model: torch.nn.Module) -> list[tuple[float, float]]:
    """Per trained tensor, its sum and sum of squares in float64: the same before and after training means
    that no weight moved."""
    with torch.no_grad():
        return [(float(p.double().sum()), float(p.double().square().sum()))
                for p in model.parameters() if p.requires_grad]


def build_plan(spec: RunSpec, task: Task, attribution: Any, target: str, model, tok) -> tuple[UpdatePlan, dict]:
    """The run's update plan (harness/learn/update.py) and its mask's metadata. A mask computed from data is cached
    and reused for the same inputs; methods that use no data (dense, LoRA) are not cached."""
    if not attribution.needs_data:
        result = attribution.scores(AttributionData(model, tok, [], [], seed=spec.seed, ratio=spec.ratio))
        plan = UpdatePlan.from_result(result, spec.ratio, model)
        meta = {"method": spec.attribution, "lora": result.lora, "adapters": result.adapters, "info": result.info,
                "cache_hit": False}
        if plan.mask is not None:
            meta.update(density=masks.density(plan.mask), digest=masks.mask_digest(plan.mask))
        return plan, meta
    forget = task.forget_examples()
    retain = _retain_sample(task, len(forget), spec.seed)
    max_length = task.max_length
    meta = {"method": spec.attribution, "ratio": spec.ratio, "config": to_dict(attribution.config),
            "plugin": identity.keyed_fingerprint(get_registry().get("attribution", spec.attribution)),
            "model": models.versioned(target), "core": identity.core_digest(),
            "seed": spec.seed, "forget_hash": examples_hash(forget), "retain_hash": examples_hash(retain),
            "refusal_hash": examples_hash(task.refusal_examples()), "max_length": max_length}
    key = f"{spec.attribution}-{stable_hash(meta)}"

    def compute(out: Path) -> None:
        torch.manual_seed(spec.seed)
        data = AttributionData(model, tok, make_batches(tok, forget, ATTRIBUTION_BATCH, max_length),
                               make_batches(tok, retain, ATTRIBUTION_BATCH, max_length),
                               make_batches(tok, task.refusal_examples(), ATTRIBUTION_BATCH, max_length),
                               seed=spec.seed, ratio=spec.ratio,
                               grad_buffers=None if spec.attribution_buffers == "model" else spec.attribution_buffers)
        result = attribution.scores(data)
        computed = UpdatePlan.from_result(result, spec.ratio, model).mask
        if computed is None:
            raise ValueError(f"attribution {spec.attribution!r} uses data but returned neither scores nor a mask")
        masks.save(computed, out, dict(meta, info=result.info))

    folder, hit = cached_dir("masks", key, compute)
    mask, saved = masks.load(folder)
    masks.check_covers(mask, model)
    return UpdatePlan(mask), dict(saved, cache_hit=hit, path=str(folder))


@dataclass
class Run:
    """What one run builds as it goes, phase by phase (`execute`)."""

    spec: RunSpec
    registry: Registry
    record: records.Record
    results_dir: Path
    save_to: Path | None
    redone: list[records.Record]
    task: Task = None  # type: ignore[assignment]  # the components (phase `components`)
    attribution: Any = None
    objective: Any = None
    backend: Any = None
    rule: Any = None
    target: str = ""  # the reference models (phase `models`)
    retain_model: str | None = None
    retain_eval: dict[str, Any] = field(default_factory=dict)
    start_from: str = ""  # the model unlearning trains: the target, or offset unlearning's small model
    model: Any = None
    tok: Any = None
    composer: offset.Composer | None = None  # offset unlearning: the model evaluated is a composition
    plan: UpdatePlan | None = None
    matcher: Matcher | None = None
    evaluation: Evaluation = field(default_factory=lambda: Evaluation({}))
    checkpoint: Path | None = None

    @contextlib.contextmanager
    def timed(self, phase: str) -> Iterator[None]:
        t = time.perf_counter()
        try:
            yield
        finally:
            self.record.timings[phase] = time.perf_counter() - t

    def evaluated(self, model) -> Any:
        """The model a probe or an evaluation scores: the trained one, or its composition (offset)."""
        return model if self.composer is None else self.composer.around(model)


def execute(spec: RunSpec, results_dir: Path, save_to: Path | None = None) -> records.Record:
    """Run `spec` and write its record; a failure is recorded (status failed, traceback) and re-raised. The
    unlearned model is saved as a Hugging Face folder when the spec says `save_model` (RESULTS/models/<id>)
    or `save_to` names a folder."""
    if save_to is not None:  # before any work: never replace a folder the harness did not write
        export.check_destination(save_to)
    run = begin(spec, Path(results_dir), save_to)
    started = time.perf_counter()
    try:
        components(run)
        with run.timed("prepare_s"):
            load_models(run)
        with run.timed("attribution_s"):
            plan(run)
        with run.timed("unlearning_s"):
            unlearn(run)
        with run.timed("evaluation_s"):
            evaluate(run)
        if run.spec.probes:
            with run.timed("probes_s"):
                attack(run)
        finish(run)
    except Exception as exc:
        run.record.status = "failed"
        run.record.error = {"type": type(exc).__name__, "message": str(exc), "traceback": traceback.format_exc()}
        raise
    finally:
        run.record.timings["total_s"] = time.perf_counter() - started
        close(run)
    return run.record


def begin(spec: RunSpec, results_dir: Path, save_to: Path | None) -> Run:
    """The spec resolved once (identity), the combination rules checked, the record started."""
    registry = get_registry()
    spec = canonical(spec, registry)
    combine.run_rules(spec, registry, save_to, distributed.world_size() if distributed.active() else 1)
    run_id, spec_key, plugins = (identity.run_id(spec, registry), identity.spec_key(spec, registry),
                                 identity.plugins(spec, registry))
    record = records.Record(
        kind="run" if spec.evaluate else "tune", id=run_id, spec=identity.resolved(spec, registry), spec_key=spec_key,
        headline=dict(zip(("forget", "utility"), registry.get("task", spec.task).cls.headline, strict=True)),
        provenance=records.provenance(plugins))
    redone = records.same_spec(results_dir, spec_key, run_id) if distributed.is_main() else []
    for old in redone:
        log.warning("%s redoes %s (same spec): %s", run_id, old.id, records.what_changed(old, plugins))
    return Run(spec, registry, record, results_dir, save_to, redone)


def components(run: Run) -> None:
    """The task, attribution, objective, generation backend and update rule, each from its config."""
    spec, where = run.spec, f"run {run.record.id}"
    build = run.registry.build
    run.task = build("task", spec.task, spec.task_config, f"{where}: task_config")
    run.attribution = build("attribution", spec.attribution, spec.attribution_config, f"{where}: attribution_config")
    run.objective = build("objective", spec.objective, spec.objective_config, f"{where}: objective_config")
    run.backend = build("backend", spec.generation, spec.generation_config, f"{where}: generation_config")
    run.rule = build("optimizer", spec.optimizer, spec.optimizer_config, f"{where}: optimizer_config")


def load_models(run: Run) -> None:
    """The target and retain models (built on first use), and the model unlearning trains: the target, or
    offset unlearning's small model with the composition around it."""
    spec = run.spec
    run.target, run.retain_model, run.retain_eval = references(run.task, spec)
    run.record.models = {"target": run.target, "retain": run.retain_model}
    start_from = run.target
    if spec.offset.enabled:
        small_prepare = from_dict(PrepareConfig, {**to_dict(spec.prepare), **spec.offset.prepare},
                                  f"run {run.record.id}: offset.prepare")
        start_from = prepare.ensure_model(run.task, spec.offset.small_model, "target", small_prepare, spec.dtype,
                                          spec.device, provided=False)[0]
        run.record.models["offset_small"] = start_from
    run.model, run.tok = models.load(start_from, spec.dtype, spec.device)
    if spec.offset.enabled:
        run.composer = offset.Composer(spec.offset, run.target, start_from, run.tok, spec.dtype, spec.device)
    run.start_from = start_from


def plan(run: Run) -> None:
    """The mask (or adapters) of the attribution, cached for the same inputs, and its report in the record."""
    run.plan, meta = build_plan(run.spec, run.task, run.attribution, run.start_from, run.model, run.tok)
    run.record.mask = {k: v for k, v in meta.items() if k not in ("config",)}
    if run.plan.mask is not None:  # for the leaderboard's density heatmaps, which read records only
        run.record.mask["layer_module_density"] = {
            f"{layer}.{module}": d for (layer, module), d in sorted(mask_report.layer_module_density(
                run.plan.mask).items())}


def unlearn(run: Run) -> None:
    """Train through the plan (the plain loop, or SPUNGE's split-and-merge) with the matched-forgetting
    checks, bisect back to the level, check that weights moved, merge adapters."""
    spec, task, record = run.spec, run.task, run.record
    loss = unlearning_loss(run.objective, run.model, run.composer)
    model = run.plan.wrap(run.model, run.objective)
    if run.plan.lora is not None or run.plan.adapters is not None:
        record.mask["trainable_params"] = sum(p.numel() for p in model.parameters() if p.requires_grad)
    record.mask["trained_fraction"] = run.plan.trained_fraction()
    sets = task.forget_examples(), task.retain_examples(), task.refusal_examples()
    check_sets(spec, run.objective, sets[0], sets[1])
    record.data = {"forget": examples_hash(sets[0]), "retain": examples_hash(sets[1]),
                   "refusal": examples_hash(sets[2]), "refusals_file": task.config.refusals_file}
    if spec.match.enabled:
        run.matcher = Matcher(task, spec, run.target, run.retain_model, run.tok, run.composer)
        run.matcher.remember(model, 0)
    run.checkpoint = run.results_dir / "checkpoints" / f"{record.id}.pt"
    sums_before = weight_sums(model) if not distributed.active() else None
    if spec.spunge.enabled:
        train_log, record.spunge = spunge.unlearn(model, task, run.tok, sets, loss, spec.train, run.plan, spec.seed,
                                                  spec.spunge, run.rule)
    else:
        batches = unlearn_batches(run.tok, sets[0], sets[1], spec.train, task.max_length, spec.seed, sets[2])
        train_log = train(model, batches, loss, spec.train, run.plan, spec.seed, progress=log_step,
                          checkpoint=run.checkpoint, on_step=functools.partial(during, run), optimizer=run.rule,
                          on_resume=functools.partial(resumed, run))
    record.curves = {"train": [{k: v for k, v in row.items() if k != "eval"} for row in train_log.steps],
                     "eval": [{"step": row["step"], **row["eval"]["metrics"]} for row in train_log.steps
                              if "metrics" in row.get("eval", {})]}
    if run.matcher is not None:
        matched_level(run, model, train_log)
    if sums_before is not None and sums_before == weight_sums(model):
        raise NoUnlearningError(f"no weight changed in {len(sums_before)} trained tensors: the run cannot have "
                                "unlearned (a learning rate too small for the dtype, a mask of nothing, a loss "
                                "without gradient?)")
    run.model = run.plan.merge(model)
    record.bf16_autocast, record.master_weights = train_log.bf16_autocast, train_log.master_weights


def unlearning_loss(objective: Objective, model, composer: offset.Composer | None = None) -> Callable:
    """The loss training minimises: the objective on the trained model with a frozen copy of it as the
    reference (where the objective has one; sharded under FSDP); with offset unlearning, the objective on the
    composition around the small model, L + α(S_u − S_o), whose black-box and original logits are constants
    (gradients reach the small model only), with the black box as the reference: the composition starts as
    the target (S_u = S_o), as the method and the ULD implementation (uld/model/offsetllm.py) train it."""
    if composer is not None:
        reference = composer.large if objective.needs_reference else None
        return lambda m, b: objective.loss(composer.around(m), b, reference)
    reference = fsdp.frozen_copy(model) if objective.needs_reference else None
    return lambda m, b: objective.loss(m, b, reference)


def during(run: Run, step: int, trained) -> dict[str, Any] | None:
    """After each optimizer step: the evaluation every `eval_every` steps, the matched-forgetting check every
    `check_every` (its `stop` ends training)."""
    row: dict[str, Any] = {}
    spec, matcher = run.spec, run.matcher
    if spec.eval_every and step % spec.eval_every == 0:
        ev = run.task.evaluate(run.evaluated(trained), run.tok, EvalContext(run.retain_eval["stats"],
                                                                            run.task.eval_batch_size, run.backend))
        row["metrics"] = {k: m.value for k, m in ev.metrics.items()}
    if matcher is not None and step % spec.match.check_every == 0:
        row["probe"] = matcher.check(trained)
        row["questions"] = matcher.last  # in the train log: kept across a resume
        row["stop"] = row["probe"]["forget"] <= matcher.level
        log.info("probe at step %d: forget %.4g (level %.4g), %s %.4g%s", step, row["probe"]["forget"],
                 matcher.level, matcher.key, row["probe"][matcher.key], ", reached" if row["stop"] else "")
        if not row["stop"]:
            matcher.remember(trained, step)
    return row or None


def resumed(run: Run, step: int, trained) -> None:
    """After a resume from the checkpoint of `step`: a check step's state (which did not stop: training went on)
    is bisection's bracket end again, as `during` kept it before the interruption."""
    if run.matcher is not None and step % run.spec.match.check_every == 0:
        run.matcher.remember(trained, step)


def matched_level(run: Run, model, train_log) -> None:
    """The probe trajectory (with one more check where the budget ended between checks), the bisection back to
    the level, and the match summary in the record."""
    matcher, record = run.matcher, run.record
    probes = [{"step": row["step"], **row["eval"]["probe"]} for row in train_log.steps
              if "probe" in row.get("eval", {})]
    checks = [{"step": row["step"], **row["eval"]["questions"]} for row in train_log.steps
              if "questions" in row.get("eval", {})]
    stopped, last = train_log.stopped_at, train_log.steps[-1]["step"] if train_log.steps else 0
    if stopped is None and last and all(p["step"] != last for p in probes):  # trained past its last check
        probes.append({"step": last, **matcher.check(model)})
        checks.append({"step": last, **matcher.last})
        stopped = last if probes[-1]["forget"] <= matcher.level else None
    record.curves["probe"] = [{"step": 0, **matcher.start}, *probes]
    matcher.questions["checks"] = checks
    previous = max((p["step"] for p in probes if stopped is not None and p["step"] < stopped), default=0)
    matched = matcher.bisect(model, stopped, previous) if run.spec.match.bisect else None
    record.match = matcher.summary(record.curves["probe"], stopped, matched)


def evaluate(run: Run) -> None:
    """The task's full evaluation (test runs), lm-eval utility, and the matched-forgetting metrics."""
    spec, task = run.spec, run.task
    if spec.evaluate and spec.full_evaluation:
        log.info("%s: evaluating the unlearned model on %s", run.record.id, spec.task)
        run.evaluation = task.evaluate(run.evaluated(run.model), run.tok,
                                       EvalContext(run.retain_eval["stats"], task.eval_batch_size, run.backend))
    if spec.evaluate and spec.utility and distributed.is_main():  # only the main process writes the record
        run.record.lm_eval = lm_eval_bridge.evaluate(run.model, run.tok, spec.utility, spec.utility_limit,
                                                     task.eval_batch_size)
        run.evaluation.metrics.update(lm_eval_bridge.metrics(run.record.lm_eval))
    if run.matcher is not None:
        run.evaluation.metrics.update(match_metrics(run.record.match))


def attack(run: Run) -> None:
    """The post-unlearning probes (quantization, relearning, membership inference, ...)."""
    refs = {"target": run.target, "retain": run.retain_model, "retain_eval": run.retain_eval}
    found, run.record.probes = run_probes(run.spec, run.registry, run.task, run.model, run.tok, run.evaluation,
                                          refs, run.backend)
    run.evaluation.metrics.update(found)


def finish(run: Run) -> None:
    """The record's results, what the spec asks to keep of the model, the checkpoint removed."""
    record, evaluation = run.record, run.evaluation
    record.metrics = {k: vars(m) for k, m in evaluation.metrics.items()}
    record.stats = evaluation.stats  # per-sample numbers and, for lm-eval tasks, lm-eval's results
    record.samples = evaluation.samples
    record.status = "finished"
    if distributed.is_main():
        keep(record, run.spec, run.plan, run.model, run.tok, run.results_dir, run.save_to)
    remove_checkpoint(run.checkpoint)


def close(run: Run) -> None:
    """Memory and launch in the record; the record written (finished or failed); older records superseded."""
    record = run.record
    record.memory = records.peak_memory_mb()
    if distributed.active():
        record.processes = distributed.world_size()
        record.parallelism = "fsdp" if fsdp.enabled() else "ddp"
    if distributed.is_main():
        records.write(run.results_dir, record.id, record)
        if record.status == "finished":
            records.supersede(run.results_dir, run.redone, record.id)


def keep(record: records.Record, spec: RunSpec, plan: UpdatePlan, model, tok, results_dir: Path,
         save_to: Path | None) -> None:
    """What the spec asks to keep of the unlearned model: its folder, or the weights `export` rebuilds it from."""
    if spec.save_model or save_to is not None:
        folder = save_to or Path(results_dir) / "models" / record.id
        record.saved_model = str(export.save_folder(model, tok, record, folder))
    if spec.keep_weights:
        path = export.weights_path(results_dir, record.id)
        export.keep_weights(model, plan.touched, path)
        record.kept_weights = str(path)


def write_reference_records(spec: RunSpec, results_dir: Path) -> None:
    """Records of the target and retain models themselves (rows 'target' and 'retain' of a leaderboard); a
    folder's existing ones are kept when this machine's models reproduce them, and refused when not
    (records.check_reference), before any run starts."""
    registry = get_registry()
    task = registry.build("task", spec.task, spec.task_config, "reference: task_config")
    target, retain_model, retain_eval = references(task, spec)
    target_eval = prepare.reference_eval(task, target, task.eval_batch_size, retain_eval, spec.dtype, spec.device)
    rows = [("target", target, target_eval)]
    if retain_model is not None:
        rows.append(("retain", retain_model, retain_eval))
    probes = reference_probes(task, spec, target, retain_model) if spec.match.enabled else {}  # every process
    problem, fresh = None, []
    if distributed.is_main():
        try:
            built = [reference_record(spec, task, role, path, ev, probes.get(role)) for role, path, ev in rows]
            found = records.references(results_dir)  # read once for both roles
            fresh = [(rid, record) for rid, record in built if records.check_reference(results_dir, record, found)]
        except records.ReferenceChangedError as exc:
            problem = str(exc)
    problem = distributed.broadcast(problem)  # every process stops, not only the one that read the records
    if problem is not None:
        raise records.ReferenceChangedError(problem)
    for rid, record in fresh:
        records.write(results_dir, rid, record)


def reference_record(spec: RunSpec, task: Task, role: str, path: str, ev: dict,
                     probe: dict | None) -> tuple[str, records.Record]:
    """The record of one reference model and its id (keyed by the model's path inside the cache, so a cache
    elsewhere names it alike)."""
    ref_spec = {"task": spec.task, "model": spec.model, "task_config": to_dict(task.config),
                "prepare": to_dict(spec.prepare)}
    record = records.Record(kind="reference", role=role, spec=ref_spec, model=path, status="finished",
                            metrics=dict(ev["metrics"]), provenance=records.provenance(),
                            headline=dict(zip(("forget", "utility"), task.headline, strict=True)))
    if spec.utility:  # the runs' extra lm-eval scores, on the reference model too
        ref_spec.update(utility=spec.utility, utility_limit=spec.utility_limit)
        record.lm_eval = prepare.reference_utility(path, spec.utility, spec.utility_limit, task.eval_batch_size,
                                                   spec.dtype, spec.device)
        record.metrics.update({k: vars(m) for k, m in lm_eval_bridge.metrics(record.lm_eval).items()})
    if probe is not None:  # the probe values, and for the retain model its own matched-forgetting numbers
        ref_spec["match"] = to_dict(spec.match)
        record.probe = probe
        if role == "retain":
            record.metrics.update({"match_utility": vars(Metric(probe["utility"], "higher", "match")),
                                   "tradeoff_score": vars(Metric(1.0, "higher", "match"))})
    return f"{spec.task}-{role}-{stable_hash(dict(ref_spec, path=cache.portable(path)), 12)}", record


def target_model(task: Task, spec: RunSpec) -> str:
    """The model unlearning starts from: the base model itself for a task that unlearns it (WMDP), else the
    fine-tuned target (built on first use)."""
    if task.uses_base_model:
        return spec.model
    return prepare.ensure_model(task, spec.model, "target", spec.prepare, spec.dtype, spec.device)[0]


def references(task: Task, spec: RunSpec) -> tuple[str, str | None, dict]:
    """The target and retain models (built on first use) and the retain model's evaluation. A task that
    unlearns from the base model itself (WMDP) has no retain model: (base, None, empty evaluation)."""
    target = target_model(task, spec)
    if task.uses_base_model:
        return target, None, {"model": None, "stats": {}, "metrics": {}}
    retain_model, _ = prepare.ensure_model(task, spec.model, "retain", spec.prepare, spec.dtype, spec.device)
    retain_eval = prepare.reference_eval(task, retain_model, task.eval_batch_size, None, spec.dtype, spec.device)
    return target, retain_model, retain_eval


def mask_for(spec: RunSpec) -> tuple[UpdatePlan, dict]:
    """The mask a run of `spec` would use, alone (`unlearn-bench mask`): the same target model and cache key
    as `execute`, so the command and a run share the mask."""
    registry = get_registry()
    spec = canonical(spec, registry)
    task = registry.build("task", spec.task, spec.task_config, "task_config")
    attribution = registry.build("attribution", spec.attribution, spec.attribution_config, "attribution_config")
    target = target_model(task, spec)
    model, tok = models.load(target, spec.dtype, spec.device)
    return build_plan(spec, task, attribution, target, model, tok)
