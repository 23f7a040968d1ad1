"""Parameter and FLOP counts per part of a model, with torch's own flop counter.

``torch.utils.flop_counter.FlopCounterMode`` counts matrix multiplies and convolutions
(2 FLOPs per multiply-add) by module.  It knows the CUDA attention kernels but not the CPU
one that ``scaled_dot_product_attention`` dispatches to, so this module registers torch's own
SDPA formula for that op too (counts on CPU then match the unfused attention, which a test checks).
"""
from __future__ import annotations

import torch
from torch import nn
from torch.utils import flop_counter

from ..models.blocks import num_params

__all__ = ["flops_by_module", "num_params", "training_step_flops"]  # num_params is re-exported: counts sit beside FLOPs


def _cpu_sdpa_flop(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    return flop_counter.sdpa_flop_count(query_shape, key_shape, value_shape)


_CPU_SDPA = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)
if _CPU_SDPA is not None and _CPU_SDPA not in flop_counter.flop_registry:
    flop_counter.register_flop_formula(_CPU_SDPA)(_cpu_sdpa_flop)


@torch.no_grad()
def flops_by_module(model: nn.Module, *inputs, parts: tuple[str, ...] | None = None, **kwargs) -> dict[str, int]:
    """Forward FLOPs of ``model(*inputs, **kwargs)`` for each direct child (or each of ``parts``,
    attribute names), plus ``"total"``.  Divide by the batch size for FLOPs per image."""
    was_training = model.training
    model.eval()
    with flop_counter.FlopCounterMode(display=False) as counter:
        model(*inputs, **kwargs)
    model.train(was_training)
    counts = counter.get_flop_counts()
    root = type(model).__name__
    names = parts or tuple(name for name, _ in model.named_children())
    out = {name: _count(counts, f"{root}.{name}") for name in names}
    out["total"] = _count(counts, "Global")
    return out


def _count(counts: dict, fqn: str) -> int:
    """FLOPs under module ``fqn``.  Containers (ModuleDict / ModuleList) are never called, so the
    counter has no entry for them: sum their children instead."""
    if fqn in counts:
        return int(sum(counts[fqn].values()))
    children = [k for k in counts if k.startswith(fqn + ".") and "." not in k[len(fqn) + 1 :]]
    return sum(_count(counts, k) for k in children)


def training_step_flops(model: nn.Module, loss_fn, batch) -> int:
    """FLOPs of one training step's forward and backward of ``loss_fn(model, batch)`` (the optimizer
    update is not counted); gradients are cleared afterwards.  Frozen parts cost their forward only,
    which is how stage 2 is cheaper than stage 1 at the same aligner."""
    with flop_counter.FlopCounterMode(display=False) as counter:
        sum(loss_fn(model, batch).values()).backward()
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops()
