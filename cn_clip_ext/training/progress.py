"""What a run tells its user while it trains: a log line every ``log_every`` steps, ``train.log``.

The line (rank 0, INFO, also written to ``OUTPUT_DIR/train.log``) reads::

    step 120/5000 loss 4.1321 lr 2.40e-04 samples/s 1843.2 data wait 3.1% gpu mem 17.92 GiB

``samples/s`` counts the global batch (all ranks and micro-batches) over the wall time since the
previous line; ``data wait`` is the share of that time this process spent waiting for the
DataLoader; ``gpu mem`` is the peak allocated by PyTorch on this process's GPU since the previous
line (absent on the CPU). A progress bar is drawn only when stderr is a terminal, so batch jobs'
logs hold lines, not carriage-return noise.
"""
from __future__ import annotations

import contextlib
import logging
import sys
import time
from pathlib import Path
from typing import Any, Iterator

import torch

logger = logging.getLogger(__name__)

TRAIN_LOG = "train.log"
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class StepMeter:
    """Throughput, data-wait share and peak GPU memory over the steps since the last :meth:`window`."""

    def __init__(self, samples_per_step: int, device: torch.device):
        self.samples_per_step, self.device = samples_per_step, device
        self._start, self._wait, self._samples = time.perf_counter(), 0.0, 0

    @contextlib.contextmanager
    def waiting(self) -> Iterator[None]:
        """Time spent inside counts as waiting for data."""
        t = time.perf_counter()
        try:
            yield
        finally:
            self._wait += time.perf_counter() - t

    def step_done(self) -> None:
        self._samples += self.samples_per_step

    def window(self) -> dict[str, float]:
        """``samples_per_s``, ``data_wait_pct`` (and ``gpu_mem_gib`` on CUDA) since the last call; resets."""
        now = time.perf_counter()
        elapsed = max(now - self._start, 1e-9)
        out = {"samples_per_s": self._samples / elapsed, "data_wait_pct": 100.0 * min(self._wait / elapsed, 1.0)}
        if self.device.type == "cuda":
            out["gpu_mem_gib"] = torch.cuda.max_memory_allocated(self.device) / 2**30
            torch.cuda.reset_peak_memory_stats(self.device)
        self._start, self._wait, self._samples = now, 0.0, 0
        return out


def step_line(step: int, total: int, loss: float, lr: float, stats: dict[str, float]) -> str:
    """The log line of one step (see the module docstring)."""
    line = (f"step {step}/{total} loss {loss:.4f} lr {lr:.2e} samples/s {stats['samples_per_s']:.1f} "
            f"data wait {stats['data_wait_pct']:.1f}%")
    if "gpu_mem_gib" in stats:
        line += f" gpu mem {stats['gpu_mem_gib']:.2f} GiB"
    return line


@contextlib.contextmanager
def train_log(folder: Path, enabled: bool) -> Iterator[Path | None]:
    """While inside, every log record of this process (INFO and up) is also appended to
    ``folder/train.log`` (rank 0 only: ``enabled``)."""
    if not enabled:
        yield None
        return
    path = Path(folder) / TRAIN_LOG
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    handler.setLevel(logging.INFO)
    root = logging.getLogger()
    root.addHandler(handler)
    previous = root.level
    if root.level > logging.INFO or root.level == logging.NOTSET:
        root.setLevel(logging.INFO)  # the file gets the INFO lines even when nothing configured logging
    try:
        yield path
    finally:
        root.removeHandler(handler)
        root.setLevel(previous)
        handler.close()


def progress_bar(enabled: bool, total: int, initial: int) -> Any:
    """A tqdm bar when ``enabled`` and stderr is a terminal, else ``None``."""
    if not enabled or not sys.stderr.isatty():
        return None
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, desc="train", dynamic_ncols=True, mininterval=1.0, unit="step")


__all__ = ["LOG_FORMAT", "StepMeter", "TRAIN_LOG", "progress_bar", "step_line", "train_log"]
