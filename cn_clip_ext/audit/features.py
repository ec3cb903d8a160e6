"""One streaming pass over a source: perceptual hashes and embeddings, cached beside the corpus.

Images are decoded, FOV-normalised, hashed and (for the vessel descriptor) encoded in DataLoader
worker processes; rows are written into ``.npy`` memory maps as they come, so memory stays
bounded by the batches in flight whatever the corpus size. The cache folder is
``<cache root>/<content key>/`` with ``hashes.npy`` (``uint8 [N, 64]``), ``valid.npy`` (decoded
or not) and ``emb-<encoder key>.npy`` (``float16 [N, D]``, L2-normalised); each file is written
under a temporary name and renamed when complete.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from ..errors import describe
from .corpus import ImageSource
from .encoders import Encoder
from .hashing import HASH_BYTES, VIEW_SIZE, fov_view, hash_view

logger = logging.getLogger(__name__)

FEATURE_VERSION = 1
"""Bump when hashes or views change, so old caches are not reused."""


@dataclass(frozen=True)
class Features:
    """Per-image features of a source. Query features carry a rotation axis: ``[N, R, ...]``."""

    refs: Sequence[str]
    codes: np.ndarray
    embeddings: np.ndarray | None
    valid: np.ndarray
    skipped: tuple[tuple[str, str], ...] = ()


class _Views(Dataset):
    def __init__(self, source: ImageSource, rotations: Sequence[float], encoder: Encoder | None,
                 want_hashes: bool):
        self.source, self.rotations, self.encoder, self.want_hashes = source, tuple(rotations), encoder, want_hashes

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int):
        try:
            image = self.source.open(index)
            codes, inputs = [], []
            for rot in self.rotations:
                view = fov_view(image, VIEW_SIZE, rot)
                if self.want_hashes:
                    codes.append(hash_view(view))
                if self.encoder is not None:
                    size = self.encoder.view_size
                    inputs.append(self.encoder.prepare(view if size == VIEW_SIZE else fov_view(image, size, rot)))
            return index, (np.stack(codes) if codes else None), inputs, ""
        except Exception as exc:  # noqa: BLE001 - an unreadable image is skipped and reported
            return index, None, None, describe(exc)


def _collate(batch: list) -> list:
    return batch


def extract(source: ImageSource, *, rotations: Sequence[float] = (0.0,), encoder: Encoder | None = None,
            hashes: bool = True, codes_out: np.ndarray | None = None, emb_out: np.ndarray | None = None,
            batch_size: int = 64, workers: int = 2, progress: bool = True, desc: str = "") -> Features:
    """Hash and/or embed every image of ``source`` at each rotation, streaming into the given arrays.

    Without ``codes_out``/``emb_out`` in-memory arrays ``[N, R, ...]`` are made (for small query
    sets); with them (``[N, ...]`` memory maps, one rotation) rows are written in place.
    """
    n, r = len(source), len(rotations)
    if hashes and codes_out is None:
        codes_out = np.zeros((n, r, HASH_BYTES), np.uint8)
    if encoder is not None and emb_out is None:
        emb_out = np.zeros((n, r, encoder.dim), np.float32)
    valid = np.zeros(n, bool)
    skipped: list[tuple[str, str]] = []
    loader = DataLoader(_Views(source, rotations, encoder, hashes), batch_size=batch_size, num_workers=workers,
                        collate_fn=_collate, persistent_workers=False)
    session = encoder.session(workers) if encoder is not None else contextlib.nullcontext()
    with session, tqdm(total=n, desc=desc or f"features {source.name}", unit="img", disable=not progress) as bar:
        for batch in loader:
            good = [(i, c, x) for i, c, x, err in batch if not err]
            for i, _, _, err in batch:
                if err:
                    skipped.append((source.refs[i], err))
                    logger.warning("%s: skipped, unreadable (%s)", source.refs[i], err)
            if good:
                idx = np.array([i for i, _, _ in good])
                valid[idx] = True
                if hashes:
                    codes = np.stack([c for _, c, _ in good])
                    codes_out[idx] = codes if codes_out.ndim == 3 else codes[:, 0]
                if encoder is not None:
                    emb = encoder.encode([x for _, _, xs in good for x in xs]).reshape(len(good), r, -1)
                    emb_out[idx] = emb if emb_out.ndim == 3 else emb[:, 0]
            bar.update(len(batch))
    return Features(list(source.refs), codes_out, emb_out, valid, tuple(skipped))


def _open_npy(path: Path) -> np.ndarray:
    return np.load(path, mmap_mode="r")


def corpus_features(source: ImageSource, encoder: Encoder | None, cache_root: Path | None, *,
                    batch_size: int = 64, workers: int = 2, progress: bool = True) -> Features:
    """Features of a corpus (one rotation), from the cache when its content key matches, else computed.

    With ``cache_root`` ``None`` nothing is cached and the features are held in memory.
    """
    n = len(source)
    if cache_root is None:
        f = extract(source, encoder=encoder, batch_size=batch_size, workers=workers, progress=progress,
                    desc=f"corpus {source.name}")
        return Features(f.refs, f.codes[:, 0], None if f.embeddings is None else f.embeddings[:, 0], f.valid,
                        f.skipped)
    folder = Path(cache_root) / f"v{FEATURE_VERSION}-{source.content_key()}"
    folder.mkdir(parents=True, exist_ok=True)
    hash_file, valid_file = folder / "hashes.npy", folder / "valid.npy"
    emb_file = folder / f"emb-{encoder.key}.npy" if encoder is not None else None
    need_hash = not (hash_file.is_file() and valid_file.is_file())
    need_emb = emb_file is not None and not emb_file.is_file()
    skipped: tuple[tuple[str, str], ...] = ()
    if need_hash or need_emb:
        logger.info("computing %s for %d corpus images into %s", " and ".join(
            w for w, on in (("hashes", need_hash), ("embeddings", need_emb)) if on), n, folder)
        tmp_hash = folder / ".hashes.tmp.npy"
        tmp_emb = folder / f".emb-{encoder.key}.tmp.npy" if need_emb else None
        codes = np.lib.format.open_memmap(tmp_hash, "w+", np.uint8, (n, HASH_BYTES)) if need_hash else None
        emb = np.lib.format.open_memmap(tmp_emb, "w+", np.float16, (n, encoder.dim)) if need_emb else None
        f = extract(source, encoder=encoder if need_emb else None, hashes=need_hash, codes_out=codes,
                    emb_out=emb, batch_size=batch_size, workers=workers, progress=progress,
                    desc=f"corpus {source.name}")
        skipped = f.skipped
        if emb is not None:
            emb.flush()
            del emb
            os.replace(tmp_emb, emb_file)
        if codes is not None:
            codes.flush()
            del codes
            tmp_valid = folder / ".valid.tmp.npy"
            np.save(tmp_valid, f.valid)
            os.replace(tmp_hash, hash_file)
            os.replace(tmp_valid, valid_file)
            (folder / "skipped.json").write_text(json.dumps(list(skipped), ensure_ascii=False), encoding="utf-8")
    else:
        logger.info("reusing cached corpus features in %s", folder)
        skip_file = folder / "skipped.json"
        if skip_file.is_file():
            skipped = tuple(tuple(x) for x in json.loads(skip_file.read_text(encoding="utf-8")))
    codes = _open_npy(hash_file)
    if len(codes) != n:
        raise RuntimeError(f"{hash_file}: {len(codes)} rows for {n} images (a stale cache?)")
    return Features(list(source.refs), codes, _open_npy(emb_file) if emb_file is not None else None,
                    np.load(valid_file), skipped)


__all__ = ["FEATURE_VERSION", "Features", "corpus_features", "extract"]
