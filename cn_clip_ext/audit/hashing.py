"""Perceptual hashes of the field of view, robust to re-encoding, resizing, cropping, colour and noise.

Procedural (and real) fundus photographs share most of their low-frequency content: a black
surround, a round orange field of view (FOV), a bright disc. Off-the-shelf pHash/dHash of the
whole image therefore put *distinct* fundus images within 0-6 of 64 bits of each other (measured
on generated SynFundus images), closer than a JPEG re-encode of one image to itself. What tells
two fundus photographs apart is their vessel tree (a biometric), so the hashes here are taken on
a vessel-enhanced view:

1. :func:`fov_circle` fits a circle to the FOV boundary (robust to noise in the black surround,
   to padding and to crops that cut into the FOV) and :func:`fov_view` resamples that circle into
   a square with :func:`cn_clip_ext.model.transforms.place`, optionally rotated;
2. :func:`vessel_image` band-passes the green channel (difference of Gaussians), masks the rim
   and normalises the contrast, which removes illumination and colour shifts;
3. :func:`perceptual_hash` concatenates ``imagehash`` pHash (16x16 = 256 bits) and dHash
   (256 bits) of that view into one 512-bit code; the distance is the Hamming distance of the
   codes (0-512).

Rotation by a few degrees moves vessels by several pixels and is handled on the query side:
each evaluation image is hashed at :data:`QUERY_ROTATIONS` and the smallest distance counts.
See :mod:`cn_clip_ext.audit.calibrate` for the measured distances behind :data:`MAX_HASH_DISTANCE`.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageFilter

from ..extras import require
from ..model.transforms import FOV_THRESHOLD, Affine, place

HASH_BITS = 512
"""pHash 256 bits + dHash 256 bits."""
HASH_BYTES = HASH_BITS // 8
MAX_HASH_DISTANCE = 84
"""Default copy threshold (Hamming distance, of 512 bits), chosen by measurement on generated data
(:func:`cn_clip_ext.audit.calibrate.measure`, 120 MESSIDOR-2/FIVES/REFUGE lookalikes against 300
SynFundus images, 256 px): planted copies reached at most 66 (Gaussian noise sigma 6; JPEG q60 54,
combined 51, resize 42, crop 41, rotation 3-5 degrees 37, colour jitter 29); distinct images were at
least 109 apart (50,280 pairs; mean about 203, sd about 27). 84 leaves about 18 bits on each side."""
QUERY_ROTATIONS: tuple[float, ...] = (-6.0, -4.0, -2.0, 0.0, 2.0, 4.0, 6.0)
"""Rotations (degrees) at which evaluation images are hashed and embedded: a copy rotated by up to
7 degrees is at most 1 degree from one of them."""
VIEW_SIZE = 128
"""Side of the FOV view that hashes and the vessel descriptor are computed on."""


def fov_circle(image: Image.Image, probe: int = 128, threshold: int = FOV_THRESHOLD) -> tuple[float, float, float]:
    """``(centre x, centre y, radius)`` of the field of view, in pixels of ``image``.

    A least-squares circle through the FOV boundary points that do not touch the image border, on a
    median-filtered probe of about ``probe`` pixels (so isolated noisy pixels do not count); the
    bounding box when too little boundary is visible, the whole image when there is no FOV.
    """
    image = image if image.mode == "RGB" else image.convert("RGB")
    w, h = image.size
    scale = max(w, h) / probe
    small = image.resize((max(8, round(w / scale)), max(8, round(h / scale))), Image.BOX)
    mask = np.asarray(small.filter(ImageFilter.MedianFilter(3))).max(axis=2) > threshold
    if mask.mean() < 0.05:
        return w / 2, h / 2, max(w, h) / 2
    padded = np.pad(mask, 1)
    interior = (padded[1:-1, 1:-1] & padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2]
                & padded[1:-1, 2:])
    edge = mask & ~interior
    edge[0, :] = edge[-1, :] = edge[:, 0] = edge[:, -1] = False
    ys, xs = np.nonzero(edge)
    if len(xs) >= 12:
        x, y = xs + 0.5, ys + 0.5
        a = np.stack([x, y, np.ones_like(x)], axis=1)
        (c0, c1, c2), *_ = np.linalg.lstsq(a, x * x + y * y, rcond=None)
        cx, cy = c0 / 2, c1 / 2
        r2 = c2 + cx * cx + cy * cy
        if r2 > 0 and np.sqrt(r2) > 0.2 * min(mask.shape):
            return float(cx * scale), float(cy * scale), float(np.sqrt(r2) * scale)
    ys, xs = np.nonzero(mask)
    return (float((xs.min() + xs.max() + 1) / 2 * scale), float((ys.min() + ys.max() + 1) / 2 * scale),
            float(max(np.ptp(xs), np.ptp(ys)) + 1) / 2 * scale)


def fov_view(image: Image.Image, size: int = VIEW_SIZE, rotation: float = 0.0) -> Image.Image:
    """The FOV circle resampled into a ``size`` square (black outside), rotated by ``rotation`` degrees."""
    image = image if image.mode == "RGB" else image.convert("RGB")
    cx, cy, r = fov_circle(image)
    box = (round(cx - r), round(cy - r), round(cx + r), round(cy + r))
    return place(image.crop(box), size, "pad", Affine(rotation_deg=rotation))


def _disc_mask(size: int, radius: float = 0.85) -> np.ndarray:
    yy, xx = np.mgrid[:size, :size]
    c = (size - 1) / 2
    return np.hypot(yy - c, xx - c) < radius * size / 2


def band_pass(grey: Image.Image, low: float, high: float) -> np.ndarray:
    """Difference of Gaussian blurs (radii ``low`` < ``high``) of a single-channel image, float32."""
    return (np.asarray(grey.filter(ImageFilter.GaussianBlur(low)), np.float32)
            - np.asarray(grey.filter(ImageFilter.GaussianBlur(high)), np.float32))


def vessel_image(view: Image.Image) -> Image.Image:
    """Contrast-normalised band-pass of the green channel inside the FOV (grey 128 outside)."""
    arr = band_pass(view.getchannel("G"), 1.0, 6.0)
    mask = _disc_mask(view.size[0])
    arr = np.where(mask, arr, 0.0)
    arr = arr / (float(arr[mask].std()) + 1e-6)
    return Image.fromarray(np.clip(arr * 40.0 + 128.0, 0, 255).astype(np.uint8))


def hash_view(view: Image.Image) -> np.ndarray:
    """The 512-bit code (``uint8[64]``) of a FOV view: pHash 16 then dHash 16 of its vessel image."""
    imagehash = require("imagehash", extra="audit", purpose="perceptual hashing")
    vessels = vessel_image(view)
    bits = np.concatenate([imagehash.phash(vessels, 16).hash.ravel(), imagehash.dhash(vessels, 16).hash.ravel()])
    return np.packbits(bits)


def perceptual_hash(image: Image.Image, rotation: float = 0.0) -> np.ndarray:
    """:func:`hash_view` of :func:`fov_view`."""
    return hash_view(fov_view(image, VIEW_SIZE, rotation))


def hamming(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise Hamming distances ``[len(a), len(b)]`` of packed codes (``uint8[..., 64]``)."""
    a = np.ascontiguousarray(a).view(np.uint64)
    b = np.ascontiguousarray(b).view(np.uint64)
    return np.bitwise_count(a[:, None, :] ^ b[None, :, :]).sum(axis=-1, dtype=np.int32)


@dataclass(frozen=True)
class VesselDescriptor:
    """A weight-free image descriptor: the band-passed green channel at ``grid`` x ``grid``.

    A fixed, generic embedding for the nearest-neighbour level when no trained model is given
    (and in the tests). Measured on generated data: single-alteration copies >= 0.888 cosine to their
    original, distinct images <= 0.813 (see :mod:`cn_clip_ext.audit.calibrate`).
    """

    grid: int = 48
    low: float = 0.8
    high: float = 3.0

    @property
    def dim(self) -> int:
        return self.grid * self.grid

    def __call__(self, view: Image.Image) -> np.ndarray:
        side = 2 * self.grid
        grey = view.getchannel("G")
        if grey.size[0] != side:
            grey = grey.resize((side, side), Image.BOX)
        arr = np.where(_disc_mask(side), band_pass(grey, self.low, self.high), 0.0)
        arr = arr.reshape(self.grid, 2, self.grid, 2).mean(axis=(1, 3)).ravel().astype(np.float32)
        return arr / (float(np.linalg.norm(arr)) + 1e-9)


__all__ = ["HASH_BITS", "HASH_BYTES", "MAX_HASH_DISTANCE", "QUERY_ROTATIONS", "VIEW_SIZE", "VesselDescriptor",
           "band_pass", "fov_circle", "fov_view", "hamming", "hash_view", "perceptual_hash", "vessel_image"]
