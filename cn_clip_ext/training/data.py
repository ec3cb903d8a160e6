"""Data plumbing for training: a resumable distributed sampler, per-sample seeding, label columns.

The trainer accepts any map-style dataset whose items are ``(image_tensor, token_ids)``: image
tensors are CLIP-normalised float, or ``uint8`` pixels (what the train transform's per-sample half
returns), which the trainer turns into normalised float on the device with the train transform's
``batch_transform`` (random colour drawn per micro-batch from :func:`batch_seed`). Labels
for zero-shot validation come from an optional ``labels`` attribute: a mapping from label name
to one integer per item (``-1`` or NaN = unknown), e.g. columns of the SynFundus side table.
"""
from __future__ import annotations

import logging
import random
from typing import Any, Iterator, Mapping, Protocol, Sequence, runtime_checkable

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler, get_worker_info

logger = logging.getLogger(__name__)


class ResumableSampler(Sampler[int]):
    """Deterministic, epoch-seeded distributed sampler that can start at any micro-batch.

    Global micro-batch ``b`` of an epoch is ``perm[b*G:(b+1)*G]`` with ``G = batch_size * world``;
    rank ``r`` reads the ``r``-th slice of ``batch_size`` items, so the gathered global batch is
    the same whatever the number of processes. Incomplete global batches are dropped.
    """

    def __init__(self, num_items: int, batch_size: int, world_size: int = 1, rank: int = 0, seed: int = 0,
                 shuffle: bool = True):
        self.num_items, self.batch_size = num_items, batch_size
        self.world_size, self.rank, self.seed, self.shuffle = world_size, rank, seed, shuffle
        self.global_batch = batch_size * world_size
        self.batches_per_epoch = num_items // self.global_batch
        self.epoch, self.start_batch = 0, 0

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """Select the epoch's permutation and the first micro-batch to yield."""
        self.epoch, self.start_batch = epoch, start_batch

    def permutation(self) -> torch.Tensor:
        if not self.shuffle:
            return torch.arange(self.num_items)
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        return torch.randperm(self.num_items, generator=gen)

    def __iter__(self) -> Iterator[int]:
        perm = self.permutation().tolist()
        for b in range(self.start_batch, self.batches_per_epoch):
            base = b * self.global_batch + self.rank * self.batch_size
            yield from perm[base:base + self.batch_size]

    def __len__(self) -> int:
        return max(0, self.batches_per_epoch - self.start_batch) * self.batch_size


def item_seed(seed: int, epoch: int, index: int) -> int:
    """A 63-bit seed unique to (run seed, epoch, item)."""
    return (seed * 0x9E3779B1 + epoch * 0x85EBCA77 + index * 0xC2B2AE3D + 0x27D4EB2F) % (2**63 - 1)


def batch_seed(seed: int, epoch: int, batch: int, rank: int = 0) -> int:
    """A 63-bit seed for the device-side augmentation of micro-batch ``batch`` of ``epoch`` on
    ``rank`` (a resumed run redraws the same colours), apart from the per-item seeds."""
    return item_seed(seed + 0x632BE5AB, epoch, (batch << 16) + rank)


def _seed_host_rngs(seed: int) -> None:
    """Seed torch's CPU generator, Python's and NumPy's (``torch.manual_seed`` would also seed, or
    queue seeding of, every GPU: far slower per item, and not undone by ``fork_rng(devices=[])``)."""
    torch.default_generator.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed % 2**32)


class SeededDataset(Dataset):
    """Seeds torch/NumPy/Python RNGs from (seed, epoch, index) around each item's loading.

    Random augmentations then depend only on which item is read in which epoch, not on the
    worker or on how far the loader had got, so a resumed run sees the same augmented samples.
    Set :attr:`epoch` before creating the loader's iterator, or pass ``(epoch, index)`` keys. In the loading process the previous
    RNG states are restored afterwards; a DataLoader worker's are simply left seeded.
    """

    def __init__(self, dataset: Dataset, seed: int):
        self.dataset, self.seed, self.epoch = dataset, seed, 0

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int | tuple[int, int]) -> Any:
        # an ``(epoch, index)`` key (training_loader's persistent workers) carries its epoch
        epoch, index = index if isinstance(index, tuple) else (self.epoch, index)
        s = item_seed(self.seed, epoch, int(index))
        if get_worker_info() is not None:  # a DataLoader worker: nothing else draws from its RNGs
            _seed_host_rngs(s)
            return self.dataset[index]
        py_state, np_state = random.getstate(), np.random.get_state()
        with torch.random.fork_rng(devices=[]):
            _seed_host_rngs(s)
            try:
                return self.dataset[index]
            finally:
                random.setstate(py_state)
                np.random.set_state(np_state)

    def __getattr__(self, name: str) -> Any:  # labels, captions ... of the wrapped set
        if name == "dataset":
            raise AttributeError(name)
        return getattr(self.dataset, name)


@runtime_checkable
class KindedData(Protocol):
    """Training data that names the kind of its items (``"pairs"``, ``"patients"``); data that does not holds
    image-caption pairs."""

    @property
    def kind(self) -> str: ...


@runtime_checkable
class ColumnLabelled(Protocol):
    """A dataset with label columns (``name -> one int per item``): :class:`LabelledDataset`, the toy sets."""

    @property
    def labels(self) -> Mapping[str, Sequence[int]]: ...


class LabelColumns(Mapping[str, list[int]]):
    """Label columns (``name -> one int per item``, ``-1`` unknown) of a dataset whose
    ``labels(index)`` returns a side-table row (as :class:`cn_clip_ext.lmdb.reader.LmdbPairDataset`
    does). Columns are read on first use and cached."""

    def __init__(self, row_of: Any, num_items: int):
        self._row_of, self._n, self._cache = row_of, num_items, {}
        self._rows: list[Mapping[str, Any]] | None = None

    def _all_rows(self) -> list[Mapping[str, Any]]:
        if self._rows is None:
            self._rows = [self._row_of(i) for i in range(self._n)]
        return self._rows

    def __getitem__(self, name: str) -> list[int]:
        if name not in self._cache:
            rows = self._all_rows()
            if rows and name not in rows[0]:
                raise KeyError(name)
            self._cache[name] = [_to_label(r.get(name)) for r in rows]
        return self._cache[name]

    def __iter__(self):
        rows = self._all_rows()
        return iter(rows[0] if rows else ())

    def __len__(self) -> int:
        rows = self._all_rows()
        return len(rows[0]) if rows else 0


def _to_label(value: Any) -> int:
    try:
        return int(float(value))
    except (TypeError, ValueError):
        return -1


class LabelledDataset(Dataset):
    """Delegates items to ``dataset`` and exposes its side table as :class:`LabelColumns`."""

    def __init__(self, dataset: Any, max_items: int | None = None):
        self.dataset = dataset
        n = len(dataset) if max_items is None else min(len(dataset), max_items)
        self.labels = LabelColumns(dataset.labels, n)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> Any:
        return self.dataset[index]


def steps_per_epoch(num_items: int, batch_size: int, world_size: int, accum_steps: int) -> int:
    """Optimizer steps one epoch provides (incomplete global batches are dropped)."""
    return (num_items // (batch_size * world_size)) // accum_steps


__all__ = ["ColumnLabelled", "KindedData", "LabelColumns", "LabelledDataset", "ResumableSampler", "SeededDataset", "TOY_CAPTIONS", "TensorPairs", "batch_seed",
           "item_seed", "make_toy_pairs",
           "parse_toy_spec", "steps_per_epoch", "toy_splits"]
