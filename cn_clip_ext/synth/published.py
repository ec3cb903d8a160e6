"""Generated lookalikes of ten more published fundus datasets, in their published layouts and
with the quirks their releases have (header spaces, Windows paths, ``.xlsx`` tables, name
collisions between splits, multi-row sheet headers, full-width commas, odd extensions).

Each image is rendered by :func:`~cn_clip_ext.synth.renderer.render_fundus` from labels that
follow its class where the renderer draws that finding (DR grades, glaucomatous cupping, drusen,
myopia, tessellation, vein occlusion, laser scars, macular holes and membranes); other classes
(cataract, retinitis pigmentosa ...) get an otherwise normal eye. Image ``i`` of a set depends
only on ``(seed, set, i)``. The layouts are what ``vclip-eval --data NAME=ROOT`` reads (see the
dataset table); the counts are small, not the published sizes.
"""
from __future__ import annotations

import csv
import io
import logging
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
from PIL import Image

from ..extras import require
from ..layouts import FINDINGS, READABILITY_COLUMNS
from .renderer import EXTERNAL_CAMERAS, render_fundus

logger = logging.getLogger(__name__)

STREAM_BASE = 100
"""Random streams of these sets start here (the corpus and the first sets use 0-4)."""


def _labels(eye: int, **findings: int) -> dict[str, Any]:
    lab: dict[str, Any] = {"eyes_side": eye, "dr_grade": 0, "is_dm": 0, **{f: 0 for f in FINDINGS}}
    lab.update(findings)
    lab.update({"retinal_region_quality_score": 0.9, **{c: 1 for c in READABILITY_COLUMNS}})
    return lab


FINDING_OF: Mapping[str, dict[str, int]] = {
    "dr_1": {"dr_grade": 1}, "dr_2": {"dr_grade": 2}, "dr_3": {"dr_grade": 3}, "dr_4": {"dr_grade": 4},
    "dr": {"dr_grade": 2}, "glaucoma": {"is_gc": 1}, "amd": {"is_amd": 1}, "drusen": {"is_amd": 1},
    "myopia": {"is_pm": 1, "is_tessellated": 1}, "tessellation": {"is_tessellated": 1},
    "brvo": {"is_rvo": 1}, "crvo": {"is_rvo": 1}, "laser_scars": {"is_treated": 1}, "macular_hole": {"is_mh": 1},
    "erm": {"is_em": 1}, "optic_disc_pallor": {"is_aon": 1}, "hypertensive_retinopathy": {"is_htr": 1},
    "maculopathy": {"is_md": 1}, "dme_risk_1": {"dr_grade": 2, "is_dme": 1}, "dme_risk_2": {"dr_grade": 3, "is_dme": 1},
}
"""What the renderer draws for a class; a class not here is drawn as a normal eye."""


def render(classes: Sequence[str], seed: int, stream: int, index: int, size: int) -> Image.Image:
    lab = _labels(index % 2)
    for c in classes:
        for key, value in FINDING_OF.get(c, {}).items():
            lab[key] = max(int(lab.get(key, 0)), value)
    rng = np.random.default_rng([seed, STREAM_BASE + stream, index, 2])
    return render_fundus(lab, rng, size, EXTERNAL_CAMERAS["refuge"]).image


def _save(image: Image.Image, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    fmt = "PNG" if path.suffix.lower() == ".png" else "JPEG"
    image.save(buf, fmt, **({"quality": 92} if fmt == "JPEG" else {"compress_level": 1}))
    path.write_bytes(buf.getvalue())


def _csv(path: Path, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(header)
        w.writerows(rows)


def _xlsx(path: Path, rows: Sequence[Sequence[Any]]) -> None:
    openpyxl = require("openpyxl", extra="eval", purpose=f"{path}: writing .xlsx tables")

    path.parent.mkdir(parents=True, exist_ok=True)
    book = openpyxl.Workbook()
    sheet = book.active
    for row in rows:
        sheet.append(list(row))
    book.save(path)


def _draw(rng: np.random.Generator, n: int, choices: Sequence[Any], p: Sequence[float] | None = None) -> list[Any]:
    picks = rng.choice(len(choices), size=n, p=p)
    return [choices[int(k)] for k in picks]


DR_P = (0.5, 0.12, 0.2, 0.1, 0.08)


def write_aptos(root: Path, n: int, seed: int, size: int) -> Path:
    """APTOS-2019: ``train.csv`` (``id_code``, ``diagnosis``) and ``train_images/{id_code}.png``."""
    out = root / "aptos2019"
    grades = _draw(np.random.default_rng([seed, STREAM_BASE, 0]), n, range(5), DR_P)
    rows = []
    for i, g in enumerate(grades):
        code = f"{(i * 2654435761 + seed) % (1 << 48):012x}"
        _save(render([f"dr_{g}"] if g else [], seed, 0, i, size), out / "train_images" / f"{code}.png")
        rows.append((code, g))
    _csv(out / "train.csv", ["id_code", "diagnosis"], rows)
    return out


def write_idrid(root: Path, n: int, seed: int, size: int) -> Path:
    """IDRiD disease grading: both splits name their images ``IDRiD_001`` ...; the label CSVs'
    third header is ``"Risk of macular edema "`` (trailing space) and rows end in empty cells."""
    out = root / "idrid" / "B. Disease Grading"
    rng = np.random.default_rng([seed, STREAM_BASE + 1, 0])
    n_train = max(1, round(n * 0.8))
    for split, count, letter, tag in (("Training", n_train, "a", "Training"), ("Testing", n - n_train, "b", "Testing")):
        rows = []
        for k in range(count):
            g = int(rng.choice(5, p=DR_P))
            risk = 0 if g < 2 else int(rng.integers(1, 3))
            name = f"IDRiD_{k + 1:03d}"
            cls = ([f"dr_{g}"] if g else []) + ([f"dme_risk_{risk}"] if risk else [])
            _save(render(cls, seed, 1, k + (0 if letter == "a" else 10_000), size),
                  out / "1. Original Images" / f"{letter}. {split} Set" / f"{name}.jpg")
            rows.append((name, g, risk, "", ""))
        _csv(out / "2. Groundtruths" / f"{letter}. IDRiD_Disease Grading_{tag} Labels.csv",
             ["Image name", "Retinopathy grade", "Risk of macular edema ", "", ""], rows)
    return out.parent


def write_eyepacs(root: Path, n: int, seed: int, size: int) -> Path:
    """EyePACS / Kaggle DR 2015: ``trainLabels.csv`` (``image``, ``level``) + ``train/*.jpeg`` and
    ``retinopathy_solution.csv`` (``image``, ``level``, ``Usage``) + ``test/*.jpeg``."""
    out = root / "eyepacs"
    rng = np.random.default_rng([seed, STREAM_BASE + 2, 0])
    n_train = max(1, n // 2)
    for split, table, count, extra in (("train", "trainLabels.csv", n_train, False),
                                       ("test", "retinopathy_solution.csv", n - n_train, True)):
        rows = []
        for k in range(count):
            patient, eye = divmod(k, 2)
            name = f"{10 + patient * 3 + (0 if split == 'train' else 1)}_{'left' if eye == 0 else 'right'}"
            g = int(rng.choice(5, p=DR_P))
            _save(render([f"dr_{g}"] if g else [], seed, 2, k + (0 if split == "train" else 10_000), size),
                  out / split / f"{name}.jpeg")
            rows.append((name, g, "Public" if k % 3 else "Private") if extra else (name, g))
        _csv(out / table, ["image", "level", "Usage"] if extra else ["image", "level"], rows)
    return out


def write_deepdrid(root: Path, n: int, seed: int, size: int) -> Path:
    """DeepDRiD regular fundus: per split ``regular-fundus-{training,validation}.csv`` with Windows
    ``image_path`` values and the eye's grade in ``left_eye_DR_Level`` or ``right_eye_DR_Level``,
    images in ``Images/{patient}/``; the evaluation split's grades in ``Challenge1_labels.xlsx``."""
    out = root / "deepdrid" / "regular_fundus_images"
    rng = np.random.default_rng([seed, STREAM_BASE + 3, 0])
    header = ["patient_id", "image_id", "image_path", "Overall quality", "left_eye_DR_Level",
              "right_eye_DR_Level", "patient_DR_Level", "Clarity", "Field definition", "Artifact"]
    patients = max(3, n // 4)
    per_split = {"training": patients - 2 * (patients // 4), "validation": patients // 4,
                 "evaluation": patients // 4}
    pid, index = 1, 0
    for split, count in per_split.items():
        folder = out / (f"regular-fundus-{split}" if split != "evaluation" else "Online-Challenge1&2-Evaluation")
        rows, test_rows = [], []
        for _ in range(count):
            left, right = (int(rng.choice(5, p=DR_P)) for _ in range(2))
            for eye, grade in (("l", left), ("r", right)):
                for shot in (1, 2):
                    image_id = f"{pid}_{eye}{shot}"
                    _save(render([f"dr_{grade}"] if grade else [], seed, 3, index, size),
                          folder / "Images" / str(pid) / f"{image_id}.jpg")
                    index += 1
                    rows.append([pid, image_id, f"\\regular-fundus-{split}\\{pid}\\{image_id}.jpg", 1,
                                 grade if eye == "l" else "", grade if eye == "r" else "", max(left, right), 8, 8, 0])
                    test_rows.append([image_id, grade])
            pid += 1
        if split == "evaluation":
            _xlsx(folder / "Challenge1_labels.xlsx", [["image_id", "DR_Levels"], *test_rows])
        else:
            _csv(folder / f"regular-fundus-{split}.csv", header, rows)
    return out.parent


ODIR_KEYWORDS: Mapping[str, tuple[str, ...]] = {
    "N": ("normal fundus",), "D": ("mild nonproliferative retinopathy", "moderate non proliferative retinopathy",
                                   "severe nonproliferative retinopathy", "proliferative diabetic retinopathy"),
    "G": ("glaucoma", "suspected glaucoma"), "C": ("cataract",), "A": ("dry age-related macular degeneration",
                                                                      "wet age-related macular degeneration"),
    "H": ("hypertensive retinopathy",), "M": ("pathological myopia", "high myopia"),
    "O": ("epiretinal membrane", "laser spot", "drusen", "macular hole"),
}
ODIR_RENDER = {"N": [], "D": ["dr_2"], "G": ["glaucoma"], "C": [], "A": ["amd"], "H": ["hypertensive_retinopathy"],
               "M": ["myopia"], "O": ["erm"]}


def write_odir(root: Path, n: int, seed: int, size: int) -> Path:
    """ODIR-5K: ``ODIR-5K_Training_Annotations(Updated)_V2.xlsx`` (one row per patient, per-eye
    keywords joined by full-width commas, patient-level N..O flags) and
    ``ODIR-5K_Training_Dataset/{ID}_{left,right}.jpg``; some eyes carry a ``lens dust`` remark."""
    out = root / "odir5k"
    rng = np.random.default_rng([seed, STREAM_BASE + 4, 0])
    header = ["ID", "Patient Age", "Patient Sex", "Left-Fundus", "Right-Fundus", "Left-Diagnostic Keywords",
              "Right-Diagnostic Keywords", *"NDGCAHMO"]
    rows: list[list[Any]] = [header]
    for pid in range(max(1, n // 2)):
        eyes = {}
        for side in ("left", "right"):
            labels = ["N"] if rng.random() < 0.35 else sorted(set(_draw(rng, 1 + int(rng.random() < 0.5), "DGCAHMO")),
                                                               key="NDGCAHMO".index)
            words = [ODIR_KEYWORDS[lab][int(rng.integers(len(ODIR_KEYWORDS[lab])))] for lab in labels]
            if rng.random() < 0.25:
                words.append("lens dust")
            eyes[side] = (labels, "，".join(words))
            render_as = [c for lab in labels for c in ODIR_RENDER[lab]]
            _save(render(render_as, seed, 4, 2 * pid + (side == "right"), size),
                  out / "ODIR-5K_Training_Dataset" / f"{pid}_{side}.jpg")
        flags = set(eyes["left"][0]) | set(eyes["right"][0])
        if flags != {"N"}:
            flags.discard("N")
        rows.append([pid, int(rng.integers(30, 80)), "Female" if pid % 2 else "Male", f"{pid}_left.jpg",
                     f"{pid}_right.jpg", eyes["left"][1], eyes["right"][1], *[int(c in flags) for c in "NDGCAHMO"]])
    _xlsx(out / "ODIR-5K_Training_Annotations(Updated)_V2.xlsx", rows)
    return out


RFMID_COLUMNS = ("DR", "ARMD", "MH", "DN", "MYA", "BRVO", "TSLN", "ERM", "LS", "MS", "CSR", "ODC", "CRVO", "TV",
                 "AH", "ODP", "ODE", "ST", "AION", "PT", "RT", "RS", "CRS", "EDN", "RPEC", "MHL", "RP", "CWS", "CB",
                 "ODPM", "PRH", "MNF", "HR", "CRAO", "TD", "CME", "PTCR", "CF", "VH", "MCA", "VS", "BRAO", "PLQ",
                 "HPED", "CL")
"""RFMiD's 45 disease columns after ``ID`` and ``Disease_Risk``, in the published order."""
RFMID_RENDER = {"DR": ["dr_2"], "ARMD": ["amd"], "DN": ["amd"], "MYA": ["myopia"], "BRVO": ["brvo"],
                "TSLN": ["tessellation"], "ERM": ["erm"], "LS": ["laser_scars"], "ODC": ["glaucoma"],
                "CRVO": ["crvo"], "ODP": ["optic_disc_pallor"], "MHL": ["macular_hole"]}
RFMID_COMMON = ("DR", "ARMD", "MH", "DN", "MYA", "BRVO", "TSLN", "ODC", "LS", "ERM", "MHL", "ODP")


def write_rfmid(root: Path, n: int, seed: int, size: int) -> Path:
    """RFMiD: ``1. Original Images/{a. Training,b. Validation,c. Testing} Set/{ID}.png`` and
    ``2. Groundtruths/{a,b,c}. RFMiD_{Training,Validation,Testing}_Labels.csv`` (``ID``,
    ``Disease_Risk`` and the 45 disease columns)."""
    out = root / "rfmid"
    rng = np.random.default_rng([seed, STREAM_BASE + 5, 0])
    counts = (n - 2 * (n // 5), n // 5, n // 5)
    image_id = 1
    for (letter, split), count in zip((("a", "Training"), ("b", "Validation"), ("c", "Testing")), counts):
        rows = []
        for _ in range(count):
            present = [] if rng.random() < 0.3 else sorted(set(_draw(rng, 1 + int(rng.random() < 0.3), RFMID_COMMON)))
            _save(render([c for p in present for c in RFMID_RENDER.get(p, [])], seed, 5, image_id, size),
                  out / "1. Original Images" / f"{letter}. {split} Set" / f"{image_id}.png")
            rows.append([image_id, int(bool(present)), *[int(c in present) for c in RFMID_COLUMNS]])
            image_id += 1
        _csv(out / "2. Groundtruths" / f"{letter}. RFMiD_{split}_Labels.csv", ["ID", "Disease_Risk", *RFMID_COLUMNS], rows)
    return out


def write_papila(root: Path, n: int, seed: int, size: int) -> Path:
    """PAPILA: ``ClinicalData/patient_data_{od,os}.xlsx`` (a header row holding ``Diagnosis``, a
    row of units and a blank row before the patients ``#002`` ...; 0 healthy, 1 glaucoma,
    2 suspect) and ``FundusImages/RET{id}{OD,OS}.jpg``."""
    out = root / "papila"
    rng = np.random.default_rng([seed, STREAM_BASE + 6, 0])
    sheets: dict[str, list[list[Any]]] = {
        eye: [["", "Age", "Gender", "Diagnosis", "dioptre_1", "dioptre_2", "astigmatism"],
              ["ID", "years", "0 male / 1 female", "0 healthy / 1 glaucoma / 2 suspect", "", "", ""],
              [None] * 7] for eye in ("OD", "OS")}
    for k in range(max(1, n // 2)):
        pid = 2 + 3 * k
        for eye in ("OD", "OS"):
            d = int(rng.choice(3, p=(0.6, 0.2, 0.2)))
            sheets[eye].append([f"#{pid:03d}", int(rng.integers(30, 85)), int(rng.integers(2)), d, -0.5, 0.25, 90])
            _save(render(["glaucoma"] if d == 1 else [], seed, 6, 2 * k + (eye == "OS"), size),
                  out / "FundusImages" / f"RET{pid:03d}{eye}.jpg")
    for eye, rows in sheets.items():
        _xlsx(out / "ClinicalData" / f"patient_data_{eye.lower()}.xlsx", rows)
    return out


def write_acrima(root: Path, n: int, seed: int, size: int) -> Path:
    """ACRIMA: ``Database/Images/Im{NNN}_ACRIMA.jpg`` (normal) and ``Im{NNN}_g_ACRIMA.jpg`` (glaucoma)."""
    out = root / "acrima" / "Database" / "Images"
    for k in range(n):
        glaucoma = k % 9 < 5
        _save(render(["glaucoma"] if glaucoma else [], seed, 7, k, size),
              out / f"Im{k + 1:03d}_{'g_' if glaucoma else ''}ACRIMA.jpg")
    return out.parent.parent


def write_airogs(root: Path, n: int, seed: int, size: int) -> Path:
    """AIROGS: ``train_labels.csv`` (``challenge_id``, ``class`` RG/NRG) and the images
    ``TRAIN{NNNNNN}.jpg`` spread over the release's numbered folders ``0/``, ``1/`` ..."""
    out = root / "airogs"
    rows = []
    for k in range(n):
        rg = k % 4 == 0
        cid = f"TRAIN{k:06d}"
        _save(render(["glaucoma"] if rg else [], seed, 8, k, size), out / str(k % 3) / f"{cid}.jpg")
        rows.append((cid, "RG" if rg else "NRG"))
    _csv(out / "train_labels.csv", ["challenge_id", "class"], rows)
    return out


JSIEC_RENDERED: Mapping[str, list[str]] = {
    "0.0.Normal": [], "0.1.Tessellated fundus": ["tessellation"], "0.3.DR1": ["dr_1"], "1.0.DR2": ["dr_2"],
    "1.1.DR3": ["dr_3"], "10.0.Possible glaucoma": ["glaucoma"], "9.Pathological myopia": ["myopia"],
    "2.0.BRVO": ["brvo"], "8.MH": ["macular_hole"], "27.Laser Spots": ["laser_scars"],
}
"""The JSIEC class folders these lookalikes fill (the release has 39)."""


def write_jsiec(root: Path, n: int, seed: int, size: int) -> Path:
    """JSIEC (1000 fundus images, 39 classes): ``1000images/{class folder}/{uuid}..JPG`` (the
    release's double dot), one folder per class."""
    out = root / "jsiec" / "1000images"
    folders = list(JSIEC_RENDERED)
    for k in range(n):
        folder = folders[k % len(folders)]
        _save(render(JSIEC_RENDERED[folder], seed, 9, k, size),
              out / folder / f"1ffa{k:04x}-8d87-11e8-9daf-6045cb817f5b..JPG")
    return out.parent


PUBLISHED_WRITERS: Mapping[str, Callable[[Path, int, int, int], Path]] = {
    "aptos2019": write_aptos, "idrid": write_idrid, "eyepacs": write_eyepacs, "deepdrid": write_deepdrid,
    "odir5k": write_odir, "rfmid": write_rfmid, "papila": write_papila, "acrima": write_acrima,
    "airogs": write_airogs, "jsiec": write_jsiec,
}
"""Folder name -> writer (``idrid`` serves both the ``idrid_dr`` and ``idrid_dme`` entries)."""


def write_published_sets(root: str | Path, n: int, seed: int = 0, size: int = 96,
                         names: Sequence[str] = tuple(PUBLISHED_WRITERS)) -> dict[str, Path]:
    """Write the named lookalikes (about ``n`` images each) under ``root``; returns name -> folder."""
    unknown = sorted(set(names) - set(PUBLISHED_WRITERS))
    if unknown:
        raise ValueError(f"unknown published set(s) {unknown}; choose from {sorted(PUBLISHED_WRITERS)}")
    root = Path(root)
    out = {name: PUBLISHED_WRITERS[name](root, n, seed, size) for name in names}
    logger.info("wrote %d published-layout lookalikes under %s", len(out), root)
    return out
