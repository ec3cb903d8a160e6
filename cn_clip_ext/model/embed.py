"""Batch embedding of images (a folder or a CSV of paths) or captions (a text file) to ``.npy``.

Outputs in one folder::

    embeddings.npy   float32 [N, D], L2-normalised, row i <-> index.csv row i
    index.csv        row, then the input's columns (CSV), path (folder) or line, text (captions)
    skipped.csv      path, reason: the images that could not be read (always written for images)

Images are decoded in DataLoader worker processes; an unreadable image is skipped and
reported, never fatal.
"""
from __future__ import annotations

import contextlib
import csv
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset
from tqdm import tqdm

from ..errors import UserError, excerpt, first_line, where
from ..layouts import FIVES, REFUGE
from ..files import read_text_lines
from ..outputs import replace_run_outputs
from .inference import Decoded, SplitTransform, decoded, encode_batches
from .protocols import TowerChecked
from .transforms import open_rgb, read_rgb

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".webp", ".ppm")
PATH_COLUMNS = ("path", "image", "image_path", "file", "filename", "img")
EMBEDDINGS_FILE, INDEX_FILE, SKIPPED_FILE = "embeddings.npy", "index.csv", "skipped.csv"


@dataclass(frozen=True)
class ImageItem:
    """One image to embed: where it is and the index-row fields that describe it."""

    path: Path
    fields: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class EmbedResult:
    """What an embedding run wrote."""

    out_dir: Path
    count: int
    dim: int
    skipped: tuple[tuple[str, str], ...] = ()

    @property
    def embeddings(self) -> Path:
        return self.out_dir / EMBEDDINGS_FILE


MASK_FOLDERS = (FIVES.mask_dir, *REFUGE.mask_dir.split("/"))
"""Folders of segmentation masks in the published layouts (FIVES' ``Ground truth``, REFUGE's disc/cup
masks): named like images, but not fundus photographs, so a folder listing leaves them out."""


def _is_mask(rel: Path) -> bool:
    folders = {part.lower() for part in rel.parts[:-1]}
    return any(m.lower() in folders for m in MASK_FOLDERS)


def images_from_folder(folder: str | Path, extensions: Sequence[str] = IMAGE_EXTENSIONS) -> list[ImageItem]:
    """Every image file under ``folder`` (recursive, sorted); the index records its relative path.

    Segmentation masks of the published layouts (:data:`MASK_FOLDERS`) are left out. Anything named
    like an image that is not a folder is listed, a FIFO or device too: reading it is refused with a
    reason (it is reported, never opened)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"{folder}: image folder not found")
    exts = {e.lower() for e in extensions}
    found = sorted(p for p in folder.rglob("*") if p.suffix.lower() in exts and not p.is_dir())
    paths = [p for p in found if not _is_mask(p.relative_to(folder))]
    if len(paths) < len(found):
        logger.info("%s: %d segmentation masks left out (folders %s)", folder, len(found) - len(paths),
                    " / ".join(MASK_FOLDERS))
    if not paths:
        raise UserError(f"{folder}: no image files ({', '.join(sorted(exts))})")
    return [ImageItem(p, {"path": p.relative_to(folder).as_posix()}) for p in paths]


def images_from_csv(csv_path: str | Path, column: str | None = None) -> list[ImageItem]:
    """Rows of a CSV with an image-path column (relative paths are relative to the CSV's folder).

    The column is ``column`` or the first of ``path, image, image_path, file, filename, img``;
    every column of the row is kept for the index.
    """
    csv_path = Path(csv_path)
    try:
        with open(csv_path, newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh, strict=True)  # an unterminated quote is an error, not one huge field
            header = reader.fieldnames or []
            rows = list(reader)
    except FileNotFoundError:
        raise UserError(f"{csv_path}: CSV file not found") from None
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise UserError(f"{csv_path}: not a readable CSV file ({getattr(exc, 'strerror', None) or first_line(exc)})") from None
    if column is None:
        column = next((c for c in PATH_COLUMNS if c in header), None)
        if column is None:
            raise UserError(f"{csv_path}: no image column (one of {list(PATH_COLUMNS)}; or pass --column)")
    elif column not in header:
        raise UserError(f"{csv_path}: missing column {column!r} (it has {excerpt(header, 120)})")
    items = []
    for i, row in enumerate(rows, start=2):  # row 1 is the header
        value = (row.get(column) or "").strip()
        if not value:
            raise UserError(f"{where(csv_path, i)}: empty {column!r}")
        path = Path(value)
        items.append(ImageItem(path if path.is_absolute() else csv_path.parent / path,
                               {k: (v or "") for k, v in row.items() if k is not None}))
    if not items:
        raise UserError(f"{csv_path}: no rows under the header, nothing to embed")
    return items


def captions_from_file(path: str | Path) -> list[tuple[int, str]]:
    """``(line number, caption)`` for every non-blank line of a UTF-8 text file."""
    lines = read_text_lines(path, "captions file")
    captions = [(n, line.strip()) for n, line in enumerate(lines, start=1) if line.strip()]
    if not captions:
        raise UserError(f"{path}: no captions (one per line)")
    return captions


class _ImageFiles(Dataset):
    """Decodes and preprocesses one image per item; failures come back as a reason string."""

    def __init__(self, items: Sequence[ImageItem], transform: Callable):
        self.items, self.split = items, SplitTransform.of(transform)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> Decoded:
        decode = read_rgb if self.split.wants_array else open_rgb
        return decoded(index, lambda: self.split.per_image(decode(self.items[index].path, self.split.min_size)))


EMBED_KIND = "embeddings"
"""The owner-marker kind of a ``vclip-embed`` output folder (its manifest lists the files below)."""
OUTPUT_FILES = (EMBEDDINGS_FILE, INDEX_FILE, SKIPPED_FILE)


def _write_outputs(out: Path, emb: np.ndarray, header: Sequence[str], rows: Sequence[Sequence[object]],
                   skipped: Sequence[tuple[str, str]] | None = None) -> None:
    """Write one run's files; the previous run's (its manifest lists them) are replaced, a
    ``skipped.csv`` of an image run included, and files no manifest lists are never overwritten."""
    with replace_run_outputs(out, EMBED_KIND, OUTPUT_FILES, "embedding folder") as stage:
        with open(stage / EMBEDDINGS_FILE, "wb") as fh:
            np.save(fh, emb)
        _write_csv(stage / INDEX_FILE, header, rows)
        if skipped is not None:
            _write_csv(stage / SKIPPED_FILE, ["path", "reason"], skipped)


def _write_csv(path: Path, header: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(header)
        w.writerows(rows)


@torch.no_grad()
def embed_images(model: torch.nn.Module, transform: Callable, items: Sequence[ImageItem], out_dir: str | Path,
                 batch_size: int = 64, workers: int = 2, progress: bool = True) -> EmbedResult:
    """Embed images with ``model.encode_image``; unreadable ones go to ``skipped.csv``."""
    out = Path(out_dir)
    if isinstance(model, TowerChecked):
        model.require_tower("image")
    files = _ImageFiles(items, transform)
    kept: list[int] = []
    chunks: list[np.ndarray] = []
    skipped: list[tuple[str, str]] = []
    encoded = encode_batches(model, files, files.split, batch_size, workers, next(model.parameters()).device)
    with contextlib.closing(encoded), tqdm(total=len(items), desc="embed images", unit="img",
                                           disable=not progress) as bar:
        for indices, features, bad in encoded:
            if features is not None:
                chunks.append(features.numpy())
                kept += indices
            for i, reason in bad:
                skipped.append((str(items[i].path), reason))
                logger.warning("%s: skipped, unreadable (%s)", items[i].path, reason)
            bar.update(len(indices) + len(bad))
    if not kept:
        raise UserError(f"{skipped[0][0]}: none of the {len(items)} images is readable (this one: "
                        f"{skipped[0][1]}); nothing written")
    dim = int(model.vclip_config.embed_dim)
    emb = np.concatenate(chunks).astype(np.float32)
    keys = list(dict.fromkeys(k for it in items for k in it.fields))
    rows = [[n, *(items[i].fields.get(k, "") for k in keys)] for n, i in enumerate(kept)]
    _write_outputs(out, emb, ["row", *keys], rows, skipped)
    logger.info("embedded %d of %d images into %s (%d skipped)", len(kept), len(items), out, len(skipped))
    return EmbedResult(out, len(kept), dim, tuple(skipped))


@torch.no_grad()
def embed_captions(model: torch.nn.Module, captions: Sequence[tuple[int, str]], out_dir: str | Path,
                   batch_size: int = 256, progress: bool = True) -> EmbedResult:
    """Embed ``(line, caption)`` pairs with ``model.encode_text``."""
    out = Path(out_dir)
    if isinstance(model, TowerChecked):
        model.require_tower("text")
    chunks = []
    for start in tqdm(range(0, len(captions), batch_size), desc="embed captions", unit="batch",
                      disable=not progress):
        texts = [c for _, c in captions[start:start + batch_size]]
        chunks.append(model.encode_text(texts).float().cpu().numpy())
    emb = np.concatenate(chunks).astype(np.float32)
    _write_outputs(out, emb, ["row", "line", "text"], [[n, line, text] for n, (line, text) in enumerate(captions)])
    logger.info("embedded %d captions into %s", len(captions), out)
    return EmbedResult(out, len(captions), int(emb.shape[1]))


__all__ = ["EMBED_KIND", "EMBEDDINGS_FILE", "EmbedResult", "MASK_FOLDERS", "OUTPUT_FILES", "INDEX_FILE", "IMAGE_EXTENSIONS", "ImageItem", "SKIPPED_FILE",
           "captions_from_file", "embed_captions", "embed_images", "images_from_csv", "images_from_folder"]
