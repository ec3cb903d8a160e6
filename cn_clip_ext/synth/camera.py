"""The camera of a synthetic fundus photograph: its look, and how it turns the painted eye into a photograph.

:func:`photograph` blurs slightly (optics), degrades a low-quality photo (blur, dark or haze), applies the camera's
tint and gamma, adds grain and cuts the round field of view on black.
"""
from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType
from typing import Mapping

import numpy as np
from PIL import Image, ImageChops, ImageFilter

from ..layouts import LOW_QUALITY_SCORE
from .canvas import fov_mask, solid


@dataclass(frozen=True)
class Camera:
    """Acquisition look: colour tint (RGB gains), vignetting strength, FOV radius, gamma."""

    tint: tuple[float, float, float] = (1.0, 1.0, 1.0)
    vignette: float = 0.55
    fov_radius: float = 0.96
    """Radius of the round field of view as a fraction of half the image side."""
    gamma: float = 1.0
    grain: float = 0.012


SYNFUNDUS_CAMERA = Camera()
"""The look of the training corpus."""
EXTERNAL_CAMERAS: Mapping[str, Camera] = MappingProxyType({
    "messidor2": Camera(tint=(1.04, 0.9, 0.78), vignette=0.75, fov_radius=0.98, gamma=1.12, grain=0.016),
    "fives": Camera(tint=(0.95, 1.06, 1.1), vignette=0.4, fov_radius=0.93, gamma=0.92, grain=0.008),
    "refuge": Camera(tint=(1.08, 0.95, 0.88), vignette=0.65, fov_radius=0.97, gamma=1.05, grain=0.016),
})
"""Slightly shifted looks for the "external" evaluation sets."""

DEGRADATIONS = ("blur", "dark", "haze")
"""What goes wrong in a low-quality photo (one, drawn at random)."""


def _degrade(pic: Image.Image, rng: np.random.Generator) -> tuple[Image.Image, str, float]:
    """A degraded photo: the picture, which degradation, and the exposure gain."""
    size = pic.size[0]
    degradation = DEGRADATIONS[int(rng.integers(len(DEGRADATIONS)))]
    gain = 1.0
    if degradation == "blur":
        k = float(rng.uniform(5, 9))
        small = pic.resize((max(8, int(size / k)), max(8, int(size / k))), Image.BILINEAR)
        pic = small.filter(ImageFilter.GaussianBlur(0.7)).resize((size, size), Image.BICUBIC)
    elif degradation == "dark":
        gain = float(rng.uniform(0.3, 0.45))
    else:
        pic = Image.blend(pic, solid(size, (150, 140, 130)), float(rng.uniform(0.3, 0.45)))
    return pic, degradation, gain


def photograph(pic: Image.Image, camera: Camera, quality: float, rng: np.random.Generator) -> tuple[Image.Image, str]:
    """The finished photo of the painted ``pic`` and its degradation (``""`` when ``quality`` is not low)."""
    size = pic.size[0]
    pic = pic.filter(ImageFilter.BoxBlur(0.5 * size / 512))
    degradation, gain = "", 1.0
    if quality < LOW_QUALITY_SCORE:
        pic, degradation, gain = _degrade(pic, rng)
    ramp = np.arange(256, dtype=np.float64) / 255
    lut = np.concatenate([np.clip(ramp * (t * gain), 0, 1) ** (1 / camera.gamma) for t in camera.tint])
    pic = pic.point((lut * 255 + 0.5).astype(np.int64).tolist())
    if camera.grain > 0:
        half = (size + 1) // 2
        g = np.clip(128 + rng.standard_normal((half, half)) * (camera.grain * 255), 0, 255).astype(np.uint8)
        gl = Image.fromarray(g).resize((size, size), Image.NEAREST)
        pic = ImageChops.add(pic, Image.merge("RGB", (gl, gl, gl)), 1.0, -128)
    return Image.composite(pic, solid(size, (0, 0, 0)), fov_mask(size, camera.fov_radius)), degradation
