"""Fundus-appropriate image transforms.

A fundus photograph is a bright circular field of view (FOV) on black. cn_clip squashes every
image to a square (an ellipse for non-square photos) and, for training, flips, inverts and
solarises. Here the FOV is kept round: it is located, centred and scaled into a black square.
Training adds only mild rotation, zoom, shift, brightness, contrast and saturation changes; no
hue shift, which would turn red haemorrhages and yellow exudates into each other's colours.

Speed: the crop, resize, padding and random geometry are one affine resampling (after an
integer box reduction for large downscales), and colour jitter plus normalisation are one pass
over a float array, so a 256-px JPEG becomes a training tensor in about a millisecond.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from PIL import Image

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

FOV_THRESHOLD = 20
"""Pixels whose brightest channel exceeds this (of 255) belong to the field of view."""

_GREY = np.array([0.299, 0.587, 0.114], dtype=np.float32)  # ITU-R 601 luma, as PIL's "L" mode


def fov_bbox(image: Image.Image, threshold: int = FOV_THRESHOLD, probe_size: int = 128) -> tuple[int, int, int, int]:
    """Bounding box ``(left, top, right, bottom)`` of the bright field of view.

    Computed on a strided view of about ``probe_size`` pixels; the whole image when no FOV is found.
    """
    w, h = image.size
    step = max(1, max(w, h) // probe_size)
    arr = np.asarray(image.convert("RGB") if image.mode != "RGB" else image)[::step, ::step]
    mask = arr.max(axis=2) > threshold
    if mask.mean() < 0.05:  # too little to be a field of view: keep everything
        return 0, 0, w, h
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    left, right = cols[0] * step, min(w, (cols[-1] + 1) * step)
    top, bottom = rows[0] * step, min(h, (rows[-1] + 1) * step)
    return int(left), int(top), int(right), int(bottom)


def _fov_square(image: Image.Image) -> tuple[float, float, float, float]:
    left, top, right, bottom = fov_bbox(image)
    side = float(max(right - left, bottom - top))
    return (left + right) / 2, (top + bottom) / 2, side, side


def _whole_square(image: Image.Image) -> tuple[float, float, float, float]:
    w, h = image.size
    return w / 2, h / 2, float(max(w, h)), float(max(w, h))


def _whole_image(image: Image.Image) -> tuple[float, float, float, float]:
    w, h = image.size
    return w / 2, h / 2, float(w), float(h)


PREPROCESS_MODES: dict[str, Callable[[Image.Image], tuple[float, float, float, float]]] = {
    "fov": _fov_square,  # centre the field of view, keep aspect, pad with black (default)
    "pad": _whole_square,  # keep aspect and pad, no crop
    "squash": _whole_image,  # cn_clip's behaviour: stretch the whole image to a square
}
"""Preprocessing mode -> the input region ``(centre x, centre y, width, height)`` to show."""


@dataclass(frozen=True)
class Geometry:
    """Rotation, zoom and shift applied on top of a preprocessing mode."""

    rotation_deg: float = 0.0
    zoom: float = 1.0  # > 1 magnifies
    shift: tuple[float, float] = (0.0, 0.0)  # fraction of the output size


def place(image: Image.Image, size: int, mode: str = "fov", geometry: Geometry = Geometry()) -> Image.Image:
    """Square RGB image of ``size`` showing the mode's input region, in one resampling."""
    image = image if image.mode == "RGB" else image.convert("RGB")
    cx, cy, width, height = PREPROCESS_MODES[mode](image)
    kx, ky = width / (size * geometry.zoom), height / (size * geometry.zoom)  # input px per output px
    factor = int(min(kx, ky))
    if factor >= 2:  # box-reduce first so the bilinear resampling does not alias fine lesions
        image = image.reduce(factor)
        cx, cy, kx, ky = cx / factor, cy / factor, kx / factor, ky / factor
    theta = math.radians(geometry.rotation_deg)
    a, b = kx * math.cos(theta), -kx * math.sin(theta)
    d, e = ky * math.sin(theta), ky * math.cos(theta)
    ox = size / 2 + geometry.shift[0] * size
    oy = size / 2 + geometry.shift[1] * size
    coeffs = (a, b, cx - a * ox - b * oy, d, e, cy - d * ox - e * oy)
    return image.transform((size, size), Image.AFFINE, coeffs, resample=Image.BILINEAR, fillcolor=(0, 0, 0))


def to_normalized_tensor(image: Image.Image, brightness: float = 1.0, contrast: float = 1.0,
                         saturation: float = 1.0) -> torch.Tensor:
    """``[3, H, W]`` float tensor normalised with CLIP's mean/std, after optional colour factors."""
    arr = np.asarray(image, dtype=np.float32)
    if brightness != 1.0:
        arr = arr * brightness
    if contrast != 1.0:
        mean = float((arr @ _GREY).mean())
        arr = (arr - mean) * contrast + mean
    if saturation != 1.0:
        grey = (arr @ _GREY)[..., None]
        arr = (arr - grey) * saturation + grey
    if brightness != 1.0 or contrast != 1.0 or saturation != 1.0:
        arr = np.clip(arr, 0.0, 255.0)
    scale = 1.0 / (255.0 * np.asarray(CLIP_STD, dtype=np.float32))
    offset = -np.asarray(CLIP_MEAN, dtype=np.float32) / np.asarray(CLIP_STD, dtype=np.float32)
    return torch.from_numpy(np.ascontiguousarray((arr * scale + offset).transpose(2, 0, 1)))


class FundusPreprocess:
    """PIL image (any mode) -> square RGB PIL image of ``size`` by a named mode."""

    def __init__(self, size: int, mode: str = "fov"):
        if mode not in PREPROCESS_MODES:
            raise ValueError(f"unknown preprocess mode {mode!r}; choose from {sorted(PREPROCESS_MODES)}")
        self.size, self.mode = size, mode

    def __call__(self, image: Image.Image) -> Image.Image:
        return place(image, self.size, self.mode)

    def __repr__(self) -> str:
        return f"FundusPreprocess(size={self.size}, mode={self.mode!r})"


@dataclass(frozen=True)
class AugmentConfig:
    """Mild, fundus-safe training augmentation (no flips, inversion, solarisation or hue shift)."""

    rotation_deg: float = 10.0
    scale: float = 0.1  # zoom in or out by up to this fraction
    translate: float = 0.03  # shift by up to this fraction of the image size
    brightness: float = 0.2
    contrast: float = 0.2
    saturation: float = 0.1


class EvalTransform(FundusPreprocess):
    """Deterministic: preprocessing, then CLIP normalisation."""

    def __call__(self, image: Image.Image) -> torch.Tensor:  # type: ignore[override]
        return to_normalized_tensor(place(image, self.size, self.mode))

    def __repr__(self) -> str:
        return f"EvalTransform(size={self.size}, mode={self.mode!r})"


class TrainTransform(FundusPreprocess):
    """Preprocessing with random mild geometry and colour, then CLIP normalisation.

    Random draws come from torch's generator, so DataLoader worker seeding applies.
    """

    def __init__(self, size: int, augment: AugmentConfig = AugmentConfig(), mode: str = "fov"):
        super().__init__(size, mode)
        self.augment = augment

    def _uniform(self, spread: float, centre: float = 0.0) -> float:
        return centre + spread * (2 * float(torch.rand(())) - 1) if spread else centre

    def __call__(self, image: Image.Image) -> torch.Tensor:  # type: ignore[override]
        a = self.augment
        geometry = Geometry(self._uniform(a.rotation_deg), self._uniform(a.scale, 1.0),
                            (self._uniform(a.translate), self._uniform(a.translate)))
        return to_normalized_tensor(place(image, self.size, self.mode, geometry),
                                    self._uniform(a.brightness, 1.0), self._uniform(a.contrast, 1.0),
                                    self._uniform(a.saturation, 1.0))

    def __repr__(self) -> str:
        return f"TrainTransform(size={self.size}, mode={self.mode!r}, augment={self.augment})"


def eval_transform(size: int, preprocess: str = "fov") -> EvalTransform:
    """Deterministic transform for evaluation and embedding: PIL image -> normalised tensor."""
    return EvalTransform(size, preprocess)


def train_transform(size: int, augment: AugmentConfig = AugmentConfig(), preprocess: str = "fov") -> TrainTransform:
    """Training transform: PIL image -> normalised tensor with mild random geometry and colour."""
    return TrainTransform(size, augment, preprocess)
