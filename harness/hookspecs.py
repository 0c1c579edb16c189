"""The plugin hooks of unlearn-bench (pluggy project name `unlearn_bench`).

Each hook receives a `register` callback. A plugin calls it once per component class it provides; the class
carries a unique `name` and a `Config` dataclass. Built-in components use these same hooks.
"""

from __future__ import annotations

from collections.abc import Callable

import pluggy

hookspec = pluggy.HookspecMarker("unlearn_bench")
hookimpl = pluggy.HookimplMarker("unlearn_bench")

Register = Callable[[type], None]


@hookspec
def register_attributions(register: Register) -> None:
    """Register attribution (weight-mask) methods: subclasses of `harness.api.Attribution`.

    Called once when the registry is first built (at CLI start or the first registry lookup), after every
    plugin module is loaded. An attribution returns per-parameter scores; the harness ranks them and keeps
    the top `ratio` fraction as the weights that unlearning may update.
    """


@hookspec
def register_objectives(register: Register) -> None:
    """Register unlearning objectives: subclasses of `harness.api.Objective`.

    Called once when the registry is first built. An objective turns a forget batch and a retain batch into
    a scalar loss; the harness owns the optimizer, the mask and the training loop.
    """


@hookspec
def register_tasks(register: Register) -> None:
    """Register unlearning tasks: subclasses of `harness.api.Task`.

    Called once when the registry is first built. A task provides forget, retain and fine-tuning data and
    evaluates a model, returning metrics with their direction.
    """


@hookspec
def register_executors(register: Register) -> None:
    """Register sweep executors: subclasses of `harness.api.Executor`.

    Called once when the registry is first built. An executor decides where a sweep's runs execute (`local`:
    one after another in this process; `ray`: as Ray tasks on a cluster); the sweep keeps the guarantees
    (skip finished runs, one run per spec at a time, failures recorded).
    """


@hookspec
def register_generation_backends(register: Register) -> None:
    """Register greedy-generation backends: subclasses of `harness.api.GenerationBackend`.

    Called once when the registry is first built. A backend turns prompts into greedy continuations of the
    model in memory (`hf`: transformers `generate`; `vllm`: the weights saved and loaded by vLLM). Tasks
    generate through the run's backend; teacher-forced scoring always runs on the model in memory.
    """


@hookspec
def register_probes(register: Register) -> None:
    """Register post-unlearning probes: subclasses of `harness.api.Probe`.

    Called once when the registry is first built. A probe attacks or inspects the unlearned model after its
    evaluation (quantization, relearning, membership inference, extraction) and returns metrics with their
    direction; a run spec lists the probes it runs (`probes: [quantization, relearn, mia]`).
    """


@hookspec
def register_optimizers(register: Register) -> None:
    """Register unlearning update rules: subclasses of `harness.api.Optimizer`.

    Called once when the registry is first built. A rule turns a parameter's gradient (its selected entries)
    into a step; the harness keeps masks, clipping, weight decay and master weights (`adamw`, the default;
    `soul`, SOUL's Sophia). A run spec names one (`optimizer: soul`).
    """
