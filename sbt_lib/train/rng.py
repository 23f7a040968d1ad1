"""Every rank's random stream, and its place in a checkpoint.

Rank 0 draws the stream a single process would; each other rank is seeded from (seed, step, rank) when it
starts (:func:`rank_seed`).  A checkpoint keeps every rank's RNG state: rank 0's as ``rng.cpu`` and
``rng.cuda.<device>``, as a single process saves it (with the state of every CUDA device), and rank r's as
``rng.rank.<r>.cpu`` and ``rng.rank.<r>.cuda``.  So resume at the same world size is exact, and a checkpoint
resumes at any other world size too: the data order is exact, and a rank the checkpoint has no state for starts
a fresh stream.  A checkpoint without CUDA states (written on a CPU-only machine, or before they were kept)
resumes as well; where the number of devices differs, the devices present on both sides get their states back.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .. import distributed as dist
from ..checkpoint import prefixed, unprefixed


def rank_seed(seed: int, step: int, rank: int) -> int:
    """The seed of rank ``rank``'s random stream when it starts (or restarts) at ``step`` without a saved state."""
    return (seed * 1_000_003 + step * 7_919 + rank * 104_729) % 2**63


def _cuda_rng_tensors() -> dict[str, torch.Tensor]:
    """The RNG state of every CUDA device (``rng.cuda.<device>``), beside ``rng.cpu``; none without CUDA."""
    if not torch.cuda.is_available():
        return {}
    return prefixed("rng.cuda", {str(i): state for i, state in enumerate(torch.cuda.get_rng_state_all())})


def _restore_cuda_rng(tensors: dict[str, torch.Tensor]) -> list[int]:
    """Restore the CUDA RNG states a checkpoint holds to the devices present; returns those restored.

    Older checkpoints hold none, a CPU-only machine restores none, and where the device count
    differs the states of the devices present on both sides are restored."""
    states = unprefixed("rng.cuda", tensors)
    if not states or not torch.cuda.is_available():
        return []
    restored = sorted(int(i) for i in states if int(i) < torch.cuda.device_count())
    for i in restored:
        torch.cuda.set_rng_state(states[str(i)].cpu(), i)
    return restored


@dataclass(frozen=True)
class RankRNG:
    """The random stream of this process, rank ``rank`` of ``world_size`` training on ``device``."""

    rank: int
    world_size: int
    device: torch.device
    seed: int

    def start(self, step: int = 0) -> None:
        """Seed a fresh stream for a rank other than 0 (rank 0 keeps the stream a single process would)."""
        if self.rank:
            torch.manual_seed(rank_seed(self.seed, step, self.rank))

    def tensors(self, collective: bool = True) -> dict[str, torch.Tensor]:
        """Every rank's RNG state, named as the module docstring says.  Under DDP a collective (every rank calls
        it) unless ``collective`` is false, then only rank 0's state."""
        if self.world_size == 1:
            return {"rng.cpu": torch.get_rng_state(), **_cuda_rng_tensors()}
        own = {"cpu": torch.get_rng_state()}
        if self.device.type == "cuda":
            own["cuda"] = torch.cuda.get_rng_state(self.device)
        states = dist.all_objects(own) if collective else [own]
        tensors = {"rng.cpu": states[0]["cpu"]}
        if "cuda" in states[0]:
            tensors[f"rng.cuda.{self.device.index or 0}"] = states[0]["cuda"]
        for r, state in enumerate(states[1:], start=1):
            tensors.update(prefixed(f"rng.rank.{r}", state))
        return tensors

    def restore(self, tensors: dict[str, torch.Tensor], step: int) -> None:
        """This rank's state from a checkpoint's ``tensors``, saved after step ``step``; a fresh stream where
        the checkpoint, saved at a smaller world size, has none for this rank."""
        if self.rank == 0:
            torch.set_rng_state(tensors["rng.cpu"].cpu())
            if self.world_size == 1:
                _restore_cuda_rng(tensors)
            elif f"rng.cuda.{self.device.index or 0}" in tensors:
                torch.cuda.set_rng_state(tensors[f"rng.cuda.{self.device.index or 0}"].cpu(), self.device)
            return
        own = unprefixed(f"rng.rank.{self.rank}", tensors)
        if "cpu" not in own:
            self.start(step)
            return
        torch.set_rng_state(own["cpu"].cpu())
        if "cuda" in own and self.device.type == "cuda":
            torch.cuda.set_rng_state(own["cuda"].cpu(), self.device)
