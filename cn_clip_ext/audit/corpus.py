"""Image sources the audit streams through: an LMDB build (one or more splits), a folder, a CSV, an EvalSet.

Every source has ``len``, a string reference per image (how reports and ``exclude.txt`` name it),
``open(i)`` (a decoded RGB image, safe in DataLoader workers) and a ``content_key`` that changes
when the images do, so cached hashes and embeddings are reused only for the same content.
"""
from __future__ import annotations

import base64
import hashlib
import io
import json
import os
from pathlib import Path
from typing import Sequence

from PIL import Image

from ..lmdb.store import IMGS, NUM_IMAGES, open_readonly
from ..model.embed import ImageItem, images_from_csv, images_from_folder
from ..errors import UserError
from ..model.transforms import open_rgb
from ..evaluation.datasets import EvalSet

LMDB_SPLITS = ("train", "valid", "test")


def _rgb(image: Image.Image) -> Image.Image:
    """A decoded RGB copy (safe after the file is closed)."""
    return image.convert("RGB")


class ImageSource:
    """Base class: ``len(source)``, ``source.refs[i]``, ``source.open(i)``, ``source.content_key()``."""

    name: str = "images"
    refs: Sequence[str] = ()

    def __len__(self) -> int:
        return len(self.refs)

    def open(self, index: int) -> Image.Image:
        raise NotImplementedError

    def content_key(self) -> str:
        raise NotImplementedError

    location: Path | None = None
    """The folder that holds the user's corpus (an LMDB build or split, an image folder); the audit
    never writes a cache inside it."""


class LmdbSplitSource(ImageSource):
    """The ``imgs`` database of one split of a ``vclip-build-lmdb`` output; refs are ``split/image_id``."""

    def __init__(self, split_dir: str | Path):
        self.split_dir = Path(split_dir)
        self.name = self.split_dir.name
        self.location = self.split_dir
        db = self.split_dir / IMGS
        if not (db / "data.mdb").is_file():
            raise UserError(f"{db}: no LMDB database")
        env = open_readonly(db)
        try:
            with env.begin() as txn:
                self._ids = [bytes(k).decode() for k, _ in txn.cursor() if k != NUM_IMAGES]
        finally:
            env.close()
        self.refs = [f"{self.name}/{i}" for i in self._ids]
        self._env = None
        self._pid: int | None = None

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_env": None, "_pid": None}

    def open(self, index: int) -> Image.Image:
        if self._pid != os.getpid():
            self._env, self._pid = open_readonly(self.split_dir / IMGS), os.getpid()
        with self._env.begin() as txn:
            raw = txn.get(self._ids[index].encode())
        with Image.open(io.BytesIO(base64.urlsafe_b64decode(bytes(raw)))) as img:
            return _rgb(img)

    def content_key(self) -> str:
        stat = (self.split_dir / IMGS / "data.mdb").stat()
        return _digest({"kind": "lmdb", "path": str(self.split_dir.resolve()), "n": len(self._ids),
                        "size": stat.st_size, "mtime": stat.st_mtime_ns})



class FileSource(ImageSource):
    """Image files (from a folder or a CSV); refs are the paths as listed (relative to ``root``)."""

    def __init__(self, items: Sequence[ImageItem], root: Path, name: str, location: Path | None = None):
        self.items, self.root, self.name, self.location = list(items), root, name, location
        self.refs = [_relative(it.path, root) for it in self.items]

    def open(self, index: int) -> Image.Image:
        return open_rgb(self.items[index].path)  # a FIFO, device, empty or oversized file: refused unopened

    def content_key(self) -> str:
        h = hashlib.sha256()
        for it in self.items:
            try:
                st = it.path.stat()
                h.update(f"{it.path}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
            except OSError:
                h.update(f"{it.path}\0missing\n".encode())
        return h.hexdigest()[:20]



class EvalSetSource(ImageSource):
    """An evaluation set (any ``vclip-eval`` dataset adapter); refs are ``EvalSet.images``."""

    def __init__(self, eval_set: EvalSet):
        self.eval_set, self.name, self.refs = eval_set, eval_set.name, list(eval_set.images)

    def open(self, index: int) -> Image.Image:
        return _rgb(self.eval_set.load(index))

    def content_key(self) -> str:
        return _digest({"kind": "eval", "name": self.name, "refs": self.refs})


class ConcatSource(ImageSource):
    """Several sources one after the other (the splits of an LMDB build)."""

    def __init__(self, parts: Sequence[ImageSource], name: str, location: Path | None = None):
        self.parts, self.name, self.location = list(parts), name, location
        self.refs = [r for p in self.parts for r in p.refs]
        self._starts = []
        start = 0
        for p in self.parts:
            self._starts.append(start)
            start += len(p)

    def _locate(self, index: int) -> tuple[ImageSource, int]:
        for part, start in zip(reversed(self.parts), reversed(self._starts)):
            if index >= start:
                return part, index - start
        raise IndexError(index)

    def open(self, index: int) -> Image.Image:
        part, i = self._locate(index)
        return part.open(i)

    def content_key(self) -> str:
        return _digest({"kind": "concat", "parts": [p.content_key() for p in self.parts]})



def _relative(path: Path, root: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return str(path)


def _digest(obj: object) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:20]


def open_corpus(path: str | Path, splits: Sequence[str] | None = None, column: str | None = None) -> ImageSource:
    """A training corpus: an LMDB split folder, an LMDB build folder, an image folder or a CSV of paths.

    For an LMDB build every split present is audited unless ``splits`` names some.
    """
    source = _open_corpus(Path(path), splits, column)
    if len(source) == 0:
        raise UserError(f"{path}: the corpus holds 0 images (an empty LMDB?); nothing to audit")
    return source


def _open_corpus(path: Path, splits: Sequence[str] | None, column: str | None) -> ImageSource:
    if path.is_file() and path.suffix.lower() == ".csv":
        items = images_from_csv(path, column)
        return FileSource(items, path.parent, path.stem)
    if not path.is_dir():
        raise UserError(f"{path}: corpus not found (an LMDB build, an LMDB split, an image folder or a .csv)")
    if (path / IMGS / "data.mdb").is_file():
        return LmdbSplitSource(path)
    present = [s for s in LMDB_SPLITS if (path / s / IMGS / "data.mdb").is_file()]
    if present:
        wanted = list(splits) if splits else present
        missing = [s for s in wanted if s not in present]
        if missing:
            raise UserError(f"{path}: no LMDB split {missing[0]!r} (it has {present})")
        return ConcatSource([LmdbSplitSource(path / s) for s in wanted], path.name, path)
    items = images_from_folder(path)
    return FileSource(items, path, path.name, path)


__all__ = ["ConcatSource", "EvalSetSource", "FileSource", "ImageSource", "LmdbSplitSource", "open_corpus"]
