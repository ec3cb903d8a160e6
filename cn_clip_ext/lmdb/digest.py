"""Content digest and structural check of a built LMDB output folder.

The digest is SHA-256 over every key and value of the six databases (split by split, ``imgs``
then ``pairs``, keys in LMDB order) and then over the side tables. It depends on content only,
not on LMDB page layout, so an interrupted-and-resumed build and an uninterrupted one agree.
Records are checked in the shape of the build's kind (pairs, or patients: see the manifest).
"""
from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path

from .unpickle import safe_loads_pair, safe_loads_patient
from .store import IMGS, NUM_IMAGES, NUM_SAMPLES, PAIRS, readonly
from .tables import LABELS_TABLE, MANIFEST, SIDE_TABLES, read_kind
from .splits import SPLITS
from .validate import PATIENTS_KIND

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class VerifyReport:
    """A folder's digest and every problem found (empty when sound)."""

    out: Path
    digest: str
    problems: tuple[str, ...]

    @property
    def ok(self) -> bool:
        return not self.problems


def output_folders(out: Path) -> list[Path]:
    """``out`` itself, or its ``shard-*`` folders for a sharded build."""
    shards = sorted(p for p in Path(out).glob("shard-*-of-*") if p.is_dir())
    return shards or [Path(out)]


def _hash_part(h, tag: bytes, data: bytes) -> None:
    h.update(len(tag).to_bytes(8, "big") + tag + len(data).to_bytes(8, "big"))
    h.update(data)


def _image_ids(value: bytes, record_kind: str | None) -> list[int | str]:
    """The image ids a ``pairs`` record refers to (raises on a record of the wrong shape)."""
    if record_kind == PATIENTS_KIND:
        rec = safe_loads_patient(value)
        return [i for i in (rec.left_image_id, rec.right_image_id) if i >= 0]
    return [safe_loads_pair(value).image_id]


def _check_split(split_dir: Path, h, record_kind: str | None = None) -> list[str]:
    """Hash one split's databases and check their counts and cross references."""
    problems: list[str] = []
    image_keys: set[bytes] = set()
    counts: dict[bytes, int] = {}
    for kind, count_key in ((IMGS, NUM_IMAGES), (PAIRS, NUM_SAMPLES)):
        path = split_dir / kind
        if not (path / "data.mdb").is_file():
            problems.append(f"{path}: missing LMDB database")
            continue
        n = 0
        with readonly(path) as env:
            with env.begin(buffers=True) as txn:
                for key, value in txn.cursor():
                    key, value = bytes(key), bytes(value)
                    _hash_part(h, f"{split_dir.name}/{kind}/".encode() + key, value)
                    if key == count_key:
                        counts[count_key] = int(value)
                        continue
                    n += 1
                    if kind == IMGS:
                        image_keys.add(key)
                        continue
                    try:
                        ids = _image_ids(value, record_kind)
                    except Exception as exc:  # noqa: BLE001 - any bad record is a finding
                        what = "patient record" if record_kind == PATIENTS_KIND else "pair"
                        problems.append(f"{path}: record {key!r} is not a safe {what} ({exc})")
                        continue
                    for image_id in ids:
                        if str(image_id).encode() not in image_keys:
                            problems.append(f"{path}: record {key!r} names missing image {image_id}")
        if counts.get(count_key) != n:
            problems.append(f"{path}: {count_key.decode()} is {counts.get(count_key)}, found {n} records")
    return problems


def verify_output(out: str | Path) -> VerifyReport:
    """Digest ``out`` (a build folder; for a sharded build, every shard) and check its structure."""
    out = Path(out)
    h = hashlib.sha256()
    problems: list[str] = []
    for folder in output_folders(out):
        if not (folder / MANIFEST).is_file():
            problems.append(f"{folder}: no {MANIFEST} (build unfinished or not a build folder)")
        record_kind = read_kind(folder)
        for split in SPLITS:
            problems += _check_split(folder / split, h, record_kind)
        tables = [folder / s / LABELS_TABLE for s in SPLITS] + [folder / t for t in SIDE_TABLES]
        for path in tables:
            if path.is_file():
                _hash_part(h, str(path.relative_to(out)).encode(), path.read_bytes())
            else:
                problems.append(f"{path}: missing side table")
    return VerifyReport(out, h.hexdigest(), tuple(problems))


def content_digest(out: str | Path) -> str:
    """SHA-256 hex digest of a build's content (see the module docstring)."""
    return verify_output(out).digest
