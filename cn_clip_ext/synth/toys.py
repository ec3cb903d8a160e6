"""Toy data in memory for tests and demos: ``data="toy:N"`` image-caption pairs and
``data="toy-patients:N"`` patient-level (RET-CLIP) samples.

Patient items have the shape :class:`~.lmdb_reader.LmdbPatientDataset` gives, so a trainer handles both
alike: ``(left_image, right_image, has_left, has_right, token_ids)``, a missing eye being a zero
tensor with its ``has_*`` flag ``False``.
"""
from __future__ import annotations

import re
from typing import Mapping, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from ..lmdb.reader import PatientItem, patient_item
from ..layouts import EYE_NAMES_CN
from ..lmdb.rows import PATIENTS_KIND
from ..model.tokenizer import Tokenizer

__all__ = ["TOY_CAPTIONS", "TOY_LABELS", "TensorPairs", "make_toy_pairs", "parse_toy_spec", "toy_splits",
           "TOY_PATIENTS_PREFIX", "TOY_EYE_PHRASES", "TensorPatients", "make_toy_patients", "parse_toy_patients_spec",
           "toy_patient_report", "toy_patient_splits"]

TOY_PATIENTS_PREFIX = "toy-patients"
"""``data="toy-patients:N"`` asks for :func:`toy_patient_splits` with ``N`` training patients."""
TOY_EYE_PHRASES: tuple[str, ...] = (
    "未见明显异常", "轻度非增殖性糖尿病视网膜病变", "中度非增殖性糖尿病视网膜病变", "疑似青光眼",
)
"""What a toy report says of an eye of each toy class (the classes of ``make_toy_pairs``)."""
_DR_CLASSES = (1, 2)
_SPEC = re.compile(rf"{TOY_PATIENTS_PREFIX}(?::(\d+))?")


class TensorPairs(Dataset):
    """In-memory ``(image, token_ids)`` pairs, optionally with a ``labels`` table."""

    def __init__(self, images: torch.Tensor, tokens: torch.Tensor,
                 labels: Mapping[str, Sequence[int]] | None = None):
        if len(images) != len(tokens):
            raise ValueError("images and tokens differ in length")
        self.images, self.tokens = images, tokens
        self.labels = {k: list(v) for k, v in (labels or {}).items()}

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.images[index], self.tokens[index]


# -- a generated toy set: class-dependent fundus-like discs with matching captions -------------
TOY_CAPTIONS = (
    "眼底未见明显异常，建议定期复查。",
    "轻度非增殖性糖尿病视网膜病变，建议控制血糖。",
    "中度非增殖性糖尿病视网膜病变，建议眼科随诊。",
    "疑似青光眼，视杯扩大，建议进一步检查眼压。",
)
TOY_LABELS = (  # (dr_grade, is_gc, is_amd) of each toy class
    (0, 0, 0), (1, 0, 0), (2, 0, 0), (0, 1, 0),
)


def make_toy_pairs(n: int, image_size: int, seed: int = 0, context_length: int = 52) -> TensorPairs:
    """``n`` normalised images of four visual classes with their captions and labels.

    Each class has its own colour and spot pattern on a round field of view, plus noise, so a
    model can learn the pairing within a few dozen steps on a CPU.
    """
    gen = torch.Generator().manual_seed(seed)
    classes = torch.arange(n) % len(TOY_CAPTIONS)
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, image_size), torch.linspace(-1, 1, image_size), indexing="ij")
    disc = ((xx**2 + yy**2) < 0.9).float()
    palette = torch.tensor([[0.8, 0.35, 0.2], [0.7, 0.25, 0.15], [0.6, 0.3, 0.3], [0.85, 0.5, 0.2]])
    images = torch.empty(n, 3, image_size, image_size)
    for i in range(n):
        c = int(classes[i])
        base = palette[c].view(3, 1, 1) * disc
        spots = torch.zeros(image_size, image_size)
        for _ in range(2 * c + 1):
            cy, cx = (torch.rand(2, generator=gen) * 1.2 - 0.6).tolist()
            spots += ((xx - cx) ** 2 + (yy - cy) ** 2 < 0.01).float()
        img = base + 0.5 * spots.clamp(max=1) * disc * (1 if c != 3 else -1)
        img = img + 0.05 * torch.randn(3, image_size, image_size, generator=gen)
        images[i] = (img.clamp(0, 1) - 0.45) / 0.27
    tokens = Tokenizer(context_length)(list(TOY_CAPTIONS))[classes]
    labels = {name: [TOY_LABELS[int(c)][j] for c in classes] for j, name in enumerate(("dr_grade", "is_gc", "is_amd"))}
    return TensorPairs(images, tokens, labels)


def parse_toy_spec(spec: str) -> int | None:
    """``"toy:N"`` -> N; anything else -> None."""
    if not spec.startswith("toy"):
        return None
    _, _, num = spec.partition(":")
    try:
        n = int(num) if num else 512
    except ValueError:
        return None
    return n


def toy_splits(spec: str, image_size: int, seed: int, context_length: int) -> tuple[TensorPairs, TensorPairs]:
    """Train and valid toy sets for ``data="toy:N"`` (valid has N // 4 items, other noise)."""
    n = parse_toy_spec(spec) or 512
    return (make_toy_pairs(n, image_size, seed, context_length),
            make_toy_pairs(max(8, n // 4), image_size, seed + 7919, context_length))


class TensorPatients(Dataset):
    """In-memory patient samples: stacked eye images, presence flags, token ids, optional labels."""

    kind = PATIENTS_KIND

    def __init__(self, left: torch.Tensor, right: torch.Tensor, has_left: torch.Tensor, has_right: torch.Tensor,
                 tokens: torch.Tensor, labels: Mapping[str, Sequence[int]] | None = None):
        n = len(tokens)
        if not all(len(t) == n for t in (left, right, has_left, has_right)):
            raise ValueError("left, right, has_left, has_right and tokens differ in length")
        if bool((~(has_left.bool() | has_right.bool())).any()):
            raise ValueError("every patient needs at least one eye")
        self.left, self.right = left, right
        self.has_left, self.has_right = has_left.bool(), has_right.bool()
        self.tokens = tokens
        self.labels = {k: list(v) for k, v in (labels or {}).items()}

    def __len__(self) -> int:
        return len(self.tokens)

    def __getitem__(self, index: int) -> PatientItem:
        left = self.left[index] if self.has_left[index] else None
        right = self.right[index] if self.has_right[index] else None
        return patient_item(left, right, self.tokens[index])


def toy_patient_report(right_class: int, left_class: int) -> str:
    """The toy report of a patient: ``右眼：…；左眼：…。`` (one sentence when both eyes are normal)."""
    if right_class == left_class == 0:
        return "双眼未见明显异常。"
    return "；".join(f"{EYE_NAMES_CN[eye]}：{TOY_EYE_PHRASES[c]}"
                    for eye, c in (("right", right_class), ("left", left_class))) + "。"


def make_toy_patients(n: int, image_size: int, seed: int = 0, context_length: int = 52,
                      missing_rate: float = 0.1) -> TensorPatients:
    """``n`` toy patients: both eyes drawn from the four visual classes of ``make_toy_pairs``.

    Patient ``i`` has class ``i % 4`` in both eyes, except that in a DR patient the second eye
    has the other DR grade half of the time; ``missing_rate`` of the patients lack one eye
    (either side). The report names each eye's class (also for a missing photo); ``labels`` holds
    ``dr_grade`` (worse eye), ``right_dr_grade``, ``left_dr_grade``, ``is_gc`` and ``is_amd``.
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    if not 0.0 <= missing_rate < 1.0:
        raise ValueError(f"missing_rate must be in [0, 1), got {missing_rate}")
    rng = np.random.default_rng([seed, n])
    classes = np.empty((n, 2), dtype=np.int64)  # (right, left)
    missing = np.zeros((n, 2), dtype=bool)
    for i in range(n):
        c = i % len(TOY_EYE_PHRASES)
        other = sum(_DR_CLASSES) - c if c in _DR_CLASSES and rng.random() < 0.5 else c
        classes[i] = (c, other) if rng.random() < 0.5 else (other, c)
        if rng.random() < missing_rate:
            missing[i, int(rng.integers(2))] = True
    # eye e of class k takes toy image k + 4 * (its rank among class-k eyes): a pool of ~2n images
    n_cls = len(TOY_EYE_PHRASES)
    rank = np.zeros_like(classes)
    seen = [0] * n_cls
    for i, j in np.ndindex(n, 2):
        rank[i, j] = seen[classes[i, j]]
        seen[classes[i, j]] += 1
    pool = make_toy_pairs(n_cls * max(seen), image_size, seed, context_length).images
    eyes = pool[torch.from_numpy(classes + n_cls * rank)]  # [n, 2, 3, H, W]
    eyes[torch.from_numpy(missing)] = 0.0
    reports = [toy_patient_report(int(r), int(l)) for r, l in classes]
    tokens = Tokenizer(context_length)(reports)
    dr = np.array([row[0] for row in TOY_LABELS])[classes]
    labels = {"dr_grade": dr.max(1).tolist(), "right_dr_grade": dr[:, 0].tolist(), "left_dr_grade": dr[:, 1].tolist(),
              **{name: np.array([row[k] for row in TOY_LABELS])[classes].max(1).tolist()
                 for k, name in ((1, "is_gc"), (2, "is_amd"))}}
    present = torch.from_numpy(~missing)
    return TensorPatients(eyes[:, 1], eyes[:, 0], present[:, 1], present[:, 0], tokens, labels)


def parse_toy_patients_spec(spec: str) -> int | None:
    """``"toy-patients:N"`` -> ``N`` (``"toy-patients"`` -> 512); anything else -> ``None``."""
    match = _SPEC.fullmatch(spec.strip())
    if match is None:
        return None
    return int(match.group(1)) if match.group(1) else 512


def toy_patient_splits(spec: str, image_size: int, seed: int,
                       context_length: int) -> tuple[TensorPatients, TensorPatients]:
    """Train and valid toy patients for ``data="toy-patients:N"`` (valid: ``N // 4``, at least 8)."""
    n = parse_toy_patients_spec(spec) or 512
    return (make_toy_patients(n, image_size, seed, context_length),
            make_toy_patients(max(8, n // 4), image_size, seed + 7919, context_length))
