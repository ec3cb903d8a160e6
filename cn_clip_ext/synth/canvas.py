"""Raster primitives of the fundus renderer: coordinate grids, masks, smooth noise, alpha blending.

The picture is a float32 ``[H, W, 3]`` array in 0..1 while the anatomy is painted, then an 8-bit PIL
image for the vessels, lesions and camera; these helpers serve both stages. Grids and masks are cached
per size and returned read-only.
"""
from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

Array = np.ndarray
Color = tuple[float, float, float]
"""RGB in 0..1."""


@lru_cache(maxsize=8)
def grid(size: int) -> tuple[Array, Array]:
    """Normalised pixel-centre coordinates in [-1, 1] (x, y), float32, read-only."""
    c = (np.arange(size, dtype=np.float32) + 0.5) / size * 2 - 1
    x, y = np.meshgrid(c, c)
    x.setflags(write=False)
    y.setflags(write=False)
    return x, y


@lru_cache(maxsize=16)
def radial(size: int, fov_radius: float) -> Array:
    """Squared distance from the centre in units of the FOV radius, read-only."""
    x, y = grid(size)
    r2 = (x * x + y * y) / np.float32(fov_radius ** 2)
    r2.setflags(write=False)
    return r2


@lru_cache(maxsize=16)
def vignette(size: int, fov_radius: float, strength: float) -> Array:
    """Radial fall-off of illumination, 1 in the centre; read-only."""
    v = 1.0 - strength * radial(size, fov_radius) ** 1.6
    v.setflags(write=False)
    return v


@lru_cache(maxsize=16)
def fov_mask(size: int, fov_radius: float) -> Image.Image:
    """Anti-aliased round field-of-view mask (``L``, 255 inside). Do not modify."""
    rpx = np.sqrt(radial(size, fov_radius)) * (fov_radius * size / 2)
    return Image.fromarray((np.clip(fov_radius * size / 2 - rpx + 0.5, 0, 1) * 255).astype(np.uint8))


@lru_cache(maxsize=64)
def solid(size: int, color: tuple[int, int, int]) -> Image.Image:
    return Image.new("RGB", (size, size), color)


def _scale_lut(strength: float) -> list[int]:
    return [int(v * strength + 0.5) for v in range(256)]


def noise_field(rng: np.random.Generator, size: int, cells: int = 20) -> Array:
    """Smooth two-octave noise (std about 1) at ``size``: coarse + ``cells`` detail, one resize."""
    coarse = rng.standard_normal((5, 5)).astype(np.float32)
    coarse = np.asarray(Image.fromarray(coarse, mode="F").resize((cells, cells), Image.BICUBIC))
    fine = coarse + 0.5 * rng.standard_normal((cells, cells)).astype(np.float32)
    return np.asarray(Image.fromarray(fine, mode="F").resize((size, size), Image.BICUBIC))


def blend(img: Array, alpha: Array, color: Color | Array, region: tuple[slice, slice] | None = None) -> None:
    """In place: ``img = img*(1-alpha) + color*alpha`` (optionally on a sub-window)."""
    target = img if region is None else img[region]
    a = alpha[..., None]
    target *= 1 - a
    target += a * np.asarray(color, dtype=np.float32)


def window(cx: float, cy: float, half: float, size: int) -> tuple[slice, slice]:
    """The ``(rows, columns)`` slices of the square of half-side ``half`` around a point, clipped to the image."""
    x0, x1 = max(0, int(cx - half)), min(size, int(math.ceil(cx + half)) + 1)
    y0, y1 = max(0, int(cy - half)), min(size, int(math.ceil(cy + half)) + 1)
    return slice(y0, y1), slice(x0, x1)


def composite(pic: Image.Image, mask: Image.Image, color: Color, strength: float) -> Image.Image:
    """Paint ``color`` over ``pic`` through ``mask`` scaled by ``strength``."""
    rgb = (int(np.clip(color[0] * 255, 0, 255)), int(np.clip(color[1] * 255, 0, 255)),
           int(np.clip(color[2] * 255, 0, 255)))
    return Image.composite(solid(pic.size[0], rgb), pic, mask.point(_scale_lut(strength)))


def rgb8(color: Color, rng: np.random.Generator, jitter: float = 0.05) -> tuple[int, int, int]:
    """``color`` in 8 bits with one random brightness jitter (which keeps the hue)."""
    j = rng.uniform(-jitter, jitter)
    r, g, b = (int(np.clip((v + j) * 255, 0, 255)) for v in color)
    return r, g, b


class SoftLayer:
    """A half-resolution ``L`` layer drawn in full-size coordinates, blurred when applied."""

    def __init__(self, size: int):
        self.size = size
        self.layer = Image.new("L", ((size + 1) // 2, (size + 1) // 2))
        self._draw = ImageDraw.Draw(self.layer)

    def ellipse(self, cx: float, cy: float, r: float, value: int) -> None:
        h = 0.5
        self._draw.ellipse([(cx - r) * h, (cy - r) * h, (cx + r) * h, (cy + r) * h], fill=value)

    def polygon(self, pts: list[tuple[float, float]], value: int) -> None:
        self._draw.polygon([(px * 0.5, py * 0.5) for px, py in pts], fill=value)

    def line(self, pts: list[tuple[float, float]], value: int, width: float) -> None:
        self._draw.line([(px * 0.5, py * 0.5) for px, py in pts], fill=value, width=max(1, int(width * 0.5)))

    def apply(self, pic: Image.Image, color: Color, blur: float, strength: float = 1.0) -> Image.Image:
        layer = self.layer.filter(ImageFilter.GaussianBlur(blur * 0.5)) if blur > 0 else self.layer
        return composite(pic, layer.resize((self.size, self.size), Image.BILINEAR), color, strength)
