"""Read Chinese-CLIP LMDB splits safely and lazily.

``pairs`` values are pickles, and ``pickle.loads`` on a file from elsewhere can run any code.
:func:`safe_loads_pair` unpickles with a :class:`RestrictedUnpickler` that resolves no globals at
all (so no callable can be reached) and then accepts only tuples, ``str`` and ``int``.

:class:`LmdbPairDataset` opens its environments on first use in each process (each DataLoader
worker gets its own handles) and returns ``(image_tensor, token_ids)``.
"""
from __future__ import annotations

import base64
import csv
import io
import os
import pickle
from functools import lru_cache
from pathlib import Path
from types import MappingProxyType
from typing import Any, Callable, Mapping, NamedTuple

from PIL import Image
from torch.utils.data import Dataset

from ..tokenizer import Tokenizer
from ..transforms import eval_transform
from .lmdb_store import IMGS, NUM_IMAGES, NUM_SAMPLES, PAIRS, acquire_readonly, readonly, release_readonly
from .lmdb_tables import LABELS_TABLE
from .validate import normalize_caption


class UnsafeRecordError(pickle.UnpicklingError):
    """A ``pairs`` record that is not a plain ``(image_id, text_id, text)`` tuple."""


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that refuses every global (class, function) and persistent id."""

    def find_class(self, module: str, name: str) -> Any:
        raise UnsafeRecordError(f"refusing to load global {module}.{name} from an LMDB record")

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafeRecordError("refusing a persistent id in an LMDB record")


def _plain(obj: Any) -> bool:
    if type(obj) in (str, int):
        return True
    return type(obj) is tuple and all(_plain(x) for x in obj)


class PairRecord(NamedTuple):
    image_id: int | str
    text_id: int | str
    text: str


def safe_loads_pair(data: bytes) -> PairRecord:
    """Unpickle a ``pairs`` value: ``(image_id, text_id, text)`` of ``int``/``str`` or raise."""
    obj = RestrictedUnpickler(io.BytesIO(bytes(data))).load()
    if not _plain(obj) or len(obj) != 3 or type(obj[2]) is not str:
        raise UnsafeRecordError(f"expected (image_id, text_id, text), got {type(obj).__name__}")
    return PairRecord(*obj)


class LmdbPairDataset(Dataset):
    """One split of a Chinese-CLIP LMDB (``split_dir`` holds ``imgs/`` and ``pairs/``).

    ``dataset[i]`` is ``(transform(image), token_ids)``; :meth:`record`, :meth:`image` and
    :meth:`labels` give the raw caption, the decoded image and the side-table labels.
    """

    def __init__(self, split_dir: str | Path, transform: Callable[[Image.Image], Any] | None = None,
                 tokenizer: Tokenizer | None = None, *, token_cache: int = 4096):
        self.split_dir = Path(split_dir)
        for kind in (IMGS, PAIRS):
            if not (self.split_dir / kind / "data.mdb").is_file():
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
            with readonly(self.split_dir / kind) as env, env.begin() as txn:
                raw = txn.get(key)
            if raw is None:
                raise ValueError(f"{self.split_dir / kind}: no {key.decode()} key (an unfinished build?)")
            out.append(int(raw))
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

    def record(self, index: int) -> PairRecord:
        """The raw ``(image_id, text_id, text)`` of sample ``index``."""
        if not 0 <= index < self.num_samples:
            raise IndexError(index)
        raw = self._txn(PAIRS).get(str(index).encode())
        if raw is None:
            raise KeyError(f"{self.split_dir}: no pair {index}")
        return safe_loads_pair(raw)

    def image_bytes(self, image_id: int | str) -> bytes:
        """The stored (encoded, not base64) bytes of an image."""
        raw = self._txn(IMGS).get(str(image_id).encode())
        if raw is None:
            raise KeyError(f"{self.split_dir}: no image {image_id}")
        return base64.urlsafe_b64decode(bytes(raw))

    def image(self, index: int) -> Image.Image:
        """The decoded RGB image of sample ``index``."""
        return self._decode(self.record(index).image_id)

    def _decode(self, image_id: int | str) -> Image.Image:
        image = Image.open(io.BytesIO(self.image_bytes(image_id)))
        return image if image.mode == "RGB" else image.convert("RGB")

    def _tokenize(self, text: str):
        return self.tokenizer(normalize_caption(text))[0]

    def tokens(self, text: str):
        """Token ids of a caption (normalised as cn_clip does), cached per process."""
        self._txn(PAIRS)
        return self._tokens(text)

    def labels(self, index: int) -> Mapping[str, str]:
        """The side-table row (``image_id``, ``file_name`` and every label) of sample ``index``."""
        if self._labels is None:
            self._labels = read_labels(self.split_dir)
        return self._labels[str(self.record(index).image_id)]

    def __getitem__(self, index: int):
        rec = self.record(index)
        return self.transform(self._decode(rec.image_id)), self.tokens(rec.text)


def read_labels(split_dir: str | Path) -> Mapping[str, Mapping[str, str]]:
    """``labels.csv`` of a split as a read-only mapping ``image_id -> {column: value}``."""
    path = Path(split_dir) / LABELS_TABLE
    with open(path, encoding="utf-8", newline="") as fh:
        return MappingProxyType({row["image_id"]: MappingProxyType(row) for row in csv.DictReader(fh)})
