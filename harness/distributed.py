"""One run on several processes: the harness's side of data parallelism under `accelerate launch`.

accelerate starts the processes (`accelerate launch --multi_gpu --num_processes N`; on a machine without
GPUs the same launcher starts N CPU processes, as accelerate's `--cpu` flag starts only one without MPI)
and sets up torch.distributed (gloo on the CPU, NCCL on GPUs); every process holds the whole model.
What each phase does with the processes:

- attribution: each process takes every world-th batch and the summed gradients are added across
  processes, so G = Σ over all samples exactly as in one process;
- unlearning: the model is wrapped by accelerate (DistributedDataParallel, gradients averaged), and each
  micro-batch is split by rows into equal shares, so an optimizer step sees the same samples as in one
  process; every process applies the same masked update, so masks and weights stay identical everywhere;
- evaluation: teacher-forced scoring and generation run on every world-th item and are gathered back in
  input order on every process; records, checkpoints and lm-eval run on the main process only.

With one process (no `accelerate launch`) every function here is a no-op.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

import torch

from harness.errors import UnlearnBenchError

T = TypeVar("T")
R = TypeVar("R")


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def active() -> bool:
    """True inside a multi-process launch (accelerate sets WORLD_SIZE)."""
    return world_size() > 1


def _state():
    from accelerate import PartialState  # initializes torch.distributed on first use (gloo on the CPU)

    return PartialState(cpu=not torch.cuda.is_available())


def rank() -> int:
    return _state().process_index if active() else 0


def is_main() -> bool:
    return rank() == 0


def device() -> torch.device | None:
    """This process's device under a launch (cuda:LOCAL_RANK, or the CPU); None outside one."""
    if not active():
        return None
    dev = _state().device
    return torch.device("cpu") if dev.type == "cpu" else dev


def barrier() -> None:
    if active():
        _state().wait_for_everyone()


def broadcast(obj: T) -> T:
    """The main process's `obj`, on every process."""
    if not active():
        return obj
    _state()
    box = [obj]
    torch.distributed.broadcast_object_list(box, src=0)
    return box[0]


def mean(values: Sequence[float]) -> list[float]:
    """Each value averaged over the processes (one all-reduce for the lot)."""
    if not active():
        return list(values)
    _state()
    t = torch.tensor(list(values), dtype=torch.float64)
    torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.SUM)
    return (t / world_size()).tolist()


def shard(items: Sequence[T]) -> list[T]:
    """This process's share: every world-th item, starting at its rank."""
    return list(items)[rank()::world_size()] if active() else list(items)


def gather(local: Sequence[R], n: int) -> list[R]:
    """The inverse of `shard`: all n results, in input order, on every process."""
    if not active():
        return list(local)
    _state()
    parts: list[Any] = [None] * world_size()
    torch.distributed.all_gather_object(parts, list(local))
    return interleave(parts, n)


def agree(value: Any) -> bool:
    """True when every process holds the same (picklable) value."""
    return len(set(gather([value], world_size()))) == 1


def interleave(parts: Sequence[Sequence[R]], n: int) -> list[R]:
    """Item i of the input came from process i % world, at position i // world of its share."""
    w = len(parts)
    return [parts[i % w][i // w] for i in range(n)]


def map_sharded(fn: Callable[[list[T]], Sequence[R]], items: Sequence[T]) -> list[R]:
    """fn over the items, each process computing its share; results in input order on every process."""
    if not active():
        return list(fn(list(items)))
    return gather(fn(shard(items)), len(items))


def sum_(tensors: Mapping[str, torch.Tensor]) -> None:
    """Add each tensor across processes, in place (in name order, the same on every process)."""
    if active():
        _state()
        for name in sorted(tensors):
            torch.distributed.all_reduce(tensors[name], op=torch.distributed.ReduceOp.SUM)


def rows(obj: Any) -> Any:
    """This process's equal share of a batch's rows (a dict of [batch, ...] tensors, or a dataclass of such
    dicts), for splitting one micro-batch across processes."""
    if not active():
        return obj
    if isinstance(obj, torch.Tensor):
        if obj.shape[0] < world_size():
            raise UnlearnBenchError(f"a micro-batch of {obj.shape[0]} rows cannot be split across "
                                    f"{world_size()} processes: raise train.batch_size")
        return obj.tensor_split(world_size())[rank()]
    if isinstance(obj, dict):
        return {k: rows(v) for k, v in obj.items()}
    if dataclasses.is_dataclass(obj):
        return dataclasses.replace(obj, **{f.name: rows(getattr(obj, f.name)) for f in dataclasses.fields(obj)})
    return obj


def wrap(model: torch.nn.Module) -> torch.nn.Module:
    """The model as the training loop should call it: accelerate's DistributedDataParallel wrapper under a
    launch (gradients averaged across processes during backward), else the model itself. Parameters are
    shared with `model`, so optimizers and masks built on `model` stay valid."""
    if not active():
        return model
    from accelerate import Accelerator

    return Accelerator(device_placement=False).prepare_model(model)
