"""A run's matched-forgetting state (harness/measure/match.py has the definitions): the level and the reference
probes, the check after each optimizer step, the bisection back to the level, and the metrics the record
keeps."""

from __future__ import annotations

import logging
import math
import time
from typing import TYPE_CHECKING, Any

import torch

from harness import distributed
from harness.api import Metric, Task
from harness.errors import NonFiniteLossError
from harness.measure import match
from harness.run import prepare

if TYPE_CHECKING:
    from harness.run.spec import RunSpec

log = logging.getLogger(__name__)


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
        probe = match.combine(self.last)
        bad = sorted(k for k, v in probe.items() if not math.isfinite(v))
        if bad:
            raise NonFiniteLossError(
                f"the matched-forgetting probe is not finite ({', '.join(f'{k} {probe[k]}' for k in bad)}): the "
                "model's answer probabilities overflowed (a learning rate too large for the dtype?) or a probe set "
                "is empty; the run stops here instead of reading it as a level")
        return probe

    def remember(self, trained, step: int) -> None:
        """The trained weights at a check still above the level: one end of bisection's bracket."""
        if self.cfg.bisect and not distributed.active():
            self.before = (step, match.snapshot(trained))

    def bisect(self, trained, stopped_at: int | None, previous: int) -> dict[str, Any] | None:
        """Back to the level between the last check above it (at step `previous`) and the one that crossed it
        (match.bisect); None when the level was not reached, under several processes, or when the bracket's
        first end is not that check (a run resumed from a checkpoint of a step that is not a check step)."""
        if stopped_at is None or self.before is None:
            return None
        step, before = self.before
        if step != previous:
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
    """A run's matched-forgetting numbers as metrics: test runs compare utility, tuning runs validation;
    `match_bisected` (runs that reached the level): 1 when the evaluated model is the bisected one within the
    tolerance, 0 when it is past the level (the check that crossed it, or bisection out of probes)."""
    prefix = "" if summary["probe"] == "utility" else "validation_"
    bisection = summary.get("bisection")
    exact = {} if not summary["reached"] else {"match_bisected": Metric(
        float(bisection is not None and bisection.get("within", True)), "higher", "info")}
    return {f"{prefix}match_utility": Metric(summary["at_match"], "higher", "match"),
            f"{prefix}tradeoff_score": Metric(summary["tradeoff"], "higher", "match"),
            "match_reached": Metric(float(summary["reached"]), "higher", "info"), **exact,
            "match_step": Metric(summary["step"], "lower", "info"),
            "match_efficacy": Metric(summary["efficacy_at_stop"], "info", "info"),
            "match_forget": Metric(summary["forget_at_stop"], "info", "info")}


def reference_probes(task: Task, spec: RunSpec, target: str, retain_model: str | None) -> dict[str, dict]:
    """The probe of the target (and of the retain model when the task has one)."""
    out = {"target": prepare.reference_probe(task, target, task.eval_batch_size, spec.dtype, spec.device)}
    if retain_model is not None:
        out["retain"] = prepare.reference_probe(task, retain_model, task.eval_batch_size, spec.dtype, spec.device)
    return out
