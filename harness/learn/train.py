"""The one training loop: fine-tuning (building target/retain models) and unlearning both run through it.

AdamW with the schedule of harness/learn/settings.py, gradient accumulation and clipping, optional bf16 autocast,
resumable checkpoints. Which weights move, and on which network (the model, its DDP wrapper or its FSDP
shards), is the update plan's business (harness/learn/update.py): the loop only steps.
"""

from __future__ import annotations

import json
import logging
import math
import os
import pickle
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from harness import distributed
from harness.api import Example, LossOutput, Optimizer, UnlearnBatch
from harness.errors import NonFiniteLossError, UnlearnBenchError
from harness.io import temp_path
from harness.learn import fsdp
from harness.learn.data import collate, encode, to_device
from harness.learn.settings import SCHEDULES, TrainConfig, lr_factor
from harness.learn.update import Attached, UpdatePlan

__all__ = ["SCHEDULES", "LazyBatches", "TrainConfig", "TrainLog", "finetune_batches", "topic_batches", "train",
           "unlearn_batches"]


def fast_bf16(device: torch.device) -> bool:
    """Whether bf16 autocast speeds this device up: CUDA, or a CPU with AMX or AVX512-BF16 instructions."""
    if device.type == "cuda":
        return True
    if device.type != "cpu":
        return False
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return any(f in flags for f in ("amx_bf16", "avx512_bf16"))


def autocast_on(cfg: TrainConfig, device: torch.device) -> bool:
    """cfg.bf16_autocast, or where it is null, whether bf16 is fast on `device`."""
    return fast_bf16(device) if cfg.bf16_autocast is None else cfg.bf16_autocast


@dataclass
class TrainLog:
    steps: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0
    bf16_autocast: bool = False
    master_weights: bool = False  # whether fp32 master weights were kept (a 16-bit model and cfg.master_weights)
    stopped_at: int | None = None  # the step after which `on_step` asked to stop (matched forgetting)


class _Rows:
    """The encoded rows of `examples`, each tokenized when first asked for."""

    def __init__(self, tokenizer, examples: Sequence[Example], max_length: int) -> None:
        self.tokenizer, self.examples, self.max_length = tokenizer, examples, max_length
        self.done: dict[int, tuple[list[int], list[int]]] = {}

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, i: int) -> tuple[list[int], list[int]]:
        if i not in self.done:
            self.done[i] = encode(self.tokenizer, self.examples[i], self.max_length)
        return self.done[i]


class LazyBatches(Sequence):
    """Micro-batches in a fixed order, each built (tokenized, collated) when the loop reaches it: a run that
    stops after a few steps (matched forgetting, a step budget, a rehearsal) never tokenizes the rest of its
    data, and the batches are the ones an eager list would hold."""

    def __init__(self, plan: list[Any], build: Callable[[Any], Any]) -> None:
        self.plan, self.build = plan, build

    def __len__(self) -> int:
        return len(self.plan)

    def __getitem__(self, index):  # type: ignore[override]
        if isinstance(index, slice):
            return [self.build(p) for p in self.plan[index]]
        return self.build(self.plan[index])


def finetune_batches(tokenizer, examples: Sequence[Example], cfg: TrainConfig, max_length: int,
                     seed: int) -> LazyBatches:
    """Shuffled micro-batches over `examples` for cfg.epochs epochs."""
    rows = _Rows(tokenizer, examples, max_length)
    rng = random.Random(seed)
    plan = []
    for _ in range(cfg.epochs):
        order = list(range(len(rows)))
        rng.shuffle(order)
        plan += [order[s : s + cfg.batch_size] for s in range(0, len(order), cfg.batch_size)]
    return LazyBatches(plan, lambda chunk: collate([rows[i] for i in chunk], tokenizer.pad_token_id))


def unlearn_batches(tokenizer, forget: Sequence[Example], retain: Sequence[Example], cfg: TrainConfig,
                    max_length: int, seed: int, refusal: Sequence[Example] = ()) -> LazyBatches:
    """The unlearning micro-batches of `cfg.epochs` epochs, in `cfg.order`: shuffled (per epoch, the forget
    set shuffled into micro-batches, each paired with random retain examples) or topics (`topic_batches`).
    Where refusal examples are given, each batch carries the same forget questions with refusal answers."""
    f_rows, r_rows = _Rows(tokenizer, forget, max_length), _Rows(tokenizer, retain, max_length)
    x_rows = _Rows(tokenizer, refusal, max_length)
    if len(x_rows) and len(x_rows) != len(f_rows):
        raise ValueError(f"{len(x_rows)} refusal examples for {len(f_rows)} forget examples")
    pad = tokenizer.pad_token_id
    if cfg.order == "topics":
        plan = topic_batches([ex.topic for ex in forget], [ex.topic for ex in retain], cfg.batch_size) * cfg.epochs
    else:
        rng = random.Random(seed)
        plan = []
        for _ in range(cfg.epochs):
            order = list(range(len(f_rows)))
            rng.shuffle(order)
            for s in range(0, len(order), cfg.batch_size):
                chunk = order[s : s + cfg.batch_size]
                plan.append((0, chunk, [rng.randrange(len(r_rows)) for _ in chunk]))

    def build(item: tuple[int, list[int], list[int]]) -> UnlearnBatch:
        topic, chunk, picks = item
        return UnlearnBatch(collate([f_rows[i] for i in chunk], pad), collate([r_rows[i] for i in picks], pad),
                            collate([x_rows[i] for i in chunk], pad) if len(x_rows) else None, topic)

    return LazyBatches(plan, build)


def topic_batches(forget_topics: Sequence[int], retain_topics: Sequence[int],
                  batch_size: int) -> list[tuple[int, list[int], list[int]]]:
    """One epoch of (topic, forget indices, retain indices) in RMU's order (WMDP `rmu/unlearn.py`): each topic's
    examples in file order cut into batches; step k takes batch k // T of topic k % T (T topics) with the
    same-numbered batch of that topic's retain examples (repeating them if fewer; the whole retain set where no
    retain example has the topic). The epoch ends when the topic with the fewest batches has used each once."""
    topics = sorted(set(forget_topics))
    if not topics:
        return []

    def batches(indices: list[int]) -> list[list[int]]:
        return [indices[s : s + batch_size] for s in range(0, len(indices), batch_size)]

    every_retain = list(range(len(retain_topics)))
    f = {t: batches([i for i, x in enumerate(forget_topics) if x == t]) for t in topics}
    r = {t: batches([i for i, x in enumerate(retain_topics) if x == t] or every_retain) for t in topics}
    per_topic = min(len(b) for b in f.values())
    return [(t, f[t][k], r[t][k % len(r[t])]) for k in range(per_topic) for t in topics]


def _checkpointing(model: torch.nn.Module, on: bool) -> None:
    """Activation (gradient) checkpointing on or off, by its current transformers name or the older one."""
    if hasattr(model, "activation_checkpointing_enable"):
        if on:
            model.activation_checkpointing_enable({"use_reentrant": False})
        else:
            model.activation_checkpointing_disable()
    elif on:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    else:
        model.gradient_checkpointing_disable()


def log_step(step: int, total: int, row: dict[str, float]) -> None:
    """A progress callback for `train` that logs every fifth step (on the main process)."""
    if not distributed.is_main():
        return
    if step == 1 or step == total or step % 5 == 0:
        logging.getLogger(__name__).info("step %d/%d loss %.4f", step, total, row["loss"])


def checkpoint_file(path: Path) -> Path:
    """This process's checkpoint file for `path`: `path` itself, or under FSDP (where each process saves its
    own shards) `path.rankR-of-N`."""
    if not fsdp.enabled():
        return path
    return path.with_name(f"{path.name}.rank{distributed.rank()}-of-{distributed.world_size()}")


def _writes_checkpoint() -> bool:
    """Whether this process writes checkpoint files: the main one, or under FSDP every one (its shards)."""
    return fsdp.enabled() or distributed.is_main()


def remove_checkpoint(path: Path) -> None:
    """Delete the checkpoint files of a finished run (this process's own under FSDP)."""
    if _writes_checkpoint():
        checkpoint_file(path).unlink(missing_ok=True)


def _save_checkpoint(path: Path, step: int, update: Attached, optimizer, lr_sched, log: TrainLog) -> None:
    """Everything needed to continue after `step`, written atomically (temporary file, then rename). Under
    FSDP each process writes its own file with its shards. Tensors and plain numbers only, the log as JSON
    text, so the file loads with `weights_only=True`: a results folder never executes code."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(path)
    params = {n: fsdp.local(p).detach().cpu().clone() for n, p in update.params.items()}
    torch.save({"step": step, "params": params,
                "optimizer": optimizer.state_dict(), "scheduler": lr_sched.state_dict(),
                "log": json.dumps(log.steps, default=float), "rng": torch.get_rng_state()}, tmp)
    os.replace(tmp, path)


def _load_checkpoint(path: Path, update: Attached, optimizer, lr_sched, log: TrainLog) -> int:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise UnlearnBenchError(f"checkpoint {path} holds more than tensors and plain data (tampered with, or "
                                f"not written by unlearn-bench): refused. Delete it to start the run over. "
                                f"({str(exc).splitlines()[0]})") from None
    with torch.no_grad():
        for name, p in update.params.items():
            fsdp.local(p).copy_(state["params"][name])
    optimizer.load_state_dict(state["optimizer"])
    lr_sched.load_state_dict(state["scheduler"])
    log.steps = list(json.loads(state["log"]))
    torch.set_rng_state(state["rng"])
    return int(state["step"])


def _accumulate(update: Attached, micro_batches: Sequence[Any], loss_fn: Callable[[torch.nn.Module, Any], LossOutput],
                cfg: TrainConfig, step: int, n_steps: int, bf16: bool) -> tuple[float, dict[str, float]]:
    """One optimizer step's gradients: the loss of each of its micro-batches, backward; (mean loss, parts)."""
    parts: dict[str, float] = {}
    total = 0.0
    for index in range(step * cfg.grad_accum, min((step + 1) * cfg.grad_accum, len(micro_batches))):
        batch = to_device(distributed.rows(micro_batches[index]), update.device)
        with torch.autocast(update.device.type, dtype=torch.bfloat16, enabled=bf16):
            out = loss_fn(update.net, batch)
        names = sorted(out.parts)
        value, *part_values = distributed.mean([float(out.loss.detach()), *(out.parts[k] for k in names)])
        if not math.isfinite(value):
            raise NonFiniteLossError(
                f"loss is {value} at optimizer step {step + 1}/{n_steps} (micro-batch {index}); "
                f"loss parts: {out.parts}. Lower the learning rate or check the objective's config.")
        (out.loss / cfg.grad_accum).backward()
        total += value / cfg.grad_accum
        for k, v in zip(names, part_values, strict=True):
            parts[k] = parts.get(k, 0.0) + v / cfg.grad_accum
    return total, parts


def _log_step(log: TrainLog, row: dict[str, Any], update: Attached,
              on_step: Callable[[int, torch.nn.Module], dict[str, Any] | None] | None,
              progress: Callable[[int, int, dict[str, float]], None] | None, n_steps: int) -> bool:
    """The step's row with what `on_step` returned, in the log and the progress; whether training stops."""
    step = row["step"]
    extra = None
    if on_step is not None:
        extra = on_step(step, update.whole())
        update.resume()
        if extra is not None:
            row["eval"] = extra
    log.steps.append(row)
    if progress is not None:
        progress(step, n_steps, row)
    if extra is not None and extra.get("stop"):
        log.stopped_at = step
        return True
    return False


def train(model: torch.nn.Module, micro_batches: Sequence[Any],
          loss_fn: Callable[[torch.nn.Module, Any], LossOutput], cfg: TrainConfig, plan: UpdatePlan | None = None,
          seed: int = 0, progress: Callable[[int, int, dict[str, float]], None] | None = None,
          checkpoint: Path | None = None,
          on_step: Callable[[int, torch.nn.Module], dict[str, Any] | None] | None = None,
          optimizer: Optimizer | None = None,
          on_resume: Callable[[int, torch.nn.Module], None] | None = None) -> TrainLog:
    """Minimise `loss_fn` over `micro_batches` (cfg.grad_accum per optimizer step), updating what `plan`
    selects (None: every weight).

    With `checkpoint` and cfg.checkpoint_every, the state is saved every N steps and, when the file exists
    at the start, training continues from it and ends exactly as an uninterrupted run would. `on_step(step,
    model)` runs after each optimizer step, in eval mode; a dict it returns is kept in that step's row under
    "eval" (evaluation curves survive a resume with the rest of the log); when it holds `"stop": True`,
    training ends after that step (`TrainLog.stopped_at`). `optimizer`: the update rule (default AdamW).
    `on_resume(step, model)` runs once after a checkpoint is loaded, with the model as it was after that step
    (matched forgetting keeps it as one end of its bisection bracket).
    """
    torch.manual_seed(seed)
    n_steps = math.ceil(len(micro_batches) / cfg.grad_accum)
    if cfg.max_steps is not None:
        n_steps = min(n_steps, cfg.max_steps)
    if checkpoint is not None:
        checkpoint = checkpoint_file(checkpoint)
    if cfg.gradient_checkpointing:
        _checkpointing(model, True)
    update = (plan or UpdatePlan()).attach(model, freeze=cfg.clip_scope == "selected")
    stepper = update.optimizer(cfg, optimizer)
    lr_sched = torch.optim.lr_scheduler.LambdaLR(stepper, lr_factor(cfg, n_steps))
    log = TrainLog()
    first = _resume(checkpoint, update, stepper, lr_sched, log, on_resume)
    log.bf16_autocast = bf16 = autocast_on(cfg, update.device)
    log.master_weights = update.mixed_precision(cfg)
    start = time.perf_counter()
    update.net.train()
    try:
        for step in range(first, n_steps):
            total, parts = _accumulate(update, micro_batches, loss_fn, cfg, step, n_steps, bf16)
            lr = stepper.param_groups[0]["lr"]
            stepper.step()
            lr_sched.step()
            stepper.zero_grad(set_to_none=True)
            row: dict[str, Any] = {"step": step + 1, "loss": total, "lr": lr, **parts}
            if stepper.last_grad_norm is not None:
                row["grad_norm"] = stepper.last_grad_norm
            if _log_step(log, row, update, on_step, progress, n_steps):
                break
            if checkpoint is not None and cfg.checkpoint_every and (step + 1) % cfg.checkpoint_every == 0:
                if _writes_checkpoint():  # under DDP every process holds the same state
                    _save_checkpoint(checkpoint, step + 1, update, stepper, lr_sched, log)
                distributed.barrier()
        update.finish()
    finally:
        update.close()
        if cfg.gradient_checkpointing:
            _checkpointing(model, False)
        model.eval()
    log.seconds = time.perf_counter() - start
    return log


def _resume(checkpoint: Path | None, update: Attached, optimizer, lr_sched, log: TrainLog,
            on_resume: Callable[[int, torch.nn.Module], None] | None = None) -> int:
    """The step to start from: after the checkpoint's, when this process (and, under FSDP, every one) has it;
    `on_resume` is handed the model as it was after that step."""
    found = checkpoint is not None and checkpoint.is_file()
    if update.sharded and not distributed.agree(found):
        raise UnlearnBenchError(f"only some processes find their checkpoint file ({checkpoint}); delete "
                                f"{checkpoint.name.rsplit('.rank', 1)[0]}.rank* to start the run over")
    if not found:
        return 0
    first = _load_checkpoint(checkpoint, update, optimizer, lr_sched, log)
    if update.sharded and not distributed.agree(first):
        raise UnlearnBenchError(f"the processes' checkpoint files ({checkpoint}) are of different steps "
                                "(interrupted while saving); delete them to start the run over")
    logging.getLogger(__name__).info("resumed from %s after step %d", checkpoint, first)
    if on_resume is not None:
        on_resume(first, update.whole())
        update.resume()
    return first
