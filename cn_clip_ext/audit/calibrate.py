"""Planted copies and threshold calibration: how far a copy is from its original, how close distinct images get.

:data:`COPY_TRANSFORMS` are the alterations a copy may have gone through (re-encoding, resizing,
cropping, small rotations, colour jitter, noise, and a combination). :func:`measure` hashes and
embeds originals, their copies and distinct images the way the audit does (copies against the
rotated queries of their original) and reports, per transform, the largest copy distance and the
smallest copy similarity, beside the smallest distance and largest similarity between distinct
images. A threshold is sound when it lies between the two with a margin on both sides.
"""
from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

import numpy as np
from PIL import Image, ImageEnhance

from .encoders import Encoder
from .hashing import QUERY_ROTATIONS, VIEW_SIZE, fov_view, hamming, hash_view


def _jpeg(image: Image.Image, quality: int) -> Image.Image:
    buf = io.BytesIO()
    image.save(buf, "JPEG", quality=quality)
    with Image.open(io.BytesIO(buf.getvalue())) as img:
        return img.convert("RGB")


def _crop(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    w, h = image.size
    m = [int(rng.uniform(0.0, 0.05) * s) for s in (w, h, w, h)]
    return image.crop((m[0], m[1], w - m[2], h - m[3]))


def _rotate(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    return image.rotate(float(rng.choice([-1, 1]) * rng.uniform(3.0, 5.0)), resample=Image.BILINEAR)


def _colour(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    for enhance in (ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color):
        image = enhance(image).enhance(float(rng.uniform(0.85, 1.15)))
    return image


def _noise(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    arr = np.asarray(image, np.float32) + rng.normal(0.0, 6.0, (image.height, image.width, 3))
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))


def _resize(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    f = float(rng.uniform(0.5, 0.8))
    return image.resize((max(16, round(image.width * f)), max(16, round(image.height * f))), Image.BICUBIC)


def _combined(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    return _jpeg(_colour(_resize(_rotate(_crop(image, rng), rng), rng), rng), 75)


COPY_TRANSFORMS: Mapping[str, Callable[[Image.Image, np.random.Generator], Image.Image]] = {
    "jpeg_q60": lambda im, rng: _jpeg(im, 60),
    "resize_0.5-0.8": _resize,
    "crop_0-5%": _crop,
    "rotate_3-5deg": _rotate,
    "colour_jitter_15%": _colour,
    "noise_sigma6": _noise,
    "combined": _combined,
}
"""Name -> ``(image, rng) -> altered copy``."""


def make_copy(image: Image.Image, transform: str, seed: int = 0) -> Image.Image:
    """An altered copy of ``image`` by a named transform (deterministic for a seed)."""
    return COPY_TRANSFORMS[transform](image.convert("RGB"), np.random.default_rng(seed))


@dataclass(frozen=True)
class Calibration:
    """Measured distances: copies to their originals, and distinct images to their nearest other."""

    copy_max_hash: Mapping[str, int]
    copy_min_cosine: Mapping[str, float]
    distinct_min_hash: int
    distinct_max_cosine: float | None
    n_originals: int
    n_distinct_pairs: int

    def hash_window(self) -> tuple[int, int]:
        """``(largest copy distance, smallest distinct distance)``: a threshold goes between."""
        return max(self.copy_max_hash.values()), self.distinct_min_hash

def _features(images: Sequence[Image.Image], rotations: Sequence[float], encoder: Encoder | None):
    codes = np.stack([np.stack([hash_view(fov_view(im, VIEW_SIZE, r)) for r in rotations]) for im in images])
    emb = None
    if encoder is not None:
        emb = np.stack([encoder.encode([encoder.prepare(fov_view(im, encoder.view_size, r)) for r in rotations])
                        for im in images])
    return codes, emb


def measure(originals: Sequence[Image.Image], others: Sequence[Image.Image], encoder: Encoder | None = None,
            transforms: Sequence[str] = tuple(COPY_TRANSFORMS), rotations: Sequence[float] = QUERY_ROTATIONS,
            seed: int = 0) -> Calibration:
    """Copies of ``originals`` against their originals; ``originals`` against ``others`` and each other."""
    oq, oe = _features(originals, rotations, encoder)  # rotated queries, as the audit uses them
    r0 = int(np.argmin(np.abs(np.asarray(rotations))))
    other_c, other_e = _features(others, (0.0,), encoder)
    pool_c = np.concatenate([oq[:, r0], other_c[:, 0]])
    pool_e = None if encoder is None else np.concatenate([oe[:, r0], other_e[:, 0]])
    n = len(originals)
    d = np.min([hamming(oq[:, r], pool_c) for r in range(len(rotations))], axis=0)
    d[np.arange(n), np.arange(n)] = 10 ** 6
    dmax_cos = None
    if encoder is not None:
        s = np.max([oe[:, r] @ pool_e.T for r in range(len(rotations))], axis=0)
        s[np.arange(n), np.arange(n)] = -2.0
        dmax_cos = float(s.max())
    copy_hash: dict[str, int] = {}
    copy_cos: dict[str, float] = {}
    for t_i, name in enumerate(transforms):
        copies = [make_copy(im, name, seed + 1000 * t_i + i) for i, im in enumerate(originals)]
        cc, ce = _features(copies, (0.0,), encoder)
        copy_hash[name] = int(max(hamming(oq[i], cc[i]).min() for i in range(n)))
        if encoder is not None:
            copy_cos[name] = float(min((oe[i] @ ce[i, 0]).max() for i in range(n)))
    return Calibration(copy_hash, copy_cos, int(d.min()), dmax_cos, n, int(d.size - n))


__all__ = ["COPY_TRANSFORMS", "Calibration", "make_copy", "measure"]
