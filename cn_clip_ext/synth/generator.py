"""Synthetic SynFundus-1M and evaluation sets: the project's embedded default data.

Nothing is downloaded. Image ``i`` of a set depends only on ``(seed, set, i)`` (each image has
its own ``np.random.default_rng([seed, stream, i, part])``), so a set is byte-identical for the
same seed whatever the number of images or worker processes.

Layouts written (see :mod:`cn_clip_ext.layouts` for the tables)::

    root/Fundus/{id}.png + root/SynFundus-1M_annotation.csv          write_synfundus
    root/messidor2/IMAGES/* + root/messidor2/messidor_data.csv       write_messidor2
    root/fives/{train,test}/{Original,Ground truth}/{n}_{A|D|G|N}.png write_fives
    root/refuge/Training400/{Glaucoma,Non-Glaucoma}/{g|n}NNNN.jpg     write_refuge
    root/patients/images/{pid}_{L|R}.png + root/patients/patients.csv  write_patients (RET-CLIP)

Every writer builds its files in a hidden staging folder under ``root`` and moves them into
place only when all are done, the CSV last, so a failed run leaves nothing half-written.
:func:`generate` (what ``vclip-synth`` runs) also holds ``root``'s write lock and writes only into
an empty folder or one that its owner marker (kind :data:`OWNER_KIND`) proves is synthetic data of
ours, so it never overwrites a colleague's files, another command's output or a second run in progress.
"""
from __future__ import annotations

import csv
import hashlib
import io
import logging
import os
import shutil
import tempfile
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

import numpy as np
from PIL import Image, ImageDraw

from .captions import make_caption, make_patient_report
from .renderer import DISC_ASPECT, EXTERNAL_CAMERAS, SYNFUNDUS_CAMERA, Geometry, Rendered, render_fundus
from ..errors import UserError
from ..outputs import LOCK_FILE, OWNER_FILE, output_lock, owner_kind, write_owner_marker
from .published import write_published_sets
from ..layouts import (EVAL_LAYOUTS, FINDINGS, FIVES, MESSIDOR2, PATIENT_COLUMNS, PATIENT_LABEL_COLUMNS,
                     PATIENTS_CSV, PATIENTS_DIR, PATIENTS_IMAGE_DIR, READABILITY_COLUMNS, REFUGE,
                     SYNFUNDUS_COLUMNS, SYNFUNDUS_CSV, SYNFUNDUS_IMAGE_DIR)

__all__ = [
    "SynthConfig", "sample_labels", "sample_captions", "make_caption", "render_fundus", "synfundus_example",
    "write_synfundus", "write_messidor2", "write_fives", "write_refuge", "write_eval_sets", "generate",
    "sample_patient", "patient_example", "write_patients", "ID_OFFSET", "STREAMS", "PREVALENCE", "OWNER_KIND",
    "synth_output",
]

logger = logging.getLogger(__name__)

ID_OFFSET = 1000
"""SynFundus image ids are ``ID_OFFSET + index`` (``1000.png``, ``1001.png``, …)."""
OWNER_KIND = "synthetic-data"
"""Owner-marker kind of a folder :func:`generate` wrote (see :mod:`cn_clip_ext.outputs`)."""
PNG_COMPRESS_LEVEL = 1
"""zlib level for the PNGs: lossless either way, level 1 is several times faster than 6."""
JPEG_QUALITY = 95

STREAMS: Mapping[str, int] = MappingProxyType({"synfundus": 0, "messidor2": 1, "fives": 2, "refuge": 3,
                                               "patients": 4})
"""Random stream per data set, so evaluation sets never share draws with the corpus."""

PREVALENCE: Mapping[str, float] = MappingProxyType({
    "is_amd": 0.04, "is_gc": 0.04, "is_aon": 0.015, "is_pm": 0.025, "is_tessellated": 0.06,
    "is_rvo": 0.02, "is_htr": 0.02, "is_mh": 0.008, "is_em": 0.015, "is_crp": 0.01, "is_md": 0.015,
    "is_dm_without_dr": 0.06, "is_treated_background": 0.005,
})
"""Base rates of the independent findings in the corpus (others follow from DR, see below)."""
DR_GRADE_P: tuple[float, ...] = (0.82, 0.06, 0.07, 0.03, 0.02)
"""SynFundus corpus ICDR grade distribution (most eyes have no DR)."""
MESSIDOR2_GRADE_P: tuple[float, ...] = tuple(n / 1744 for n in (1017, 270, 347, 75, 35))
"""The adjudicated Messidor-2 grade distribution."""
FIVES_DR_GRADE_P: tuple[float, ...] = (0.0, 0.15, 0.35, 0.3, 0.2)


@dataclass(frozen=True)
class SynthConfig:
    """What :func:`generate` writes: corpus size, evaluation-set size, seed, look and noise."""

    n_images: int = 200
    """SynFundus images (0: no corpus)."""
    n_eval: int = 60
    """Images per evaluation set (0: no evaluation sets)."""
    seed: int = 0
    size: int = 512
    """Side of the square rendering in pixels (SynFundus: 512)."""
    caption_noise: float = 0.03
    """Probability that a caption drops or swaps one finding."""
    low_quality_rate: float = 0.06
    """Share of degraded (blurred, dark, hazy) photos."""
    id_offset: int = ID_OFFSET
    n_patients: int = 0
    """Patients of the patient-level (RET-CLIP) set, two eye photos each (0: no such set)."""
    missing_eye_rate: float = 0.1
    """Share of patients with one eye photo missing."""

    def __post_init__(self) -> None:
        for name in ("n_images", "n_eval", "seed", "id_offset", "n_patients"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.size < 32:
            raise ValueError(f"size must be at least 32 pixels, got {self.size}")
        for name in ("caption_noise", "low_quality_rate", "missing_eye_rate"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")


# --------------------------------------------------------------------------- labels


def _rng(seed: int, stream: str, index: int, part: int) -> np.random.Generator:
    return np.random.default_rng([seed, STREAMS[stream], index, part])


def _quality(rng: np.random.Generator, low: bool) -> dict[str, Any]:
    """Quality score and the three readability flags (degraded photos lose some)."""
    if not low:
        return {"retinal_region_quality_score": round(float(rng.uniform(0.7, 1.0)), 3),
                **{c: 1 for c in READABILITY_COLUMNS}}
    out: dict[str, Any] = {"retinal_region_quality_score": round(float(rng.uniform(0.1, 0.55)), 3)}
    for col, p_lost in zip(READABILITY_COLUMNS, (0.5, 0.4, 0.6)):
        out[col] = int(rng.random() >= p_lost)
    return out


def _derived(labels: dict[str, Any]) -> dict[str, Any]:
    """Fill ``is_abnormal``/``has_lesion``/``is_fundus`` from the findings and DR grade."""
    lesion_cols = ("is_amd", "is_crp", "is_dme", "is_em", "is_md", "is_mh", "is_htr", "is_rvo", "is_treated")
    labels["has_lesion"] = int(labels["dr_grade"] > 0 or any(labels[c] for c in lesion_cols))
    labels["is_abnormal"] = int(labels["dr_grade"] > 0 or any(labels[c] for c in FINDINGS))
    labels["is_fundus"] = 1
    return labels


def sample_labels(rng: np.random.Generator, low_quality_rate: float = 0.06) -> dict[str, Any]:
    """One SynFundus label row (every column but ``file_*`` and ``diagnosticAdvice``).

    Correlations: ``is_dm`` for every DR eye; DME mostly with DR >= 2; laser scars mostly in
    severe/proliferative DR or RVO; pathologic myopia implies a tessellated fundus; AMD, macular
    hole and membrane are rarer in young (myopic) eyes. ``is_abnormal`` = any ocular finding
    (diabetes alone is not one); ``has_lesion`` = any lesion (not disc-only or tessellation).
    """
    p = PREVALENCE
    grade = int(rng.choice(5, p=DR_GRADE_P))
    lab: dict[str, Any] = {"eyes_side": int(rng.integers(2)), "dr_grade": grade}
    for f in ("is_amd", "is_gc", "is_aon", "is_pm", "is_rvo", "is_htr", "is_mh", "is_em", "is_crp", "is_md"):
        lab[f] = int(rng.random() < p[f])
    lab["is_tessellated"] = int(lab["is_pm"] or rng.random() < p["is_tessellated"])
    if lab["is_pm"]:
        lab["is_amd"] = 0
    lab["is_dm"] = int(grade > 0 or rng.random() < p["is_dm_without_dr"])
    lab["is_dme"] = int(rng.random() < (0.0, 0.04, 0.2, 0.4, 0.45)[grade])
    p_treated = (p["is_treated_background"], 0.0, 0.03, 0.25, 0.5)[grade]
    lab["is_treated"] = int(rng.random() < max(p_treated, 0.3 if lab["is_rvo"] else 0.0))
    lab.update(_quality(rng, rng.random() < low_quality_rate))
    return _derived(lab)


def _blank_labels(eye: int, **findings: int) -> dict[str, Any]:
    lab: dict[str, Any] = {"eyes_side": eye, "dr_grade": 0, "is_dm": 0, **{f: 0 for f in FINDINGS}}
    lab.update(findings)
    lab.update({"retinal_region_quality_score": 0.9, **{c: 1 for c in READABILITY_COLUMNS}})
    return _derived(lab)


# --------------------------------------------------------------------------- SynFundus corpus


def synfundus_example(index: int, seed: int = 0, size: int = 512, caption_noise: float = 0.03,
                      low_quality_rate: float = 0.06) -> tuple[dict[str, Any], Rendered]:
    """Labels (with ``diagnosticAdvice``, without ``file_*``) and rendering of corpus image ``index``."""
    labels = sample_labels(_rng(seed, "synfundus", index, 0), low_quality_rate)
    labels["diagnosticAdvice"] = make_caption(labels, _rng(seed, "synfundus", index, 1), caption_noise)
    return labels, render_fundus(labels, _rng(seed, "synfundus", index, 2), size, SYNFUNDUS_CAMERA)


def sample_captions(n: int, seed: int = 0, caption_noise: float = 0.03,
                    low_quality_rate: float = 0.06) -> list[str]:
    """The ``diagnosticAdvice`` of corpus images ``0..n-1`` (no rendering; same as the CSV's)."""
    out = []
    for index in range(n):
        labels = sample_labels(_rng(seed, "synfundus", index, 0), low_quality_rate)
        out.append(make_caption(labels, _rng(seed, "synfundus", index, 1), caption_noise))
    return out


def _png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, "PNG", compress_level=PNG_COMPRESS_LEVEL)
    return buf.getvalue()


def _jpeg(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, "JPEG", quality=JPEG_QUALITY)
    return buf.getvalue()


def _synfundus_job(args: tuple[int, int, int, float, float, int]) -> tuple[dict[str, Any], bytes]:
    index, seed, size, noise, low_rate, id_offset = args
    labels, rendered = synfundus_example(index, seed, size, noise, low_rate)
    data = _png(rendered.image)
    labels["file_md5"] = hashlib.md5(data).hexdigest()
    labels["file_name"] = f"{id_offset + index}.png"
    return labels, data


def write_synfundus(root: str | os.PathLike[str], n: int, seed: int = 0, size: int = 512, workers: int = 1, *,
                    caption_noise: float = 0.03, low_quality_rate: float = 0.06, id_offset: int = ID_OFFSET,
                    progress: bool = True) -> Path:
    """Write ``n`` images to ``root/Fundus/{id}.png`` and ``root/SynFundus-1M_annotation.csv``.

    Returns the CSV's path. ``workers`` > 1 renders in that many processes (same bytes).
    """
    SynthConfig(n_images=n, seed=seed, size=size, caption_noise=caption_noise,
                low_quality_rate=low_quality_rate, id_offset=id_offset)  # validates
    root = Path(root)
    jobs = [(i, seed, size, caption_noise, low_quality_rate, id_offset) for i in range(n)]
    with _staging(root) as stage:
        (stage / SYNFUNDUS_IMAGE_DIR).mkdir()
        rows = []
        for labels, data in _run(_synfundus_job, jobs, workers, "SynFundus", progress):
            (stage / SYNFUNDUS_IMAGE_DIR / labels["file_name"]).write_bytes(data)
            rows.append([_cell(labels[c]) for c in SYNFUNDUS_COLUMNS])
        _write_csv(stage / SYNFUNDUS_CSV, SYNFUNDUS_COLUMNS, rows)
        _warn_stale(root / SYNFUNDUS_IMAGE_DIR, {f"{id_offset + i}.png" for i in range(n)})
        _commit(stage, root, [SYNFUNDUS_IMAGE_DIR], SYNFUNDUS_CSV)
    logger.info("wrote %d SynFundus images to %s", n, root)
    return root / SYNFUNDUS_CSV


# --------------------------------------------------------------------------- patient level (RET-CLIP)

BILATERAL_KEEP: Mapping[str, float] = MappingProxyType({
    "is_gc": 0.8, "is_amd": 0.7, "is_pm": 1.0, "is_tessellated": 1.0, "is_htr": 1.0,
})
"""Patient findings that usually affect both eyes: the chance the second eye shares one."""
UNILATERAL: tuple[str, ...] = ("is_rvo", "is_mh", "is_em", "is_crp", "is_md", "is_aon")
"""Findings drawn for the patient but placed in one eye only."""
EYE_FILE_SUFFIX: Mapping[str, str] = MappingProxyType({"left": "L", "right": "R"})


def sample_patient(rng: np.random.Generator, low_quality_rate: float = 0.06) -> dict[str, dict[str, Any]]:
    """The label rows of one patient's eyes, ``{"right": ..., "left": ...}``.

    Patient-level draws (as :func:`sample_labels`) are shared: diabetes gives DR in both eyes,
    the second eye's grade differing by at most one (never 0 when the first has DR); myopia,
    tessellation and hypertensive signs are bilateral, glaucoma and AMD mostly so; vein
    occlusion, macular hole, membrane and the rarer findings sit in one eye. DME, laser scars and
    photo quality are drawn per eye.
    """
    base = sample_labels(rng, low_quality_rate)
    first = int(rng.integers(2))  # the eye with the patient's own DR grade and one-eye findings
    grade = base["dr_grade"]
    eyes: dict[str, dict[str, Any]] = {}
    for k, (name, side) in enumerate((("right", 1), ("left", 0))):
        lab = dict(base, eyes_side=side)
        if k != first:
            if grade > 0:
                lab["dr_grade"] = int(np.clip(grade + rng.choice([-1, 0, 0, 1]), 1, 4))
            for f, keep in BILATERAL_KEEP.items():
                lab[f] = int(base[f] and rng.random() < keep)
            for f in UNILATERAL:
                lab[f] = 0
        lab["is_tessellated"] = int(lab["is_tessellated"] or lab["is_pm"])
        g = lab["dr_grade"]
        lab["is_dme"] = int(rng.random() < (0.0, 0.04, 0.2, 0.4, 0.45)[g])
        p_treated = (PREVALENCE["is_treated_background"], 0.0, 0.03, 0.25, 0.5)[g]
        lab["is_treated"] = int(rng.random() < max(p_treated, 0.3 if lab["is_rvo"] else 0.0))
        lab.update(_quality(rng, rng.random() < low_quality_rate))
        eyes[name] = _derived(lab)
    return eyes


def patient_id(index: int) -> str:
    """``P000001`` for patient ``index`` 0."""
    return f"P{index + 1:06d}"


def patient_example(index: int, seed: int = 0, size: int = 512, caption_noise: float = 0.03,
                    low_quality_rate: float = 0.06, missing_eye_rate: float = 0.1
                    ) -> tuple[dict[str, Any], dict[str, Rendered]]:
    """The ``patients.csv`` row (without image paths) and the eye renderings of patient ``index``.

    The report covers both eyes; a missing eye (``missing_eye_rate`` of patients, either side)
    only lacks its photo. Labels are patient-level: :data:`~.schema.PATIENT_LABEL_COLUMNS`.
    """
    rng = _rng(seed, "patients", index, 0)
    eyes = sample_patient(rng, low_quality_rate)
    missing = ("left", "right")[int(rng.integers(2))] if rng.random() < missing_eye_rate else ""
    row: dict[str, Any] = {
        "patient_id": patient_id(index),
        "report": make_patient_report(eyes, _rng(seed, "patients", index, 1), caption_noise),
        "is_dm": int(any(e["is_dm"] for e in eyes.values())),
        "dr_grade": max(e["dr_grade"] for e in eyes.values()),
        "right_dr_grade": eyes["right"]["dr_grade"], "left_dr_grade": eyes["left"]["dr_grade"],
        **{c: int(any(e[c] for e in eyes.values())) for c in ("is_abnormal", *FINDINGS)},
    }
    renders = {eye: render_fundus(lab, _rng(seed, "patients", index, 2 + k), size, SYNFUNDUS_CAMERA)
               for k, (eye, lab) in enumerate(eyes.items()) if eye != missing}
    return row, renders


def _patient_job(args: tuple[int, int, int, float, float, float]) -> tuple[dict[str, Any], dict[str, bytes]]:
    index, seed, size, noise, low_rate, missing_rate = args
    row, renders = patient_example(index, seed, size, noise, low_rate, missing_rate)
    files: dict[str, bytes] = {}
    for eye in ("left", "right"):
        name = f"{row['patient_id']}_{EYE_FILE_SUFFIX[eye]}.png" if eye in renders else ""
        row[f"{eye}_image"] = f"{PATIENTS_IMAGE_DIR}/{name}" if name else ""
        if name:
            files[name] = _png(renders[eye].image)
    return row, files


def write_patients(root: str | os.PathLike[str], n: int, seed: int = 0, size: int = 512, workers: int = 1, *,
                   caption_noise: float = 0.03, low_quality_rate: float = 0.06, missing_eye_rate: float = 0.1,
                   progress: bool = True) -> Path:
    """Write ``n`` patients to ``root/patients/images/{pid}_{L|R}.png`` and ``root/patients/patients.csv``.

    One row per patient: ``patient_id, left_image, right_image, report`` (image paths relative to
    the CSV's folder, empty for a missing eye) and the patient-level labels. Returns the CSV's path.
    """
    SynthConfig(n_patients=n, seed=seed, size=size, caption_noise=caption_noise,
                low_quality_rate=low_quality_rate, missing_eye_rate=missing_eye_rate)  # validates
    root = Path(root)
    columns = (*PATIENT_COLUMNS, *PATIENT_LABEL_COLUMNS)
    images = f"{PATIENTS_DIR}/{PATIENTS_IMAGE_DIR}"
    jobs = [(i, seed, size, caption_noise, low_quality_rate, missing_eye_rate) for i in range(n)]
    with _staging(root) as stage:
        (stage / images).mkdir(parents=True)
        rows, names = [], set()
        for row, files in _run(_patient_job, jobs, workers, "patients", progress):
            for name, data in files.items():
                (stage / images / name).write_bytes(data)
            names |= set(files)
            rows.append([_cell(row[c]) for c in columns])
        _write_csv(stage / PATIENTS_DIR / PATIENTS_CSV, columns, rows)
        _warn_stale(root / images, names)
        _commit(stage, root, [images], f"{PATIENTS_DIR}/{PATIENTS_CSV}")
    logger.info("wrote %d patients (%d eye photos) to %s", n, len(names), root / PATIENTS_DIR)
    return root / PATIENTS_DIR / PATIENTS_CSV


# --------------------------------------------------------------------------- evaluation sets


def _messidor_name(index: int) -> str:
    """Messidor-2 style names: pairs of eyes, 3 in 5 patients from Messidor (PNG), the rest IM*.JPG."""
    patient, eye = divmod(index, 2)
    if patient % 5 < 3:
        day = 20 + patient // 12
        return f"2005{10 + (day // 31) % 3:02d}{day % 31 + 1:02d}_{40000 + 26 * patient + 11 * eye:05d}_" \
               f"{'0100' if patient % 2 == 0 else '0200'}_PP.png"
    return f"IM{2385 + 2 * patient + eye:06d}.JPG"


def _messidor_job(args: tuple[int, int, int]) -> tuple[list[str], str, bytes]:
    index, seed, size = args
    rng = _rng(seed, "messidor2", index, 0)
    gradable = index % 40 != 7  # about 2.5% ungradable, wherever the set is cut
    grade = int(rng.choice(5, p=MESSIDOR2_GRADE_P))
    dme = int(rng.random() < (0.0, 0.04, 0.25, 0.45, 0.5)[grade])
    lab = _blank_labels(index % 2, dr_grade=grade, is_dme=dme, is_dm=1)
    if not gradable:
        lab["retinal_region_quality_score"] = 0.2
    rendered = render_fundus(lab, _rng(seed, "messidor2", index, 2), size, EXTERNAL_CAMERAS["messidor2"])
    canvas = Image.new("RGB", (round(size * 1.5), size))  # Messidor photos are 3:2 with a round FOV
    canvas.paste(rendered.image, ((canvas.width - size) // 2, 0))
    name = _messidor_name(index)
    data = _png(canvas) if name.endswith(".png") else _jpeg(canvas)
    row = [name, str(grade) if gradable else "", str(dme) if gradable else "", str(int(gradable))]
    return row, name, data


def write_messidor2(root: str | os.PathLike[str], n: int, seed: int = 0, size: int = 512, workers: int = 1,
                    progress: bool = True) -> Path:
    """Write a Messidor-2 (Kaggle adjudicated) lookalike under ``root/messidor2``; returns that folder."""
    SynthConfig(n_eval=n, seed=seed, size=size)
    lay = MESSIDOR2
    root = Path(root)
    with _staging(root) as stage:
        images = stage / lay.folder / lay.image_dir
        images.mkdir(parents=True)
        rows = []
        for row, name, data in _run(_messidor_job, [(i, seed, size) for i in range(n)], workers, "Messidor-2",
                                    progress):
            (images / name).write_bytes(data)
            rows.append(row)
        _write_csv(stage / lay.folder / lay.csv, lay.columns, rows)
        _commit(stage, root, [f"{lay.folder}/{lay.image_dir}"], f"{lay.folder}/{lay.csv}")
    logger.info("wrote %d Messidor-2 images to %s", n, root / lay.folder)
    return root / lay.folder


def _split_counts(n: int, parts: int) -> list[int]:
    return [n // parts + (1 if k < n % parts else 0) for k in range(parts)]


def fives_plan(n: int) -> list[tuple[str, int, str]]:
    """``(split, number, class)`` for ``n`` FIVES images: 75% train, classes in blocks per split."""
    n_train = round(n * FIVES.train_fraction)
    plan = []
    for split, count in zip(FIVES.splits, (n_train, n - n_train)):
        number = 0
        for cls, k in zip(FIVES.classes, _split_counts(count, len(FIVES.classes))):
            for _ in range(k):
                number += 1
                plan.append((split, number, cls))
    return plan


def _fives_job(args: tuple[int, int, int, str]) -> tuple[bytes, bytes]:
    index, seed, size, cls = args
    rng = _rng(seed, "fives", index, 0)
    eye = int(rng.integers(2))
    if cls == "A":
        lab = _blank_labels(eye, is_amd=1)
    elif cls == "D":
        grade = int(rng.choice(5, p=FIVES_DR_GRADE_P))
        lab = _blank_labels(eye, dr_grade=grade, is_dm=1, is_dme=int(grade >= 2 and rng.random() < 0.3))
    elif cls == "G":
        lab = _blank_labels(eye, is_gc=1)
    else:
        lab = _blank_labels(eye)
    rendered = render_fundus(lab, _rng(seed, "fives", index, 2), size, EXTERNAL_CAMERAS["fives"], vessel_mask=True)
    assert rendered.vessel_mask is not None
    return _png(rendered.image), _png(rendered.vessel_mask)


def write_fives(root: str | os.PathLike[str], n: int, seed: int = 0, size: int = 512, workers: int = 1,
                progress: bool = True) -> Path:
    """Write a FIVES lookalike (images + binary vessel masks) under ``root/fives``; returns that folder."""
    SynthConfig(n_eval=n, seed=seed, size=size)
    lay = FIVES
    plan = fives_plan(n)
    names = [lay.pattern.format(n=number, cls=cls) for _, number, cls in plan]
    return _write_with_masks(
        Path(root), lay.folder, "FIVES", _fives_job, [(i, seed, size, cls) for i, (_, _, cls) in enumerate(plan)],
        [Path(split, sub) for split in lay.splits for sub in (lay.image_dir, lay.mask_dir)],
        [(Path(split, lay.image_dir, name), Path(split, lay.mask_dir, name))
         for (split, _, _), name in zip(plan, names)],
        workers, progress)


def refuge_plan(n: int) -> list[tuple[str, str]]:
    """``(class folder, file stem)`` for ``n`` REFUGE training images, 10% glaucoma."""
    n_g = min(n, max(1, round(n * REFUGE.glaucoma_fraction))) if n else 0
    plan = []
    for folder, count in zip(("Glaucoma", "Non-Glaucoma"), (n_g, n - n_g)):
        prefix = REFUGE.classes[folder]
        plan += [(folder, f"{prefix}{k + 1:04d}") for k in range(count)]
    return plan


def _disc_cup_mask(geometry: Geometry) -> Image.Image:
    """REFUGE-style mask: 0 cup, 128 disc rim, 255 elsewhere."""
    values = REFUGE.mask_values
    mask = Image.new("L", (geometry.size, geometry.size), values["background"])
    draw = ImageDraw.Draw(mask)
    for (cx, cy), r, v in ((geometry.disc_center, geometry.disc_radius, values["disc"]),
                           (geometry.cup_center, geometry.cup_radius, values["cup"])):
        draw.ellipse([cx - r, cy - r * DISC_ASPECT, cx + r, cy + r * DISC_ASPECT], fill=v)
    return mask


def _refuge_job(args: tuple[int, int, int, str]) -> tuple[bytes, bytes]:
    index, seed, size, folder = args
    rng = _rng(seed, "refuge", index, 0)
    lab = _blank_labels(int(rng.integers(2)), is_gc=REFUGE.labels[folder])
    rendered = render_fundus(lab, _rng(seed, "refuge", index, 2), size, EXTERNAL_CAMERAS["refuge"])
    buf = io.BytesIO()
    _disc_cup_mask(rendered.geometry).save(buf, "BMP")
    return _jpeg(rendered.image), buf.getvalue()


def write_refuge(root: str | os.PathLike[str], n: int, seed: int = 0, size: int = 512, workers: int = 1,
                 progress: bool = True) -> Path:
    """Write a REFUGE Training400 lookalike (JPEGs + disc/cup BMP masks) under ``root/refuge``."""
    SynthConfig(n_eval=n, seed=seed, size=size)
    lay = REFUGE
    plan = refuge_plan(n)
    return _write_with_masks(
        Path(root), lay.folder, "REFUGE", _refuge_job, [(i, seed, size, folder) for i, (folder, _) in enumerate(plan)],
        [Path(sub, folder) for folder in lay.classes for sub in (lay.image_dir, lay.mask_dir)],
        [(Path(lay.image_dir, folder, f"{stem}.jpg"), Path(lay.mask_dir, folder, f"{stem}.bmp"))
         for folder, stem in plan],
        workers, progress)


def _write_with_masks(root: Path, folder: str, what: str, job: Callable[[Any], tuple[bytes, bytes]], jobs: list[Any],
                      dirs: Sequence[Path], places: Sequence[tuple[Path, Path]], workers: int, progress: bool) -> Path:
    """An evaluation set of images with masks: ``job`` makes the ``(image, mask)`` bytes of each of ``jobs``, stored
    at the matching ``places`` (paths under ``root/folder``; ``dirs`` are made even when left empty), staged and
    then moved into place. Returns ``root/folder``."""
    with _staging(root) as stage:
        for d in dirs:
            (stage / folder / d).mkdir(parents=True)
        for (image_at, mask_at), (img, mask) in zip(places, _run(job, jobs, workers, what, progress)):
            (stage / folder / image_at).write_bytes(img)
            (stage / folder / mask_at).write_bytes(mask)
        _commit(stage, root, [folder], None)
    logger.info("wrote %d %s images to %s", len(jobs), what, root / folder)
    return root / folder


EVAL_WRITERS: Mapping[str, Callable[..., Path]] = MappingProxyType({
    "messidor2": write_messidor2, "fives": write_fives, "refuge": write_refuge,
})
assert set(EVAL_WRITERS) == set(EVAL_LAYOUTS)


def write_eval_sets(root: str | os.PathLike[str], n: int, seed: int = 0, size: int = 512, workers: int = 1,
                    names: Sequence[str] = tuple(EVAL_WRITERS), progress: bool = True) -> dict[str, Path]:
    """Write the named evaluation sets (``n`` images each); returns name -> folder."""
    unknown = sorted(set(names) - set(EVAL_WRITERS))
    if unknown:
        raise ValueError(f"unknown evaluation set(s) {unknown}; choose from {sorted(EVAL_WRITERS)}")
    return {name: EVAL_WRITERS[name](root, n, seed, size, workers, progress) for name in names}


def generate(root: str | os.PathLike[str], config: SynthConfig = SynthConfig(), workers: int = 1,
             corpus: bool = True, eval_sets: Sequence[str] = tuple(EVAL_WRITERS),
             progress: bool = True, published_sets: Sequence[str] = ()) -> dict[str, Path]:
    """Write the corpus, evaluation sets and patient-level set a :class:`SynthConfig` describes, and
    ``published_sets`` (names of :data:`~.published.PUBLISHED_WRITERS`: APTOS-2019, IDRiD, ... lookalikes
    of ``config.n_eval`` images each); returns what was written. ``root`` is claimed first (see
    :func:`synth_output`)."""
    targets: list[str] = []
    if corpus and config.n_images:
        targets += [SYNFUNDUS_IMAGE_DIR, SYNFUNDUS_CSV]
    if config.n_eval:
        targets += [EVAL_LAYOUTS[name].folder for name in eval_sets if name in EVAL_LAYOUTS]
    if config.n_patients:
        targets.append(PATIENTS_DIR)
    published = list(dict.fromkeys(published_sets)) if config.n_eval else []
    targets += published
    if not targets:
        return {}
    with synth_output(root, targets):
        out = _generate(root, config, workers, corpus, eval_sets, progress)
        if published:
            out.update(write_published_sets(root, config.n_eval, config.seed, config.size, published))
        return out


def _generate(root: str | os.PathLike[str], config: SynthConfig, workers: int, corpus: bool,
              eval_sets: Sequence[str], progress: bool) -> dict[str, Path]:
    out: dict[str, Path] = {}
    if corpus and config.n_images:
        out["synfundus"] = write_synfundus(root, config.n_images, config.seed, config.size, workers,
                                           caption_noise=config.caption_noise,
                                           low_quality_rate=config.low_quality_rate,
                                           id_offset=config.id_offset, progress=progress)
    if eval_sets and config.n_eval:
        out.update(write_eval_sets(root, config.n_eval, config.seed, config.size, workers, eval_sets, progress))
    if config.n_patients:
        out["patients"] = write_patients(root, config.n_patients, config.seed, config.size, workers,
                                         caption_noise=config.caption_noise,
                                         low_quality_rate=config.low_quality_rate,
                                         missing_eye_rate=config.missing_eye_rate, progress=progress)
    return out


# --------------------------------------------------------------------------- the output folder

_BOOKKEEPING = (LOCK_FILE, OWNER_FILE)


def _others(root: Path) -> list[str]:
    """The entries of ``root`` besides the lock file and owner marker (sorted)."""
    return sorted(p.name for p in root.iterdir() if p.name not in _BOOKKEEPING) if root.is_dir() else []


def _check_writable_here(root: Path, targets: Sequence[str]) -> None:
    """One line unless synthetic data may be written into ``root`` (nothing is written here).

    Allowed: ``root`` is missing, empty, or marked as ours; and none of the ``targets`` it would write
    (top-level names) is a symbolic link (which would lead the writes elsewhere) or a folder that
    another command's owner marker claims (an evaluation report written into ``root/fives``, say).
    """
    if root.exists() and not root.is_dir():
        raise UserError(f"{root}: exists and is not a folder; choose another output folder")
    kind = owner_kind(root)
    if kind is not None and kind != OWNER_KIND:
        raise UserError(f"{root}: holds a {kind} written by another command; choose another output folder")
    others = _others(root)
    if kind is None and others:
        raise UserError(f"{root}: the folder is not empty ({len(others)} entries) and holds no synthetic data "
                        f"of this toolkit (no {OWNER_FILE} marker); synthetic data is written only into an empty "
                        "folder or one it was written into before: choose another output folder")
    for name in targets:
        path = root / name
        if path.is_symlink():
            raise UserError(f"{path}: is a symbolic link; synthetic data is written only into real folders "
                            "(choose another output folder)")
        other = owner_kind(path) if path.is_dir() else None
        if other is not None:
            raise UserError(f"{path}: holds a {other} written by another command; choose another output folder")


@contextmanager
def synth_output(root: str | os.PathLike[str], targets: Sequence[str] = ()) -> Iterator[Path]:
    """Claim ``root`` for synthetic data while the block writes ``targets`` (its top-level names).

    The folder is checked before anything is written (:func:`_check_writable_here`: a refusal leaves
    it untouched), then its lock is taken (a second writer is refused with one line), checked again,
    and marked as ours. A block that fails before writing anything takes its marker away again, so a
    failed run into an empty folder leaves it empty; re-running into a marked folder rewrites the same
    files (the data is deterministic) and never touches any other file in it.
    """
    root = Path(root)
    _check_writable_here(root, targets)
    with output_lock(root, "synthetic data folder", remove=True):
        _check_writable_here(root, targets)
        marked_before = owner_kind(root) == OWNER_KIND
        if not marked_before:
            write_owner_marker(root, OWNER_KIND)
        try:
            yield root
        except BaseException:
            if not marked_before and not _others(root):
                (root / OWNER_FILE).unlink(missing_ok=True)
            raise


# --------------------------------------------------------------------------- plumbing


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)


def _write_csv(path: Path, header: Sequence[str], rows: Iterable[Sequence[str]]) -> None:
    with open(path, "w", encoding="utf-8", newline="") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)


def _run(fn: Callable[[Any], Any], jobs: list[Any], workers: int, desc: str, progress: bool) -> Iterator[Any]:
    """``map(fn, jobs)`` in order, in ``workers`` processes when > 1, with a tqdm bar."""
    from tqdm import tqdm

    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    bar = tqdm(total=len(jobs), desc=desc, unit="img", disable=not progress, leave=False)
    try:
        if workers == 1 or len(jobs) < 2:
            for job in jobs:
                yield fn(job)
                bar.update()
        else:
            chunk = max(1, min(16, len(jobs) // (workers * 4)))
            with ProcessPoolExecutor(max_workers=workers) as pool:
                for result in pool.map(fn, jobs, chunksize=chunk):
                    yield result
                    bar.update()
    finally:
        bar.close()


def _warn_stale(folder: Path, new: set[str]) -> None:
    """Existing files are replaced, never deleted: say so when some will not be in the new CSV."""
    if folder.is_dir():
        stale = sum(1 for p in folder.iterdir() if p.name not in new)
        if stale:
            logger.warning("%s keeps %d earlier image(s) that the new annotation file does not list", folder, stale)


@contextmanager
def _staging(root: Path) -> Iterator[Path]:
    """A hidden scratch folder inside ``root`` (same file system, so renames are atomic)."""
    root.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=".vclip-synth-", dir=root))
    try:
        yield stage
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def _commit(stage: Path, root: Path, trees: Sequence[str], last_file: str | None) -> None:
    """Move staged ``trees`` into ``root`` (a whole folder when new, else file by file), then ``last_file``."""
    for rel in trees:
        src, dst = stage / rel, root / rel
        if not dst.exists():
            dst.parent.mkdir(parents=True, exist_ok=True)
            os.replace(src, dst)
            continue
        for path in sorted(src.rglob("*")):
            target = dst / path.relative_to(src)
            if path.is_dir():
                target.mkdir(parents=True, exist_ok=True)
            else:
                os.replace(path, target)
    if last_file is not None:
        (root / last_file).parent.mkdir(parents=True, exist_ok=True)
        os.replace(stage / last_file, root / last_file)
