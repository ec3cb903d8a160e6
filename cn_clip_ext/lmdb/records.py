"""Record kinds of an LMDB build: what one CSV row becomes in the databases and side tables.

* ``pairs`` (Chinese-CLIP's layout): a row is one image and its caption; the sample index is
  also the image id and ``pairs`` holds ``(image_id, image_id, caption)``.
* ``patients`` (RET-CLIP): a row is one patient, a left and a right eye image (either may be
  missing) and one report; each stored eye gets its own image id and ``pairs`` holds
  ``(patient_id, left_image_id, right_image_id, report)`` with ``-1`` for an eye not stored.
  A bad eye image is rejected on its own and the patient kept with the other eye; a patient
  with no usable eye is rejected as a whole.

The writer (:mod:`.writer`) handles reading, validation, the worker pool, transactions and
the journal once for every kind; a :class:`RecordKind` only says how a row's fields map to
image files, how the processed images become LMDB items, and how a row shows in the side tables.
"""
from __future__ import annotations

import pickle
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Mapping, Sequence

from .journal import EyeOutcome, RowOutcome
from .store import IMGS, PAIRS
from .splits import SplitRatios, split_of
from .rows import (
    DUPLICATE_FILE_NAME, DUPLICATE_PATIENT_ID, EMPTY_FILE_NAME, EMPTY_PATIENT_ID, NO_EYE_IMAGE, NO_USABLE_EYE,
    PAIRS_KIND, PATIENTS_KIND, CsvInfo, RowReject, eye_fields, normalize_path,
)

PICKLE_PROTOCOL = 4
EYES: tuple[str, ...] = ("left", "right")
"""The eyes of a patient row, in the order of its image columns and record fields."""

WorkResult = tuple[Any, str, str, int]
"""A worker's answer for one image: ``(base64 image or None, reason, detail, caption tokens)``."""
Entries = dict[tuple[str, str], list[tuple[bytes, bytes]]]
"""``(split, database) -> [(key, value), ...]`` to write."""


@dataclass(frozen=True)
class Item:
    """One CSV row on its way through the build.

    ``key`` decides split, shard and duplicates (the image path, or the patient id); ``files``
    are the image paths to process, ``""`` for an absent one (a patient's missing eye).
    """

    row: int
    key: str
    caption: str
    files: tuple[str, ...] = ()
    reject: RowReject | None = None


class RecordKind:
    """How rows of one kind are stored; see the module docstring."""

    name: str
    empty_key: RowReject
    """The reject of a row whose key (image path, patient id) is empty."""
    duplicate_key: RowReject
    """The reject of a row whose key appeared on an earlier row."""
    splits_header: tuple[str, ...]
    labels_header: tuple[str, ...]
    """The columns of ``labels.csv`` before the label columns."""
    rejects_header: tuple[str, ...]
    count_name: str = "images"
    """What the samples are called in the summary and manifest (``images`` or ``patients``)."""

    def key(self, value: str) -> str:
        """The row's key as duplicates, splits and shards judge it (from its stripped key column)."""
        return value

    def files(self, info: CsvInfo, fields: Sequence[str], key: str) -> tuple[str, ...]:
        """The image paths of a row (``""`` where a short, malformed row has none)."""
        raise NotImplementedError

    def check(self, files: tuple[str, ...]) -> RowReject | None:
        """A reject found before any image is read, beyond the common checks."""
        return None

    def store(self, item: Item, results: Sequence[WorkResult | None], ratios: SplitRatios, seed: int,
              counts: dict[str, int], images: dict[str, int], data: Entries) -> RowOutcome:
        """Add a processed row's items to ``data``, advancing the per-split sample and image counters;
        ``results`` has one worker answer per entry of ``item.files`` (``None`` for an empty one)."""
        raise NotImplementedError

    def reject_lines(self, row: int, key: str, files: tuple[str, ...], outcome: RowOutcome) -> list[list[Any]]:
        """The ``rejects.csv`` lines of a row (none for a clean one)."""
        raise NotImplementedError

    def labels_prefix(self, key: str, files: tuple[str, ...], outcome: RowOutcome) -> list[Any]:
        """The first ``labels.csv`` fields of a stored row (see :attr:`labels_header`)."""
        raise NotImplementedError


class PairKind(RecordKind):
    """One image and its caption per row."""

    name = PAIRS_KIND
    empty_key = RowReject(EMPTY_FILE_NAME, "no file name")
    duplicate_key = RowReject(DUPLICATE_FILE_NAME, "file name appeared on an earlier row")
    splits_header = ("file_name", "split", "image_id")
    labels_header = ("image_id", "file_name")
    rejects_header = ("row", "file_name", "reason", "detail")

    def key(self, value: str) -> str:
        return normalize_path(value)  # ./a.png and a.png are one file

    def files(self, info: CsvInfo, fields: Sequence[str], key: str) -> tuple[str, ...]:
        return (key,)

    def store(self, item: Item, results: Sequence[WorkResult | None], ratios: SplitRatios, seed: int,
              counts: dict[str, int], images: dict[str, int], data: Entries) -> RowOutcome:
        result = results[0]
        assert result is not None
        b64, reason, detail, tokens = result
        if b64 is None:
            return RowOutcome(tokens=tokens, reason=reason, detail=detail)
        split = split_of(item.key, seed, ratios)
        idx = counts[split]
        counts[split] = images[split] = idx + 1
        key = str(idx).encode()
        data[(split, IMGS)].append((key, b64))
        data[(split, PAIRS)].append((key, pickle.dumps((idx, idx, item.caption), protocol=PICKLE_PROTOCOL)))
        return RowOutcome(split, idx, tokens)

    def reject_lines(self, row: int, key: str, files: tuple[str, ...], outcome: RowOutcome) -> list[list[Any]]:
        return [] if outcome.ok else [[row, key, outcome.reason, outcome.detail]]

    def labels_prefix(self, key: str, files: tuple[str, ...], outcome: RowOutcome) -> list[Any]:
        return [outcome.image_id, key]


class PatientKind(RecordKind):
    """One patient per row: left eye, right eye (either may be missing) and a report."""

    name = PATIENTS_KIND
    empty_key = RowReject(EMPTY_PATIENT_ID, "no patient id")
    duplicate_key = RowReject(DUPLICATE_PATIENT_ID, "patient id appeared on an earlier row")
    splits_header = ("patient_id", "split", "sample_id")
    labels_header = ("patient_id", "sample_id", "left_image", "right_image", "left_image_id", "right_image_id")
    rejects_header = ("row", "patient_id", "eye", "file_name", "reason", "detail")
    count_name = "patients"

    def files(self, info: CsvInfo, fields: Sequence[str], key: str) -> tuple[str, ...]:
        return eye_fields(info, fields)

    def check(self, files: tuple[str, ...]) -> RowReject | None:
        return None if any(files) else RowReject(NO_EYE_IMAGE, "both left_image and right_image are empty")

    def store(self, item: Item, results: Sequence[WorkResult | None], ratios: SplitRatios, seed: int,
              counts: dict[str, int], images: dict[str, int], data: Entries) -> RowOutcome:
        tokens = next(r[3] for r in results if r is not None)
        bad = [EyeOutcome(-1, r[1], r[2]) if r is not None else EyeOutcome() for r in results]
        if all(r is None or r[0] is None for r in results):
            detail = "; ".join(f"{eye} eye: {r[1]}" for eye, r in zip(EYES, results) if r is not None)
            return RowOutcome(tokens=tokens, reason=NO_USABLE_EYE, detail=detail, eyes=tuple(bad))
        split = split_of(item.key, seed, ratios)
        idx = counts[split]
        counts[split] = idx + 1
        eyes = []
        for result, eye in zip(results, bad):
            if result is None or result[0] is None:
                eyes.append(eye)
                continue
            image_id = images[split]
            images[split] = image_id + 1
            data[(split, IMGS)].append((str(image_id).encode(), result[0]))
            eyes.append(EyeOutcome(image_id))
        record = (item.key, eyes[0].image_id, eyes[1].image_id, item.caption)
        data[(split, PAIRS)].append((str(idx).encode(), pickle.dumps(record, protocol=PICKLE_PROTOCOL)))
        return RowOutcome(split, idx, tokens, eyes=tuple(eyes))

    def reject_lines(self, row: int, key: str, files: tuple[str, ...], outcome: RowOutcome) -> list[list[Any]]:
        lines: list[list[Any]] = [] if outcome.ok else [[row, key, "", "", outcome.reason, outcome.detail]]
        for eye, file_name, got in zip(EYES, files, outcome.eyes):
            if got.reason:
                lines.append([row, key, eye, file_name, got.reason, got.detail])
        return lines

    def labels_prefix(self, key: str, files: tuple[str, ...], outcome: RowOutcome) -> list[Any]:
        stored = [f if eye.stored else "" for f, eye in zip(files, outcome.eyes)]
        return [key, outcome.image_id, *stored, *(eye.image_id for eye in outcome.eyes)]


KINDS: Mapping[str, RecordKind] = MappingProxyType({PAIRS_KIND: PairKind(), PATIENTS_KIND: PatientKind()})


def record_kind(name: str) -> RecordKind:
    """The :class:`RecordKind` called ``name`` (``"pairs"`` or ``"patients"``)."""
    try:
        return KINDS[name]
    except KeyError:
        raise ValueError(f"unknown record kind {name!r}; choose from {', '.join(KINDS)}") from None
