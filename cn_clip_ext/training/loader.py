"""The training DataLoader: one for the whole run, its workers kept alive across epochs.

Workers are forked once (``persistent_workers``), so each worker's copy of the dataset never sees
the trainer set a new epoch; :class:`EpochKeys` therefore hands the epoch to the dataset inside
every key (``(epoch, index)``), which :class:`~cn_clip_ext.training.data.SeededDataset` reads to
seed the item. A :class:`~cn_clip_ext.errors.UserError` raised while a worker reads an item (a
hostile LMDB record) reaches the trainer as its one line (:func:`next_batch`), not as the worker's
traceback that PyTorch packs into the message.
"""
from __future__ import annotations

from typing import Iterator

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from ..errors import UserError
from .data import ResumableSampler
from .preemption import ignore_in_worker

_WORKER_MARK = "in DataLoader worker process"


class EpochKeys(Sampler[tuple[int, int]]):
    """``(epoch, index)`` keys from a :class:`ResumableSampler` (its epoch when iteration starts)."""

    def __init__(self, sampler: ResumableSampler):
        self.sampler = sampler

    def __iter__(self) -> Iterator[tuple[int, int]]:
        epoch = self.sampler.epoch
        return ((epoch, index) for index in self.sampler)

    def __len__(self) -> int:
        return len(self.sampler)


def training_loader(dataset: Dataset, sampler: ResumableSampler, batch_size: int, num_workers: int,
                    pin_memory: bool, seed: int) -> DataLoader:
    """The run's loader; call ``iter()`` on it once per epoch after ``sampler.set_epoch``."""
    return DataLoader(
        dataset, batch_size=batch_size, sampler=EpochKeys(sampler), num_workers=num_workers, drop_last=True,
        pin_memory=pin_memory, worker_init_fn=ignore_in_worker if num_workers > 0 else None,
        # the loader's own generator keeps worker seeding off the global RNG (dropout)
        generator=torch.Generator().manual_seed(seed), prefetch_factor=4 if num_workers > 0 else None,
        persistent_workers=num_workers > 0)


def worker_error_line(exc: UserError) -> str:
    """The one-line message of a :class:`UserError` a DataLoader worker raised (PyTorch re-raises it
    with "Caught ... in DataLoader worker process N" and the worker's traceback as its message)."""
    text = str(exc)
    if _WORKER_MARK not in text.split("\n", 1)[0]:
        return text
    last = [line for line in text.strip().splitlines() if line.strip()][-1]
    qualified, sep, message = last.partition(": ")  # "package.module.ErrorClass: the message"
    return message if sep and " " not in qualified else last


def next_batch(batches: Iterator) -> object:
    """``next(batches)``; a worker's :class:`UserError` is re-raised as its own one line."""
    try:
        return next(batches)
    except UserError as exc:
        raise UserError(worker_error_line(exc)) from None


def shutdown(loader: DataLoader | None) -> None:
    """End a loader's persistent workers now (rather than whenever it is garbage-collected)."""
    iterator = getattr(loader, "_iterator", None)
    if iterator is not None and hasattr(iterator, "_shutdown_workers"):
        iterator._shutdown_workers()


__all__ = ["EpochKeys", "next_batch", "shutdown", "training_loader", "worker_error_line"]
