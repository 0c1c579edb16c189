"""The one training loop: fine-tuning (building target/retain models) and unlearning both run through it.

AdamW with linear warmup and linear decay, gradient accumulation and clipping, optional bf16 autocast.
With a mask, only masked-in weights change: parameters with no masked-in weight leave the optimizer
entirely, and partly masked parameters keep optimizer state for their selected entries only, are clipped on
those entries' gradients and are updated only there (harness/optim.py), so masked-out weights stay
bit-identical, weight decay included.

Under a multi-process launch the model is wrapped for data parallelism (harness/distributed.py), or, with
accelerate's --use_fsdp, a sharded copy is trained and its weights gathered back (harness/fsdp.py).
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

from harness import distributed, fsdp
from harness.api import Batch, Example, LossOutput, UnlearnBatch
from harness.config import option
from harness.data import collate, encode, to_device
from harness.errors import NonFiniteLossError, UnlearnBenchError
from harness.masks import Mask
from harness.optim import MaskedAdamW


@dataclass
class TrainConfig:
    lr: float = option(2e-5, "peak learning rate of AdamW")
    epochs: int = option(5, "passes over the forget set (or the fine-tuning set)")
    max_steps: int | None = option(None, "optimizer steps; overrides epochs when set")
    batch_size: int = option(8, "forget (and retain) examples per micro-batch")
    grad_accum: int = option(1, "micro-batches per optimizer step")
    warmup_ratio: float = option(0.1, "fraction of steps with linear warmup (at least one step)")
    schedule: str = option("linear", "after warmup: linear (decay to 0 at the last step) or constant (the rate "
                                     "a run stopped early by matched forgetting has seen does not depend on its "
                                     "step budget)")
    weight_decay: float = option(0.0, "AdamW decoupled weight decay (never applied to masked-out weights)")
    max_grad_norm: float | None = option(1.0, "clip the (masked) gradient norm; null: no clipping")
    checkpoint_every: int | None = option(None, "save a resumable checkpoint every N optimizer steps")
    gradient_checkpointing: bool = option(False, "recompute activations in backward (less memory, ~30% more "
                                                 "compute; for 7B models)")
    bf16_autocast: bool | None = option(None, "forward/backward in bf16 autocast; null: on where bf16 is fast "
                                               "(CUDA, CPUs with AMX or AVX512-BF16; on other CPUs it is about "
                                               "25x slower than fp32)")

    def validate(self) -> None:
        if self.lr <= 0 or self.batch_size < 1 or self.grad_accum < 1 or self.epochs < 1:
            raise ValueError("lr must be > 0; batch_size, grad_accum and epochs must be >= 1")
        if not 0 <= self.warmup_ratio < 1:
            raise ValueError(f"warmup_ratio must be in [0, 1), got {self.warmup_ratio}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule {self.schedule!r}: choose {' or '.join(SCHEDULES)}")


SCHEDULES = ("linear", "constant")


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
    stopped_at: int | None = None  # the step after which `on_step` asked to stop (matched forgetting)


def _encode_all(tokenizer, examples: Sequence[Example], max_length: int) -> list[tuple[list[int], list[int]]]:
    return [encode(tokenizer, ex, max_length) for ex in examples]


def finetune_batches(tokenizer, examples: Sequence[Example], cfg: TrainConfig, max_length: int,
                     seed: int) -> list[Batch]:
    """Shuffled micro-batches over `examples` for cfg.epochs epochs."""
    rows = _encode_all(tokenizer, examples, max_length)
    rng = random.Random(seed)
    out = []
    for _ in range(cfg.epochs):
        order = list(range(len(rows)))
        rng.shuffle(order)
        out += [collate([rows[i] for i in order[s : s + cfg.batch_size]], tokenizer.pad_token_id)
                for s in range(0, len(order), cfg.batch_size)]
    return out


def unlearn_batches(tokenizer, forget: Sequence[Example], retain: Sequence[Example], cfg: TrainConfig,
                    max_length: int, seed: int, refusal: Sequence[Example] = ()) -> list[UnlearnBatch]:
    """Per epoch, the forget set shuffled into micro-batches, each paired with random retain examples (and,
    when given, the same forget questions with refusal answers)."""
    f_rows, r_rows = _encode_all(tokenizer, forget, max_length), _encode_all(tokenizer, retain, max_length)
    x_rows = _encode_all(tokenizer, refusal, max_length)
    if x_rows and len(x_rows) != len(f_rows):
        raise ValueError(f"{len(x_rows)} refusal examples for {len(f_rows)} forget examples")
    pad = tokenizer.pad_token_id
    rng = random.Random(seed)
    out = []
    for _ in range(cfg.epochs):
        order = list(range(len(f_rows)))
        rng.shuffle(order)
        for s in range(0, len(order), cfg.batch_size):
            chunk = order[s : s + cfg.batch_size]
            picks = [rng.randrange(len(r_rows)) for _ in chunk]
            out.append(UnlearnBatch(collate([f_rows[i] for i in chunk], pad), collate([r_rows[i] for i in picks], pad),
                                    collate([x_rows[i] for i in chunk], pad) if x_rows else None))
    return out


class MaskedUpdate:
    """Holds a mask's effect on one model for the duration of a training run: fully masked-out parameters
    are frozen, partly masked ones get optimizer state and updates over their selected entries only."""

    def __init__(self, model: torch.nn.Module, mask: Mask | None) -> None:
        self.params = {n: p for n, p in model.named_parameters() if p.requires_grad}
        self.partial: dict[str, torch.Tensor] = {}  # name -> update mask
        self.frozen: list[torch.nn.Parameter] = []
        for name, p in self.params.items():
            m = None if mask is None else mask[name].to(p.device)
            if m is None or bool(m.all()):
                continue
            if not bool(m.any()):
                p.requires_grad_(False)
                self.frozen.append(p)
            else:
                self.partial[name] = m

    def follow(self, net: torch.nn.Module) -> None:
        """Point at the parameters of a sharded copy of the model (the same names), each mask cut as its
        parameter is sharded. Which parameters are frozen was decided on the whole masks, so it is the same
        on every process."""
        params = dict(net.named_parameters())
        self.params = {n: params[n] for n in self.params}
        self.partial = {n: fsdp.cut_as(m, self.params[n]) for n, m in self.partial.items()}

    def trainable(self) -> list[torch.nn.Parameter]:
        return [p for p in self.params.values() if p.requires_grad]

    def masks_by_param(self) -> dict[int, torch.Tensor]:
        return {id(self.params[name]): m for name, m in self.partial.items()}

    def close(self) -> None:
        for p in self.frozen:
            p.requires_grad_(True)


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
        logging.getLogger("harness.train").info("step %d/%d loss %.4f", step, total, row["loss"])


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


def _save_checkpoint(path: Path, step: int, update: MaskedUpdate, optimizer, lr_sched, log: TrainLog) -> None:
    """Everything needed to continue after `step`, written atomically (temporary file, then rename). Under
    FSDP each process writes its own file with its shards. Tensors and plain numbers only, the log as JSON
    text, so the file loads with `weights_only=True`: a results folder never executes code."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    params = {n: fsdp.local(p).detach().cpu().clone() for n, p in update.params.items()}
    torch.save({"step": step, "params": params,
                "optimizer": optimizer.state_dict(), "scheduler": lr_sched.state_dict(),
                "log": json.dumps(log.steps, default=float), "rng": torch.get_rng_state()}, tmp)
    os.replace(tmp, path)


def _load_checkpoint(path: Path, update: MaskedUpdate, optimizer, lr_sched, log: TrainLog) -> int:
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


def train(model: torch.nn.Module, micro_batches: Sequence[Any],
          loss_fn: Callable[[torch.nn.Module, Any], LossOutput], cfg: TrainConfig, mask: Mask | None = None,
          seed: int = 0, progress: Callable[[int, int, dict[str, float]], None] | None = None,
          checkpoint: Path | None = None,
          on_step: Callable[[int, torch.nn.Module], dict[str, Any] | None] | None = None) -> TrainLog:
    """Minimise `loss_fn` over `micro_batches` (cfg.grad_accum per optimizer step).

    With `checkpoint` and cfg.checkpoint_every, the state is saved every N steps and, when the file exists
    at the start, training continues from it and ends exactly as an uninterrupted run would. `on_step(step,
    model)` runs after each optimizer step, in eval mode; a dict it returns is kept in that step's row under
    "eval" (evaluation curves survive a resume with the rest of the log); when it holds `"stop": True`,
    training ends after that step (`TrainLog.stopped_at`).
    """
    torch.manual_seed(seed)
    n_steps = math.ceil(len(micro_batches) / cfg.grad_accum)
    if cfg.max_steps is not None:
        n_steps = min(n_steps, cfg.max_steps)
    warmup = max(1, int(n_steps * cfg.warmup_ratio))
    sharded = fsdp.enabled()
    if checkpoint is not None:
        checkpoint = checkpoint_file(checkpoint)
    update = MaskedUpdate(model, mask)
    if cfg.gradient_checkpointing:
        _checkpointing(model, True)
    device = next(model.parameters()).device
    if sharded:
        net = fsdp.shard(model)  # a sharded copy; its weights come back to `model` at the end
        update.follow(net)
        model.to("cpu")  # the whole model waits in host memory while its shards train
    else:
        net = distributed.wrap(model)  # DistributedDataParallel under a launch: parameters shared with model
    decay, no_decay = [], []
    for p in update.trainable():
        (decay if p.ndim >= 2 else no_decay).append(p)
    optimizer = MaskedAdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        update.masks_by_param(), lr=cfg.lr, betas=(0.9, 0.999), eps=1e-8, max_grad_norm=cfg.max_grad_norm,
        sharded=sharded)

    def schedule(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if cfg.schedule == "constant":
            return 1.0
        return max(0.0, (n_steps - step) / max(1, n_steps - warmup))

    lr_sched = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    log = TrainLog()
    first = 0
    found = checkpoint is not None and checkpoint.is_file()
    if sharded and not distributed.agree(found):
        raise UnlearnBenchError(f"only some processes find their checkpoint file ({checkpoint}); delete "
                                f"{checkpoint.name.rsplit('.rank', 1)[0]}.rank* to start the run over")
    if found:
        first = _load_checkpoint(checkpoint, update, optimizer, lr_sched, log)
        if sharded and not distributed.agree(first):
            raise UnlearnBenchError(f"the processes' checkpoint files ({checkpoint}) are of different steps "
                                    "(interrupted while saving); delete them to start the run over")
        logging.getLogger("harness.train").info("resumed from %s after step %d", checkpoint, first)
    bf16 = autocast_on(cfg, device)
    log.bf16_autocast = bf16
    start = time.perf_counter()
    net.train()
    try:
        for step in range(first, n_steps):
            parts: dict[str, float] = {}
            total = 0.0
            for j in range(cfg.grad_accum):
                index = step * cfg.grad_accum + j
                if index >= len(micro_batches):
                    break
                batch = to_device(distributed.rows(micro_batches[index]), device)
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                    out = loss_fn(net, batch)
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
            lr = optimizer.param_groups[0]["lr"]
            optimizer.step()
            lr_sched.step()
            optimizer.zero_grad(set_to_none=True)
            row: dict[str, Any] = {"step": step + 1, "loss": total, "lr": lr, **parts}
            if optimizer.last_grad_norm is not None:
                row["grad_norm"] = optimizer.last_grad_norm
            extra = None
            if on_step is not None:
                net.eval()
                if sharded:
                    fsdp.gather_into(net, model)
                    model.to(device)
                model.eval()
                extra = on_step(step + 1, model)
                if sharded:
                    model.to("cpu")
                net.train()
                if extra is not None:
                    row["eval"] = extra
            log.steps.append(row)
            if progress is not None:
                progress(step + 1, n_steps, row)
            if extra is not None and extra.get("stop"):
                log.stopped_at = step + 1
                break
            if checkpoint is not None and cfg.checkpoint_every and (step + 1) % cfg.checkpoint_every == 0:
                if _writes_checkpoint():  # under DDP every process holds the same state
                    _save_checkpoint(checkpoint, step + 1, update, optimizer, lr_sched, log)
                distributed.barrier()
        if sharded:
            fsdp.gather_into(net, model)
    finally:
        model.to(device)
        update.close()
        if cfg.gradient_checkpointing:
            _checkpointing(model, False)
        model.eval()
    log.seconds = time.perf_counter() - start
    return log
