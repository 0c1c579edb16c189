"""SPUNGE (Kadhe et al. 2024, "Split, Unlearn, Merge: Leveraging Data Attributes for More Effective
Unlearning in LLMs", arXiv 2406.11780): split the forget set by a data attribute, unlearn each part from the
same starting model with the run's objective, mask and update rule, and merge the unlearned models' task
vectors τ_k = θ_k − θ_0 into θ = θ_0 + λ·merge(τ_1..τ_K).

Merges are PEFT's (`peft.utils.merge_utils`): `ties` (TIES-merging: keep each τ_k's largest `density`
share by magnitude, by default TIES-merging's top 20%, elect a sign per weight by the summed values, average
the values that agree), `sum` (task arithmetic, Ilharco et al.: Σ_k τ_k, each part's update whole) and
`average` (task arithmetic with weights 1/K: the mean task vector, each part's update divided by K); or
`fusion`, EUL's fusion of the unlearning layers trained for several requests (`fuse`: each trainable linear
layer's weight that best reproduces every part's outputs on that part's forget inputs; λ does not apply to
it). The split is the task's (`Task.forget_splits`: TOFU per author) or `chunks` (`parts` contiguous equal
parts of the forget set). No code was published with the paper: docs/metrics.md says what is the paper's and
what is ours.
"""

from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import torch

from harness.api import Example, Optimizer, Task
from harness.learn.settings import TrainConfig
from harness.run.features import MERGES, SpungeConfig  # noqa: F401  (the run spec's config of this feature)

if TYPE_CHECKING:  # the spec reads SpungeConfig without importing the training loop
    from harness.learn.train import TrainLog
    from harness.learn.update import UpdatePlan

log = logging.getLogger(__name__)


def split(task: Task, n_forget: int, cfg: SpungeConfig) -> dict[str, list[int]]:
    """Named parts of the forget set (indices into task.forget_examples())."""
    if cfg.by == "chunks":
        size = -(-n_forget // cfg.parts)
        return {f"part{k + 1}": list(range(k * size, min((k + 1) * size, n_forget))) for k in range(cfg.parts)
                if k * size < n_forget}
    parts = task.forget_splits()
    if len(parts) < 2:
        raise ValueError(f"task {task.name!r} declares no split of its forget set (Task.forget_splits): use "
                         "spunge.by: chunks")
    return parts


def merge(deltas: Sequence[torch.Tensor], cfg: SpungeConfig) -> torch.Tensor:
    """The merged task vector of one parameter (PEFT's ties or task_arithmetic), times λ; fusion's parameters
    that are not a linear layer's weight (biases, norms) take the mean."""
    from peft.utils import merge_utils

    k = len(deltas)
    if cfg.merge == "sum":
        return merge_utils.task_arithmetic(list(deltas), torch.ones(k)) * cfg.scale
    if cfg.merge != "ties":  # average; fusion merges what is not a linear layer's weight by the mean
        return merge_utils.task_arithmetic(list(deltas), torch.full((k,), 1.0 / k)) * cfg.scale
    with warnings.catch_warnings():  # density 1: PEFT notes that nothing is pruned
        warnings.filterwarnings("ignore", message="The density")
        return merge_utils.ties(list(deltas), torch.ones(k), cfg.density, "total") * cfg.scale


def fuse(weights: Sequence[torch.Tensor], grams: Sequence[torch.Tensor]) -> torch.Tensor:
    """EUL's fusion of one linear layer's weights W_k [out, in] (RegMean, Jin et al. 2023): the W minimising
    Σ_k ‖W X_k − W_k X_k‖², W = (Σ_k W_k G_k)(Σ_k G_k)^{-1} with G_k = X_k X_kᵀ the part's input Gram
    matrix; a ridge of 1e-6 of the mean diagonal keeps the sum invertible."""
    total = sum(g.double() for g in grams)
    ridge = 1e-6 * float(total.diagonal().mean().clamp_min(1e-12))
    total = total + ridge * torch.eye(total.shape[0], dtype=total.dtype, device=total.device)
    rhs = sum(w.double() @ g.double() for w, g in zip(weights, grams, strict=True))
    return torch.linalg.solve(total, rhs.T).T.to(weights[0].dtype)  # total is symmetric


def input_grams(model: torch.nn.Module, names: Sequence[str], batches) -> dict[str, torch.Tensor]:
    """X Xᵀ of the inputs of the linear layers `names` (their module names) over the batches' real tokens."""
    modules = dict(model.named_modules())
    grams: dict[str, torch.Tensor] = {}
    mask: list[torch.Tensor] = []

    def hook(name):
        def record(_module, inputs, _output):
            x = inputs[0].detach().float()[mask[0].bool()]
            grams[name] = grams.get(name, 0) + x.T @ x
        return record

    handles = [modules[n].register_forward_hook(hook(n)) for n in names]
    try:
        with torch.no_grad():
            for batch in batches:
                mask[:] = [batch["attention_mask"].to(model.device)]
                model(input_ids=batch["input_ids"].to(model.device), attention_mask=mask[0])
    finally:
        for h in handles:
            h.remove()
    return grams


def unlearn(model: torch.nn.Module, task: Task, tok, examples: tuple[list[Example], list[Example], list[Example]],
            loss_fn: Callable[[Any, Any], Any], train_cfg: TrainConfig, plan: UpdatePlan, seed: int,
            cfg: SpungeConfig, rule: Optimizer | None) -> tuple[TrainLog, dict[str, Any]]:
    """Unlearn each part from the model's current weights and merge; the model ends with the merged weights.
    Returns the parts' logs joined (each row tagged with its part) and what the record keeps per part."""
    from harness.learn.train import TrainLog, train, unlearn_batches

    forget, retain, refusal = examples
    parts = split(task, len(forget), cfg)
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    start = {n: p.detach().clone() for n, p in params.items()}
    deltas: dict[str, list[torch.Tensor]] = {n: [] for n in params}
    linears = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and m.weight.requires_grad]
    grams: dict[str, list[torch.Tensor]] = {n: [] for n in linears}
    joined, info = TrainLog(), []
    for name, indices in parts.items():
        t = time.perf_counter()
        with torch.no_grad():
            for n, p in params.items():
                p.copy_(start[n])
        batches = unlearn_batches(tok, [forget[i] for i in indices], retain, train_cfg, task.max_length, seed,
                                  [refusal[i] for i in indices] if refusal else ())
        part_log = train(model, batches, loss_fn, train_cfg, plan, seed, optimizer=rule)
        for n, p in params.items():
            deltas[n].append((p.detach() - start[n]).float())
        if cfg.merge == "fusion":
            was_training = model.training
            model.eval()
            for n, g in input_grams(model, linears, [b.forget for b in batches]).items():
                grams[n].append(g)
            model.train(was_training)
        joined.steps += [dict(row, part=name) for row in part_log.steps]
        joined.bf16_autocast, joined.master_weights = part_log.bf16_autocast, part_log.master_weights
        info.append({"name": name, "forget": len(indices), "steps": len(part_log.steps),
                     "final_loss": part_log.steps[-1]["loss"] if part_log.steps else None,
                     "seconds": time.perf_counter() - t})
        log.info("spunge: part %s (%d forget examples) unlearned in %d steps", name, len(indices),
                 len(part_log.steps))
    fused = {f"{n}.weight" for n in linears} if cfg.merge == "fusion" else set()
    with torch.no_grad():
        for n, p in params.items():
            if n in fused:
                weights = [(start[n].float() + d) for d in deltas[n]]
                p.copy_(fuse(weights, grams[n.removesuffix(".weight")]).to(p.dtype))
            else:
                p.copy_((start[n].float() + merge(deltas[n], cfg)).to(p.dtype))
    return joined, {"by": cfg.by, "merge": cfg.merge, "density": cfg.density, "scale": cfg.scale, "parts": info}
