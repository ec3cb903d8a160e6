"""The lesions of a synthetic fundus, each drawn where and how often its label says.

Soft lesions (drusen, cotton-wool spots, epiretinal membrane) are blurred one-colour layers; sharp ones are drawn on
the 8-bit picture by the painters of :data:`SHARP_LESIONS`, in that order (the order fixes the random stream, so a
seed always gives the same picture). Every painter returns how many of each lesion it drew.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Mapping

import numpy as np
from PIL import Image, ImageDraw

from .anatomy import Eye
from .canvas import Color, SoftLayer, rgb8
from .vessels import Vessel

_HAEM = (0.46, 0.04, 0.03)
_EXUDATE = (1.0, 0.9, 0.42)
_DRUSEN = (0.98, 0.86, 0.5)
_COTTON = (0.96, 0.93, 0.84)

_DR_LESIONS = ((0, 0, 0), (8, 1, 0), (16, 9, 3), (28, 22, 5), (30, 26, 5))
"""DR grade -> (microaneurysms, blot haemorrhages, exudate clusters) before random extras."""


# --------------------------------------------------------------------------- shapes and places


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


# --------------------------------------------------------------------------- the occluded vein


def occlude_vein(rng: np.random.Generator, vessels: list[Vessel]) -> Vessel:
    """Retinal vein occlusion: one trunk vein, dilated (drawn tortuous and wide); returns it."""
    trunks = [v for v in vessels if v.vein and v.depth == 0]
    vein = trunks[int(rng.integers(len(trunks)))]
    vein.widths = [w * 1.4 for w in vein.widths]
    return vein


# --------------------------------------------------------------------------- soft lesions


def soft_lesions(pic: Image.Image, eye: Eye, labels: Mapping[str, int], rng: np.random.Generator,
                 counts: dict[str, int]) -> Image.Image:
    """Drusen (AMD), cotton-wool spots (DR grade 3+, hypertension, vein occlusion) and the cellophane sheen of an
    epiretinal membrane; adds their counts to ``counts``."""
    c, s, fovea, disc, fov_r, size = eye.c, eye.s, eye.fovea, eye.disc, eye.fov_r, eye.size
    if labels.get("is_amd", 0):  # drusen clustered around the macula
        layer = SoftLayer(size)
        n = int(rng.integers(25, 55))
        for _ in range(n):
            px, py = _posterior_point(rng, fovea, 0.09 * c, c, fov_r)
            layer.ellipse(px, py, rng.uniform(3.0, 7.5) * s, int(rng.uniform(190, 255)))
        counts["drusen"] = n
        pic = layer.apply(pic, _DRUSEN, 1.5 * s)
    n_cws = int(rng.integers(3, 7)) if labels.get("dr_grade", 0) >= 3 else 0
    if labels.get("is_htr", 0) or labels.get("is_rvo", 0):
        n_cws += int(rng.integers(1, 4))
    if n_cws or labels.get("is_em", 0):
        layer = SoftLayer(size)
        for _ in range(n_cws):  # cotton-wool spots near the arcades
            px, py = _posterior_point(rng, ((fovea[0] + disc[0]) / 2, fovea[1]), 0.25 * c, c, fov_r)
            layer.polygon(_blob_points(px, py, rng.uniform(8, 14) * s, rng, 0.35, 9), int(rng.uniform(180, 235)))
        counts["cotton_wool"] = n_cws
        if labels.get("is_em", 0):  # cellophane sheen with radiating striae over the macula
            layer.polygon(_blob_points(fovea[0], fovea[1], 0.17 * c, rng, 0.3, 12), 90)
            for _ in range(16):
                a = rng.uniform(0, 2 * np.pi)
                r0, r1 = rng.uniform(0.03, 0.06) * c, rng.uniform(0.14, 0.24) * c
                layer.line([(fovea[0] + r0 * math.cos(a), fovea[1] + r0 * math.sin(a)),
                            (fovea[0] + r1 * math.cos(a), fovea[1] + r1 * math.sin(a))], 210, 4 * s)
            counts["membrane"] = 1
        pic = layer.apply(pic, _COTTON, 3.0 * s)
    return pic


# --------------------------------------------------------------------------- sharp lesions


@dataclass(frozen=True)
class Scene:
    """What a sharp-lesion painter draws on and with."""

    draw: ImageDraw.ImageDraw
    eye: Eye
    labels: Mapping[str, int]
    rng: np.random.Generator
    vessels: list[Vessel]
    occluded: Vessel | None
    """The occluded vein (:func:`occlude_vein`), or ``None``."""


def _laser_scars(sc: Scene) -> dict[str, int]:
    """Panretinal laser scars in the mid periphery, sparing the macula and the disc."""
    if not sc.labels.get("is_treated", 0):
        return {}
    lr, e, draw = sc.rng, sc.eye, sc.draw
    c, s, fovea, disc = e.c, e.s, e.fovea, e.disc
    n, placed = int(lr.integers(40, 90)), 0
    for _ in range(n * 3):
        px, py = _ring_point(lr, (c, c), 0.45 * e.fov_r, 0.88 * e.fov_r)
        if (px - fovea[0]) ** 2 + (py - fovea[1]) ** 2 < (0.38 * c) ** 2 or \
                (px - disc[0]) ** 2 + (py - disc[1]) ** 2 < (2 * e.disc_r) ** 2:
            continue
        r = lr.uniform(5, 8) * s
        draw.ellipse([px - r, py - r, px + r, py + r], fill=rgb8((0.86, 0.72, 0.5), lr),
                     outline=rgb8((0.24, 0.13, 0.07), lr, 0.03), width=max(1, int(2.2 * s)))
        placed += 1
        if placed >= n:
            break
    return {"laser_scars": placed}


def _pigment_clumps(sc: Scene) -> dict[str, int]:
    """Bone-spicule-like pigment clumps in the periphery (retinitis pigmentosa)."""
    if not sc.labels.get("is_crp", 0):
        return {}
    lr, e = sc.rng, sc.eye
    n = int(lr.integers(25, 50))
    for _ in range(n):
        px, py = _ring_point(lr, (e.c, e.c), 0.5 * e.fov_r, 0.9 * e.fov_r)
        _blob(sc.draw, px, py, lr.uniform(2.5, 5.5) * e.s, rgb8((0.17, 0.09, 0.05), lr, 0.03), lr, 0.6, 7)
    return {"pigment": n}


def _macular_mottling(sc: Scene) -> dict[str, int]:
    """Macular pigment mottling on a pale atrophic patch (macular degeneration)."""
    if not sc.labels.get("is_md", 0):
        return {}
    lr, e, draw = sc.rng, sc.eye, sc.draw
    fovea = e.fovea
    _blob(draw, fovea[0], fovea[1], lr.uniform(0.05, 0.08) * e.c, rgb8((0.8, 0.55, 0.35), lr), lr, 0.3, 10)
    n = int(lr.integers(12, 24))
    for _ in range(n):
        px, py = _ring_point(lr, fovea, 0, 0.1 * e.c)
        col: Color = (0.2, 0.1, 0.06) if lr.random() < 0.6 else (0.9, 0.75, 0.5)
        _blob(draw, px, py, lr.uniform(1.5, 3.5) * e.s, rgb8(col, lr, 0.03), lr, 0.4, 6)
    return {"mottling": n}


def _macular_hole(sc: Scene) -> dict[str, int]:
    """A round full-thickness hole with a pale cuff."""
    if not sc.labels.get("is_mh", 0):
        return {}
    lr, fovea = sc.rng, sc.eye.fovea
    r = lr.uniform(0.03, 0.042) * sc.eye.c
    _dot(sc.draw, fovea[0], fovea[1], 1.5 * r, rgb8((0.84, 0.52, 0.32), lr))
    _dot(sc.draw, fovea[0], fovea[1], r, rgb8((0.5, 0.12, 0.07), lr))
    return {"hole": 1}


def _proliferative(sc: Scene) -> dict[str, int]:
    """DR grade 4: neovascular tufts on the disc and the arcades, maybe a preretinal bleed."""
    lr, e, draw = sc.rng, sc.eye, sc.draw
    s, disc, disc_r = e.s, e.disc, e.disc_r
    counts: dict[str, int] = {}
    n_nv = int(lr.integers(2, 4))
    for k in range(n_nv):
        if k == 0:
            cx_, cy_ = disc[0] + lr.normal(0, 0.4 * disc_r), disc[1] + lr.normal(0, 0.4 * disc_r)
        else:
            v = sc.vessels[int(lr.integers(len(sc.vessels)))]
            cx_, cy_ = v.points[len(v.points) // 2]
        pts = [(cx_ + lr.normal(0, 9 * s), cy_ + lr.normal(0, 9 * s)) for _ in range(16)]
        draw.line(pts, fill=rgb8((0.6, 0.07, 0.07), lr), width=max(1, int(1.6 * s)), joint="curve")
    counts["neovascular_tufts"] = n_nv
    if lr.random() < 0.5:
        px, py = _posterior_point(lr, e.fovea, 0.25 * e.c, e.c, e.fov_r)
        _blob(draw, px, py, lr.uniform(14, 22) * s, rgb8((0.4, 0.03, 0.03), lr, 0.03), lr, 0.15, 16)
        counts["preretinal"] = 1
    return counts


def _diabetic(sc: Scene) -> dict[str, int]:
    """Microaneurysms, blot haemorrhages and hard exudates by DR grade, circinate exudates in macular oedema."""
    grade = sc.labels.get("dr_grade", 0)
    if not (grade > 0 or sc.labels.get("is_dme", 0)):
        return {}
    lr, e, draw = sc.rng, sc.eye, sc.draw
    c, s, fovea, fov_r = e.c, e.s, e.fovea, e.fov_r
    n_ma, n_blot, n_cl = _DR_LESIONS[grade]
    if grade:
        n_ma, n_blot = n_ma + int(lr.integers(0, 6)), n_blot + int(lr.integers(0, 5))
        n_cl += int(lr.random() < 0.4)
    for _ in range(n_ma):  # microaneurysms: small round dark-red dots
        px, py = _posterior_point(lr, fovea, 0.3 * c, c, fov_r)
        _dot(draw, px, py, lr.uniform(2.0, 3.2) * s, rgb8(_HAEM, lr, 0.04))
    for _ in range(n_blot):  # dot/blot haemorrhages
        px, py = _posterior_point(lr, fovea, 0.33 * c, c, fov_r)
        _blob(draw, px, py, lr.uniform(4, 9) * s, rgb8(_HAEM, lr), lr, 0.22)
    n_ex = 0
    if sc.labels.get("is_dme", 0):  # circinate exudates ringing the fovea
        for _ in range(int(lr.integers(18, 32))):
            px, py = _ring_point(lr, fovea, 0.05 * c, 0.12 * c)
            _dot(draw, px, py, lr.uniform(1.5, 3.5) * s, rgb8(_EXUDATE, lr, 0.04))
            n_ex += 1
    for _ in range(n_cl):  # hard exudate clusters
        cx_, cy_ = _posterior_point(lr, fovea, 0.22 * c, c, fov_r)
        for _ in range(int(lr.integers(4, 11))):
            _dot(draw, cx_ + lr.normal(0, 6 * s), cy_ + lr.normal(0, 6 * s), lr.uniform(1.5, 3.8) * s,
                 rgb8(_EXUDATE, lr, 0.04))
            n_ex += 1
    counts = {"microaneurysms": n_ma, "haemorrhages": n_blot, "exudates": n_ex}
    if grade == 4:
        counts.update(_proliferative(sc))
    return counts


def _flame_haemorrhages(sc: Scene) -> dict[str, int]:
    """Flame haemorrhages along the occluded vein."""
    if sc.occluded is None:
        return {}
    lr, s = sc.rng, sc.eye.s
    pts = sc.occluded.points
    n, start = int(lr.integers(30, 50)), len(pts) // 6
    for _ in range(n):
        i = int(lr.integers(start, len(pts) - 1))
        (x0, y0), (x1, y1) = pts[i], pts[i + 1]
        ang = math.atan2(y1 - y0, x1 - x0) + lr.normal(0, 0.3)
        off = lr.normal(0, 13 * s)
        _flame(sc.draw, x0 - off * math.sin(ang), y0 + off * math.cos(ang), lr.uniform(12, 24) * s,
               lr.uniform(3.5, 6.5) * s, ang, rgb8(_HAEM, lr))
    return {"flame_haemorrhages": n}


def _splinter_haemorrhages(sc: Scene) -> dict[str, int]:
    """A few splinter haemorrhages round the disc (hypertensive retinopathy)."""
    if not sc.labels.get("is_htr", 0):
        return {}
    lr, e = sc.rng, sc.eye
    n = int(lr.integers(3, 7))
    for _ in range(n):
        ang = lr.uniform(0, 2 * np.pi)
        rr = e.disc_r * lr.uniform(1.4, 3.0)
        _flame(sc.draw, e.disc[0] + rr * math.cos(ang), e.disc[1] + rr * math.sin(ang), lr.uniform(9, 15) * e.s,
               lr.uniform(2.5, 4) * e.s, ang, rgb8(_HAEM, lr))
    return {"splinter_haemorrhages": n}


SHARP_LESIONS: tuple[Callable[[Scene], dict[str, int]], ...] = (
    _laser_scars, _pigment_clumps, _macular_mottling, _macular_hole, _diabetic, _flame_haemorrhages,
    _splinter_haemorrhages)
"""The sharp-lesion painters, in drawing order; each draws nothing when its label is absent."""


def sharp_lesions(pic: Image.Image, eye: Eye, labels: Mapping[str, int], rng: np.random.Generator,
                  vessels: list[Vessel], occluded: Vessel | None, counts: dict[str, int]) -> None:
    """In place: every painter of :data:`SHARP_LESIONS` on ``pic``; adds their counts to ``counts``."""
    scene = Scene(ImageDraw.Draw(pic), eye, labels, rng, vessels, occluded)
    for paint in SHARP_LESIONS:
        counts.update(paint(scene))
