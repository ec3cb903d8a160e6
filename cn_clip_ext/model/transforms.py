"""Fundus-appropriate image transforms.

A fundus photograph is a bright circular field of view (FOV) on black. cn_clip squashes every
image to a square (an ellipse for non-square photos) and, for training, flips, inverts and
solarises. Here the FOV is kept round: it is located, centred and scaled into a black square.
Training adds only mild rotation, zoom, shift, brightness, contrast and saturation changes; no
hue shift, which would turn red haemorrhages and yellow exudates into each other's colours.

Speed: the crop, resize, padding and random geometry are one affine resampling (after an
integer box reduction for large downscales). Training splits the work in two: per sample (in
DataLoader workers) only that geometry, giving a ``uint8`` ``[3, H, W]`` tensor; per batch, on
the training device, :class:`ColorJitterNormalize` applies each sample's brightness, contrast and
saturation as one 3x3 colour matrix plus offset, then CLIP normalisation. Evaluation
(:class:`EvalTransform`) still returns normalised float tensors per image.
"""
from __future__ import annotations

import io
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Callable, Union

import cv2
import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from ..files import check_input_file, max_image_bytes
from .png import png_pixels

cv2.setNumThreads(1)  # one small warp per call, usually in DataLoader workers: a thread pool would only contend

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

FOV_THRESHOLD = 20
"""Pixels whose brightest channel exceeds this (of 255) belong to the field of view."""

_GREY = np.array([0.299, 0.587, 0.114], dtype=np.float32)  # ITU-R 601 luma, as PIL's "L" mode


RGBImage = Union[Image.Image, np.ndarray]
"""A PIL image (any mode) or an ``[H, W, 3]`` ``uint8`` RGB array: what the transforms accept."""


def rgb_array(image: RGBImage) -> np.ndarray:
    """``[H, W, 3]`` ``uint8`` RGB array of ``image`` (an array is returned as it is)."""
    if isinstance(image, np.ndarray):
        return image
    return np.asarray(image if image.mode == "RGB" else image.convert("RGB"))


FOV_PROBE_SIZE = 128
"""The field of view is searched on every ``max(1, longest side // FOV_PROBE_SIZE)``-th pixel."""
FOV_MIN_FRACTION = 0.05
"""A bright area smaller than this share of the probed pixels is no field of view (the whole image is kept)."""


def fov_bbox(image: RGBImage, threshold: int = FOV_THRESHOLD,
             probe_size: int = FOV_PROBE_SIZE) -> tuple[int, int, int, int]:
    """Bounding box ``(left, top, right, bottom)`` of the bright field of view.

    Computed on a strided view of about ``probe_size`` pixels; the whole image when no FOV is found.
    """
    full = rgb_array(image)
    h, w = full.shape[:2]
    step = max(1, max(w, h) // probe_size)
    arr = full[::step, ::step]
    mask = np.maximum(np.maximum(arr[..., 0], arr[..., 1]), arr[..., 2]) > threshold  # max over channels
    if mask.mean() < FOV_MIN_FRACTION:  # too little to be a field of view: keep everything
        return 0, 0, w, h
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    left, right = cols[0] * step, min(w, (cols[-1] + 1) * step)
    top, bottom = rows[0] * step, min(h, (rows[-1] + 1) * step)
    return int(left), int(top), int(right), int(bottom)


def _fov_square(image: np.ndarray) -> tuple[float, float, float, float]:
    left, top, right, bottom = fov_bbox(image)
    side = float(max(right - left, bottom - top))
    return (left + right) / 2, (top + bottom) / 2, side, side


def _whole_square(image: np.ndarray) -> tuple[float, float, float, float]:
    h, w = image.shape[:2]
    return w / 2, h / 2, float(max(w, h)), float(max(w, h))


def _whole_image(image: np.ndarray) -> tuple[float, float, float, float]:
    h, w = image.shape[:2]
    return w / 2, h / 2, float(w), float(h)


PREPROCESS_MODES: dict[str, Callable[[np.ndarray], tuple[float, float, float, float]]] = {
    "fov": _fov_square,  # centre the field of view, keep aspect, pad with black (default)
    "pad": _whole_square,  # keep aspect and pad, no crop
    "squash": _whole_image,  # cn_clip's behaviour: stretch the whole image to a square
}
"""Preprocessing mode -> the input region ``(centre x, centre y, width, height)`` of an RGB array to show."""


@dataclass(frozen=True)
class Affine:
    """Rotation, zoom and shift applied on top of a preprocessing mode."""

    rotation_deg: float = 0.0
    zoom: float = 1.0  # > 1 magnifies
    shift: tuple[float, float] = (0.0, 0.0)  # fraction of the output size


def box_reduce(image: np.ndarray, factor: int) -> np.ndarray:
    """Mean of each ``factor`` x ``factor`` block (pixel ``i`` covers inputs ``i*factor`` up to
    ``(i+1)*factor``); a last partial block is dropped."""
    h, w = image.shape[0] // factor, image.shape[1] // factor
    return cv2.resize(image[:h * factor, :w * factor], (w, h), interpolation=cv2.INTER_AREA)


def place_array(image: RGBImage, size: int, mode: str = "fov", geometry: Affine = Affine()) -> np.ndarray:
    """``[size, size, 3]`` ``uint8`` RGB array showing the mode's input region, in one resampling.

    After an integer box reduction for large shrinks, one bilinear affine warp (OpenCV's, about
    three times PIL's speed) maps the region, rotated, zoomed and shifted by ``geometry``, onto
    the square; outside the input is black. Pixel centres follow PIL's convention.
    """
    arr = rgb_array(image)
    cx, cy, width, height = PREPROCESS_MODES[mode](arr)
    kx, ky = width / (size * geometry.zoom), height / (size * geometry.zoom)  # input px per output px
    factor = int(min(kx, ky))
    if factor >= 2:  # box-reduce first so the bilinear resampling does not alias fine lesions
        arr = box_reduce(arr, factor)
        cx, cy, kx, ky = cx / factor, cy / factor, kx / factor, ky / factor
    theta = math.radians(geometry.rotation_deg)
    a, b = kx * math.cos(theta), -kx * math.sin(theta)
    d, e = ky * math.sin(theta), ky * math.cos(theta)
    ox = size / 2 + geometry.shift[0] * size - 0.5  # output pixel index -> centre, minus the input's half pixel
    oy = size / 2 + geometry.shift[1] * size - 0.5
    matrix = np.array([[a, b, cx - 0.5 - a * ox - b * oy], [d, e, cy - 0.5 - d * ox - e * oy]])
    return cv2.warpAffine(arr, matrix, (size, size), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                          borderMode=cv2.BORDER_CONSTANT, borderValue=(0, 0, 0))


def place(image: RGBImage, size: int, mode: str = "fov", geometry: Affine = Affine()) -> Image.Image:
    """Square RGB image of ``size`` showing the mode's input region (:func:`place_array`)."""
    return Image.fromarray(place_array(image, size, mode, geometry), "RGB")


def _open(fp: str | Path | IO[bytes]) -> tuple[Image.Image, bytes]:
    """PIL's lazy image of a file's bytes, and the bytes (for libspng)."""
    named = isinstance(fp, (str, os.PathLike))
    if named:  # a FIFO or device is refused before it is opened, an oversized file before it is read
        if Path(fp).exists():  # (a missing file stays a FileNotFoundError, as callers report it)
            check_input_file(fp, "image", max_image_bytes())
        data = Path(fp).read_bytes()
    else:
        data = fp.read()
    try:
        return Image.open(io.BytesIO(data)), data
    except UnidentifiedImageError:
        name = fp if named else getattr(fp, "name", None)  # an open file's name, if it has one
        raise UnidentifiedImageError(f"cannot identify image file {str(name or 'in memory')!r}") from None


def _pil_rgb(image: Image.Image, min_size: int | None) -> Image.Image:
    if min_size is not None and image.format == "JPEG":
        image.draft("RGB", (min_size, min_size))
    image.load()
    return image if image.mode == "RGB" else image.convert("RGB")


def open_rgb(fp: str | Path | IO[bytes], min_size: int | None = None) -> Image.Image:
    """Decode an image file as an RGB PIL image. With ``min_size``, JPEGs use libjpeg's DCT scaling
    (1/2, 1/4, 1/8) while both sides stay at least ``min_size``: several times faster, and no
    coarser than the box reduction :func:`place_array` applies before resampling when ``min_size``
    is twice its output. Intact 8-bit RGB PNGs are decoded by libspng (:mod:`cn_clip_ext.model.png`)."""
    img, data = _open(fp)
    with img:
        fast = png_pixels(img, data)
        return Image.fromarray(fast, "RGB") if fast is not None else _pil_rgb(img, min_size)


def read_rgb(fp: str | Path | IO[bytes], min_size: int | None = None) -> np.ndarray:
    """:func:`open_rgb` as an ``[H, W, 3]`` ``uint8`` array, without a PIL copy for libspng's PNGs
    (what the batch encoders feed :func:`place_array`)."""
    img, data = _open(fp)
    with img:
        fast = png_pixels(img, data)
        return fast if fast is not None else np.asarray(_pil_rgb(img, min_size))


def to_uint8_tensor(image: RGBImage) -> torch.Tensor:
    """``[3, H, W]`` ``uint8`` tensor (a channels-first view) of an RGB image or ``[H, W, 3]`` array."""
    arr = image if isinstance(image, np.ndarray) and image.flags.writeable else np.array(image, dtype=np.uint8)
    return torch.from_numpy(arr).permute(2, 0, 1)


def to_normalized_tensor(image: RGBImage) -> torch.Tensor:
    """``[3, H, W]`` float tensor normalised with CLIP's mean/std."""
    arr = np.asarray(image, dtype=np.float32)
    scale = 1.0 / (255.0 * np.asarray(CLIP_STD, dtype=np.float32))
    offset = -np.asarray(CLIP_MEAN, dtype=np.float32) / np.asarray(CLIP_STD, dtype=np.float32)
    return torch.from_numpy(np.ascontiguousarray((arr * scale + offset).transpose(2, 0, 1)))


def accepts_arrays(transform: object) -> bool:
    """Whether ``transform`` takes ``[H, W, 3]`` RGB arrays (from :func:`read_rgb`) as well as PIL images."""
    return isinstance(transform, FundusTransform)


class FundusTransform:
    """What the fundus transforms share: an output square of ``size`` pixels made by a named preprocessing
    ``mode``, from a PIL image or an RGB array. Each subclass defines what its ``__call__`` returns."""

    def __init__(self, size: int, mode: str = "fov"):
        if mode not in PREPROCESS_MODES:
            raise ValueError(f"unknown preprocess mode {mode!r}; choose from {sorted(PREPROCESS_MODES)}")
        self.size, self.mode = size, mode

    def __repr__(self) -> str:
        return f"{type(self).__name__}(size={self.size}, mode={self.mode!r})"


class FundusPreprocess(FundusTransform):
    """PIL image (any mode) or RGB array -> square RGB PIL image of ``size`` by a named mode."""

    def __call__(self, image: RGBImage) -> Image.Image:
        return place(image, self.size, self.mode)


@dataclass(frozen=True)
class AugmentConfig:
    """Mild, fundus-safe training augmentation (no flips, inversion, solarisation or hue shift)."""

    rotation_deg: float = 10.0
    scale: float = 0.1  # zoom in or out by up to this fraction
    translate: float = 0.03  # shift by up to this fraction of the image size
    brightness: float = 0.2
    contrast: float = 0.2
    saturation: float = 0.1


NO_AUGMENT = AugmentConfig(rotation_deg=0.0, scale=0.0, translate=0.0, brightness=0.0, contrast=0.0, saturation=0.0)
"""Training transforms without any random geometry or colour (``vclip-train --no-augment``)."""


class EvalTransform(FundusTransform):
    """Deterministic: preprocessing, then CLIP normalisation.

    ``transform(image)`` is the normalised float tensor. Batched encoders may instead take
    ``transform.pixels(image)`` (the ``uint8`` geometry, a quarter of the bytes between processes)
    and normalise whole batches with ``transform.batch_transform`` (same result).
    """

    def __call__(self, image: RGBImage) -> torch.Tensor:
        return to_normalized_tensor(place_array(image, self.size, self.mode))

    def pixels(self, image: RGBImage) -> torch.Tensor:
        """``uint8`` ``[3, size, size]``: the preprocessing without the normalisation."""
        return to_uint8_tensor(place_array(image, self.size, self.mode))

    @property
    def batch_transform(self) -> "ColorJitterNormalize":
        """CLIP normalisation of a ``uint8`` batch from :meth:`pixels` (no jitter)."""
        return ColorJitterNormalize()


class ColorJitterNormalize:
    """Batch half of :class:`TrainTransform`: ``uint8`` ``[B, 3, H, W]`` (any device) -> CLIP-normalised
    float, each sample with its own brightness, contrast and saturation factor.

    Brightness scales; contrast pulls towards the image's mean grey; saturation towards each
    pixel's grey; then one clip to 0..255. The three factors compose into one 3x3 colour matrix and an offset per sample, so a batch takes one batched matrix
    product, a clamp and the normalisation. Factors are drawn uniformly in ``1 +- spread`` from
    ``generator`` (CPU; torch's global generator when ``None``).
    """

    def __init__(self, brightness: float = 0.0, contrast: float = 0.0, saturation: float = 0.0):
        self.spreads = (float(brightness), float(contrast), float(saturation))

    def draw(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """``[n, 3]`` factors (brightness, contrast, saturation) for ``n`` samples."""
        if not any(self.spreads):
            return torch.ones(n, 3)
        u = torch.rand(n, 3, generator=generator)
        return 1.0 + torch.tensor(self.spreads) * (2.0 * u - 1.0)

    @staticmethod
    def apply(images: torch.Tensor, factors: torch.Tensor | None = None) -> torch.Tensor:
        """Jitter ``images`` (``uint8`` or float in 0..255, ``[B, 3, H, W]``) by ``factors`` ``[B, 3]``
        (``None``: none), then normalise; float32 on the images' device.

        The normalisation is folded into the colour matrix and offset, and the clip to 0..255
        becomes a clamp to each channel's normalised bounds: a conversion, a batched 3x3 product,
        then one in-place add and clamp per channel.
        """
        x = images.to(dtype=torch.float32, copy=True)  # normalised in place below: never the caller's tensor
        dev, n = x.device, x.shape[0]
        scale = [1.0 / (255.0 * sd) for sd in CLIP_STD]
        shift = [-m / sd for m, sd in zip(CLIP_MEAN, CLIP_STD)]
        if factors is None or bool((factors == 1.0).all()):
            for ch in range(3):
                x[:, ch].mul_(scale[ch]).add_(shift[ch])
            return x
        f = factors.to(device=dev, dtype=torch.float32)
        b, c, s = f[:, 0], f[:, 1], f[:, 2]
        grey = torch.as_tensor(_GREY, device=dev)
        mixing = s[:, None, None] * torch.eye(3, device=dev) + (1.0 - s)[:, None, None] * grey.expand(3, 3)
        matrix = torch.tensor(scale, device=dev)[None, :, None] * (c * b)[:, None, None] * mixing  # rows: out
        mean_grey = x.mean(dim=(2, 3)) @ grey
        offset = ((1.0 - c) * b * mean_grey)[:, None] * torch.tensor(scale, device=dev) + torch.tensor(shift, device=dev)
        y = torch.bmm(matrix, x.reshape(n, 3, -1))
        for ch in range(3):
            y[:, ch].add_(offset[:, ch, None]).clamp_(shift[ch], 255.0 * scale[ch] + shift[ch])
        return y.view(images.shape)

    def __call__(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        return self.apply(images, self.draw(images.shape[0], generator))

    def __repr__(self) -> str:
        b, c, s = self.spreads
        return f"ColorJitterNormalize(brightness={b}, contrast={c}, saturation={s})"


class TrainTransform(FundusTransform):
    """Preprocessing with random mild geometry per sample; colour jitter and normalisation per batch.

    ``transform(image)`` is a ``uint8`` ``[3, size, size]`` tensor (the one affine resampling, with a
    random rotation, zoom and shift); ``transform.batch_transform(batch)`` (a
    :class:`ColorJitterNormalize`) turns a collated batch of those, on the training device, into
    CLIP-normalised float with random colour. Geometry draws come from torch's generator, so
    per-item seeding in DataLoader workers applies; colour draws from the generator passed per batch.
    """

    def __init__(self, size: int, augment: AugmentConfig = AugmentConfig(), mode: str = "fov"):
        super().__init__(size, mode)
        self.augment = augment
        self.batch_transform = ColorJitterNormalize(augment.brightness, augment.contrast, augment.saturation)

    def _uniform(self, spread: float, centre: float = 0.0) -> float:
        return centre + spread * (2 * float(torch.rand(())) - 1) if spread else centre

    def __call__(self, image: RGBImage) -> torch.Tensor:
        a = self.augment
        geometry = Affine(self._uniform(a.rotation_deg), self._uniform(a.scale, 1.0),
                            (self._uniform(a.translate), self._uniform(a.translate)))
        return to_uint8_tensor(place_array(image, self.size, self.mode, geometry))

    def __repr__(self) -> str:
        return f"TrainTransform(size={self.size}, mode={self.mode!r}, augment={self.augment})"


PREPROCESSING_FORMAT = "visionclip-preprocessing"

_REGIONS = {
    "fov": "the field of view's bounding box (left, top, right, bottom; see field_of_view); centre "
           "cx = (left + right) / 2, cy = (top + bottom) / 2; a square of side max(right - left, bottom - top) (black padding where it "
           "leaves the image)",
    "pad": "the whole image: centre cx = W / 2, cy = H / 2, a square of side max(W, H) (black padding)",
    "squash": "the whole image: centre cx = W / 2, cy = H / 2, width W, height H (stretched to a square)",
}


def preprocessing_spec(size: int, mode: str = "fov") -> dict:
    """What :func:`eval_transform` does, as data, for servers that are not Python (a bundle's
    ``preprocessing.json``). Following it in plain arithmetic gives the same pixels to within one grey
    level (OpenCV, used here, interpolates in fixed point)."""
    if mode not in PREPROCESS_MODES:
        raise ValueError(f"unknown preprocess mode {mode!r}; choose from {sorted(PREPROCESS_MODES)}")
    spec: dict = {
        "format": PREPROCESSING_FORMAT, "format_version": 1, "mode": mode, "size": size,
        "input": {"channels": "RGB", "dtype": "uint8", "layout": "HWC",
                  "decode": "any decoder; greyscale and palette images are converted to RGB, alpha is dropped"},
        "steps": [
            f"1. Region: {_REGIONS[mode]}.",
            "2. Scale: kx = width / size, ky = height / size (input pixels per output pixel).",
            "3. Box reduction: f = floor(min(kx, ky)); if f >= 2, replace the image by the mean of each f x f block "
            "(rounded to uint8; a last partial row or column of blocks is dropped) and divide cx, cy, kx, ky by f.",
            "4. Resample: output pixel (column i, row j), 0-based, takes the bilinear interpolation of the image at "
            "x = cx + (i + 0.5 - size / 2) * kx - 0.5, y = cy + (j + 0.5 - size / 2) * ky - 0.5, where input "
            "pixel (u, v) has its centre at x = u, y = v and pixels outside the image are black (0); round to uint8.",
            "5. Normalise: value[c] = (pixel[c] / 255 - mean[c]) / std[c], float32, channels first ([3, size, size]); "
            "stack images into [N, 3, size, size] for the image encoder.",
        ],
        "mean": list(CLIP_MEAN), "std": list(CLIP_STD), "scale": 1 / 255,
        "resample": "bilinear", "pixel_centre_offset": 0.5, "outside": [0, 0, 0],
        "output": {"dtype": "float32", "layout": "CHW", "shape": [3, size, size]},
    }
    if mode == "fov":
        spec["field_of_view"] = {
            "threshold": FOV_THRESHOLD, "test": "max(R, G, B) > threshold",
            "probe_size": FOV_PROBE_SIZE, "min_fraction": FOV_MIN_FRACTION,
            "bounding_box": "step = max(1, max(W, H) // probe_size); probe every step-th row and column (starting "
                            "at 0); if fewer than min_fraction of the probed pixels pass the test, the box is the "
                            "whole image (0, 0, W, H); else left = step * (first passing column), right = min(W, "
                            "step * (last passing column + 1)), and top, bottom likewise from the rows",
        }
    return spec


def eval_transform(size: int, preprocess: str = "fov") -> EvalTransform:
    """Deterministic transform for evaluation and embedding: PIL image -> normalised tensor."""
    return EvalTransform(size, preprocess)


def train_transform(size: int, augment: AugmentConfig = AugmentConfig(), preprocess: str = "fov") -> TrainTransform:
    """Training transform: PIL image -> ``uint8`` tensor with mild random geometry; its
    ``batch_transform`` adds random colour and normalises a batch on the device."""
    return TrainTransform(size, augment, preprocess)


def __getattr__(name: str) -> object:
    if name == "Geometry":  # the previous release's name of Affine
        import warnings

        warnings.warn("cn_clip_ext.model.transforms.Geometry is now Affine; the old name goes in the next release",
                      DeprecationWarning, stacklevel=2)
        return Affine
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
