"""unlearn-bench: a benchmark harness for unlearning in large language models.

The names below are the stable plugin API (docs/plugins.md), importable from `harness` itself:

    from harness import hookimpl, Attribution, AttributionResult, Objective, LossOutput, Task, option
"""

from __future__ import annotations

import importlib
import logging
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "hookimpl": "harness.hookspecs",
    "option": "harness.config",
    "Attribution": "harness.api", "AttributionData": "harness.api", "AttributionResult": "harness.api",
    "Objective": "harness.api", "UnlearnBatch": "harness.api", "LossOutput": "harness.api",
    "Task": "harness.api", "TaskConfig": "harness.api", "Example": "harness.api", "Metric": "harness.api",
    "Evaluation": "harness.api", "EvalContext": "harness.api", "ProbeSets": "harness.api", "Batch": "harness.api",
    "GenerationBackend": "harness.api", "Executor": "harness.api",
    "Probe": "harness.api", "ProbeContext": "harness.api",
    "summed_gradients": "harness.learn.attribution",
    "mean_nll": "harness.measure.scoring", "sum_nll": "harness.measure.scoring", "token_nll": "harness.measure.scoring",
    "completion_nll": "harness.measure.scoring",
    "check_attribution": "harness.conformance", "check_objective": "harness.conformance",
    "check_probe": "harness.conformance", "check_optimizer": "harness.conformance",
    "Optimizer": "harness.api",
}
__all__ = ["__version__", *_EXPORTS]

# transformers imports torchao (the quantization probe's library) when it is installed; torchao's notices about
# its optional GPU kernels and torch's about its enums are not ours to show on every model load
for _noisy in ("torchao", "torch.utils._pytree"):
    logging.getLogger(_noisy).setLevel(logging.ERROR)


def __getattr__(name: str) -> Any:
    """Load an exported name on first use (importing `harness` alone stays light and cycle-free)."""
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'harness' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
