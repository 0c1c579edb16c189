"""The interfaces a plugin implements: Attribution, Objective, Task, Probe, Optimizer, and the small data types
they share.

A plugin class declares `name` (unique per kind), a `Config` dataclass (fields made with
`harness.config.option`, so each has help text) and a short docstring; it is built as `cls(config)`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import torch

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase


@dataclass(frozen=True)
class Example:
    """One training or evaluation text: `prompt` is context only (no loss), `completion` is learned (followed
    by the end-of-sequence token unless `eos` is false, as for a multiple-choice letter scored like lm-eval)."""

    prompt: str
    completion: str
    eos: bool = True
    topic: int = 0  # the task's topic (e.g. WMDP's forget corpus) it belongs to: `train.order: topics` batches by it
    max_length: int | None = None  # its own token cap (RMU's code: 768 for cyber, 512 for bio); None: the task's


Batch = dict[str, torch.Tensor]  # input_ids, attention_mask, labels (-100 where no loss)


@dataclass
class Metric:
    """A metric value and whether higher, lower or closer to zero (MUSE's PrivLeak) is better."""

    value: float | None
    direction: Literal["higher", "lower", "zero", "info"]  # info: a number to read, not to rank
    group: str = "forget"  # forget | utility | info


@dataclass
class AttributionData:
    """What an attribution may use: the model before unlearning and its forget/retain batches."""

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    forget: Sequence[Batch]
    retain: Sequence[Batch]
    forget_refusal: Sequence[Batch] = ()  # forget questions with refusal answers (for PO-style variants)
    seed: int = 0
    ratio: float = 1.0  # the run's ratio, for methods with their own selection rule
    grad_buffers: str | None = None  # device for fp32 gradient sums (harness.learn.attribution); None: the model's


@dataclass
class AttributionResult:
    """What an attribution decided. Usually per-parameter `scores` (higher = more worth updating), which
    the harness ranks globally to keep the top `ratio` fraction. A method with its own selection rule
    (Wanda's per-row rule) returns a ready boolean `mask` instead; a method that trains adapters returns a
    peft `lora` config, or `adapters` for EUL's unlearning layers. All None: update every weight.

    `info` holds numbers worth recording with the mask (for WAGLE: the norms of both score terms).
    """

    scores: dict[str, torch.Tensor] | None = None
    info: dict[str, float] = field(default_factory=dict)
    mask: dict[str, torch.Tensor] | None = None
    lora: dict[str, Any] | None = None
    adapters: dict[str, Any] | None = None  # unlearning layers (harness/learn/adapters.py): {"reduction": r}


class Attribution:
    """Decides which weights unlearning may update, by scoring them."""

    name: ClassVar[str]
    Config: ClassVar[type]
    ignores_ratio: ClassVar[bool] = False  # True: the ratio means nothing to it (runs are keyed with ratio 1)
    needs_data: ClassVar[bool] = True  # False: no data pass, nothing to cache (dense, LoRA)
    # None: it selects weights of the model; "lora": adapters merged into the weights before evaluation;
    # "layers": modules of its own that stay in the model (they cannot be saved as a plain model folder)
    adds_modules: ClassVar[str | None] = None

    def __init__(self, config: Any) -> None:
        self.config = config

    def scores(self, data: AttributionData) -> AttributionResult:
        raise NotImplementedError


@dataclass
class UnlearnBatch:
    """One optimizer micro-step of unlearning: a forget batch and a retain batch of the same size, and the
    same forget questions with refusal answers (for preference-style objectives)."""

    forget: Batch
    retain: Batch
    forget_refusal: Batch | None = None
    topic: int = 0  # the forget examples' topic under `train.order: topics` (RMU steers each to its own vector)


@dataclass
class LossOutput:
    """The loss to minimise and its named parts (logged per step as unlearning curves)."""

    loss: torch.Tensor
    parts: dict[str, float] = field(default_factory=dict)


class Objective:
    """Says how to unlearn: the loss for one forget/retain batch."""

    name: ClassVar[str]
    Config: ClassVar[type]
    needs_reference: ClassVar[bool] = False  # True: the harness passes a frozen copy of the target model
    needs_retain: ClassVar[bool] = True  # False: the loss has no retain term (gradient ascent), an empty set is fine

    def __init__(self, config: Any) -> None:
        self.config = config

    def loss(self, model: PreTrainedModel, batch: UnlearnBatch,
             reference: PreTrainedModel | None = None) -> LossOutput:
        raise NotImplementedError

    @classmethod
    def rehearsal_config(cls, config: dict[str, Any], layers: int) -> dict[str, Any]:
        """Config keys a rehearsal (harness/sweeps/rehearse.py) sets over the file's `config` so that it fits a
        stand-in model of `layers` decoder layers (RMU: its steered layer and updated modules)."""
        return {}

    def updates(self, parameter_name: str) -> bool:
        """Whether this objective may update the named parameter (the harness intersects it with the mask)."""
        return True


class GenerationBackend:
    """Greedy generation for evaluation: continuations of `prompts` by the model in memory, in input order,
    cut at the first stop string and stripped."""

    name: ClassVar[str]
    Config: ClassVar[type]

    def __init__(self, config: Any) -> None:
        self.config = config

    def generate(self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, prompts: Sequence[str],
                 max_new_tokens: int, batch_size: int, stop: Sequence[str] = ()) -> list[str]:
        raise NotImplementedError


class Optimizer:
    """An update rule for unlearning: how a parameter's gradient becomes a step. The harness owns the rest
    (harness/learn/optim.py): it gathers each parameter's selected entries (masks), clips, applies decoupled weight
    decay, keeps fp32 master copies where asked and writes the entries back, so masked-out weights stay
    bit-identical and state exists for the selected entries only. A rule keeps its state in `init_state`'s
    tensors (shaped like the gathered gradient) and updates `data` in place; `group` holds the train
    settings: lr (after the schedule), weight_decay, eps."""

    name: ClassVar[str]
    Config: ClassVar[type]

    def __init__(self, config: Any) -> None:
        self.config = config

    def init_state(self, grad: torch.Tensor) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def update(self, data: torch.Tensor, grad: torch.Tensor, state: dict[str, torch.Tensor], step: int,
               group: dict[str, Any]) -> None:
        raise NotImplementedError


class Executor:
    """Where a sweep's runs execute. `run(jobs)` calls every job (a picklable zero-argument callable that
    runs one spec and returns its outcome: finished, failed, skipped or busy) and yields (index, outcome) as
    each ends; a job whose worker was lost (killed, node gone) yields 'lost'. The sweep owns the rest: which
    runs are pending, locks, records, the event log."""

    name: ClassVar[str]
    Config: ClassVar[type]

    def __init__(self, config: Any) -> None:
        self.config = config

    def run(self, jobs: Sequence[Callable[[], str]]) -> Iterator[tuple[int, str]]:
        raise NotImplementedError


@dataclass
class EvalContext:
    """What a task's evaluation needs besides the model: the retain reference's per-sample statistics
    (for forget quality), the batch size, and the generation backend (None: HF greedy)."""

    reference_stats: dict[str, Any] | None = None
    batch_size: int = 16
    backend: GenerationBackend | None = None

    def generate(self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, prompts: Sequence[str],
                 max_new_tokens: int, stop: Sequence[str] = ()) -> list[str]:
        """Greedy continuations through the run's backend (under a multi-process launch, each process
        generates its share and every process gets all the texts, in input order)."""
        from harness import distributed
        from harness.measure.generation import greedy

        def run(part: list[str]) -> list[str]:
            if not part:
                return []
            if self.backend is None:
                return greedy(model, tokenizer, part, max_new_tokens, self.batch_size, stop)
            return self.backend.generate(model, tokenizer, part, max_new_tokens, self.batch_size, stop)

        return distributed.map_sharded(run, prompts)


@dataclass
class ProbeSets:
    """The cheap teacher-forced probe of matched forgetting (harness/measure/match.py). A set's value is the mean over
    its examples of P̃ = exp(-token-mean NLL of the completion), or, for a set listed in `alternatives` (one
    list of wrong completions per example; keys "forget", "validation" or a utility part), the mean of
    P̃ / (P̃ + Σ P̃(wrong)), as TOFU normalises short answers and as multiple-choice accuracy reads its options.
    `forget` decides when forgetting has reached the level: the retain model's own forget probe, or `level`
    where the task has no retain model (WMDP: chance); the `utility` parts are combined by their harmonic
    mean; `validation` (held out of training and of the test metrics) is what tuning selects on."""

    forget: list[Example]
    utility: dict[str, list[Example]]
    validation: list[Example] = field(default_factory=list)
    alternatives: dict[str, list[list[Example]]] = field(default_factory=dict)
    level: float | None = None
    max_length: int | None = None  # token cap of probe examples; None: the task's training max_length
    # per-question key (forget, validation, utility/<part>): each question's cluster (TOFU: its author), for
    # the leaderboard's question-level bootstrap; a key not named: every question its own cluster
    clusters: dict[str, list[int]] = field(default_factory=dict)


@dataclass
class Evaluation:
    """A task evaluation: named metrics, plus per-sample statistics worth keeping (e.g. truth ratios)."""

    metrics: dict[str, Metric]
    stats: dict[str, Any] = field(default_factory=dict)
    samples: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class ProbeContext:
    """What a probe (an attack or diagnostic run on the unlearned model) may use besides the model: the task
    and tokenizer, the unlearned model's own metrics, the target's and retain model's evaluations (their
    `metrics` as plain dicts, `value`/`direction`/`group`), a way to load those models, the task's evaluation
    with the run's settings, the run's seed, and `cached(name, key, compute)` for results about a reference
    model (the retain model's relearning, its MIA scores) that every run of a sweep shares."""

    task: Task
    tokenizer: PreTrainedTokenizerBase
    evaluate: Callable[[PreTrainedModel], Evaluation]
    unlearned: dict[str, Metric]
    target: dict[str, Any]  # {"model": path, "metrics": {...}}
    retain: dict[str, Any] | None  # the same for the retain model; None where the task has none (WMDP)
    load: Callable[[str], PreTrainedModel]
    cached: Callable[[str, dict[str, Any], Callable[[], dict[str, Any]]], dict[str, Any]]
    seed: int = 0
    batch_size: int = 16


class Probe:
    """A post-unlearning probe: an attack (quantization, relearning, membership inference) or a diagnostic,
    run on the unlearned model after its evaluation. It returns metrics with their direction; the harness
    records them in the run's metrics under the group "probe" and restores nothing: a probe must leave the
    model it is given as it found it (change a copy, or put the weights back)."""

    name: ClassVar[str]
    Config: ClassVar[type]

    def __init__(self, config: Any) -> None:
        self.config = config

    def run(self, model: PreTrainedModel, ctx: ProbeContext) -> dict[str, Metric]:
        raise NotImplementedError


@dataclass
class TaskConfig:
    """The fields every task's Config has (derive yours from it): the harness reads them for training,
    attribution, probing and evaluation."""

    max_length: int = field(default=512, metadata={"help": "token cap for training and scoring sequences"})
    eval_batch_size: int = field(default=16, metadata={"help": "batch size for scoring and generation"})
    refusals_file: str | None = field(default=None, metadata={
        "help": "refusal answers for PO, one per line (e.g. WAGLE's polite_refusal_responses_tofu.csv); "
                "null: harness/learn/refusals.py's list"})


class Task:
    """An unlearning task: its data, how to build its target model, how to evaluate."""

    name: ClassVar[str]
    Config: ClassVar[type]
    default_objective: ClassVar[str] = "graddiff"  # used when a run spec names no objective
    uses_base_model: ClassVar[bool] = False  # True: the base model is the target, no retain model (WMDP)
    headline: ClassVar[tuple[str, str]] = ("", "")  # (forget metric, utility metric) for trade-off plots
    # the relearning attack's settings (harness/measure/probes/relearn.py): OPTML-Group/Unlearn-Smooth's WMDP
    # `Relearn+Forget.json` (lr 1e-5, batch 1 x 4 accumulation, 3 epochs); a task whose cited code differs sets
    # its own (`steps` instead of `epochs`: a fixed number of steps)
    relearn_settings: ClassVar[dict[str, Any]] = {"lr": 1e-5, "batch_size": 4, "epochs": 3}

    def __init__(self, config: Any) -> None:
        self.config = config

    @property
    def max_length(self) -> int:
        """Token cap of training and scoring sequences (the config's `max_length`)."""
        return self.config.max_length

    @property
    def eval_batch_size(self) -> int:
        """Batch size of scoring and generation (the config's `eval_batch_size`)."""
        return self.config.eval_batch_size

    def forget_examples(self) -> list[Example]:
        raise NotImplementedError

    def retain_examples(self) -> list[Example]:
        raise NotImplementedError

    def finetune_examples(self, which: Literal["target", "retain"]) -> list[Example]:
        """Data the harness fine-tunes a base model on to build the target (has learned the forget data) or
        the retain reference (never saw it)."""
        raise NotImplementedError

    def provided_model(self, which: Literal["target", "retain"]) -> str | None:
        """A path or hub id that replaces fine-tuning for this model, or None to build it."""
        return None

    def validation_examples(self) -> list[Example]:
        """Examples held out of unlearning and of the test metrics (known to target and retain models alike),
        for tuning decisions that must not look at test metrics. None by default."""
        return []

    def probe_sets(self) -> ProbeSets:
        """Data of the cheap matched-forgetting probe: by default the forget set, the retain set as the one
        utility part, and the validation examples."""
        return ProbeSets(self.forget_examples(), {"retain": self.retain_examples()}, self.validation_examples())

    def forget_splits(self) -> dict[str, list[int]]:
        """The forget set's parts by its natural attribute (indices into `forget_examples()`), for SPUNGE's
        split-unlearn-merge (harness/learn/spunge.py). None by default."""
        return {}

    def holdout_examples(self) -> list[Example]:
        """Examples like the forget set's that no model of the task was trained on (membership inference's
        non-members: TOFU's holdout split). None by default."""
        return []

    def refusal_examples(self) -> list[Example]:
        """The forget prompts, in order, each paired with a refusal answer (PO and WAGLE's PO variant)."""
        from harness.learn.refusals import refusals

        answers = refusals(self.config.refusals_file)
        return [replace(ex, completion=" " + answers[i % len(answers)]) for i, ex in enumerate(self.forget_examples())]

    def evaluate(self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase,
                 ctx: EvalContext) -> Evaluation:
        raise NotImplementedError

    @classmethod
    def rehearsal_config(cls, config: dict[str, Any]) -> dict[str, Any]:
        """Config keys a rehearsal (harness/sweeps/rehearse.py) sets over the file's `config`: a few evaluation rows
        and generated tokens, and bundled data where the file names data this machine may lack."""
        return {}

    def evaluation_size(self) -> tuple[int, int]:
        """(sequences the full evaluation scores, tokens it generates at most): what `sweep --plan` estimates
        its cost from (harness/sweeps/plan.py). (0, 0): not said, not estimated."""
        return 0, 0

