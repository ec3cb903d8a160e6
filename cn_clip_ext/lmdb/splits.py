"""Stable split and shard assignment by a hash of the image's file name.

An image's split depends only on its ``file_name``, the seed and the ratios, never on the
order of the CSV or on which other images exist: re-running a build, or adding images to the
corpus, never moves an image to another split.
"""
from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

SPLITS: tuple[str, ...] = ("train", "valid", "test")
"""Chinese-CLIP's split names, in the order the build writes and digests them."""


def _unit(salt: str, key: str) -> float:
    """A uniform number in ``[0, 1)`` from SHA-256 of ``salt`` and ``key``."""
    digest = hashlib.sha256(f"{salt}\x00{key}".encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


@dataclass(frozen=True)
class SplitRatios:
    """Relative sizes of train / valid / test (any positive scale: 8:1:1 == 0.8:0.1:0.1)."""

    train: float = 8.0
    valid: float = 1.0
    test: float = 1.0

    def __post_init__(self) -> None:
        values = (self.train, self.valid, self.test)
        if not all(math.isfinite(v) and v >= 0 for v in values) or sum(values) <= 0:
            raise ValueError(f"split ratios must be non-negative with a positive sum, got {values}")

    @classmethod
    def parse(cls, text: str) -> "SplitRatios":
        """``"8:1:1"`` or ``"0.8,0.1,0.1"`` -> :class:`SplitRatios`."""
        parts = text.replace(",", ":").split(":")
        if len(parts) != 3:
            raise ValueError(f"split ratios {text!r}: expected three numbers like 8:1:1")
        try:
            return cls(*(float(p) for p in parts))
        except ValueError as exc:
            raise ValueError(f"split ratios {text!r}: {exc}") from None

    def bounds(self) -> tuple[float, float]:
        """Upper bounds of train and valid on the unit interval."""
        total = self.train + self.valid + self.test
        return self.train / total, (self.train + self.valid) / total

    def __str__(self) -> str:
        return f"{self.train:g}:{self.valid:g}:{self.test:g}"


def split_of(file_name: str, seed: int = 0, ratios: SplitRatios = SplitRatios()) -> str:
    """The split (``"train"``, ``"valid"`` or ``"test"``) an image belongs to."""
    u = _unit(f"split:{seed}", file_name)
    train_end, valid_end = ratios.bounds()
    if u < train_end:
        return "train"
    return "valid" if u < valid_end else "test"


def shard_of(file_name: str, shards: int, seed: int = 0) -> int:
    """The shard in ``range(shards)`` an image belongs to (independent of its split)."""
    if shards <= 1:
        return 0
    return min(shards - 1, int(_unit(f"shard:{seed}", file_name) * shards))
