"""Everything about many processes, in one place: torchrun detection, process group, DDP / FSDP2.

One process (plain ``gatedelta train``) is world size 1 and never touches ``torch.distributed``.
Under ``torchrun --nproc_per_node N`` the environment carries RANK / WORLD_SIZE / LOCAL_RANK; we
join a process group (NCCL on CUDA, gloo on CPU) and wrap the model as ``runtime.distributed`` says:

- ``ddp``: every rank holds the whole model; gradients are averaged in backward.
- ``fsdp2``: ``torch.distributed.fsdp.fully_shard`` on every block, then on the root; parameters,
  gradients and optimizer state are sharded across ranks.

Checkpoints are written as *full* state dicts (gathered to rank 0, on the CPU), so a run saved on
N ranks resumes on M ranks or on one process.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import nn

from .config import ConfigError


@dataclass
class Dist:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")
    kind: str = "none"  # none | ddp | fsdp2

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def pick_device(name: str, local_rank: int = 0) -> torch.device:
    if name == "auto":
        return torch.device("cuda", local_rank) if torch.cuda.is_available() else torch.device("cpu")
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError("runtime.device=cuda but CUDA is not available; use runtime.device cpu")
        if device.index is None:
            device = torch.device("cuda", local_rank)
    return device


def setup(kind: str, device_name: str) -> Dist:
    """Join the torchrun process group if there is one, and pick this rank's device."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return Dist(device=pick_device(device_name), kind="none")
    if kind == "none":
        raise ConfigError(f"launched on {world} processes but runtime.distributed is none; "
                          "set --runtime.distributed ddp (or fsdp2)")
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    device = pick_device(device_name, local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend, timeout=timedelta(minutes=30),
                                device_id=device if device.type == "cuda" else None)
    return Dist(rank=rank, local_rank=local_rank, world_size=world, device=device, kind=kind)


def teardown(d: Dist) -> None:
    if d.enabled and dist.is_initialized():
        dist.destroy_process_group()


def _blocks(model: nn.Module) -> list[nn.Module]:
    """The repeated blocks of a model: the elements of its largest ``nn.ModuleList``."""
    lists = [m for m in model.modules() if isinstance(m, nn.ModuleList)]
    return list(max(lists, key=len)) if lists else []


def wrap(model: nn.Module, d: Dist) -> nn.Module:
    """DDP or FSDP2 around ``model`` (a no-op on one process). Returns the module to call in training."""
    if not d.enabled:
        return model
    if d.kind == "ddp":
        from torch.nn.parallel import DistributedDataParallel as DDP

        return DDP(model, device_ids=[d.device.index] if d.device.type == "cuda" else None)
    from torch.distributed.device_mesh import init_device_mesh

    try:
        from torch.distributed.fsdp import fully_shard
    except ImportError:
        raise ConfigError(f"runtime.distributed=fsdp2 needs torch >= 2.6 (this is {torch.__version__}); "
                          "use ddp") from None

    mesh = init_device_mesh(d.device.type, (d.world_size,))
    for block in _blocks(model):  # one all-gather per block keeps peak memory at one block
        fully_shard(block, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return model


def unwrap(model: nn.Module) -> nn.Module:
    """The user's model inside DDP / torch.compile wrappers (FSDP2 shards in place: no wrapper)."""
    while True:
        if hasattr(model, "_orig_mod"):  # torch.compile
            model = model._orig_mod
        elif isinstance(model, nn.parallel.DistributedDataParallel):
            model = model.module
        else:
            return model


def all_reduce_sum(x: torch.Tensor, d: Dist) -> torch.Tensor:
    if d.enabled:
        dist.all_reduce(x, op=dist.ReduceOp.SUM)
    return x


def barrier(d: Dist) -> None:
    if d.enabled:
        dist.barrier()


def broadcast_object(obj: object, d: Dist) -> object:
    """Rank 0's ``obj`` on every rank (e.g. the checkpoint path that rank 0 chose)."""
    if not d.enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def all_gather_object(obj: object, d: Dist) -> list[object]:
    if not d.enabled:
        return [obj]
    out: list[object] = [None] * d.world_size
    dist.all_gather_object(out, obj)
    return out
