"""Read Chinese-CLIP LMDB splits safely and lazily.

``pairs`` values are pickles, read only through :mod:`.unpickle`'s restricted unpickler
(:func:`safe_loads_pair`, :func:`safe_loads_patient`, re-exported here), which runs no code.

A damaged or hostile split is a one-line :class:`~cn_clip_ext.errors.UserError` naming the
database and the record, never a crash or a traceback from lmdb, pickle or PIL: a truncated or
garbage ``data.mdb`` (see :mod:`.store`), a count that disagrees with the records, a record that
is not a safe pickle (:class:`UnsafeRecordError`), an image value that is not base64, an image
that declares more than :data:`~.images.MAX_IMAGE_PIXELS` pixels (refused before decoding) or
that does not decode.

:class:`LmdbPairDataset` (one image per sample) and :class:`LmdbPatientDataset` (RET-CLIP: both
eyes of a patient per sample) open their environments on first use in each process (each
DataLoader worker gets its own handles); :func:`open_lmdb_dataset` picks the class a build's
manifest names.
"""
from __future__ import annotations

import csv
import io
import logging
import os
from functools import lru_cache
from pathlib import Path
from types import MappingProxyType
from typing import Any, Callable, Mapping

import torch
from PIL import Image
from torch.utils.data import Dataset

import lmdb

from ..errors import UserError

from ..model.tokenizer import Tokenizer
from ..model.protocols import square_size
from ..model.transforms import accepts_arrays, eval_transform, open_rgb, read_rgb
from .unpickle import (  # noqa: F401  (re-exported)
    PairRecord, PatientRecord, RestrictedUnpickler, UnsafeRecordError, safe_loads_pair, safe_loads_patient,
)
from .store import (
    IMGS, NUM_IMAGES, NUM_SAMPLES, PAIRS, acquire_readonly, database_file, read_failure, readonly, release_readonly,
)
from .tables import LABELS_TABLE, read_kind
from .images import decode_stored_value, image_dimensions, too_many_pixels
from .rows import PAIRS_KIND, PATIENTS_KIND, normalize_caption

logger = logging.getLogger(__name__)


def read_count(env: lmdb.Environment, path: Path, key: bytes) -> int:
    """The count stored under ``key`` (``num_samples``, ``num_images``), checked against the records
    the database really holds (every key but the count); a one-line :class:`UserError` otherwise."""
    try:
        with env.begin() as txn:
            raw = txn.get(key)
        entries = env.stat()["entries"]
    except lmdb.Error as exc:
        raise read_failure(exc, path, key.decode()) from None
    if raw is None:
        raise UserError(f"{database_file(path)}: no {key.decode()} key (an unfinished build?)")
    text = bytes(raw).decode("ascii", "replace").strip()
    if not text.isdigit():
        raise UserError(f"{database_file(path)}: {key.decode()} is not a count")  # the value is data, not shown
    count = int(text)
    if count != entries - 1:
        raise UserError(f"{database_file(path)}: {key.decode()} says {count} but the database holds "
                        f"{entries - 1} records; the build is damaged or unfinished, rebuild it")
    return count


class _LmdbSplit(Dataset):
    """What every LMDB split reader shares: lazy per-process handles, counts, images, tokens."""

    kind = ""
    label_key = "image_id"
    """The ``labels.csv`` column that :meth:`labels` looks rows up by."""

    def __init__(self, split_dir: str | Path, transform: Callable[[Image.Image], Any] | None = None,
                 tokenizer: Tokenizer | None = None, *, token_cache: int = 4096):
        self.split_dir = Path(split_dir)
        for kind in (IMGS, PAIRS):
            if not (self.split_dir / kind / "data.mdb").exists():
                raise FileNotFoundError(f"{self.split_dir / kind}: no LMDB database")
        self.transform = transform if transform is not None else eval_transform(224)
        self.tokenizer = tokenizer if tokenizer is not None else Tokenizer()
        self.token_cache = token_cache
        self._pid: int | None = None
        self._envs: dict[str, Any] = {}
        self._txns: dict[str, Any] = {}
        self._tokens: Callable | None = None
        self._labels: Mapping[str, Mapping[str, str]] | None = None
        self.num_samples, self.num_images = self._counts()

    def _counts(self) -> tuple[int, int]:
        out = []
        for kind, key in ((PAIRS, NUM_SAMPLES), (IMGS, NUM_IMAGES)):
            with readonly(self.split_dir / kind) as env:
                out.append(read_count(env, self.split_dir / kind, key))
        if out[0] == 0:
            logger.warning("%s: the split holds no samples", self.split_dir)
        return out[0], out[1]

    def _txn(self, kind: str):
        if self._pid != os.getpid():  # first use in this process (a new DataLoader worker)
            self._envs = {k: acquire_readonly(self.split_dir / k) for k in (IMGS, PAIRS)}
            self._txns = {k: env.begin(buffers=True) for k, env in self._envs.items()}
            self._tokens = lru_cache(maxsize=self.token_cache)(self._tokenize)
            self._pid = os.getpid()
        return self._txns[kind]

    def close(self) -> None:
        """Release this process's handles (they reopen on next use)."""
        if self._pid == os.getpid():
            for txn in self._txns.values():
                txn.abort()
            for kind in self._envs:
                release_readonly(self.split_dir / kind)
        self._pid, self._envs, self._txns = None, {}, {}

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state.update(_pid=None, _envs={}, _txns={}, _tokens=None)
        return state

    def __len__(self) -> int:
        return self.num_samples

    def _get(self, kind: str, key: str, what: str):
        try:
            return self._txn(kind).get(key.encode())
        except lmdb.Error as exc:
            raise read_failure(exc, self.split_dir / kind, what) from None

    def _raw_record(self, index: int) -> bytes:
        if not 0 <= index < self.num_samples:
            raise IndexError(index)
        raw = self._get(PAIRS, str(index), f"record {index}")
        if raw is None:
            raise UserError(f"{database_file(self.split_dir / PAIRS)}: no record {index} although num_samples is "
                            f"{self.num_samples}; the build is damaged, rebuild it")
        return raw

    def _record(self, index: int, load: Callable[[bytes], Any]) -> Any:
        try:
            return load(self._raw_record(index))
        except UnsafeRecordError as exc:
            raise UnsafeRecordError(f"{database_file(self.split_dir / PAIRS)}: record {index}: {exc}") from None

    def image_bytes(self, image_id: int | str) -> bytes:
        """The stored (encoded, not base64) bytes of an image."""
        raw = self._get(IMGS, str(image_id), f"image {image_id}")
        if raw is None:
            raise UserError(f"{database_file(self.split_dir / IMGS)}: no image {image_id}, which a record names; "
                            "the build is damaged, rebuild it")
        try:
            return decode_stored_value(raw)
        except ValueError as exc:
            raise UserError(f"{database_file(self.split_dir / IMGS)}: image {image_id} is {exc}") from None

    def _checked_bytes(self, image_id: int | str) -> bytes:
        """:meth:`image_bytes`, refused when the header declares too many pixels (a decompression bomb)."""
        data = self.image_bytes(image_id)
        try:
            bomb = too_many_pixels(*image_dimensions(data))
        except ValueError as exc:
            raise UserError(f"{database_file(self.split_dir / IMGS)}: image {image_id} is {exc}") from None
        if bomb:
            raise UserError(f"{database_file(self.split_dir / IMGS)}: image {image_id} {bomb}; refused")
        return data

    def _decoded(self, image_id: int | str, decode: Callable[..., Any], min_size: int | None) -> Any:
        data = self._checked_bytes(image_id)
        try:
            return decode(io.BytesIO(data), min_size)
        except (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError) as exc:
            raise UserError(f"{database_file(self.split_dir / IMGS)}: image {image_id} does not decode "
                            f"({type(exc).__name__})") from None

    def _decode(self, image_id: int | str, min_size: int | None = None) -> Image.Image:
        return self._decoded(image_id, open_rgb, min_size)

    def _transformed(self, image_id: int | str) -> Any:
        """``transform`` of an image; JPEGs decode at a reduced scale no less than twice the
        transform's ``size`` when it has one (see :func:`~cn_clip_ext.model.transforms.open_rgb`)."""
        size = square_size(self.transform)
        min_size = 2 * size if size is not None else None
        decode = read_rgb if accepts_arrays(self.transform) else open_rgb  # arrays: no PIL copy of the pixels
        return self.transform(self._decoded(image_id, decode, min_size))

    def _tokenize(self, text: str):
        return self.tokenizer(normalize_caption(text))[0]

    def tokens(self, text: str):
        """Token ids of a caption (normalised as cn_clip does), cached per process."""
        self._txn(PAIRS)
        return self._tokens(text)

    def _label_row(self, key: object) -> Mapping[str, str]:
        if self._labels is None:
            self._labels = read_labels(self.split_dir, self.label_key)
        return self._labels[str(key)]


class LmdbPairDataset(_LmdbSplit):
    """One split of a Chinese-CLIP LMDB (``split_dir`` holds ``imgs/`` and ``pairs/``).

    ``dataset[i]`` is ``(transform(image), token_ids)``; :meth:`record`, :meth:`image` and
    :meth:`labels` give the raw caption, the decoded image and the side-table labels.
    """

    kind = PAIRS_KIND

    def record(self, index: int) -> PairRecord:
        """The raw ``(image_id, text_id, text)`` of sample ``index``."""
        return self._record(index, safe_loads_pair)

    def image(self, index: int) -> Image.Image:
        """The decoded RGB image of sample ``index``."""
        return self._decode(self.record(index).image_id)

    def labels(self, index: int) -> Mapping[str, str]:
        """The side-table row (``image_id``, ``file_name`` and every label) of sample ``index``."""
        return self._label_row(self.record(index).image_id)

    def __getitem__(self, index: int):
        rec = self.record(index)
        return self._transformed(rec.image_id), self.tokens(rec.text)


PatientItem = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]
"""``(left_image, right_image, has_left, has_right, token_ids)``."""


def patient_item(left: torch.Tensor | None, right: torch.Tensor | None, tokens: torch.Tensor) -> PatientItem:
    """A patient sample from its eye tensors; a missing eye becomes zeros shaped like the other
    with its ``has_*`` flag ``False`` (at least one eye must be given)."""
    like = left if left is not None else right
    if like is None:
        raise ValueError("a patient needs at least one eye image")
    return (torch.zeros_like(like) if left is None else left, torch.zeros_like(like) if right is None else right,
            torch.tensor(left is not None), torch.tensor(right is not None), tokens)


class LmdbPatientDataset(_LmdbSplit):
    """One split of a patient-level (RET-CLIP) LMDB: each sample is one patient's two eyes and report.

    ``dataset[i]`` is ``(left_image, right_image, has_left, has_right, token_ids)``: image tensors
    ``[3, H, W]`` from ``transform``, 0-d bool tensors, the report's token ids. A missing eye is a
    zero tensor with its flag ``False``; use only present eyes. :meth:`record`, :meth:`images` and
    :meth:`labels` give the raw record, the decoded eyes and the patient's side-table row.
    """

    kind = PATIENTS_KIND
    label_key = "patient_id"

    def record(self, index: int) -> PatientRecord:
        """The raw ``(patient_id, left_image_id, right_image_id, report)`` of sample ``index``."""
        return self._record(index, safe_loads_patient)

    def images(self, index: int) -> tuple[Image.Image | None, Image.Image | None]:
        """The decoded RGB ``(left, right)`` eye images of sample ``index`` (``None``: missing)."""
        rec = self.record(index)
        return tuple(self._decode(i) if i >= 0 else None  # type: ignore[return-value]
                     for i in (rec.left_image_id, rec.right_image_id))

    def labels(self, index: int) -> Mapping[str, str]:
        """The side-table row (``patient_id``, ``sample_id``, eye images and every label) of ``index``."""
        return self._label_row(self.record(index).patient_id)

    def __getitem__(self, index: int) -> PatientItem:
        rec = self.record(index)
        left, right = (self._transformed(i) if i >= 0 else None
                       for i in (rec.left_image_id, rec.right_image_id))
        return patient_item(left, right, self.tokens(rec.report))


def read_labels(split_dir: str | Path, key: str = "image_id") -> Mapping[str, Mapping[str, str]]:
    """``labels.csv`` of a split as a read-only mapping ``row[key] -> {column: value}``."""
    path = Path(split_dir) / LABELS_TABLE
    with open(path, encoding="utf-8", newline="") as fh:
        return MappingProxyType({row[key]: MappingProxyType(row) for row in csv.DictReader(fh)})


DATASETS: Mapping[str, type[_LmdbSplit]] = MappingProxyType({PAIRS_KIND: LmdbPairDataset,
                                                             PATIENTS_KIND: LmdbPatientDataset})


def dataset_kind(split_dir: str | Path) -> str:
    """``"pairs"`` or ``"patients"``: from the build's manifest (the split folder's parent), else
    from the shape of the first record."""
    split_dir = Path(split_dir)
    kind = read_kind(split_dir.parent)
    if kind is not None:
        if kind not in DATASETS:
            raise UserError(f"{split_dir.parent / 'manifest.json'}: unknown record kind in the manifest "
                            f"(this version reads {', '.join(DATASETS)})")
        return kind
    with readonly(split_dir / PAIRS) as env:
        try:
            with env.begin() as txn:
                raw = txn.get(b"0")
        except lmdb.Error as exc:
            raise read_failure(exc, split_dir / PAIRS, "record 0") from None
    if raw is not None:
        try:
            safe_loads_patient(raw)
            return PATIENTS_KIND
        except UnsafeRecordError:
            pass
    return PAIRS_KIND


def open_lmdb_dataset(split_dir: str | Path, transform: Callable[[Image.Image], Any] | None = None,
                      tokenizer: Tokenizer | None = None, **kwargs: Any) -> LmdbPairDataset | LmdbPatientDataset:
    """The reader for one split of any build: :class:`LmdbPatientDataset` for a patient-level
    build, else :class:`LmdbPairDataset` (check ``dataset.kind``)."""
    return DATASETS[dataset_kind(split_dir)](split_dir, transform, tokenizer, **kwargs)  # type: ignore[return-value]
