"""Which features combine: every rule in one place, checked before any model loads (a run spec's own rules
when it is read; the rules that depend on a plugin's class, through flags on the class, when a run or a
sweep starts)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from harness.plugins import Registry
    from harness.run.spec import RunSpec


def spec_rules(spec: RunSpec) -> None:
    """The rules a spec alone decides (RunSpec.validate)."""
    if spec.spunge.enabled and (spec.match.enabled or spec.eval_every):
        raise ValueError("spunge with matched forgetting or eval_every is not supported: the parts train apart and "
                         "only their merge is the unlearned model (run spunge at a fixed budget)")
    if spec.offset.enabled and (spec.probes or spec.save_model or spec.keep_weights or spec.utility):
        raise ValueError("offset unlearning evaluates a composition of three models: probes, saved models and "
                         "lm-eval utility (which load one model) do not apply to it")
    if spec.probes and not spec.evaluate:
        raise ValueError("probes run after the test evaluation: a tuning run (evaluate: false) has none")
    if not spec.full_evaluation and not (spec.match.enabled and spec.evaluate):
        raise ValueError("full_evaluation: false keeps only the matched-forgetting probe: it needs match.enabled "
                         "and a test run (evaluate: true)")
    if not spec.full_evaluation and (spec.probes or spec.utility):
        raise ValueError("full_evaluation: false runs no probes and no lm-eval utility")
    if not spec.evaluate and not spec.match.enabled:
        raise ValueError("evaluate: false (a tuning run) needs match.enabled: it records only the probes")
    every = spec.train.checkpoint_every
    if spec.match.enabled and spec.match.bisect and every and every % spec.match.check_every:
        raise ValueError(f"train.checkpoint_every ({every}) must be a multiple of match.check_every "
                         f"({spec.match.check_every}) with bisection: a run resumed from a step that is not a check "
                         "step has lost bisection's bracket and would be evaluated past the level")


def run_rules(spec: RunSpec, registry: Registry, save_to: Path | None = None, processes: int = 1) -> None:
    """The rules that depend on the components' classes and on how the run is launched."""
    cls = registry.get("attribution", spec.attribution).cls
    adds = cls.adds_modules
    if adds == "layers" and (spec.save_model or spec.keep_weights or save_to is not None):
        raise ValueError(f"{spec.attribution}'s layers stay in the model as modules of their own: saving it as a "
                         "Hugging Face folder is not supported")
    if adds == "lora" and spec.spunge.enabled:
        raise ValueError("spunge merges weight task vectors: it does not combine with LoRA adapters")
    if spec.spunge.enabled and spec.spunge.merge == "fusion" and not cls.ignores_ratio:
        raise ValueError(f"spunge's fusion refits whole linear layers: it does not combine with a mask "
                         f"({spec.attribution}); use unlearning layers or dense")
    if processes > 1 and spec.offset.enabled:
        raise ValueError("offset unlearning runs in a single process")
    if processes > 1 and spec.probes:
        raise ValueError("probes run in a single process; launch the run without torchrun/accelerate to probe it")
