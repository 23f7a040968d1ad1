"""Why a run stops before its last step, and how every rank comes to stop at the same one.

- A non-finite loss on any rank stops every rank with :class:`NonFiniteLossError`, naming the step and the loss
  term; nothing is saved after it, so the last good checkpoint stays on disk untouched.
- Ctrl-C (SIGINT) or SIGTERM during a step is held until the step ends (:class:`HeldSignals`), so a checkpoint
  never holds a half-applied optimizer step; then every rank stops at that same step, rank 0 saves, and
  :class:`KeyboardInterrupt` is raised (a second Ctrl-C interrupts at once).
- Past the deadline (``train(..., deadline=T)``, a ``time.time()``) the run pauses after the step, with a
  checkpoint saved and without an error.  Rank 0's clock is not needed: a rank past the deadline pauses them
  all, as a held signal does.

:func:`agree` decides all three on the last micro-batch of a step, before the gradients are exchanged, with
one small collective under DDP.  A rank that crashes ends the others through ``torchrun``; checkpoints are
written atomically, so the last good one survives.
"""
from __future__ import annotations

import signal
import threading
import time

import torch

from .. import distributed as dist


class NonFiniteLossError(FloatingPointError):
    """A loss term became NaN or inf."""


def nonfinite_error(terms: dict[str, torch.Tensor], total: torch.Tensor, step: int) -> NonFiniteLossError:
    """The error of a non-finite loss on this rank: the step and the terms that are not finite."""
    bad = [f"{k}={v.item()}" for k, v in terms.items() if not torch.isfinite(v)] or [f"total={total.item()}"]
    return NonFiniteLossError(
        f"non-finite loss at step {step}: {', '.join(bad)}. Training stopped; the last good checkpoint "
        f"(if any) is untouched. Try a lower learning rate, a smaller loss weight, or grad_clip."
    )


class HeldSignals:
    """SIGINT and SIGTERM while training are held until the running step ends (so a checkpoint never holds a
    half-applied optimizer step).  A second SIGINT interrupts at once, except under ``torchrun``, whose
    agent forwards the terminal's Ctrl-C a second time (and kills what has not stopped after 30 s).  Only
    in the main thread (where Python delivers signals); elsewhere signals behave as usual."""

    def __init__(self):
        self.received: int | None = None
        self._old: dict[int, object] = {}
        self._second_interrupts = not dist.launched_by_torchrun()

    def _handler(self, signum, frame):
        if self._second_interrupts and self.received == signal.SIGINT and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.received = self.received or signum

    def __enter__(self) -> "HeldSignals":
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handler)
        return self

    def __exit__(self, *exc) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)


def agree(terms: dict[str, torch.Tensor], total: torch.Tensor, step: int, *, signals: HeldSignals,
          deadline: float | None, collective: bool) -> tuple[bool, bool]:
    """Raise on a non-finite loss (on every rank when any rank has one, before the gradients are
    exchanged) and return whether a held signal on any rank asks to stop after this step, and whether the
    deadline has passed on any rank.  ``collective``: ask the other ranks (every rank calls this at the
    same micro-batch; one small collective)."""
    finite = bool(torch.isfinite(total))
    stop_requested = signals.received is not None
    pause = deadline is not None and time.time() >= deadline
    if collective:
        bad_anywhere, stop_requested, pause = dist.any_ranks([not finite, stop_requested, pause])
        if bad_anywhere and finite:
            raise NonFiniteLossError(f"non-finite loss at step {step} on another rank; every rank "
                                     "stopped. The last good checkpoint (if any) is untouched.")
    if not finite:
        raise nonfinite_error(terms, total, step)
    return stop_requested, pause
