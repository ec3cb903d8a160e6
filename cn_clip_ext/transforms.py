"""Fundus-appropriate image transforms.

A fundus photograph is a bright circular field of view (FOV) on black. cn_clip squashes every
image to a square (an ellipse for non-square photos) and, for training, flips, inverts and
solarises. Here the FOV is kept round: crop to the FOV's bounding box, resize the longest side
and pad to a square with black. Training adds only mild rotation, scale and colour changes.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
from PIL import Image
from torchvision import transforms as T

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

FOV_THRESHOLD = 20
"""Pixels whose brightest channel exceeds this (of 255) belong to the field of view."""


def fov_bbox(image: Image.Image, threshold: int = FOV_THRESHOLD, probe_size: int = 128) -> tuple[int, int, int, int]:
    """Bounding box ``(left, top, right, bottom)`` of the bright field of view.

    Computed on a small copy for speed; the whole image when no FOV is found.
    """
    w, h = image.size
    scale = probe_size / max(w, h)
    probe = image if scale >= 1 else image.resize((max(1, round(w * scale)), max(1, round(h * scale))),
                                                  Image.BILINEAR)
    arr = np.asarray(probe.convert("RGB"))
    mask = arr.max(axis=2) > threshold
    if mask.mean() < 0.05:  # too little to be a field of view: keep everything
        return 0, 0, w, h
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    sx, sy = w / probe.size[0], h / probe.size[1]
    left, right = int(cols[0] * sx), min(w, int(np.ceil((cols[-1] + 1) * sx)))
    top, bottom = int(rows[0] * sy), min(h, int(np.ceil((rows[-1] + 1) * sy)))
    return left, top, right, bottom


def resize_and_pad(image: Image.Image, size: int) -> Image.Image:
    """Resize so the longest side is ``size`` (aspect kept) and centre on a black square."""
    w, h = image.size
    scale = size / max(w, h)
    nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
    resized = image.resize((nw, nh), Image.BICUBIC)
    canvas = Image.new("RGB", (size, size))
    canvas.paste(resized, ((size - nw) // 2, (size - nh) // 2))
    return canvas


def _fov(image: Image.Image, size: int) -> Image.Image:
    return resize_and_pad(image.crop(fov_bbox(image)), size)


def _pad(image: Image.Image, size: int) -> Image.Image:
    return resize_and_pad(image, size)


def _squash(image: Image.Image, size: int) -> Image.Image:
    return image.resize((size, size), Image.BICUBIC)


PREPROCESS_MODES: dict[str, Callable[[Image.Image, int], Image.Image]] = {
    "fov": _fov,  # crop to the field of view, keep aspect, pad (default)
    "pad": _pad,  # keep aspect, pad, no crop
    "squash": _squash,  # cn_clip's behaviour: stretch to a square
}


class FundusPreprocess:
    """PIL image (any mode) -> square RGB PIL image of ``size`` by a named mode."""

    def __init__(self, size: int, mode: str = "fov"):
        if mode not in PREPROCESS_MODES:
            raise ValueError(f"unknown preprocess mode {mode!r}; choose from {sorted(PREPROCESS_MODES)}")
        self.size, self.mode = size, mode
        self._fn = PREPROCESS_MODES[mode]

    def __call__(self, image: Image.Image) -> Image.Image:
        return self._fn(image.convert("RGB"), self.size)

    def __repr__(self) -> str:
        return f"FundusPreprocess(size={self.size}, mode={self.mode!r})"


@dataclass(frozen=True)
class AugmentConfig:
    """Mild, fundus-safe training augmentation (no flips, inversion or solarisation)."""

    rotation_deg: float = 10.0
    scale: float = 0.1  # zoom in or out by up to this fraction
    translate: float = 0.03
    brightness: float = 0.2
    contrast: float = 0.2
    saturation: float = 0.1
    hue: float = 0.02


def _normalize() -> list:
    return [T.ToTensor(), T.Normalize(CLIP_MEAN, CLIP_STD)]


def eval_transform(size: int, preprocess: str = "fov") -> T.Compose:
    """Deterministic transform for evaluation and embedding."""
    return T.Compose([FundusPreprocess(size, preprocess), *_normalize()])


def train_transform(size: int, augment: AugmentConfig = AugmentConfig(), preprocess: str = "fov") -> T.Compose:
    """Training transform: preprocessing, then mild geometric and colour jitter."""
    a = augment
    return T.Compose([
        FundusPreprocess(size, preprocess),
        T.RandomAffine(degrees=a.rotation_deg, translate=(a.translate, a.translate),
                       scale=(1 - a.scale, 1 + a.scale), interpolation=T.InterpolationMode.BILINEAR, fill=0),
        T.ColorJitter(brightness=a.brightness, contrast=a.contrast, saturation=a.saturation, hue=a.hue),
        *_normalize(),
    ])
