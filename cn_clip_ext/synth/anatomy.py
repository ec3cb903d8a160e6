"""The eye of a synthetic fundus photograph: where the disc, cup and fovea are, and the painted background.

:func:`place_eye` draws the placement and the pigment from the anatomy stream; :func:`paint_anatomy` paints the
background (pigment, texture, vignetting, macula), the tessellation of myopic eyes and the optic disc with its cup
in float32, and returns the 8-bit picture the vessels and lesions are drawn on.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import numpy as np
from PIL import Image

from .camera import Camera
from .canvas import Array, blend, grid, noise_field, radial, vignette, window

DISC_ASPECT = 1.08
"""Vertical over horizontal radius of the optic disc and cup ellipses."""


@dataclass(frozen=True)
class Eye:
    """The placement of one eye in pixels (x right, y down) and its pigment."""

    size: int
    side: int
    """+1: right eye, disc on the image's right; -1: left eye."""
    fov_r: float
    """Radius of the field of view in pixels."""
    disc: tuple[float, float]
    disc_r: float
    fovea: tuple[float, float]
    cdr: float
    """Cup-to-disc ratio."""
    pigment: float
    base: Array
    """Background colour (RGB in 0..1, times ``pigment``)."""

    @property
    def c(self) -> float:
        """The image centre (and half the side) in pixels."""
        return self.size / 2

    @property
    def s(self) -> float:
        """Lengths are given for a 512-px picture and scaled by this."""
        return self.size / 512

    @property
    def cup_r(self) -> float:
        return self.cdr * self.disc_r


@dataclass(frozen=True)
class Anatomy:
    """The painted anatomy: the picture, and where the cup is (vessels dip out of sight into it)."""

    picture: Image.Image
    disc_window: tuple[slice, slice]
    cup_alpha: Array
    """Opacity of the cup over :attr:`disc_window`."""
    cup_offset: float
    """Horizontal shift of the cup's centre from the disc's, in units of half the image side."""


def place_eye(rng: np.random.Generator, labels: Mapping[str, int], size: int, camera: Camera) -> Eye:
    """Disc, fovea, cup and pigment of the eye ``labels`` describe (glaucoma: a large cup)."""
    side = 1 if labels.get("eyes_side", 1) == 1 else -1
    c = size / 2
    disc = (c + side * rng.uniform(0.38, 0.46) * c, c + rng.uniform(-0.07, 0.03) * c)
    disc_r = rng.uniform(0.1, 0.12) * c
    fovea = (c - side * rng.uniform(0.02, 0.08) * c, c + rng.uniform(0.0, 0.06) * c)
    cdr = rng.uniform(0.7, 0.86) if labels.get("is_gc", 0) else rng.uniform(0.25, 0.42)
    pigment = rng.uniform(0.82, 1.05)
    base = np.array([rng.uniform(0.8, 0.92), rng.uniform(0.3, 0.4), rng.uniform(0.1, 0.17)], np.float32) * pigment
    return Eye(size, side, camera.fov_radius * c, disc, disc_r, fovea, cdr, pigment, base)


def _background(rng: np.random.Generator, eye: Eye, camera: Camera) -> Array:
    """Pigment colour, texture, vignetting and the darker macula (float32 ``[H, W, 3]``)."""
    size, c, fovea = eye.size, eye.c, eye.fovea
    x, y = grid(size)
    shade = noise_field(rng, size) * 0.04
    shade += vignette(size, camera.fov_radius, camera.vignette)
    img = shade[..., None] * eye.base
    mreg = window(fovea[0], fovea[1], 0.5 * c, size)
    dfx, dfy = x[mreg] - (fovea[0] / c - 1), y[mreg] - (fovea[1] / c - 1)
    df2 = dfx * dfx + dfy * dfy
    dark = 0.3 * np.exp(-df2 * (1 / (2 * 0.13 ** 2))) + 0.28 * np.exp(-df2 * (1 / (2 * 0.022 ** 2)))
    img[mreg] *= 1 - dark[..., None] * np.array([1.0, 1.15, 1.1], np.float32)
    return img


def _tessellate(img: Array, rng: np.random.Generator, eye: Eye, camera: Camera, myopic: bool) -> None:
    """In place: choroidal vessels showing through (stronger in pathologic myopia)."""
    size, c, fovea = eye.size, eye.c, eye.fovea
    x, y = grid(size)
    theta = np.arctan2(y - (fovea[1] / c - 1), x - (fovea[0] / c - 1))
    warp = noise_field(rng, size, 16)
    near = np.clip(np.hypot(x - (fovea[0] / c - 1), y - (fovea[1] / c - 1)) * 2.5 - 0.25, 0, 1)
    field_ = noise_field(rng, size, 26) + 0.45 * near * np.sin(theta * 15 + warp * 2.5)
    inter = np.clip(np.abs(field_) * 1.4 - 0.35, 0, 1) * np.clip(0.55 + 0.6 * np.sqrt(radial(size, camera.fov_radius)),
                                                                  0, 1)
    strength = 0.45 if myopic else 0.38
    img *= 1 - (strength * inter)[..., None] * np.array([0.75, 1.0, 0.9], np.float32)


def _disc(img: Array, eye: Eye, labels: Mapping[str, int]) -> tuple[tuple[slice, slice], Array, float]:
    """In place: the optic disc with its cup (pale for optic atrophy), peripapillary atrophy in myopia.
    Returns the disc's window, the cup's opacity over it and the cup's offset."""
    size, c, disc, disc_r, cdr, side = eye.size, eye.c, eye.disc, eye.disc_r, eye.cdr, eye.side
    x, y = grid(size)
    dx, dy = disc[0] / c - 1, disc[1] / c - 1
    rx, ry = disc_r / c, disc_r / c * DISC_ASPECT
    region = window(disc[0], disc[1], disc_r * 2.2, size)
    wx, wy = x[region], y[region]
    d = np.sqrt(((wx - dx) / rx) ** 2 + ((wy - dy) / ry) ** 2)
    blend(img, np.clip((1.3 - d) / 0.3, 0, 1) * 0.2, (0.9, 0.58, 0.36), region)
    if labels.get("is_pm", 0):  # temporal crescent of atrophy
        dcr = np.sqrt(((wx - dx + side * 0.42 * rx) / (rx * 1.5)) ** 2 + ((wy - dy) / (ry * 1.12)) ** 2)
        blend(img, np.clip((1 - dcr) / 0.08, 0, 1) * 0.85, (0.95, 0.84, 0.66), region)
    a_disc = np.clip((1 - d) / 0.1, 0, 1)
    disc_col = (0.97, 0.9, 0.78) if labels.get("is_aon", 0) else (0.96, 0.66, 0.4)
    blend(img, a_disc, disc_col, region)
    cup_off = -side * 0.1 * rx * (1 - cdr)
    dc = np.sqrt(((wx - dx - cup_off) / (rx * cdr)) ** 2 + ((wy - dy) / (ry * cdr)) ** 2)
    a_cup = np.clip((1 - dc) / 0.18, 0, 1)
    blend(img, a_cup * 0.95, (1.0, 0.93, 0.8), region)
    return region, a_cup, cup_off


def paint_anatomy(rng: np.random.Generator, eye: Eye, labels: Mapping[str, int], camera: Camera) -> Anatomy:
    """Background, tessellation (``is_tessellated``, ``is_pm``) and disc, as an 8-bit RGB picture."""
    img = _background(rng, eye, camera)
    if labels.get("is_tessellated", 0) or labels.get("is_pm", 0):
        _tessellate(img, rng, eye, camera, bool(labels.get("is_pm", 0)))
    region, a_cup, cup_off = _disc(img, eye, labels)
    img *= 255
    np.clip(img, 0, 255, out=img)
    return Anatomy(Image.fromarray(img.astype(np.uint8)), region, a_cup, cup_off)
