"""Sharded unlearning (FSDP) for models whose training state does not fit one device.

Chosen by the launcher: `accelerate launch --use_fsdp --fsdp_version 2 --num_processes N ...` sets
ACCELERATE_USE_FSDP, and the training loop then trains a copy of the model sharded with torch's FSDP2
(`fully_shard` on every decoder layer, then on the root): each process holds 1/N of every parameter, of its
gradient and of the optimizer state. The harness calls `fully_shard` itself rather than through
accelerate's `prepare_model` because the masked optimizer needs each mask cut exactly as its parameter
(`cut_as`), and because accelerate selects FSDP only on accelerators while this runs on CPU processes too
(gloo), which is how it is tested.

An objective's frozen reference model (NPO, KL) is sharded the same way (`frozen_copy`).
Everything outside the optimizer steps is unchanged: attribution and evaluation see the plain model, whose
weights are gathered back from the shards (`gather_into`) after training and before each `eval_every`
evaluation. Under FSDP_RESHARD_AFTER_FORWARD=false the layers stay gathered between forward and backward
(faster, more memory), as accelerate's option means.
"""

from __future__ import annotations

import copy
import os
from typing import Any

import torch

from harness import distributed


def enabled() -> bool:
    """True under a multi-process launch with accelerate's --use_fsdp."""
    return distributed.active() and os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true"


def _units(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The modules sharded (and gathered) one at a time: transformers' no-split blocks (decoder layers)."""
    names = set(getattr(model, "_no_split_modules", None) or ())
    return [m for m in model.modules() if type(m).__name__ in names]


def _empty_copy(model: torch.nn.Module) -> torch.nn.Module:
    """A copy of `model` whose parameters are on the meta device (no memory): deepcopy with every parameter
    pre-mapped to a meta one, so tied parameters stay tied and buffers are copied."""
    memo: dict[int, Any] = {}
    for p in model.parameters():
        memo[id(p)] = torch.nn.Parameter(torch.empty_like(p, device="meta"), requires_grad=p.requires_grad)
    return copy.deepcopy(model, memo)


@torch.no_grad()
def shard(model: torch.nn.Module) -> torch.nn.Module:
    """A sharded copy of `model` on a one-dimensional mesh over all processes; `model` is left whole. The
    copy is laid out on the meta device and sharded before any memory is allocated, so each process adds
    only its shard of the weights, each filled from `model` by the same cut."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    distributed.barrier()  # torch.distributed is up
    dev = next(model.parameters()).device
    mesh = init_device_mesh(dev.type, (distributed.world_size(),))
    reshard = os.environ.get("FSDP_RESHARD_AFTER_FORWARD", "true").lower() != "false"
    net = _empty_copy(model)
    for unit in _units(net):
        fully_shard(unit, mesh=mesh, reshard_after_forward=reshard)
    fully_shard(net, mesh=mesh, reshard_after_forward=reshard)
    net.to_empty(device=dev)  # allocates the local shards (and the buffers), uninitialized
    whole = dict(model.named_parameters())
    for name, p in net.named_parameters():
        local(p).copy_(cut_as(whole[name].detach(), p))
    buffers = dict(model.named_buffers())
    for name, b in net.named_buffers():
        b.copy_(buffers[name])
    return net


def frozen_copy(model: torch.nn.Module) -> torch.nn.Module:
    """A frozen copy of `model` in eval mode (an objective's reference model): sharded like the trained copy
    under FSDP, a plain deep copy otherwise."""
    net = shard(model) if enabled() else copy.deepcopy(model)
    return net.eval().requires_grad_(False)


def local(t: torch.Tensor) -> torch.Tensor:
    """This process's part of a sharded tensor (its local shard); any other tensor as it is."""
    return t.to_local() if hasattr(t, "to_local") else t


def cut_as(mask: torch.Tensor, param: torch.Tensor) -> torch.Tensor:
    """`mask` (or any tensor of the parameter's shape) cut exactly as `param` is sharded (the same
    placements on the same mesh); whole otherwise. Every process holds the whole tensor, so no data moves
    (src_data_rank=None)."""
    if not hasattr(param, "placements"):
        return mask.to(param.device)
    from torch.distributed.tensor import distribute_tensor

    return distribute_tensor(mask.to(local(param).device), param.device_mesh, param.placements,
                             src_data_rank=None).to_local()


def global_norm(local_norm: torch.Tensor) -> torch.Tensor:
    """The L2 norm over all shards from each process's norm over its own shards."""
    squared = {"norm": local_norm.double().pow(2)}
    distributed.sum_(squared)
    return squared["norm"].sqrt().to(local_norm.dtype)


@torch.no_grad()
def gather_into(net: torch.nn.Module, model: torch.nn.Module) -> None:
    """Copy the sharded copy's full weights into the plain model (a collective: every process calls it)."""
    params = dict(model.named_parameters())
    for name, p in net.named_parameters():
        params[name].copy_(p.full_tensor() if hasattr(p, "full_tensor") else p)
