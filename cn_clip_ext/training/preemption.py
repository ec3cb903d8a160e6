"""Stopping cleanly on SIGTERM or SIGUSR1 (SLURM preemption, ``scancel``, a time limit's warning).

While :class:`StopSignals` is installed, either signal only records that a stop was asked for. The
trainer asks :meth:`StopSignals.requested` after every optimizer step (the next micro-batch boundary
at which the run's state is whole: with ``accum_steps`` 1, the next micro-batch), saves a
checkpoint there and raises :class:`Preempted`; ``vclip-train`` exits with
:data:`PREEMPTED_EXIT_STATUS` and ``--resume auto`` continues exactly (same losses as a run never
interrupted). A checkpoint in the middle of gradient accumulation would have to carry every rank's
unreduced gradients, so the stop waits for the step to complete (at most ``accum_steps - 1`` more
micro-batches).

Under torchrun every rank must stop at the same step: :meth:`~StopSignals.requested` is true on all
ranks as soon as one rank got a signal (one all-reduce of a flag per step). DataLoader workers share
the trainer's process group, so a signal sent to the group reaches them too: they ignore it
(:func:`ignore_in_worker`) and are shut down by the trainer.
"""
from __future__ import annotations

import logging
import os
import signal
import threading
from pathlib import Path
from types import FrameType
from typing import Any

from .distributed import DistEnv, all_gather_object

logger = logging.getLogger(__name__)

PREEMPTED_EXIT_STATUS = 75
"""``vclip-train``'s exit status after a signal-triggered stop (sysexits' EX_TEMPFAIL: try again)."""
STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


class Preempted(Exception):
    """Training stopped on a signal after writing a checkpoint at ``step``."""

    exit_status = PREEMPTED_EXIT_STATUS

    def __init__(self, signal_name: str, step: int, checkpoint: Path | None):
        self.signal_name, self.step, self.checkpoint = signal_name, step, checkpoint
        super().__init__(f"stopped by {signal_name} at step {step}; checkpoint {checkpoint} saved: rerun with "
                         "--resume auto (same --output-dir) to continue exactly")


class StopSignals:
    """Context manager: SIGTERM/SIGUSR1 set a flag instead of ending the process (main thread only)."""

    def __init__(self) -> None:
        self.received: int | None = None
        self._previous: dict[int, Any] = {}
        self._pid = os.getpid()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if os.getpid() != self._pid:  # a forked DataLoader worker inherited the handler
            return
        self.received = signum

    def __enter__(self) -> "StopSignals":
        if threading.current_thread() is threading.main_thread():
            self._pid = os.getpid()
            for sig in STOP_SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        self._previous.clear()

    @property
    def name(self) -> str:
        return signal.Signals(self.received).name if self.received is not None else "a signal on another rank"

    def requested(self, env: DistEnv) -> bool:
        """Whether any rank has received a stop signal (collective when distributed)."""
        local = self.received is not None
        if not env.distributed:
            return local
        return any(all_gather_object(local))


def ignore_in_worker(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: a worker ignores the stop signals (the trainer ends it)."""
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)


__all__ = ["PREEMPTED_EXIT_STATUS", "Preempted", "STOP_SIGNALS", "StopSignals", "ignore_in_worker"]
