"""The build journal: what makes an LMDB build resumable after ``kill -9``.

It is one more LMDB environment (``{out}/.build/journal``) holding

* ``meta``: the build's fingerprint (config and input identity), to refuse a mismatched resume;
* ``cursor``: the next CSV row to process and the samples (and images) written per split so far;
* ``r`` + row (8 bytes, big-endian): the outcome of each row, ``ok`` or the reject reason, and
  for a patient each eye's image id or reject reason.

The writer commits a block's images and pairs first and its journal entries (with the new
cursor) last. A kill before the journal commit leaves the data ahead of the cursor; the rerun
processes those rows again and, rows being processed deterministically, overwrites every key
with the same value, so the final content equals an uninterrupted build's.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping

import lmdb

from .store import open_writable, put_all
from .splits import SPLITS

BUILD_DIR = ".build"
_META, _CURSOR, _ROW = b"meta", b"cursor", b"r"


@dataclass(frozen=True)
class EyeOutcome:
    """One eye of a patient row: stored as ``image_id``, rejected with ``reason``, or absent."""

    image_id: int = -1
    reason: str = ""
    detail: str = ""

    @property
    def stored(self) -> bool:
        return self.image_id >= 0


@dataclass(frozen=True)
class RowOutcome:
    """One row's result: a sample written to ``split`` as ``image_id``, or a reject ``reason``.

    For a pair the sample index is also its image id; a patient row adds one :class:`EyeOutcome`
    per eye (left, right) in ``eyes``.
    """

    split: str = ""
    image_id: int = -1
    tokens: int = 0
    reason: str = ""
    detail: str = ""
    eyes: tuple[EyeOutcome, ...] = ()

    @property
    def ok(self) -> bool:
        return not self.reason

    def encode(self) -> bytes:
        fields = [self.split, str(self.image_id), str(self.tokens)] if self.ok else ["", self.reason, self.detail]
        for eye in self.eyes:
            fields += [str(eye.image_id), eye.reason, eye.detail]
        return "\t".join(f.replace("\t", " ").replace("\n", " ") for f in fields).encode("utf-8")

    @classmethod
    def decode(cls, data: bytes) -> "RowOutcome":
        a, b, c, *rest = bytes(data).decode("utf-8").split("\t")
        eyes = tuple(EyeOutcome(int(rest[i]), rest[i + 1], rest[i + 2]) for i in range(0, len(rest), 3))
        return cls(a, int(b), int(c), eyes=eyes) if a else cls(reason=b, detail=c, eyes=eyes)


@dataclass(frozen=True)
class Cursor:
    """The next CSV row to process and the samples written per split before it.

    ``images`` counts the images per split where they differ from the samples (patients);
    ``None`` means one image per sample.
    """

    next_row: int = 1
    counts: Mapping[str, int] = field(default_factory=lambda: {s: 0 for s in SPLITS})
    images: Mapping[str, int] | None = None

    @property
    def image_counts(self) -> Mapping[str, int]:
        return self.counts if self.images is None else self.images

    def to_bytes(self) -> bytes:
        obj: dict[str, Any] = {"next_row": self.next_row, "counts": dict(self.counts)}
        if self.images is not None:
            obj["images"] = dict(self.images)
        return json.dumps(obj).encode()

    @classmethod
    def from_bytes(cls, raw: bytes | None) -> "Cursor":
        if raw is None:
            return cls()
        obj = json.loads(bytes(raw))
        images = obj.get("images")
        return cls(int(obj["next_row"]), {s: int(obj["counts"][s]) for s in SPLITS},
                   None if images is None else {s: int(images[s]) for s in SPLITS})


def row_key(row: int) -> bytes:
    return _ROW + row.to_bytes(8, "big")


class Journal:
    """The resumable-build state of one output folder."""

    def __init__(self, out: Path):
        self.dir = out / BUILD_DIR
        self.env = open_writable(self.dir / "journal")

    def meta(self) -> dict[str, Any] | None:
        with self.env.begin() as txn:
            raw = txn.get(_META)
        return None if raw is None else json.loads(raw)

    def set_meta(self, meta: Mapping[str, Any]) -> None:
        put_all(self.env, [(_META, json.dumps(meta, sort_keys=True).encode())])

    def cursor(self) -> Cursor:
        with self.env.begin() as txn:
            raw = txn.get(_CURSOR)
        return Cursor.from_bytes(raw)

    def commit(self, outcomes: list[tuple[int, RowOutcome]], cursor: Cursor) -> None:
        """Record a block's outcomes and the new cursor in one transaction."""
        put_all(self.env, [*((row_key(r), o.encode()) for r, o in outcomes), (_CURSOR, cursor.to_bytes())])

    def outcomes(self) -> Iterator[tuple[int, RowOutcome]]:
        """All recorded outcomes in row order."""
        with self.env.begin(buffers=True) as txn:
            cur = txn.cursor()
            if not cur.set_range(_ROW):
                return
            for key, value in cur:
                key = bytes(key)
                if not key.startswith(_ROW):
                    break
                yield int.from_bytes(key[1:], "big"), RowOutcome.decode(value)

    def close(self) -> None:
        self.env.close()  # idempotent


def read_cursor(out: Path) -> Cursor | None:
    """The cursor of a build in progress (read-only, for monitoring); ``None`` if there is none."""
    path = out / BUILD_DIR / "journal"
    if not (path / "data.mdb").exists():
        return None
    env = lmdb.open(str(path), readonly=True, lock=True, create=False)  # lock: a writer may be active
    try:
        with env.begin() as txn:
            raw = txn.get(_CURSOR)
    finally:
        env.close()
    return Cursor.from_bytes(raw)
