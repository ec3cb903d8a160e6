"""The retinal vessels of a synthetic fundus: four arcades of veins and arteries grown as random walks from the disc.

:func:`vessel_tree` grows them (anatomy stream), :func:`draw_vessels` paints them on the picture after the disc (they
leave through its rim) and lets them dip out of sight into the cup, :func:`mask_image` draws the binary mask FIVES
ships with its photographs.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageChops, ImageDraw

from .anatomy import Anatomy, Eye
from .canvas import blend

_VEIN = (0.42, 0.06, 0.06)
_ARTERY = (0.66, 0.14, 0.09)
_CUP = (1.0, 0.93, 0.8)


@dataclass
class Vessel:
    """One vessel segment chain: its points, the width at each, vein or artery, and its branching depth."""

    points: list[tuple[float, float]]
    widths: list[float]
    vein: bool
    depth: int


def _angle_diff(a: float, b: float) -> float:
    return (a - b + math.pi) % (2 * math.pi) - math.pi


def _grow(rng: np.random.Generator, start: tuple[float, float], heading: float, width: float,
          length: int, step: float, turn: float, turn_until: float | None, vein: bool, depth: int,
          out: list[Vessel], max_depth: int, tortuosity: float) -> None:
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
    out.append(Vessel(pts, ws, vein, depth))


def vessel_tree(rng: np.random.Generator, eye: Eye, narrow_arteries: bool) -> list[Vessel]:
    """Four arcades (supero/infero temporal and nasal), veins and arteries for each, and a few small vessels
    towards the macula; ``narrow_arteries`` (hypertensive retinopathy) thins the arteries."""
    disc, disc_r, side = eye.disc, eye.disc_r, eye.side
    s = eye.s
    temporal = math.pi if side > 0 else 0.0  # image direction from disc toward the macula
    out: list[Vessel] = []
    for vein in (True, False):
        for vertical in (-1, 1):  # up, down
            base_w = (6.5 if vein else 4.8) * s * (0.6 if narrow_arteries and not vein else 1.0)
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


def _polylines(draw: ImageDraw.ImageDraw, vessels: list[Vessel], veins: bool,
               fill: tuple[int, int, int] | int, chunk: int = 4) -> None:
    """Draw veins or arteries as polylines, in chunks of ``chunk`` segments of one width."""
    for v in vessels:
        if v.vein != veins:
            continue
        pts = v.points
        for i in range(0, len(pts) - 1, chunk):
            w = max(1, int(round(v.widths[i])))
            draw.line(pts[i:i + chunk + 1], fill=fill, width=w, joint="curve" if w >= 3 else None)


def draw_vessels(anatomy: Anatomy, eye: Eye, vessels: list[Vessel]) -> Image.Image:
    """The anatomy's picture with arteries, then veins, in the eye's pigment, faded where they enter the cup."""
    pic = anatomy.picture
    bg = eye.base * 255 * 0.8
    draw = ImageDraw.Draw(pic)
    for veins, col, strength in ((False, _ARTERY, 0.78), (True, _VEIN, 0.88)):
        r, g, b = (int(v * 255 * eye.pigment * strength + back * (1 - strength)) for v, back in zip(col, bg))
        _polylines(draw, vessels, veins, (r, g, b))
    region = anatomy.disc_window
    box = (region[1].start, region[0].start, region[1].stop, region[0].stop)
    win = np.asarray(pic.crop(box), dtype=np.float32)
    blend(win, anatomy.cup_alpha * 0.6, np.array(_CUP, np.float32) * 255)
    pic.paste(Image.fromarray(win.astype(np.uint8)), box[:2])
    return pic


def mask_image(vessels: list[Vessel], fov: Image.Image) -> Image.Image:
    """Binary ``L`` mask of the vessels (255 = vessel) inside the field of view ``fov``."""
    mask = Image.new("L", fov.size)
    draw = ImageDraw.Draw(mask)
    for veins in (False, True):
        _polylines(draw, vessels, veins, 255)
    return ImageChops.multiply(mask, fov.point(lambda v: 255 if v >= 128 else 0))
