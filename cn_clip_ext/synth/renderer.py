"""Procedural colour fundus photographs whose visible signs follow a SynFundus label row.

The picture is composed in float32 numpy (background, vignetting, macula, disc, vessels, soft
lesions) and PIL ``ImageDraw`` (small sharp lesions), then blurred slightly, tinted by a
:class:`Camera` and cut to a round field of view on black. All randomness comes from the
generator passed in; the anatomy (background, disc, vessels) is drawn from a child stream
separate from the lesions, so the same seed with different labels gives the same eye.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import lru_cache
from types import MappingProxyType
from typing import Mapping

import numpy as np
from PIL import Image, ImageChops, ImageDraw, ImageFilter

from ..layouts import LOW_QUALITY_SCORE

Array = np.ndarray

DISC_ASPECT = 1.08
"""Vertical over horizontal radius of the optic disc and cup ellipses."""


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


@dataclass(frozen=True)
class Geometry:
    """Where the anatomy and lesions ended up, in pixels (x right, y down).

    Disc and cup are ellipses with horizontal radius ``*_radius`` and vertical radius
    ``DISC_ASPECT`` times that.
    """

    size: int
    fov_radius: float
    disc_center: tuple[float, float]
    disc_radius: float
    cup_radius: float
    cup_center: tuple[float, float]
    fovea: tuple[float, float]
    lesions: Mapping[str, int] = field(default_factory=lambda: MappingProxyType({}))
    """Lesion kind -> how many were drawn."""
    degradation: str = ""
    """``""``, ``"blur"``, ``"dark"`` or ``"haze"``."""

    @property
    def cup_to_disc(self) -> float:
        return self.cup_radius / self.disc_radius


@dataclass(frozen=True)
class Rendered:
    image: Image.Image
    geometry: Geometry
    vessel_mask: Image.Image | None = None


# colours (RGB in 0..1)
_VEIN = (0.42, 0.06, 0.06)
_ARTERY = (0.66, 0.14, 0.09)
_HAEM = (0.46, 0.04, 0.03)
_EXUDATE = (1.0, 0.9, 0.42)
_DRUSEN = (0.98, 0.86, 0.5)
_COTTON = (0.96, 0.93, 0.84)
_PALE = (0.98, 0.92, 0.78)


@lru_cache(maxsize=8)
def _grid(size: int) -> tuple[Array, Array]:
    """Normalised pixel-centre coordinates in [-1, 1] (x, y), float32, read-only."""
    c = (np.arange(size, dtype=np.float32) + 0.5) / size * 2 - 1
    x, y = np.meshgrid(c, c)
    x.setflags(write=False)
    y.setflags(write=False)
    return x, y


@lru_cache(maxsize=16)
def _radial(size: int, fov_radius: float) -> Array:
    """Squared distance from the centre in units of the FOV radius, read-only."""
    x, y = _grid(size)
    r2 = (x * x + y * y) / np.float32(fov_radius ** 2)
    r2.setflags(write=False)
    return r2


@lru_cache(maxsize=16)
def _vignette(size: int, fov_radius: float, strength: float) -> Array:
    """Radial fall-off of illumination, 1 in the centre; read-only."""
    v = 1.0 - strength * _radial(size, fov_radius) ** 1.6
    v.setflags(write=False)
    return v


@lru_cache(maxsize=16)
def _fov_mask(size: int, fov_radius: float) -> Image.Image:
    """Anti-aliased round field-of-view mask (``L``, 255 inside). Do not modify."""
    rpx = np.sqrt(_radial(size, fov_radius)) * (fov_radius * size / 2)
    return Image.fromarray((np.clip(fov_radius * size / 2 - rpx + 0.5, 0, 1) * 255).astype(np.uint8))


@lru_cache(maxsize=64)
def _solid(size: int, color: tuple[int, int, int]) -> Image.Image:
    return Image.new("RGB", (size, size), color)


def _scale_lut(strength: float) -> list[int]:
    return [int(v * strength + 0.5) for v in range(256)]


def _noise_field(rng: np.random.Generator, size: int, cells: int = 20) -> Array:
    """Smooth two-octave noise (std about 1) at ``size``: coarse + ``cells`` detail, one resize."""
    coarse = rng.standard_normal((5, 5)).astype(np.float32)
    coarse = np.asarray(Image.fromarray(coarse, mode="F").resize((cells, cells), Image.BICUBIC))
    fine = coarse + 0.5 * rng.standard_normal((cells, cells)).astype(np.float32)
    return np.asarray(Image.fromarray(fine, mode="F").resize((size, size), Image.BICUBIC))


def _blend(img: Array, alpha: Array, color: tuple[float, float, float] | Array,
           region: tuple[slice, slice] | None = None) -> None:
    """In place: ``img = img*(1-alpha) + color*alpha`` (optionally on a sub-window)."""
    target = img if region is None else img[region]
    a = alpha[..., None]
    target *= 1 - a
    target += a * np.asarray(color, dtype=np.float32)


def _window(cx: float, cy: float, half: float, size: int) -> tuple[slice, slice]:
    x0, x1 = max(0, int(cx - half)), min(size, int(math.ceil(cx + half)) + 1)
    y0, y1 = max(0, int(cy - half)), min(size, int(math.ceil(cy + half)) + 1)
    return slice(y0, y1), slice(x0, x1)


def _composite(pic: Image.Image, mask: Image.Image, color: tuple[float, float, float], strength: float) -> Image.Image:
    """Paint ``color`` over ``pic`` through ``mask`` scaled by ``strength``."""
    rgb = tuple(int(np.clip(v * 255, 0, 255)) for v in color)
    return Image.composite(_solid(pic.size[0], rgb), pic, mask.point(_scale_lut(strength)))  # type: ignore[arg-type]


class _SoftLayer:
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

    def apply(self, pic: Image.Image, color: tuple[float, float, float], blur: float,
              strength: float = 1.0) -> Image.Image:
        layer = self.layer.filter(ImageFilter.GaussianBlur(blur * 0.5)) if blur > 0 else self.layer
        return _composite(pic, layer.resize((self.size, self.size), Image.BILINEAR), color, strength)


# --------------------------------------------------------------------------- vessels


@dataclass
class _Vessel:
    points: list[tuple[float, float]]
    widths: list[float]
    vein: bool
    depth: int


def _grow(rng: np.random.Generator, start: tuple[float, float], heading: float, width: float,
          length: int, step: float, turn: float, turn_until: float | None, vein: bool, depth: int,
          out: list[_Vessel], max_depth: int, tortuosity: float) -> None:
    """Random-walk a vessel from ``start``; branches recurse into ``out``."""
    x, y = start
    pts, ws = [(x, y)], [width]
    w = width
    jitter = rng.normal(0, 0.08 * tortuosity, length).tolist()
    branch = (rng.random(length) < 0.1).tolist() if depth < max_depth else [False] * length
    for i in range(length):
        if turn_until is not None and abs(_angle_diff(turn_until, heading)) > 0.15:
            heading += turn
        heading += jitter[i]
        x += step * math.cos(heading)
        y += step * math.sin(heading)
        w = max(0.6, w * 0.985)
        pts.append((x, y))
        ws.append(w)
        if branch[i] and i > 1:
            side = 1 if rng.random() < 0.5 else -1
            child_heading = heading + side * rng.uniform(0.45, 1.1)
            _grow(rng, (x, y), child_heading, w * rng.uniform(0.55, 0.75), int(length * rng.uniform(0.3, 0.6)) + 2,
                  step * 0.85, side * rng.uniform(0, 0.04), None, vein, depth + 1, out, max_depth, tortuosity)
            w *= 0.9
    out.append(_Vessel(pts, ws, vein, depth))


def _angle_diff(a: float, b: float) -> float:
    return (a - b + math.pi) % (2 * math.pi) - math.pi


def _vessel_tree(rng: np.random.Generator, disc: tuple[float, float], disc_r: float, side: int,
                 size: int, htr: bool) -> list[_Vessel]:
    """Four arcades (supero/infero temporal and nasal), veins and arteries for each."""
    s = size / 512
    temporal = math.pi if side > 0 else 0.0  # image direction from disc toward the macula
    out: list[_Vessel] = []
    for vein in (True, False):
        for vertical in (-1, 1):  # up, down
            base_w = (6.5 if vein else 4.8) * s * (0.6 if htr and not vein else 1.0)
            offset = rng.uniform(0.05, 0.3) * disc_r * (1 if vein else -1)
            start = (disc[0] + offset * -side, disc[1] + vertical * rng.uniform(0.15, 0.4) * disc_r)
            # temporal arcade: leaves vertically, bends round the macula towards temporal
            h0 = vertical * (math.pi / 2 + side * rng.uniform(0.0, 0.3))
            target = temporal - rng.uniform(0.2, 0.45) * vertical * side
            turn = rng.uniform(0.06, 0.085) * vertical * side
            _grow(rng, start, h0, base_w, int(rng.integers(26, 34)), 9.0 * s, turn, target, vein, 0,
                  out, 3, 1.0)
            # nasal branch: shorter, straighter, towards the nasal edge
            h1 = math.atan2(vertical * rng.uniform(0.8, 1.4), side * 1.0)
            _grow(rng, start, h1, base_w * 0.75, int(rng.integers(14, 20)), 9.0 * s, 0.0, None, vein, 1,
                  out, 3, 1.2)
    # small vessels towards the macula from the disc's temporal edge
    for _ in range(int(rng.integers(2, 4))):
        vein = bool(rng.random() < 0.5)
        start = (disc[0] - side * rng.uniform(0.3, 0.9) * disc_r, disc[1] + rng.uniform(-0.6, 0.6) * disc_r)
        _grow(rng, start, temporal + rng.uniform(-0.6, 0.6), 1.8 * s, int(rng.integers(6, 12)), 8.0 * s,
              0.0, None, vein, 2, out, 3, 2.5)
    return out


def _draw_vessels(draw: ImageDraw.ImageDraw, vessels: list[_Vessel], veins: bool,
                  fill: tuple[int, int, int] | int, chunk: int = 4) -> None:
    """Draw veins or arteries as polylines, in chunks of ``chunk`` segments of one width."""
    for v in vessels:
        if v.vein != veins:
            continue
        pts = v.points
        for i in range(0, len(pts) - 1, chunk):
            w = max(1, int(round(v.widths[i])))
            draw.line(pts[i:i + chunk + 1], fill=fill, width=w, joint="curve" if w >= 3 else None)


# --------------------------------------------------------------------------- lesion shapes


def _blob_points(cx: float, cy: float, r: float, rng: np.random.Generator, irregular: float = 0.2,
                 n: int = 12) -> list[tuple[float, float]]:
    """Vertices of an irregular roundish polygon of mean radius ``r``."""
    ang = np.linspace(0, 2 * np.pi, n, endpoint=False) + rng.uniform(0, 2 * np.pi)
    rad = r * (1 + irregular * rng.uniform(-1, 1, n))
    return list(zip((cx + rad * np.cos(ang)).tolist(), (cy + rad * np.sin(ang)).tolist()))


def _blob(draw: ImageDraw.ImageDraw, cx: float, cy: float, r: float, fill: tuple[int, int, int],
          rng: np.random.Generator, irregular: float = 0.2, n: int = 12) -> None:
    if r < 2.2:
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
    else:
        draw.polygon(_blob_points(cx, cy, r, rng, irregular, n), fill=fill)


def _dot(draw: ImageDraw.ImageDraw, cx: float, cy: float, r: float, fill: tuple[int, int, int]) -> None:
    draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)


def _flame(draw: ImageDraw.ImageDraw, cx: float, cy: float, length: float, width: float, angle: float,
           fill: tuple[int, int, int]) -> None:
    """A thin elongated ellipse (flame/splinter haemorrhage) along ``angle``."""
    t = np.linspace(0, 2 * np.pi, 14, endpoint=False)
    ex, ey = length / 2 * np.cos(t), width / 2 * np.sin(t) * (1 + 0.3 * np.cos(t))
    ca, sa = math.cos(angle), math.sin(angle)
    draw.polygon(list(zip((cx + ex * ca - ey * sa).tolist(), (cy + ex * sa + ey * ca).tolist())), fill=fill)


def _rgb8(color: tuple[float, float, float], rng: np.random.Generator, jitter: float = 0.05) -> tuple[int, int, int]:
    j = rng.uniform(-jitter, jitter)  # one brightness jitter keeps the hue
    return tuple(int(np.clip((v + j) * 255, 0, 255)) for v in color)  # type: ignore[return-value]


def _posterior_point(rng: np.random.Generator, fovea: tuple[float, float], spread: float,
                     c: float, fov_r: float) -> tuple[float, float]:
    """A point near the posterior pole (normal around the fovea), kept inside the FOV."""
    for _ in range(8):
        px, py = fovea[0] + rng.normal(0, spread), fovea[1] + rng.normal(0, spread * 0.8)
        if (px - c) ** 2 + (py - c) ** 2 < (0.88 * fov_r) ** 2:
            return px, py
    return fovea


def _ring_point(rng: np.random.Generator, center: tuple[float, float], r0: float, r1: float) -> tuple[float, float]:
    a, r = rng.uniform(0, 2 * np.pi), rng.uniform(r0, r1)
    return center[0] + r * math.cos(a), center[1] + r * math.sin(a)


# DR grade -> (microaneurysms, blot haemorrhages, exudate clusters) before random extras
_DR_LESIONS = ((0, 0, 0), (8, 1, 0), (16, 9, 3), (28, 22, 5), (30, 26, 5))


# --------------------------------------------------------------------------- the renderer


def render_fundus(labels: Mapping[str, object], rng: np.random.Generator, size: int = 512,
                  camera: Camera = SYNFUNDUS_CAMERA, vessel_mask: bool = False) -> Rendered:
    """Render one RGB fundus photo (``size`` square) whose signs follow ``labels``.

    ``labels`` needs ``eyes_side``, ``dr_grade``, the :data:`~.schema.FINDINGS` flags and
    ``retinal_region_quality_score``; missing flags count as 0. Three child streams are spawned
    from ``rng`` (anatomy, lesions, finish), so the same ``rng`` seed with other labels gives
    the same eye. Returns the image, its :class:`Geometry` and, with ``vessel_mask``, a binary
    ``L`` mask of the vessels (255 = vessel).
    """
    if size < 32:
        raise ValueError(f"image size must be at least 32 pixels, got {size}")
    ar, lr, fr = rng.spawn(3)
    lab = {k: int(v) for k, v in labels.items()  # type: ignore[call-overload]
           if k not in ("retinal_region_quality_score", "diagnosticAdvice", "file_md5", "file_name")}
    quality = float(labels.get("retinal_region_quality_score", 1.0))  # type: ignore[arg-type]
    side = 1 if lab.get("eyes_side", 1) == 1 else -1  # +1: right eye, disc on the image's right
    s = size / 512
    c = size / 2
    fov_r = camera.fov_radius * c
    x, y = _grid(size)
    grade = lab.get("dr_grade", 0)

    # ---- anatomy placement (pixels)
    disc = (c + side * ar.uniform(0.38, 0.46) * c, c + ar.uniform(-0.07, 0.03) * c)
    disc_r = ar.uniform(0.1, 0.12) * c
    fovea = (c - side * ar.uniform(0.02, 0.08) * c, c + ar.uniform(0.0, 0.06) * c)
    cdr = ar.uniform(0.7, 0.86) if lab.get("is_gc", 0) else ar.uniform(0.25, 0.42)
    cup_r = cdr * disc_r

    # ---- background: pigment colour, texture, vignetting, macula (float32 numpy)
    pigment = ar.uniform(0.82, 1.05)
    base = np.array([ar.uniform(0.8, 0.92), ar.uniform(0.3, 0.4), ar.uniform(0.1, 0.17)], np.float32) * pigment
    rn2 = _radial(size, camera.fov_radius)
    shade = _noise_field(ar, size) * 0.04
    shade += _vignette(size, camera.fov_radius, camera.vignette)
    img = shade[..., None] * base
    mreg = _window(fovea[0], fovea[1], 0.5 * c, size)
    dfx, dfy = x[mreg] - (fovea[0] / c - 1), y[mreg] - (fovea[1] / c - 1)
    df2 = dfx * dfx + dfy * dfy
    dark = 0.3 * np.exp(-df2 * (1 / (2 * 0.13 ** 2))) + 0.28 * np.exp(-df2 * (1 / (2 * 0.022 ** 2)))
    img[mreg] *= 1 - dark[..., None] * np.array([1.0, 1.15, 1.1], np.float32)

    # ---- tessellation: choroidal vessels showing through (stronger in pathologic myopia)
    if lab.get("is_tessellated", 0) or lab.get("is_pm", 0):
        theta = np.arctan2(y - (fovea[1] / c - 1), x - (fovea[0] / c - 1))
        warp = _noise_field(ar, size, 16)
        near = np.clip(np.hypot(x - (fovea[0] / c - 1), y - (fovea[1] / c - 1)) * 2.5 - 0.25, 0, 1)
        field_ = _noise_field(ar, size, 26) + 0.45 * near * np.sin(theta * 15 + warp * 2.5)
        inter = np.clip(np.abs(field_) * 1.4 - 0.35, 0, 1) * np.clip(0.55 + 0.6 * np.sqrt(rn2), 0, 1)
        strength = 0.45 if lab.get("is_pm", 0) else 0.38
        img *= 1 - (strength * inter)[..., None] * np.array([0.75, 1.0, 0.9], np.float32)

    # ---- optic disc with cup (pale disc for optic atrophy), peripapillary atrophy in myopia
    dx, dy = disc[0] / c - 1, disc[1] / c - 1
    rx, ry = disc_r / c, disc_r / c * DISC_ASPECT
    region = _window(disc[0], disc[1], disc_r * 2.2, size)
    wx, wy = x[region], y[region]
    d = np.sqrt(((wx - dx) / rx) ** 2 + ((wy - dy) / ry) ** 2)
    _blend(img, np.clip((1.3 - d) / 0.3, 0, 1) * 0.2, (0.9, 0.58, 0.36), region)
    if lab.get("is_pm", 0):  # temporal crescent of atrophy
        dcr = np.sqrt(((wx - dx + side * 0.42 * rx) / (rx * 1.5)) ** 2 + ((wy - dy) / (ry * 1.12)) ** 2)
        _blend(img, np.clip((1 - dcr) / 0.08, 0, 1) * 0.85, (0.95, 0.84, 0.66), region)
    a_disc = np.clip((1 - d) / 0.1, 0, 1)
    disc_col = (0.97, 0.9, 0.78) if lab.get("is_aon", 0) else (0.96, 0.66, 0.4)
    _blend(img, a_disc, disc_col, region)
    cup_off = -side * 0.1 * rx * (1 - cdr)
    dc = np.sqrt(((wx - dx - cup_off) / (rx * cdr)) ** 2 + ((wy - dy) / (ry * cdr)) ** 2)
    a_cup = np.clip((1 - dc) / 0.18, 0, 1)
    _blend(img, a_cup * 0.95, (1.0, 0.93, 0.8), region)

    img *= 255
    np.clip(img, 0, 255, out=img)
    pic = Image.fromarray(img.astype(np.uint8))

    # ---- vessels (drawn after the disc: they leave through its rim)
    vessels = _vessel_tree(ar, disc, disc_r, side, size, bool(lab.get("is_htr", 0)))
    counts: dict[str, int] = {}
    rvo_vein = None
    if lab.get("is_rvo", 0):  # a dilated, tortuous occluded branch vein
        trunks = [v for v in vessels if v.vein and v.depth == 0]
        rvo_vein = trunks[int(lr.integers(len(trunks)))]
        rvo_vein.widths = [w * 1.4 for w in rvo_vein.widths]
    bg = base * 255 * 0.8
    vdraw = ImageDraw.Draw(pic)
    for veins, col, strength in ((False, _ARTERY, 0.78), (True, _VEIN, 0.88)):
        rgb = tuple(int(v * 255 * pigment * strength + b * (1 - strength)) for v, b in zip(col, bg))
        _draw_vessels(vdraw, vessels, veins, rgb)  # type: ignore[arg-type]
    # vessels dip out of sight into the cup
    box = (region[1].start, region[0].start, region[1].stop, region[0].stop)
    win = np.asarray(pic.crop(box), dtype=np.float32)
    _blend(win, a_cup * 0.6, np.array((1.0, 0.93, 0.8), np.float32) * 255)
    pic.paste(Image.fromarray(win.astype(np.uint8)), box[:2])

    # ---- soft lesions (blurred one-colour layers)
    if lab.get("is_amd", 0):  # drusen clustered around the macula
        layer = _SoftLayer(size)
        n = int(lr.integers(25, 55))
        for _ in range(n):
            px, py = _posterior_point(lr, fovea, 0.09 * c, c, fov_r)
            layer.ellipse(px, py, lr.uniform(3.0, 7.5) * s, int(lr.uniform(190, 255)))
        counts["drusen"] = n
        pic = layer.apply(pic, _DRUSEN, 1.5 * s)
    n_cws = int(lr.integers(3, 7)) if grade >= 3 else 0
    if lab.get("is_htr", 0) or lab.get("is_rvo", 0):
        n_cws += int(lr.integers(1, 4))
    if n_cws or lab.get("is_em", 0):
        layer = _SoftLayer(size)
        for _ in range(n_cws):  # cotton-wool spots near the arcades
            px, py = _posterior_point(lr, ((fovea[0] + disc[0]) / 2, fovea[1]), 0.25 * c, c, fov_r)
            layer.polygon(_blob_points(px, py, lr.uniform(8, 14) * s, lr, 0.35, 9), int(lr.uniform(180, 235)))
        counts["cotton_wool"] = n_cws
        if lab.get("is_em", 0):  # cellophane sheen with radiating striae over the macula
            layer.polygon(_blob_points(fovea[0], fovea[1], 0.17 * c, lr, 0.3, 12), 90)
            for _ in range(16):
                a = lr.uniform(0, 2 * np.pi)
                r0, r1 = lr.uniform(0.03, 0.06) * c, lr.uniform(0.14, 0.24) * c
                layer.line([(fovea[0] + r0 * math.cos(a), fovea[1] + r0 * math.sin(a)),
                            (fovea[0] + r1 * math.cos(a), fovea[1] + r1 * math.sin(a))], 210, 4 * s)
            counts["membrane"] = 1
        pic = layer.apply(pic, _COTTON, 3.0 * s)

    # ---- sharp lesions drawn on the 8-bit picture
    draw = ImageDraw.Draw(pic)
    if lab.get("is_treated", 0):  # panretinal laser scars in the mid periphery
        n, placed = int(lr.integers(40, 90)), 0
        for _ in range(n * 3):
            px, py = _ring_point(lr, (c, c), 0.45 * fov_r, 0.88 * fov_r)
            if (px - fovea[0]) ** 2 + (py - fovea[1]) ** 2 < (0.38 * c) ** 2 or \
                    (px - disc[0]) ** 2 + (py - disc[1]) ** 2 < (2 * disc_r) ** 2:
                continue
            r = lr.uniform(5, 8) * s
            draw.ellipse([px - r, py - r, px + r, py + r], fill=_rgb8((0.86, 0.72, 0.5), lr),
                         outline=_rgb8((0.24, 0.13, 0.07), lr, 0.03), width=max(1, int(2.2 * s)))
            placed += 1
            if placed >= n:
                break
        counts["laser_scars"] = placed
    if lab.get("is_crp", 0):  # bone-spicule-like pigment clumps in the periphery
        n = int(lr.integers(25, 50))
        for _ in range(n):
            px, py = _ring_point(lr, (c, c), 0.5 * fov_r, 0.9 * fov_r)
            _blob(draw, px, py, lr.uniform(2.5, 5.5) * s, _rgb8((0.17, 0.09, 0.05), lr, 0.03), lr, 0.6, 7)
        counts["pigment"] = n
    if lab.get("is_md", 0):  # macular pigment mottling on a pale atrophic patch
        _blob(draw, fovea[0], fovea[1], lr.uniform(0.05, 0.08) * c, _rgb8((0.8, 0.55, 0.35), lr), lr, 0.3, 10)
        n = int(lr.integers(12, 24))
        for _ in range(n):
            px, py = _ring_point(lr, fovea, 0, 0.1 * c)
            col = (0.2, 0.1, 0.06) if lr.random() < 0.6 else (0.9, 0.75, 0.5)
            _blob(draw, px, py, lr.uniform(1.5, 3.5) * s, _rgb8(col, lr, 0.03), lr, 0.4, 6)
        counts["mottling"] = n
    if lab.get("is_mh", 0):  # round full-thickness hole with a pale cuff
        r = lr.uniform(0.03, 0.042) * c
        _dot(draw, fovea[0], fovea[1], 1.5 * r, _rgb8((0.84, 0.52, 0.32), lr))
        _dot(draw, fovea[0], fovea[1], r, _rgb8((0.5, 0.12, 0.07), lr))
        counts["hole"] = 1
    if grade > 0 or lab.get("is_dme", 0):
        n_ma, n_blot, n_cl = _DR_LESIONS[grade]
        if grade:
            n_ma, n_blot = n_ma + int(lr.integers(0, 6)), n_blot + int(lr.integers(0, 5))
            n_cl += int(lr.random() < 0.4)
        for _ in range(n_ma):  # microaneurysms: small round dark-red dots
            px, py = _posterior_point(lr, fovea, 0.3 * c, c, fov_r)
            _dot(draw, px, py, lr.uniform(2.0, 3.2) * s, _rgb8(_HAEM, lr, 0.04))
        for _ in range(n_blot):  # dot/blot haemorrhages
            px, py = _posterior_point(lr, fovea, 0.33 * c, c, fov_r)
            _blob(draw, px, py, lr.uniform(4, 9) * s, _rgb8(_HAEM, lr), lr, 0.22)
        n_ex = 0
        if lab.get("is_dme", 0):  # circinate exudates ringing the fovea
            for _ in range(int(lr.integers(18, 32))):
                px, py = _ring_point(lr, fovea, 0.05 * c, 0.12 * c)
                _dot(draw, px, py, lr.uniform(1.5, 3.5) * s, _rgb8(_EXUDATE, lr, 0.04))
                n_ex += 1
        for _ in range(n_cl):  # hard exudate clusters
            cx_, cy_ = _posterior_point(lr, fovea, 0.22 * c, c, fov_r)
            for _ in range(int(lr.integers(4, 11))):
                _dot(draw, cx_ + lr.normal(0, 6 * s), cy_ + lr.normal(0, 6 * s), lr.uniform(1.5, 3.8) * s,
                     _rgb8(_EXUDATE, lr, 0.04))
                n_ex += 1
        counts["microaneurysms"], counts["haemorrhages"], counts["exudates"] = n_ma, n_blot, n_ex
        if grade == 4:  # neovascular tufts on the disc and the arcades, maybe a preretinal bleed
            n_nv = int(lr.integers(2, 4))
            for k in range(n_nv):
                if k == 0:
                    cx_, cy_ = disc[0] + lr.normal(0, 0.4 * disc_r), disc[1] + lr.normal(0, 0.4 * disc_r)
                else:
                    v = vessels[int(lr.integers(len(vessels)))]
                    cx_, cy_ = v.points[len(v.points) // 2]
                pts = [(cx_ + lr.normal(0, 9 * s), cy_ + lr.normal(0, 9 * s)) for _ in range(16)]
                draw.line(pts, fill=_rgb8((0.6, 0.07, 0.07), lr), width=max(1, int(1.6 * s)), joint="curve")
            counts["neovascular_tufts"] = n_nv
            if lr.random() < 0.5:
                px, py = _posterior_point(lr, fovea, 0.25 * c, c, fov_r)
                _blob(draw, px, py, lr.uniform(14, 22) * s, _rgb8((0.4, 0.03, 0.03), lr, 0.03), lr, 0.15, 16)
                counts["preretinal"] = 1
    if rvo_vein is not None:  # flame haemorrhages along the occluded vein
        pts = rvo_vein.points
        n, start = int(lr.integers(30, 50)), len(pts) // 6
        for _ in range(n):
            i = int(lr.integers(start, len(pts) - 1))
            (x0, y0), (x1, y1) = pts[i], pts[i + 1]
            ang = math.atan2(y1 - y0, x1 - x0) + lr.normal(0, 0.3)
            off = lr.normal(0, 13 * s)
            _flame(draw, x0 - off * math.sin(ang), y0 + off * math.cos(ang), lr.uniform(12, 24) * s,
                   lr.uniform(3.5, 6.5) * s, ang, _rgb8(_HAEM, lr))
        counts["flame_haemorrhages"] = n
    if lab.get("is_htr", 0):  # a few splinter haemorrhages round the disc
        n = int(lr.integers(3, 7))
        for _ in range(n):
            ang = lr.uniform(0, 2 * np.pi)
            rr = disc_r * lr.uniform(1.4, 3.0)
            _flame(draw, disc[0] + rr * math.cos(ang), disc[1] + rr * math.sin(ang), lr.uniform(9, 15) * s,
                   lr.uniform(2.5, 4) * s, ang, _rgb8(_HAEM, lr))
        counts["splinter_haemorrhages"] = n

    # ---- optics, quality, camera look, grain, field of view
    pic = pic.filter(ImageFilter.BoxBlur(0.5 * s))
    degradation = ""
    gain = 1.0
    if quality < LOW_QUALITY_SCORE:
        degradation = ("blur", "dark", "haze")[int(fr.integers(3))]
        if degradation == "blur":
            k = float(fr.uniform(5, 9))
            small = pic.resize((max(8, int(size / k)), max(8, int(size / k))), Image.BILINEAR)
            pic = small.filter(ImageFilter.GaussianBlur(0.7)).resize((size, size), Image.BICUBIC)
        elif degradation == "dark":
            gain = float(fr.uniform(0.3, 0.45))
        else:
            pic = Image.blend(pic, _solid(size, (150, 140, 130)), float(fr.uniform(0.3, 0.45)))
    ramp = np.arange(256, dtype=np.float64) / 255
    lut = np.concatenate([np.clip(ramp * (t * gain), 0, 1) ** (1 / camera.gamma) for t in camera.tint])
    pic = pic.point((lut * 255 + 0.5).astype(np.int64).tolist())
    if camera.grain > 0:
        half = (size + 1) // 2
        g = np.clip(128 + fr.standard_normal((half, half)) * (camera.grain * 255), 0, 255).astype(np.uint8)
        gl = Image.fromarray(g).resize((size, size), Image.NEAREST)
        pic = ImageChops.add(pic, Image.merge("RGB", (gl, gl, gl)), 1.0, -128)
    fov = _fov_mask(size, camera.fov_radius)
    result = Image.composite(pic, _solid(size, (0, 0, 0)), fov)
    mask = None
    if vessel_mask:
        mask = Image.new("L", (size, size))
        mdraw = ImageDraw.Draw(mask)
        for veins in (False, True):
            _draw_vessels(mdraw, vessels, veins, 255)
        mask = ImageChops.multiply(mask, fov.point(lambda v: 255 if v >= 128 else 0))
    geometry = Geometry(size, fov_r, disc, disc_r, cup_r, (disc[0] + cup_off * c, disc[1]), fovea,
                        MappingProxyType(counts), degradation)
    return Rendered(result, geometry, mask)
