"""One run, in order: task data and models, attribution (mask), unlearning, evaluation, record."""

from __future__ import annotations

import logging
import time
import traceback
from pathlib import Path
from typing import Any

import torch

from harness import (
    distributed,
    export,
    fsdp,
    identity,
    lm_eval_bridge,
    mask_report,
    masks,
    match,
    models,
    offset,
    prepare,
    records,
    spunge,
)
from harness.api import AttributionData, EvalContext, Evaluation, Metric, Task
from harness.cache import cached_dir, stable_hash
from harness.config import from_dict, to_dict
from harness.data import examples_hash, make_batches
from harness.errors import NoUnlearningError
from harness.plugins import Registry, get_registry
from harness.probes import run as run_probes
from harness.spec import PrepareConfig, RunSpec
from harness.train import log_step, remove_checkpoint, train, unlearn_batches
from harness.update import UpdatePlan

log = logging.getLogger(__name__)

ATTRIBUTION_BATCH = 8


def canonical(spec: RunSpec, registry: Registry | None = None) -> RunSpec:
    """The spec as keyed (harness/identity.py): the task's default objective filled in, ratio 1 for methods
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
    """The run's update plan (harness/update.py) and its mask's metadata. A mask computed from data is cached
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
            "plugin": identity.fingerprint(get_registry().get("attribution", spec.attribution)),
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


def execute(spec: RunSpec, results_dir: Path, save_to: Path | None = None) -> records.Record:
    """Run `spec` and write its record; a failure is recorded (status failed, traceback) and re-raised. The
    unlearned model is saved as a Hugging Face folder when the spec says `save_model` (RESULTS/models/<id>)
    or `save_to` names a folder."""
    if save_to is not None:  # before any work: never replace a folder the harness did not write
        export.check_destination(save_to)
    registry = get_registry()
    spec = canonical(spec, registry)
    run_id = identity.run_id(spec, registry)
    spec_key = identity.spec_key(spec, registry)
    plugins = identity.plugins(spec, registry)
    record = records.Record(
        kind="run" if spec.evaluate else "tune", id=run_id, spec=identity.resolved(spec, registry), spec_key=spec_key,
        headline=dict(zip(("forget", "utility"), registry.get("task", spec.task).cls.headline, strict=True)),
        provenance=records.provenance(plugins))
    redone = records.same_spec(results_dir, spec_key, run_id) if distributed.is_main() else []
    for old in redone:
        log.warning("%s redoes %s (same spec): %s", run_id, old.id, records.what_changed(old, plugins))
    timings = record.timings
    started = time.perf_counter()
    try:
        task = registry.build("task", spec.task, spec.task_config, f"run {run_id}: task_config")
        attribution = registry.build("attribution", spec.attribution, spec.attribution_config,
                                     f"run {run_id}: attribution_config")
        objective = registry.build("objective", spec.objective, spec.objective_config,
                                   f"run {run_id}: objective_config")
        backend = registry.build("backend", spec.generation, spec.generation_config,
                                 f"run {run_id}: generation_config")
        rule = registry.build("optimizer", spec.optimizer, spec.optimizer_config, f"run {run_id}: optimizer_config")
        t = time.perf_counter()
        target, retain_model, retain_eval = references(task, spec)
        start_from, composer = target, None  # the model unlearning trains; offset: the small one
        if spec.offset.enabled:
            if distributed.active():
                raise ValueError("offset unlearning runs in a single process")
            small_prepare = from_dict(PrepareConfig, {**to_dict(spec.prepare), **spec.offset.prepare},
                                      f"run {run_id}: offset.prepare")
            start_from = prepare.ensure_model(task, spec.offset.small_model, "target", small_prepare, spec.dtype,
                                              spec.device, provided=False)[0]
        timings["prepare_s"] = time.perf_counter() - t
        record.models = {"target": target, "retain": retain_model}

        model, tok = models.load(start_from, spec.dtype, spec.device)
        if spec.offset.enabled:
            record.models["offset_small"] = start_from
            composer = offset.Composer(spec.offset, target, start_from, tok, spec.dtype, spec.device)
        t = time.perf_counter()
        plan, mask_meta = build_plan(spec, task, attribution, start_from, model, tok)
        timings["attribution_s"] = time.perf_counter() - t
        record.mask = {k: v for k, v in mask_meta.items() if k not in ("config",)}
        if plan.mask is not None:  # for the leaderboard's density heatmaps, which read records only
            record.mask["layer_module_density"] = {f"{layer}.{module}": d for (layer, module), d
                                                      in sorted(mask_report.layer_module_density(plan.mask).items())}

        t = time.perf_counter()
        reference = None
        if objective.needs_reference:
            reference = fsdp.frozen_copy(model)  # sharded too under FSDP
        model = plan.wrap(model, objective)
        if plan.lora is not None or plan.adapters is not None:
            record.mask["trainable_params"] = sum(p.numel() for p in model.parameters() if p.requires_grad)
        if plan.adapters is not None and (spec.save_model or spec.keep_weights or save_to is not None):
            raise ValueError("unlearning layers stay in the model as modules of their own: saving it as a Hugging "
                             "Face folder is not supported")
        record.mask["trained_fraction"] = plan.trained_fraction()
        forget, retain, refusal = task.forget_examples(), task.retain_examples(), task.refusal_examples()
        check_sets(spec, objective, forget, retain)
        record.data = {"forget": examples_hash(forget), "retain": examples_hash(retain),
                       "refusal": examples_hash(refusal), "refusals_file": task.config.refusals_file}
        matcher = Matcher(task, spec, target, retain_model, tok, composer) if spec.match.enabled else None
        if matcher is not None:
            matcher.remember(model, 0)

        def during(step: int, trained) -> dict[str, Any] | None:
            row: dict[str, Any] = {}
            net = trained if composer is None else composer.around(trained)
            if spec.eval_every and step % spec.eval_every == 0:
                ev = task.evaluate(net, tok, EvalContext(retain_eval["stats"], task.eval_batch_size, backend))
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

        checkpoint = Path(results_dir) / "checkpoints" / f"{run_id}.pt"
        sums_before = weight_sums(model) if not distributed.active() else None
        if spec.spunge.enabled:
            if plan.lora is not None:
                raise ValueError("spunge merges weight task vectors: it does not combine with LoRA adapters")
            train_log, record.spunge = spunge.unlearn(
                model, task, tok, (forget, retain, refusal), lambda m, b: objective.loss(m, b, reference),
                spec.train, plan, spec.seed, spec.spunge, rule)
        else:
            batches = unlearn_batches(tok, forget, retain, spec.train, task.max_length, spec.seed, refusal)
            train_log = train(model, batches, lambda m, b: objective.loss(m, b, reference), spec.train, plan,
                              spec.seed, progress=log_step, checkpoint=checkpoint, on_step=during, optimizer=rule)
        reference = None  # free the frozen copy before evaluation
        record.curves = {
            "train": [{k: v for k, v in row.items() if k != "eval"} for row in train_log.steps],
            "eval": [{"step": row["step"], **row["eval"]["metrics"]} for row in train_log.steps
                     if "metrics" in row.get("eval", {})]}
        if matcher is not None:
            probes = [{"step": row["step"], **row["eval"]["probe"]} for row in train_log.steps
                      if "probe" in row.get("eval", {})]
            record.curves["probe"] = [{"step": 0, **matcher.start}, *probes]
            matcher.questions["checks"] = [{"step": row["step"], **row["eval"]["questions"]}
                                           for row in train_log.steps if "questions" in row.get("eval", {})]
            matched = matcher.bisect(model, train_log.stopped_at) if spec.match.bisect else None
            record.match = matcher.summary(record.curves["probe"], train_log.stopped_at, matched)
        if not distributed.active() and sums_before == weight_sums(model):
            raise NoUnlearningError(f"no weight changed in {len(sums_before)} trained tensors: the run cannot "
                                    "have unlearned (a learning rate too small for the dtype, a mask of nothing, "
                                    "a loss without gradient?)")
        model = plan.merge(model)
        timings["unlearning_s"] = time.perf_counter() - t
        record.bf16_autocast = train_log.bf16_autocast
        record.master_weights = train_log.master_weights

        t = time.perf_counter()
        evaluation = Evaluation({})
        if spec.evaluate and spec.full_evaluation:
            log.info("%s: evaluating the unlearned model on %s", run_id, spec.task)
            evaluated = model if composer is None else composer.around(model)
            evaluation = task.evaluate(evaluated, tok, EvalContext(retain_eval["stats"], task.eval_batch_size,
                                                                   backend))
        if spec.evaluate and spec.utility and distributed.is_main():  # only the main process writes the record
            record.lm_eval = lm_eval_bridge.evaluate(model, tok, spec.utility, spec.utility_limit,
                                                        task.eval_batch_size)
            evaluation.metrics.update(lm_eval_bridge.metrics(record.lm_eval))
        if matcher is not None:
            evaluation.metrics.update(match_metrics(record.match))
        timings["evaluation_s"] = time.perf_counter() - t
        if spec.probes:
            t = time.perf_counter()
            found, record.probes = run_probes(spec, registry, task, model, tok, evaluation,
                                              {"target": target, "retain": retain_model, "retain_eval": retain_eval},
                                              backend)
            evaluation.metrics.update(found)
            timings["probes_s"] = time.perf_counter() - t
        record.metrics = {k: vars(m) for k, m in evaluation.metrics.items()}
        record.stats = evaluation.stats  # per-sample numbers and, for lm-eval tasks, lm-eval's results
        record.samples = evaluation.samples
        record.status = "finished"
        if distributed.is_main():
            keep(record, spec, plan, model, tok, results_dir, save_to)
        remove_checkpoint(checkpoint)
    except Exception as exc:
        record.status = "failed"
        record.error = {"type": type(exc).__name__, "message": str(exc), "traceback": traceback.format_exc()}
        raise
    finally:
        timings["total_s"] = time.perf_counter() - started
        record.memory = records.peak_memory_mb()
        if distributed.active():
            record.processes = distributed.world_size()
            record.parallelism = "fsdp" if fsdp.enabled() else "ddp"
        if distributed.is_main():
            records.write(results_dir, run_id, record)
            if record.status == "finished":
                records.supersede(results_dir, redone, run_id)
    return record


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


class Matcher:
    """The run's matched-forgetting probe: the level, the reference probes, the check after each step, and
    the bisection back to the level once a check crosses it. A test run probes forget and utility; a tuning
    run (spec.evaluate false) forget and validation. With offset unlearning (`composer`) the probes score the
    composition, and the weights remembered and bisected are the small model's."""

    def __init__(self, task: Task, spec: RunSpec, target: str, retain_model: str | None, tok,
                 composer: Any = None) -> None:
        self.task, self.tok, self.cfg, self.composer = task, tok, spec.match, composer
        self.key = "utility" if spec.evaluate else "validation"
        self.sets = task.probe_sets()
        refs = reference_probes(task, spec, target, retain_model)
        levels = (spec.match.level, refs["retain"]["forget"] if "retain" in refs else None, self.sets.level)
        self.level = next((v for v in levels if v is not None), None)
        if self.level is None:
            raise ValueError(f"task {spec.task!r} has no retain model to read the forgetting level from and "
                             "declares none: set match.level")
        self.reference = refs["retain"][self.key] if "retain" in refs else refs["target"][self.key]
        self.start = {k: refs["target"][k] for k in ("forget", self.key)}
        match.efficacy(self.start["forget"], self.start["forget"], self.level)  # fails now if nothing to unlearn
        self.seconds = 0.0
        self.before: tuple[int, dict[str, torch.Tensor]] | None = None
        wanted = ("forget", self.key, "utility/")
        self.questions: dict[str, Any] = {  # per question, for the leaderboard's question-level bootstrap
            "clusters": self.sets.clusters,
            **{role: {k: v for k, v in prepare.reference_probe_questions(
                task, path, task.eval_batch_size, spec.dtype, spec.device).items() if k.startswith(wanted)}
               for role, path in (("target", target), ("retain", retain_model)) if path is not None},
            "checks": []}
        self.last: dict[str, list[float]] = {}

    def check(self, trained, parts: tuple[str, ...] | None = None) -> dict[str, float]:
        """The probe of the trained model (the composition, with offset unlearning); its per-question values
        are kept as `last`."""
        t = time.perf_counter()
        net = trained if self.composer is None else self.composer.around(trained)
        self.last = match.probe_questions(net, self.tok, self.sets, parts or ("forget", self.key),
                                          self.task.eval_batch_size, self.task.max_length)
        self.seconds += time.perf_counter() - t
        return match.combine(self.last)

    def remember(self, trained, step: int) -> None:
        """The trained weights at a check still above the level: one end of bisection's bracket."""
        if self.cfg.bisect and not distributed.active():
            self.before = (step, match.snapshot(trained))

    def bisect(self, trained, stopped_at: int | None) -> dict[str, Any] | None:
        """Back to the level between the last check above it and the one that crossed it (match.bisect);
        None when the level was not reached, under several processes, or when the bracket's first end is not
        the check before the stop (a run resumed from a checkpoint)."""
        if stopped_at is None or self.before is None:
            return None
        step, before = self.before
        if step != stopped_at - self.cfg.check_every:
            log.warning("no bisection: the last remembered state is of step %d, not the check before %d", step,
                        stopped_at)
            return None
        t = time.perf_counter()
        found = match.bisect(trained, before, lambda m: self.check(m, ("forget",))["forget"], self.start["forget"],
                             self.level, self.cfg)
        self.before = None
        probe = self.check(trained)
        self.questions["matched"] = self.last
        log.info("bisected to α %.4g between steps %d and %d: forget %.4g (level %.4g), %s %.4g", found["alpha"],
                 step, stopped_at, probe["forget"], self.level, self.key, probe[self.key])
        return dict(found, from_step=step, to_step=stopped_at, probe=probe, seconds=time.perf_counter() - t)

    def summary(self, trajectory: list[dict[str, Any]], stopped_at: int | None,
                matched: dict[str, Any] | None = None) -> dict[str, Any]:
        return dict(match.summarize(trajectory, self.key, self.level, self.reference, matched),
                    stopped_at=stopped_at, probe_s=self.seconds, questions=self.questions)


def match_metrics(summary: dict[str, Any]) -> dict[str, Metric]:
    """A run's matched-forgetting numbers as metrics: test runs compare utility, tuning runs validation."""
    prefix = "" if summary["probe"] == "utility" else "validation_"
    return {f"{prefix}match_utility": Metric(summary["at_match"], "higher", "match"),
            f"{prefix}tradeoff_score": Metric(summary["tradeoff"], "higher", "match"),
            "match_reached": Metric(float(summary["reached"]), "higher", "info"),
            "match_step": Metric(summary["step"], "lower", "info"),
            "match_efficacy": Metric(summary["efficacy_at_stop"], "info", "info"),
            "match_forget": Metric(summary["forget_at_stop"], "info", "info")}


def reference_probes(task: Task, spec: RunSpec, target: str, retain_model: str | None) -> dict[str, dict]:
    """The probe of the target (and of the retain model when the task has one)."""
    out = {"target": prepare.reference_probe(task, target, task.eval_batch_size, spec.dtype, spec.device)}
    if retain_model is not None:
        out["retain"] = prepare.reference_probe(task, retain_model, task.eval_batch_size, spec.dtype, spec.device)
    return out


def write_reference_records(spec: RunSpec, results_dir: Path) -> None:
    """Records of the target and retain models themselves (rows 'target' and 'retain' of a leaderboard)."""
    registry = get_registry()
    task = registry.build("task", spec.task, spec.task_config, "reference: task_config")
    target, retain_model, retain_eval = references(task, spec)
    target_eval = prepare.reference_eval(task, target, task.eval_batch_size, retain_eval, spec.dtype, spec.device)
    rows = [("target", target, target_eval)]
    if retain_model is not None:
        rows.append(("retain", retain_model, retain_eval))
    probes = reference_probes(task, spec, target, retain_model) if spec.match.enabled else {}  # every process
    for role, path, ev in rows if distributed.is_main() else ():
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
        if spec.match.enabled:  # the probe values, and for the retain model its own matched-forgetting numbers
            probe = probes[role]
            ref_spec["match"] = to_dict(spec.match)
            record.probe = probe
            if role == "retain":
                record.metrics.update({"match_utility": vars(Metric(probe["utility"], "higher", "match")),
                                       "tradeoff_score": vars(Metric(1.0, "higher", "match"))})
        rid = f"{spec.task}-{role}-{stable_hash(dict(ref_spec, path=path), 12)}"
        records.write(results_dir, rid, record)


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
