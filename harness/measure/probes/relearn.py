"""Relearning probe: fine-tuning on the forget examples that are not scored, then the forget probe on those
that are. Knowledge that unlearning only hid comes back faster than knowledge the model never had (Hu et al.
2024, "Jogging the memory of unlearned LLMs"; Lynch et al. 2024): the retain model, which never saw the forget
set, relearned on the same data with the same steps, is the reference.

Scored: the task's forget probe (the matched-forgetting probe's forget set: on TOFU-mini its stopping author,
on TOFU with `stop_split: none` every forget row, WMDP's questions), fixed whatever the run. Relearned: every
forget example the probe does not score (TOFU-mini: the measured author; WMDP: the forget corpus), so the attack
sees all the data it may see, and each example as often (`epochs`), whatever the size of the task. Where the
probe scores every forget example, `fraction` of them, spread evenly, are relearned and the rest scored.
Settings are the task's (`Task.relearn_settings`: the relearning code its benchmark's papers published, by
default OPTML-Group/Unlearn-Smooth's WMDP setting, lr 1e-5, batch 4, 3 epochs; MUSE: fixed steps), each
overridable here; a copy of the model is trained through the harness's loop (AdamW, constant rate), the run's
model is untouched.
Metrics: `relearn_forget` (the scored forget probe after relearning; lower is better),
`relearn_forget_before` (before), `relearn_forget_retain_model` (the retain model after the same relearning),
`relearn_excess` (ours minus the retain model's: 0 is as if never learned), `relearn_undone` ((after - before)
/ (target - before), the share of the forgetting that came back).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

from harness.api import Example, LossOutput, Metric, Probe, ProbeContext, ProbeSets
from harness.config import option, to_dict
from harness.hookspecs import hookimpl
from harness.learn.settings import TrainConfig
from harness.learn.train import finetune_batches, train
from harness.measure import match
from harness.measure.probes import undone
from harness.measure.scoring import mean_nll


@dataclass
class RelearnConfig:
    lr: float | None = option(None, "relearning rate (constant); null: the task's (Task.relearn_settings)")
    batch_size: int | None = option(None, "examples per relearning step; null: the task's")
    epochs: int | None = option(None, "passes over the relearned examples; null: the task's")
    steps: int | None = option(None, "a fixed number of steps instead of epochs; null: the task's")
    fraction: float = option(0.5, "where the probe scores every forget example: the share relearned on, spread "
                                  "evenly over them")

    def validate(self) -> None:
        if any(v is not None and v < 1 for v in (self.batch_size, self.epochs, self.steps)):
            raise ValueError("batch_size, epochs and steps must be >= 1 (or null: the task's)")
        if self.lr is not None and not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if not 0 < self.fraction < 1:
            raise ValueError(f"fraction must be in (0, 1), got {self.fraction}")


def settings(cfg: RelearnConfig, task_settings: dict) -> dict:
    """The relearning settings: the task's, with what the config sets in their place (steps replace epochs)."""
    given = {k: getattr(cfg, k) for k in ("lr", "batch_size", "epochs", "steps") if getattr(cfg, k) is not None}
    out = {**task_settings, **given}
    if "steps" in given and "epochs" not in given:
        out.pop("epochs", None)
    if "steps" not in out and "epochs" not in out:
        raise ValueError("relearning needs epochs or steps (Task.relearn_settings or the probe's config)")
    return out


def split(forget: list[Example], sets: ProbeSets, fraction: float) -> tuple[list[Example], ProbeSets]:
    """(relearned, scored): the forget examples the probe does not score, and the probe's forget set; where
    the probe scores them all, `fraction` of them spread evenly, and the rest."""
    scored = set(sets.forget)
    data = [ex for ex in forget if ex not in scored]
    if data:
        return data, sets
    data = [forget[i] for i in spread(len(forget), fraction)]
    return data, held_out(sets, data)


def spread(n: int, fraction: float) -> list[int]:
    """round(n·fraction) indices spread evenly over range(n) (0.5: 0, 2, 4, ...)."""
    count = max(1, round(n * fraction))
    return sorted({int(i * n / count) for i in range(count)})


def held_out(sets: ProbeSets, relearned: list[Example]) -> ProbeSets:
    """The probe's forget set without the relearned examples (their wrong alternatives dropped with them)."""
    seen = set(relearned)
    keep = [i for i, ex in enumerate(sets.forget) if ex not in seen]
    if not keep:
        raise ValueError("every forget probe example is relearned on: lower relearn.fraction")
    alternatives = {"forget": [sets.alternatives["forget"][i] for i in keep]} if "forget" in sets.alternatives else {}
    return ProbeSets([sets.forget[i] for i in keep], {}, alternatives=alternatives, max_length=sets.max_length)


def _nll(model, batch) -> LossOutput:
    return LossOutput(mean_nll(model, batch).mean())


class Relearn(Probe):
    """The scored forget probe after relearning on the rest of the forget set, against the retain model."""

    name = "relearn"
    Config = RelearnConfig

    def forget_probe(self, model, ctx: ProbeContext, held: ProbeSets) -> float:
        return match.probe(model, ctx.tokenizer, held, ("forget",), ctx.batch_size, ctx.task.max_length)["forget"]

    def relearn(self, learner, ctx: ProbeContext, data: list[Example]) -> None:
        """The task's relearning on `data`, in place, through the harness's training loop."""
        s = settings(self.config, ctx.task.relearn_settings)
        epochs = s.get("epochs") or -(-s["steps"] * s["batch_size"] // len(data))  # enough passes for the steps
        cfg = TrainConfig(lr=s["lr"], max_steps=s.get("steps"), batch_size=s["batch_size"], epochs=epochs,
                          warmup_ratio=0.0, schedule="constant")
        train(learner, finetune_batches(ctx.tokenizer, data, cfg, ctx.task.max_length, ctx.seed), _nll, cfg,
              seed=ctx.seed)

    def relearned_copy(self, model, ctx: ProbeContext, data: list[Example]):
        """A copy of `model` relearned on `data`; every weight relearns, whatever unlearning left frozen (LoRA's
        merge leaves the base weights without gradients). The model itself stays as it is."""
        learner = copy.deepcopy(model).requires_grad_(True)
        self.relearn(learner, ctx, data)
        return learner

    def run(self, model, ctx: ProbeContext) -> dict[str, Metric]:
        data, held = split(ctx.task.forget_examples(), ctx.task.probe_sets(), self.config.fraction)
        before = self.forget_probe(model, ctx, held)
        learner = self.relearned_copy(model, ctx, data)
        after = self.forget_probe(learner, ctx, held)
        del learner
        key = {"config": to_dict(self.config), "settings": settings(self.config, ctx.task.relearn_settings),
               "seed": ctx.seed, "task_config": to_dict(ctx.task.config)}
        target = ctx.cached("relearn-start", dict(key, model=ctx.target["model"]),
                            lambda: {"before": self.forget_probe(ctx.load(ctx.target["model"]), ctx, held)})
        out = {"relearn_forget": Metric(after, "lower"), "relearn_forget_before": Metric(before, "info"),
               "relearn_undone": Metric(undone(after, before, target["before"]), "lower")}
        if ctx.retain is not None:
            def retain_relearned() -> dict[str, float]:
                reference = ctx.load(ctx.retain["model"])
                self.relearn(reference, ctx, data)
                return {"after": self.forget_probe(reference, ctx, held)}

            retain = ctx.cached("relearn", dict(key, model=ctx.retain["model"]), retain_relearned)
            out["relearn_forget_retain_model"] = Metric(retain["after"], "info")
            out["relearn_excess"] = Metric(after - retain["after"], "lower")
        return out


@hookimpl
def register_probes(register) -> None:
    register(Relearn)
