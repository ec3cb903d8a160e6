"""Data plumbing for training: a resumable distributed sampler, per-sample seeding, a toy set.

The trainer accepts any map-style dataset whose items are ``(image_tensor, token_ids)``: image
tensors are CLIP-normalised float, or ``uint8`` pixels (what the train transform's per-sample half
returns), which the trainer turns into normalised float on the device with the train transform's
``batch_transform`` (random colour drawn per micro-batch from :func:`batch_seed`). Labels
for zero-shot validation come from an optional ``labels`` attribute: a mapping from label name
to one integer per item (``-1`` or NaN = unknown), e.g. columns of the SynFundus side table.
"""
from __future__ import annotations

import logging
import math
import random
from typing import Any, Iterator, Mapping, Sequence

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
    Set :attr:`epoch` before creating the loader's iterator. In the loading process the previous
    RNG states are restored afterwards; a DataLoader worker's are simply left seeded.
    """

    def __init__(self, dataset: Dataset, seed: int):
        self.dataset, self.seed, self.epoch = dataset, seed, 0

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> Any:
        s = item_seed(self.seed, self.epoch, int(index))
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


class TensorPairs(Dataset):
    """In-memory ``(image, token_ids)`` pairs, optionally with a ``labels`` table."""

    def __init__(self, images: torch.Tensor, tokens: torch.Tensor,
                 labels: Mapping[str, Sequence[int]] | None = None):
        if len(images) != len(tokens):
            raise ValueError("images and tokens differ in length")
        self.images, self.tokens = images, tokens
        self.labels = {k: list(v) for k, v in (labels or {}).items()}

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.images[index], self.tokens[index]


# -- a generated toy set: class-dependent fundus-like discs with matching captions -------------
TOY_CAPTIONS = (
    "眼底未见明显异常，建议定期复查。",
    "轻度非增殖性糖尿病视网膜病变，建议控制血糖。",
    "中度非增殖性糖尿病视网膜病变，建议眼科随诊。",
    "疑似青光眼，视杯扩大，建议进一步检查眼压。",
)
TOY_LABELS = (  # (dr_grade, is_gc, is_amd) of each toy class
    (0, 0, 0), (1, 0, 0), (2, 0, 0), (0, 1, 0),
)


def make_toy_pairs(n: int, image_size: int, seed: int = 0, context_length: int = 52) -> TensorPairs:
    """``n`` normalised images of four visual classes with their captions and labels.

    Each class has its own colour and spot pattern on a round field of view, plus noise, so a
    model can learn the pairing within a few dozen steps on a CPU.
    """
    from ..tokenizer import Tokenizer

    gen = torch.Generator().manual_seed(seed)
    classes = torch.arange(n) % len(TOY_CAPTIONS)
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, image_size), torch.linspace(-1, 1, image_size), indexing="ij")
    disc = ((xx**2 + yy**2) < 0.9).float()
    palette = torch.tensor([[0.8, 0.35, 0.2], [0.7, 0.25, 0.15], [0.6, 0.3, 0.3], [0.85, 0.5, 0.2]])
    images = torch.empty(n, 3, image_size, image_size)
    for i in range(n):
        c = int(classes[i])
        base = palette[c].view(3, 1, 1) * disc
        spots = torch.zeros(image_size, image_size)
        for _ in range(2 * c + 1):
            cy, cx = (torch.rand(2, generator=gen) * 1.2 - 0.6).tolist()
            spots += ((xx - cx) ** 2 + (yy - cy) ** 2 < 0.01).float()
        img = base + 0.5 * spots.clamp(max=1) * disc * (1 if c != 3 else -1)
        img = img + 0.05 * torch.randn(3, image_size, image_size, generator=gen)
        images[i] = (img.clamp(0, 1) - 0.45) / 0.27
    tokens = Tokenizer(context_length)(list(TOY_CAPTIONS))[classes]
    labels = {name: [TOY_LABELS[int(c)][j] for c in classes] for j, name in enumerate(("dr_grade", "is_gc", "is_amd"))}
    return TensorPairs(images, tokens, labels)


def parse_toy_spec(spec: str) -> int | None:
    """``"toy:N"`` -> N; anything else -> None."""
    if not spec.startswith("toy"):
        return None
    _, _, num = spec.partition(":")
    try:
        n = int(num) if num else 512
    except ValueError:
        return None
    return n


def toy_splits(spec: str, image_size: int, seed: int, context_length: int) -> tuple[TensorPairs, TensorPairs]:
    """Train and valid toy sets for ``data="toy:N"`` (valid has N // 4 items, other noise)."""
    n = parse_toy_spec(spec) or 512
    return (make_toy_pairs(n, image_size, seed, context_length),
            make_toy_pairs(max(8, n // 4), image_size, seed + 7919, context_length))


class LabelColumns(Mapping[str, list[int]]):
    """Label columns (``name -> one int per item``, ``-1`` unknown) of a dataset whose
    ``labels(index)`` returns a side-table row (as :class:`cn_clip_ext.data.lmdb_reader.LmdbPairDataset`
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


def total_steps(num_items: int, batch_size: int, world_size: int, accum_steps: int, epochs: int,
                max_steps: int | None) -> int:
    per_epoch = steps_per_epoch(num_items, batch_size, world_size, accum_steps)
    return max_steps if max_steps is not None else per_epoch * epochs


def ceil_div(a: int, b: int) -> int:
    return int(math.ceil(a / b))


__all__ = ["LabelColumns", "LabelledDataset", "ResumableSampler", "SeededDataset", "TOY_CAPTIONS", "TensorPairs", "batch_seed",
           "item_seed", "make_toy_pairs",
           "parse_toy_spec", "steps_per_epoch", "toy_splits", "total_steps"]
