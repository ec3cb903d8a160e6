"""Content digest and full check of a built LMDB output folder.

The digest is SHA-256 over every key and value of the six databases (split by split, ``imgs``
then ``pairs``, keys in LMDB order) and then over the side tables. It depends on content only,
not on LMDB page layout, so an interrupted-and-resumed build and an uninterrupted one agree.
A build records its folder's digest in the manifest (``content_digest``); :func:`verify_output`
recomputes it and, unless ``decode=False``, also decodes every stored image, so it finds a value
that is not base64, an image that declares more pixels than :data:`~.images.MAX_IMAGE_PIXELS`
(a decompression bomb), a corrupt image, and (through the digest) any byte changed since the build.
Records are checked in the shape of the build's kind (pairs, or patients: see the manifest).
"""
from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lmdb

from ..errors import UserError
from .splits import SPLITS
from .store import IMGS, NUM_IMAGES, NUM_SAMPLES, PAIRS, database_file, readonly
from .tables import LABELS_TABLE, MANIFEST, SIDE_TABLES, read_kind
from .unpickle import safe_loads_pair, safe_loads_patient
from .images import check_stored_image
from .rows import PATIENTS_KIND

logger = logging.getLogger(__name__)

DIGEST_KEY = "content_digest"
"""The manifest key holding the folder's digest, written by the build."""
_SHOWN_KEY = 40
"""At most this many characters of a damaged record's key are shown."""


@dataclass(frozen=True)
class VerifyReport:
    """A folder's digest and every problem found (empty when sound)."""

    out: Path
    digest: str
    problems: tuple[str, ...]
    images: int = 0
    """Images found in the databases."""

    @property
    def ok(self) -> bool:
        return not self.problems


def output_folders(out: Path) -> list[Path]:
    """``out`` itself, or its ``shard-*`` folders for a sharded build."""
    shards = sorted(p for p in Path(out).glob("shard-*-of-*") if p.is_dir())
    return shards or [Path(out)]


class _Hashes:
    """The digest of the whole output and, for a sharded build, of the shard folder being read."""

    def __init__(self, whole):
        self.whole, self.folder = whole, whole

    def start_folder(self, separate: bool) -> None:
        self.folder = hashlib.sha256() if separate else self.whole

    def part(self, tag: bytes, data: bytes, folder_tag: bytes | None = None) -> None:
        _hash_part(self.whole, tag, data)
        if self.folder is not self.whole:
            _hash_part(self.folder, tag if folder_tag is None else folder_tag, data)


def _hash_part(h, tag: bytes, data: bytes) -> None:
    h.update(len(tag).to_bytes(8, "big") + tag + len(data).to_bytes(8, "big"))
    h.update(data)


def _image_ids(value: bytes, record_kind: str | None) -> list[int | str]:
    """The image ids a ``pairs`` record refers to (raises on a record of the wrong shape)."""
    if record_kind == PATIENTS_KIND:
        rec = safe_loads_patient(value)
        return [i for i in (rec.left_image_id, rec.right_image_id) if i >= 0]
    return [safe_loads_pair(value).image_id]


def _shown(key: bytes) -> str:
    return repr(key[:_SHOWN_KEY]) + ("..." if len(key) > _SHOWN_KEY else "")


def _check_split(split_dir: Path, hashes: _Hashes, record_kind: str | None, decode: bool) -> tuple[list[str], int]:
    """Hash one split's databases and check their counts, cross references and (``decode``) images."""
    problems: list[str] = []
    image_keys: set[bytes] = set()
    counts: dict[bytes, int] = {}
    images = 0
    for kind, count_key in ((IMGS, NUM_IMAGES), (PAIRS, NUM_SAMPLES)):
        path = split_dir / kind
        if not database_file(path).exists():
            problems.append(f"{path}: missing LMDB database")
            continue
        n = 0
        try:
            with readonly(path) as env, env.begin(buffers=True) as txn:
                for key, value in txn.cursor():
                    key, value = bytes(key), bytes(value)
                    tag = f"{split_dir.name}/{kind}/".encode() + key
                    hashes.part(tag, value)
                    if key == count_key:
                        text = value.decode("ascii", "replace")
                        counts[count_key] = int(text) if text.isdigit() else -1
                        continue
                    n += 1
                    if kind == IMGS:
                        image_keys.add(key)
                        bad = check_stored_image(value, decode)
                        if bad:
                            problems.append(f"{database_file(path)}: image {_shown(key)} {bad}")
                        continue
                    try:
                        ids = _image_ids(value, record_kind)
                    except Exception as exc:  # noqa: BLE001 - any bad record is a finding
                        what = "patient record" if record_kind == PATIENTS_KIND else "pair"
                        problems.append(f"{path}: record {_shown(key)} is not a safe {what} ({exc})")
                        continue
                    for image_id in ids:
                        if str(image_id).encode() not in image_keys:
                            problems.append(f"{path}: record {_shown(key)} names missing image {image_id}")
        except UserError as exc:  # truncated, garbage, not a file (see .store)
            problems.append(str(exc))
            continue
        except lmdb.Error as exc:
            problems.append(f"{database_file(path)}: damaged LMDB database ({type(exc).__name__})")
            continue
        if kind == IMGS:
            images = n
        if counts.get(count_key) != n:
            shown = counts.get(count_key)
            shown = "not a count" if shown == -1 else shown
            problems.append(f"{path}: {count_key.decode()} is {shown}, found {n} records")
    return problems, images


def _manifest(folder: Path) -> dict[str, Any] | None:
    try:
        data = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def verify_output(out: str | Path, decode: bool = True, kind: str | None = None) -> VerifyReport:
    """Digest ``out`` (a build folder; for a sharded build, every shard) and check it: structure,
    counts, records, the digest recorded by the build and, with ``decode``, every image. The record
    kind is the manifest's unless ``kind`` names it."""
    out = Path(out)
    hashes = _Hashes(hashlib.sha256())
    problems: list[str] = []
    folders = output_folders(out)
    images = 0
    for folder in folders:
        hashes.start_folder(folder != out)
        manifest = _manifest(folder)
        if manifest is None:
            problems.append(f"{folder}: no readable {MANIFEST} (build unfinished or not a build folder)")
        record_kind = kind or read_kind(folder)
        for split in SPLITS:
            found, n = _check_split(folder / split, hashes, record_kind, decode)
            problems += found
            images += n
        tables = [folder / s / LABELS_TABLE for s in SPLITS] + [folder / t for t in SIDE_TABLES]
        for path in tables:
            if path.is_file():
                hashes.part(str(path.relative_to(out)).encode(), path.read_bytes(),
                            str(path.relative_to(folder)).encode())
            else:
                problems.append(f"{path}: missing side table")
        recorded = manifest.get(DIGEST_KEY) if manifest else None
        if recorded is not None and recorded != hashes.folder.hexdigest():
            problems.append(f"{folder / MANIFEST}: the content differs from the digest recorded by the build "
                            "(a database or table changed since); rebuild it")
    if images == 0 and not problems:
        problems.append(f"{out}: the build holds no images")
    return VerifyReport(out, hashes.whole.hexdigest(), tuple(problems), images)


def folder_digest(folder: str | Path, kind: str | None = None) -> str:
    """SHA-256 hex digest of one build folder's content, as its manifest records it (taken by the build
    before the manifest exists; a database it cannot read is a :class:`UserError`)."""
    folder = Path(folder)
    report = verify_output(folder, decode=False, kind=kind)
    unreadable = [p for p in report.problems if not p.startswith(f"{folder}:")]
    if unreadable:
        raise UserError(unreadable[0])
    return report.digest


def content_digest(out: str | Path) -> str:
    """SHA-256 hex digest of a build's content (see the module docstring)."""
    return verify_output(out, decode=False).digest
