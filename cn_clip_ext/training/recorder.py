"""Run records on rank 0: ``metrics.csv`` (long format), TensorBoard scalars, a curve PNG.

``metrics.csv`` has the columns ``step,epoch,split,metric,value``. On resume, rows after the
resumed step (written by the interrupted run after its last checkpoint) are dropped so the file
describes one continuous run.
"""
from __future__ import annotations

import csv
import logging
import os
from pathlib import Path
from typing import Mapping

from ..extras import optional

logger = logging.getLogger(__name__)

FIELDS = ("step", "epoch", "split", "metric", "value")


def host_rss_mb() -> float:
    """Resident memory of this process in MiB (0 where /proc is unavailable)."""
    try:
        with open(f"/proc/{os.getpid()}/statm") as fh:
            pages = int(fh.read().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        return 0.0


def _status_kib(pid: int, field: str) -> int:
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return 0


def _children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as fh:
            return [int(p) for p in fh.read().split()]
    except (OSError, ValueError):
        return []


def anon_rss_mb(include_children: bool = True) -> float:
    """Anonymous resident memory (heap, not file-backed LMDB pages) of this process and its
    direct children (DataLoader workers), in MiB: the number that grows when memory leaks."""
    pids = [os.getpid(), *(_children(os.getpid()) if include_children else [])]
    return sum(_status_kib(pid, "RssAnon") for pid in pids) / 1024


def read_metrics(path: str | Path) -> list[dict[str, str]]:
    path = Path(path)
    if not path.is_file():
        return []
    with path.open(newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def series(rows: list[dict[str, str]], split: str, metric: str) -> list[tuple[int, float]]:
    """``(step, value)`` pairs of one metric, in file order."""
    return [(int(r["step"]), float(r["value"])) for r in rows if r["split"] == split and r["metric"] == metric]


class Recorder:
    """Writes metrics to CSV and (optionally) TensorBoard; a no-op off rank 0."""

    def __init__(self, folder: str | Path, enabled: bool, resume_step: int | None = None,
                 tensorboard: bool = True):
        self.folder, self.enabled = Path(folder), enabled
        self.csv_path = self.folder / "metrics.csv"
        self._tb = None
        if not enabled:
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        if resume_step is not None:
            self._truncate_after(resume_step)
        elif self.csv_path.exists():
            self.csv_path.unlink()  # a fresh run owns the file
        if not self.csv_path.exists():
            with self.csv_path.open("w", newline="", encoding="utf-8") as fh:
                csv.writer(fh).writerow(FIELDS)
        if tensorboard and optional("tensorboard", extra="train",
                                    skipped="no TensorBoard scalars (metrics.csv is written)") is not None:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(str(self.folder / "tensorboard"),
                                     purge_step=None if resume_step is None else resume_step + 1)

    def _truncate_after(self, step: int) -> None:
        rows = [r for r in read_metrics(self.csv_path) if int(r["step"]) <= step]
        tmp = self.csv_path.with_suffix(".csv.tmp")
        with tmp.open("w", newline="", encoding="utf-8") as fh:
            w = csv.DictWriter(fh, FIELDS)
            w.writeheader()
            w.writerows(rows)
        os.replace(tmp, self.csv_path)

    def log(self, step: int, epoch: int, split: str, values: Mapping[str, float]) -> None:
        if not self.enabled or not values:
            return
        with self.csv_path.open("a", newline="", encoding="utf-8") as fh:
            w = csv.writer(fh)
            for k, v in values.items():
                w.writerow((step, epoch, split, k, repr(float(v))))
        if self._tb is not None:
            for k, v in values.items():
                self._tb.add_scalar(f"{split}/{k}", float(v), step)

    def close(self) -> None:
        if self._tb is not None:
            self._tb.flush()
            self._tb.close()
            self._tb = None

    def plot(self, path: str | Path | None = None) -> Path | None:
        """Training loss and validation recall@1 by step as a PNG (needs matplotlib)."""
        if not self.enabled:
            return None
        matplotlib = optional("matplotlib", extra="train", skipped="no curve PNG (metrics.csv has the numbers)")
        if matplotlib is None:
            return None
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        rows = read_metrics(self.csv_path)
        path = Path(path or self.folder / "curves.png")
        fig, (ax_loss, ax_rec) = plt.subplots(1, 2, figsize=(11, 4))
        for split, metric, label in (("train", "loss", "train loss"), ("valid", "loss", "valid loss")):
            pts = series(rows, split, metric)
            if pts:
                ax_loss.plot(*zip(*pts), label=label, marker="o" if split == "valid" else None)
        ax_loss.set_xlabel("step")
        ax_loss.set_ylabel("contrastive loss")
        ax_loss.legend()
        for metric in ("i2t_r1", "t2i_r1", "i2t_r5", "t2i_r5"):
            pts = series(rows, "valid", metric)
            if pts:
                ax_rec.plot(*zip(*pts), label=metric, marker="o")
        ax_rec.set_xlabel("step")
        ax_rec.set_ylabel("valid recall")
        if ax_rec.lines:
            ax_rec.legend()
        fig.tight_layout()
        fig.savefig(path, dpi=100)
        plt.close(fig)
        return path


__all__ = ["FIELDS", "Recorder", "anon_rss_mb", "host_rss_mb", "read_metrics", "series"]
