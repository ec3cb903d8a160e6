"""Procedural colour fundus photographs whose visible signs follow a SynFundus label row.

:func:`render_fundus` composes one photograph from four stages: the eye (:mod:`.anatomy`: background, vignetting,
macula, disc, in float32 numpy), its vessels (:mod:`.vessels`), the lesions its labels call for (:mod:`.lesions`: soft
ones as blurred layers, small sharp ones with PIL ``ImageDraw``) and the camera (:mod:`.camera`: slight blur, tint,
grain, the round field of view on black). All randomness comes from the generator passed in; the anatomy (background,
disc, vessels) is drawn from a child stream separate from the lesions, so the same seed with different labels gives
the same eye.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Mapping

import numpy as np
from PIL import Image

from .anatomy import DISC_ASPECT, paint_anatomy, place_eye
from .camera import EXTERNAL_CAMERAS, SYNFUNDUS_CAMERA, Camera, photograph
from .canvas import fov_mask
from .lesions import occlude_vein, sharp_lesions, soft_lesions
from .vessels import draw_vessels, mask_image, vessel_tree

_NOT_FLAGS = ("retinal_region_quality_score", "diagnosticAdvice", "file_md5", "file_name")
"""Columns of a label row that are not integer flags."""


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


def render_fundus(labels: Mapping[str, object], rng: np.random.Generator, size: int = 512,
                  camera: Camera = SYNFUNDUS_CAMERA, vessel_mask: bool = False) -> Rendered:
    """Render one RGB fundus photo (``size`` square) whose signs follow ``labels``.

    ``labels`` needs ``eyes_side``, ``dr_grade``, the :data:`~cn_clip_ext.layouts.FINDINGS` flags and
    ``retinal_region_quality_score``; missing flags count as 0. Three child streams are spawned
    from ``rng`` (anatomy, lesions, finish), so the same ``rng`` seed with other labels gives
    the same eye. Returns the image, its :class:`Geometry` and, with ``vessel_mask``, a binary
    ``L`` mask of the vessels (255 = vessel).
    """
    if size < 32:
        raise ValueError(f"image size must be at least 32 pixels, got {size}")
    anatomy_rng, lesion_rng, camera_rng = rng.spawn(3)
    flags = {k: int(v) for k, v in labels.items() if k not in _NOT_FLAGS}  # type: ignore[call-overload]
    quality = float(labels.get("retinal_region_quality_score", 1.0))  # type: ignore[arg-type]

    eye = place_eye(anatomy_rng, flags, size, camera)
    anatomy = paint_anatomy(anatomy_rng, eye, flags, camera)
    vessels = vessel_tree(anatomy_rng, eye, bool(flags.get("is_htr", 0)))
    occluded = occlude_vein(lesion_rng, vessels) if flags.get("is_rvo", 0) else None
    counts: dict[str, int] = {}
    pic = draw_vessels(anatomy, eye, vessels)  # after the disc: they leave through its rim
    pic = soft_lesions(pic, eye, flags, lesion_rng, counts)
    sharp_lesions(pic, eye, flags, lesion_rng, vessels, occluded, counts)
    image, degradation = photograph(pic, camera, quality, camera_rng)

    mask = mask_image(vessels, fov_mask(size, camera.fov_radius)) if vessel_mask else None
    c = size / 2
    geometry = Geometry(size, eye.fov_r, eye.disc, eye.disc_r, eye.cup_r, (eye.disc[0] + anatomy.cup_offset * c,
                        eye.disc[1]), eye.fovea, MappingProxyType(counts), degradation)
    return Rendered(image, geometry, mask)


__all__ = ["Camera", "DISC_ASPECT", "EXTERNAL_CAMERAS", "Geometry", "Rendered", "SYNFUNDUS_CAMERA", "render_fundus"]
