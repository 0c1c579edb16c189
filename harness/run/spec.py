"""A run spec: task × model × attribution (mask) × ratio × objective × seed, with each part's config."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from harness.config import option
from harness.learn.settings import TrainConfig
from harness.run import combine
from harness.run.features import MatchConfig, OffsetConfig, SpungeConfig


@dataclass
class PrepareConfig(TrainConfig):
    """Fine-tuning that builds the target and retain reference models."""

    lr: float = option(2e-4, "peak learning rate of AdamW")
    epochs: int = option(6, "passes over the fine-tuning set")
    seed: int = option(0, "seed of the fine-tuning order (fixed across unlearning seeds)")
    master_weights: bool = option(True, "16-bit models: fine-tune an fp32 copy of the weights (as TOFU's DeepSpeed "
                                        "bf16 fine-tuning does); at lr 1e-5 most bf16 updates would round away")


@dataclass
class RunSettings:
    """The settings every run of a sweep shares: a sweep file sets each once for its whole grid (a sweep's
    config is these plus its grid; harness/sweeps/sweep.py)."""

    task: str = option("tofu-mini", "registered task name (unlearn-bench list)")
    model: str = option("smollm2-135m", "base model: alias, local folder or hub id")
    utility: list[str] = option([], "lm-eval tasks scored after unlearning (mmlu_bundled, or any task name "
                                    "whose data lm-eval finds offline)")
    utility_limit: int | None = option(None, "lm-eval limit: at most N questions per (sub)task; null: all")
    generation: str = option("hf", "generation backend for evaluation: hf or vllm (unlearn-bench list)")
    generation_config: dict[str, Any] = option({}, "the generation backend's config")
    eval_every: int | None = option(None, "also evaluate every N unlearning steps (a curve in the record)")
    match: MatchConfig = option(MatchConfig(), "matched forgetting: unlearn to the retain model's forgetting "
                                               "level, then evaluate (docs/metrics.md)")
    save_model: bool = option(False, "write the unlearned model as a Hugging Face folder RESULTS/models/<run-id> "
                                     "(safetensors, tokenizer, model card)")
    keep_weights: bool = option(False, "keep the weights unlearning could change, RESULTS/weights/<run-id>."
                                       "safetensors, for `unlearn-bench export` later")
    dtype: str = option("float32", "weights dtype: float32, bfloat16 (7B models on a GPU) or float16")
    device: str = option("auto", "auto (CUDA if present, else CPU), cpu, cuda, cuda:1, ...")
    attribution_buffers: str = option("model", "where attribution keeps its fp32 gradient sums: model (the "
                                               "model's device) or cpu (a 7B model on one 80 GB GPU)")
    offset: OffsetConfig = option(OffsetConfig(), "δ-unlearning: unlearn a small model, evaluate the large one "
                                                   "shifted by it (harness/learn/offset.py)")
    spunge: SpungeConfig = option(SpungeConfig(), "SPUNGE: unlearn parts of the forget set separately and merge "
                                                   "them (harness/learn/spunge.py)")
    probes: list[str] = option([], "post-unlearning probes run after the evaluation (unlearn-bench list): "
                                   "quantization, relearn, mia, extraction, or a plugin's")
    probe_config: dict[str, dict[str, Any]] = option({}, "each probe's config, by probe name")
    task_config: dict[str, Any] = option({}, "the task's config")
    train: TrainConfig = option(TrainConfig(), "unlearning optimizer settings")
    prepare: PrepareConfig = option(PrepareConfig(), "fine-tuning settings for the target and retain models")
    rehearsal: bool = option(False, "set by `sweep --rehearse`: a stand-in model with every size cut, to see that "
                                    "a file's code paths run; not a result (harness/sweeps/rehearse.py)")


@dataclass
class RunSpec(RunSettings):
    """One run: the shared settings, the method (a grid point of a sweep), its seed, and what the sweep
    decided for it (tuning run or test run, full evaluation or not, the grid its rate was tuned on)."""

    attribution: str = option("dense", "registered attribution (mask) name")
    ratio: float = option(1.0, "fraction of weights updated, in (0, 1]")
    objective: str | None = option(None, "registered objective name; null: the task's default (graddiff, "
                                         "rmu for WMDP)")
    optimizer: str = option("adamw", "update rule of unlearning (unlearn-bench list): adamw, soul (SOUL's "
                                     "Sophia), or a plugin's")
    attribution_config: dict[str, Any] = option({}, "the attribution's config")
    objective_config: dict[str, Any] = option({}, "the objective's config")
    optimizer_config: dict[str, Any] = option({}, "the optimizer's config")
    seed: int = option(0, "seed of data order, retain sampling and attribution randomness")
    evaluate: bool = option(True, "false: a tuning run (unlearning and the validation probe only, no test "
                                  "evaluation; recorded as kind 'tune')")
    full_evaluation: bool = option(True, "false: a test run that stops at the match with its utility probe and "
                                         "trade-off score (what the verdicts compare), without the task's full "
                                         "evaluation, lm-eval utility or probes (a sweep's extra seeds)")
    tuned_from: list[float] = option([], "the learning-rate grid train.lr was chosen from by the sweep's tune "
                                         "rule (empty: not tuned)")

    def validate(self) -> None:
        if self.dtype not in ("float32", "bfloat16", "float16"):
            raise ValueError(f"dtype {self.dtype!r}: choose float32, bfloat16 or float16")
        if not 0.0 < self.ratio <= 1.0:
            raise ValueError(f"ratio must be in (0, 1], got {self.ratio}")
        if self.attribution_buffers not in ("model", "cpu"):
            raise ValueError(f"attribution_buffers {self.attribution_buffers!r}: choose model or cpu")
        stray = sorted(set(self.probe_config) - set(self.probes))
        if stray:
            raise ValueError(f"probe_config names {stray}, which are not in probes {self.probes}")
        if len(set(self.probes)) != len(self.probes):
            raise ValueError(f"probes {self.probes} names a probe twice")
        combine.spec_rules(self)

    def run_id(self) -> str:
        """`task-attribution-objective-hash` over the resolved spec and its plugins' code (harness/run/identity.py)."""
        from harness.plugins import get_registry
        from harness.run import identity

        return identity.run_id(self, get_registry())
