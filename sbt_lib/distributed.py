"""Data parallelism on PyTorch's own engine: ``torchrun`` starts the processes, ``torch.distributed``
connects them, :class:`~torch.nn.parallel.DistributedDataParallel` averages the gradients.

This module holds the few things every distributed loop needs and nothing else:

- :func:`process_group`: joins the process group ``torchrun`` describes in the environment (``RANK``,
  ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``...): NCCL on GPUs (one per process, the
  ``LOCAL_RANK``-th), gloo on CPU; without ``torchrun`` it does nothing and the code runs as rank 0 of 1.
- :func:`rank_and_world_size`, :func:`is_main`: who this process is (rank 0 is the one that writes).
- :func:`shard`: the contiguous slice of ``n`` items that a rank takes (sampling, evaluation).
- :func:`all_mean`, :func:`any_ranks`, :func:`gather`, :func:`all_objects`, :func:`broadcast_object`,
  :func:`barrier`: the collectives the engine and the evaluation use; each is the identity at world size 1.
- :func:`main_first`: rank 0 runs a block first (filling caches on disk), then the others.

The training engine (:mod:`sbt_lib.train`) wraps its model for DDP itself when a process group is
initialised; nothing else in the library needs to know.
"""
from __future__ import annotations

import contextlib
import datetime
import os

import torch
import torch.distributed as dist

# How long a rank waits in a collective before giving up (a rank that died without torchrun noticing).
TIMEOUT = datetime.timedelta(minutes=int(os.environ.get("SBT_DIST_TIMEOUT_MIN", "30")))


def rank_and_world_size() -> tuple[int, int]:
    """(rank, world size) of the initialised process group; (0, 1) without one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def in_process_group() -> bool:
    """Whether a process group is initialised (``torchrun`` started this process, even as the only one)."""
    return dist.is_available() and dist.is_initialized()


def is_distributed() -> bool:
    """Whether a process group of more than one process is initialised."""
    return rank_and_world_size()[1] > 1


def is_main() -> bool:
    """Whether this process is rank 0, the one that writes checkpoints, logs and figures."""
    return rank_and_world_size()[0] == 0


def launched_by_torchrun() -> bool:
    """Whether the environment describes a process group (``torchrun`` sets ``WORLD_SIZE`` and ``RANK``)."""
    return "WORLD_SIZE" in os.environ and "RANK" in os.environ


def backend() -> str:
    """NCCL where CUDA is available, else gloo."""
    return "nccl" if torch.cuda.is_available() else "gloo"


@contextlib.contextmanager
def process_group():
    """Join the process group ``torchrun`` describes (and leave it on exit); a no-op when the process was
    not started by ``torchrun``.  On GPUs each process uses the device ``LOCAL_RANK``, so ``cuda``
    means that device from here on.  Yields ``(rank, world_size)``."""
    if not launched_by_torchrun() or (dist.is_available() and dist.is_initialized()):
        yield rank_and_world_size()
        return
    if not dist.is_available():
        raise RuntimeError("this build of PyTorch has no torch.distributed; run without torchrun")
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    dist.init_process_group(backend(), timeout=TIMEOUT)
    try:
        yield rank_and_world_size()
    finally:
        dist.destroy_process_group()


def shard(n: int, rank: int | None = None, world_size: int | None = None) -> range:
    """The contiguous part of ``range(n)`` that ``rank`` takes: the shards of all ranks are disjoint,
    cover ``range(n)`` and differ in length by at most one."""
    if rank is None or world_size is None:
        rank, world_size = rank_and_world_size()
    start, extra = divmod(n, world_size)
    begin = rank * start + min(rank, extra)
    return range(begin, begin + start + (rank < extra))


def _device() -> torch.device:
    """Where a collective's tensors live: the current CUDA device under NCCL, else the CPU."""
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


def all_mean(values: torch.Tensor) -> torch.Tensor:
    """The mean of ``values`` over the ranks (the same tensor on every rank); ``values`` at world size 1."""
    if not is_distributed():
        return values
    out = values.detach().to(_device(), torch.float64).clone()
    dist.all_reduce(out)
    return (out / dist.get_world_size()).to(values.device, values.dtype)


def any_ranks(flags: list[bool]) -> list[bool]:
    """For each flag, whether it holds on any rank (every rank gets the same answer; one collective)."""
    if not is_distributed():
        return list(flags)
    t = torch.tensor([float(f) for f in flags], device=_device())
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return [bool(v) for v in t.tolist()]



def gather(values: torch.Tensor) -> torch.Tensor:
    """``values`` of every rank concatenated along dim 0 in rank order, on every rank (the shards may differ
    in length, as :func:`shard`'s do); ``values`` at world size 1."""
    if not is_distributed():
        return values
    parts = [None] * dist.get_world_size()
    dist.all_gather_object(parts, values.detach().cpu())
    return torch.cat(parts).to(values.device)


def broadcast_object(obj, src: int = 0):
    """Rank ``src``'s ``obj`` on every rank (any picklable object)."""
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def barrier() -> None:
    """Wait until every rank is here (no-op at world size 1)."""
    if is_distributed():
        dist.barrier()


def all_objects(obj) -> list:
    """``obj`` of every rank, in rank order, on every rank (any picklable object); ``[obj]`` at world size 1."""
    if not is_distributed():
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


@contextlib.contextmanager
def main_first():
    """Rank 0 runs the block first (filling the caches on disk: decoded data, teacher features, tokens),
    then the other ranks run it and find them there.  A plain block at world size 1."""
    if is_distributed() and not is_main():
        barrier()
    yield
    if is_distributed() and is_main():
        barrier()
