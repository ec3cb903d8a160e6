"""Training on a sharded build: ``vclip-build-lmdb --shards N`` writes ``ROOT/shard-i-of-N/``, each a
whole build (``train/``, ``valid/``, ``test/``); ``--data ROOT`` trains on all of them as one
dataset.

A split of a sharded root is the concatenation of that split of every shard, in shard order, so its
length is the sum of the shards' and the trainer's sampler shuffles and divides it over ranks like
any other dataset (a rank reads from every shard). Every shard from 0 to N-1 must be present: a
partial build (``--shard-index`` on some nodes only) is refused in one line rather than trained on
silently.
"""
from __future__ import annotations

import bisect
import re
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from torch.utils.data import Dataset

from ..errors import UserError
from ..lmdb.digest import output_folders

_SHARD = re.compile(r"^shard-(\d+)-of-(\d+)$")


def shard_folders(root: str | Path) -> list[Path]:
    """The ``shard-i-of-N`` folders of a sharded build in shard order (``[]`` for an unsharded one);
    a missing shard or folders of different N is a :class:`UserError`."""
    root = Path(root)
    folders = [p for p in output_folders(root) if p != root]
    if not folders:
        return []
    found: dict[int, Path] = {}
    totals = set()
    for folder in folders:
        m = _SHARD.match(folder.name)
        if m is None:
            raise UserError(f"{folder}: not a shard folder name (expected shard-<i>-of-<N>)")
        found[int(m.group(1))] = folder
        totals.add(int(m.group(2)))
    if len(totals) != 1:
        raise UserError(f"{root}: shard folders of different builds ({', '.join(p.name for p in folders)})")
    total = totals.pop()
    missing = [i for i in range(total) if i not in found]
    if missing or len(found) != total:
        names = ", ".join(f"shard-{i:03d}-of-{total:03d}" for i in missing) or "extra shard folders"
        raise UserError(f"{root}: a sharded build of {total} with {names} missing; build every shard "
                        "(vclip-build-lmdb --shards N without --shard-index) or point --data at one shard folder")
    return [found[i] for i in range(total)]


class ConcatSplit(Dataset):
    """One split of several shards as one map-style dataset (``kind``, ``labels(i)`` and ``record(i)``
    delegate to the shard that holds item ``i``)."""

    def __init__(self, parts: Sequence[Dataset]):
        if not parts:
            raise ValueError("no shards")
        kinds = {getattr(p, "kind", "pairs") for p in parts}
        if len(kinds) != 1:
            raise UserError(f"shards hold different kinds of records ({', '.join(sorted(kinds))})")
        self.parts = list(parts)
        self.kind = kinds.pop()
        self.offsets: list[int] = []
        total = 0
        for part in self.parts:
            self.offsets.append(total)
            total += len(part)  # type: ignore[arg-type]
        self.total = total

    def __len__(self) -> int:
        return self.total

    def locate(self, index: int) -> tuple[Dataset, int]:
        """The shard's dataset holding item ``index`` and the item's index there."""
        if not 0 <= index < self.total:
            raise IndexError(index)
        shard = bisect.bisect_right(self.offsets, index) - 1
        return self.parts[shard], index - self.offsets[shard]

    def __getitem__(self, index: int) -> Any:
        part, i = self.locate(int(index))
        return part[i]

    def labels(self, index: int) -> Mapping[str, str]:
        part, i = self.locate(int(index))
        return part.labels(i)  # type: ignore[attr-defined]

    def record(self, index: int) -> Any:
        part, i = self.locate(int(index))
        return part.record(i)  # type: ignore[attr-defined]


def open_split(root: str | Path, split: str, open_one: Callable[[Path], Dataset]) -> Dataset | None:
    """``split`` of ``root`` (unsharded, or every shard concatenated); ``None`` when absent.

    ``open_one(split_dir)`` opens one LMDB split. In a sharded build the split must be in every
    shard or in none.
    """
    shards = shard_folders(root)
    if not shards:
        folder = Path(root) / split
        return open_one(folder) if folder.is_dir() else None
    present = [s / split for s in shards if (s / split).is_dir()]
    if not present:
        return None
    if len(present) != len(shards):
        lacking = next(s for s in shards if not (s / split).is_dir())
        raise UserError(f"{lacking}: no {split}/ split while other shards have one")
    return ConcatSplit([open_one(p) for p in present])


def has_split(root: str | Path, split: str) -> bool:
    """Whether ``root`` (or every shard of it) has ``split``."""
    shards = shard_folders(root)
    return all((s / split).is_dir() for s in shards) if shards else (Path(root) / split).is_dir()


__all__ = ["ConcatSplit", "has_split", "open_split", "shard_folders"]
