"""Immutable descriptions of the data the project reads: SynFundus-1M and three evaluation sets.

Everything here is plain data (tuples, read-only mappings, frozen dataclasses) shared by the
synthetic generator (:mod:`cn_clip_ext.synth.generator`), the LMDB builder and the evaluation
adapters, so that all of them agree on file names, columns and label meanings.

SynFundus-1M conventions used by this project (the public release could not be checked, so
these are documented choices):

* ``eyes_side``: ``0`` = left eye (OS, optic disc on the image's left), ``1`` = right eye
  (OD, disc on the right); see :data:`EYE_SIDES`.
* every ``is_*`` / ``has_lesion`` column is ``0``/``1``; ``dr_grade`` is the ICDR grade 0-4.
* ``retinal_region_quality_score`` is a float in [0, 1] (3 decimals); below
  :data:`LOW_QUALITY_SCORE` the photo is blurred, dark or hazy.
* ``diagnosticAdvice`` is a Chinese free-text caption: one sentence per finding, each ending
  in ``。``; a normal fundus gets a "no abnormality" sentence.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Mapping

# --------------------------------------------------------------------------- SynFundus-1M

SYNFUNDUS_CSV = "SynFundus-1M_annotation.csv"
"""The annotation file at the dataset root."""
SYNFUNDUS_IMAGE_DIR = "Fundus"
"""Folder (under the dataset root) holding ``{id}.png``."""

SYNFUNDUS_COLUMNS: tuple[str, ...] = (
    "file_md5", "file_name", "eyes_side", "is_abnormal", "is_amd", "is_aon", "is_crp", "is_dm",
    "is_dme", "dr_grade", "is_em", "is_gc", "is_md", "is_mh", "is_htr", "has_lesion", "is_pm",
    "is_rvo", "is_tessellated", "is_treated", "is_fundus", "is_macular_readable",
    "is_optic_disc_readable", "is_retinal_region_readable", "retinal_region_quality_score",
    "diagnosticAdvice",
)
"""The annotation CSV's header, in the published order."""
SYNFUNDUS_IMAGE_COL = "file_name"
"""The column naming each row's image, relative to :data:`SYNFUNDUS_IMAGE_DIR`."""
SYNFUNDUS_TEXT_COL = "diagnosticAdvice"
"""The column holding each row's caption."""
SYNFUNDUS_NOT_LABELS: tuple[str, ...] = ("file_md5", SYNFUNDUS_IMAGE_COL, SYNFUNDUS_TEXT_COL)
"""The columns that are not labels of the image (its checksum, its path, its caption)."""

FINDINGS: tuple[str, ...] = (
    "is_amd", "is_aon", "is_crp", "is_dme", "is_em", "is_gc", "is_md", "is_mh", "is_htr",
    "is_pm", "is_rvo", "is_tessellated", "is_treated",
)
"""Binary ocular findings (``dr_grade`` > 0 is the remaining one); each has caption phrases."""

READABILITY_COLUMNS: tuple[str, ...] = (
    "is_macular_readable", "is_optic_disc_readable", "is_retinal_region_readable",
)

INT_COLUMNS: tuple[str, ...] = tuple(
    c for c in SYNFUNDUS_COLUMNS
    if c not in (*SYNFUNDUS_NOT_LABELS, "retinal_region_quality_score")
)
"""Columns holding integers (``eyes_side``, the 0/1 flags and ``dr_grade``)."""

EYE_SIDES: Mapping[int, str] = MappingProxyType({0: "left", 1: "right"})
"""``eyes_side`` value -> eye (left = OS, right = OD)."""

DR_GRADES: Mapping[int, str] = MappingProxyType({
    0: "no DR", 1: "mild NPDR", 2: "moderate NPDR", 3: "severe NPDR", 4: "proliferative DR",
})
"""ICDR diabetic retinopathy grades."""

LABEL_NAMES: Mapping[str, tuple[str, str]] = MappingProxyType({
    "is_abnormal": ("any abnormality", "异常"),
    "is_amd": ("age-related macular degeneration", "年龄相关性黄斑变性"),
    "is_aon": ("optic atrophy (pale disc)", "视神经萎缩"),
    "is_crp": ("chorioretinopathy (pigment clumps)", "脉络膜视网膜病变"),
    "is_dm": ("diabetes mellitus", "糖尿病"),
    "is_dme": ("diabetic macular oedema", "糖尿病黄斑水肿"),
    "dr_grade": ("diabetic retinopathy grade (ICDR 0-4)", "糖尿病视网膜病变分级"),
    "is_em": ("epiretinal membrane", "黄斑前膜"),
    "is_gc": ("glaucoma", "青光眼"),
    "is_md": ("maculopathy (pigment mottling)", "黄斑病变"),
    "is_mh": ("macular hole", "黄斑裂孔"),
    "is_htr": ("hypertensive retinopathy", "高血压性视网膜病变"),
    "has_lesion": ("any retinal lesion", "病灶"),
    "is_pm": ("pathologic myopia", "病理性近视"),
    "is_rvo": ("retinal vein occlusion", "视网膜静脉阻塞"),
    "is_tessellated": ("tessellated fundus", "豹纹状眼底"),
    "is_treated": ("treated (laser photocoagulation scars)", "激光治疗后"),
    "is_fundus": ("is a fundus photograph", "眼底照片"),
})
"""Column -> (English meaning, Chinese name). ``is_crp``/``is_md`` meanings are this project's reading."""

LOW_QUALITY_SCORE = 0.6
"""``retinal_region_quality_score`` below this marks a degraded (blurred/dark/hazy) photo."""

# --------------------------------------------------------------------------- patient level (RET-CLIP)

PATIENT_COLUMNS: tuple[str, ...] = ("patient_id", "left_image", "right_image", "report")
"""The required columns of a patient-level CSV: id, left and right eye image paths (relative to
the image root; either may be empty, not both) and the patient's report."""
PATIENTS_DIR = "patients"
"""Folder (under the synthetic data root) of the generated patient-level set."""
PATIENTS_CSV = "patients.csv"
PATIENTS_IMAGE_DIR = "images"
"""Folder (under :data:`PATIENTS_DIR`) holding ``{patient_id}_{L|R}.png``."""
PATIENT_LABEL_COLUMNS: tuple[str, ...] = (
    "is_dm", "dr_grade", "right_dr_grade", "left_dr_grade", "is_abnormal", *FINDINGS,
)
"""Label columns of the generated ``patients.csv``: ``dr_grade`` is the worse eye's grade and
every finding flag is 1 when either eye has it."""
EYE_NAMES_CN: Mapping[str, str] = MappingProxyType({"right": "右眼", "left": "左眼"})
"""How a report names each eye (reports describe the right eye first)."""

# --------------------------------------------------------------------------- captions

CAPTION_KEYWORDS: Mapping[str, tuple[str, ...]] = MappingProxyType({
    "dr": ("糖尿病视网膜病变",),
    "is_amd": ("年龄相关性黄斑变性", "玻璃膜疣"),
    "is_aon": ("视神经萎缩",),
    "is_crp": ("脉络膜视网膜病变", "色素沉着"),
    "is_dme": ("黄斑水肿",),
    "is_em": ("前膜",),
    "is_gc": ("青光眼",),
    "is_md": ("黄斑病变", "色素紊乱"),
    "is_mh": ("裂孔",),
    "is_htr": ("高血压",),
    "is_pm": ("近视",),
    "is_rvo": ("静脉阻塞",),
    "is_tessellated": ("豹纹",),
    "is_treated": ("激光",),
})
"""Finding -> words of which every caption phrase for it contains one (and no other's phrase does).

``"dr"`` stands for ``dr_grade > 0``. Used by tests and by anyone parsing captions.
"""

NORMAL_KEYWORD = "未见明显"
"""Every "normal fundus" phrase contains this."""

# --------------------------------------------------------------------------- evaluation sets


@dataclass(frozen=True)
class Messidor2Layout:
    """Kaggle "messidor2 DR grades" (adjudicated) layout under ``<root>/<folder>``."""

    folder: str = "messidor2"
    csv: str = "messidor_data.csv"
    image_dir: str = "IMAGES"
    columns: tuple[str, ...] = ("image_id", "adjudicated_dr_grade", "adjudicated_dme",
                                "adjudicated_gradable")
    grades: Mapping[int, str] = field(default_factory=lambda: DR_GRADES)
    """``adjudicated_dr_grade`` (ICDR); empty when ``adjudicated_gradable`` is 0."""
    dme: Mapping[int, str] = field(default_factory=lambda: MappingProxyType({0: "no DME", 1: "referable DME"}))


@dataclass(frozen=True)
class FivesLayout:
    """FIVES: ``<root>/<folder>/{train,test}/Original/{n}_{C}.png`` plus vessel masks.

    ``n`` counts from 1 within each split, classes in contiguous blocks (A, D, G, N);
    ``Ground truth/`` holds the binary vessel mask of the same name.
    """

    folder: str = "fives"
    splits: tuple[str, ...] = ("train", "test")
    image_dir: str = "Original"
    mask_dir: str = "Ground truth"
    classes: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({
        "A": "age-related macular degeneration", "D": "diabetic retinopathy",
        "G": "glaucoma", "N": "normal",
    }))
    """Suffix -> class, in block order."""
    train_fraction: float = 0.75
    """600 of the 800 real images are training images."""
    pattern: str = "{n}_{cls}.png"


@dataclass(frozen=True)
class RefugeLayout:
    """REFUGE (challenge 2018) training set: ``Training400/{Glaucoma,Non-Glaucoma}/[gn]NNNN.jpg``.

    The disc/cup masks are BMPs of the same stem with 0 = cup, 128 = disc rim, 255 = rest.
    """

    folder: str = "refuge"
    image_dir: str = "Training400"
    classes: Mapping[str, str] = field(default_factory=lambda: MappingProxyType(
        {"Glaucoma": "g", "Non-Glaucoma": "n"}))
    """Class folder -> file-name prefix."""
    labels: Mapping[str, int] = field(default_factory=lambda: MappingProxyType(
        {"Glaucoma": 1, "Non-Glaucoma": 0}))
    pattern: str = "{prefix}{n:04d}.jpg"
    mask_dir: str = "Annotation-Training400/Disc_Cup_Masks"
    mask_pattern: str = "{prefix}{n:04d}.bmp"
    mask_values: Mapping[str, int] = field(default_factory=lambda: MappingProxyType(
        {"cup": 0, "disc": 128, "background": 255}))
    glaucoma_fraction: float = 0.1
    """40 of the 400 real training images show glaucoma."""


MESSIDOR2 = Messidor2Layout()
FIVES = FivesLayout()
REFUGE = RefugeLayout()

EVAL_LAYOUTS: Mapping[str, Messidor2Layout | FivesLayout | RefugeLayout] = MappingProxyType({
    "messidor2": MESSIDOR2, "fives": FIVES, "refuge": REFUGE,
})
"""Evaluation set name -> its layout (the name is also the default folder)."""
