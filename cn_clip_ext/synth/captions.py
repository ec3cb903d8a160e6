"""Chinese diagnostic captions in the style of SynFundus-1M's ``diagnosticAdvice``.

One sentence per finding, several phrasings each (picked by the RNG), concatenated in a fixed
order. Every phrase of a finding contains one of its :data:`~.schema.CAPTION_KEYWORDS`.
:func:`make_patient_report` joins two eyes' captions into a patient report (``右眼：…；左眼：…。``).
"""
from __future__ import annotations

from types import MappingProxyType
from typing import Mapping, Sequence

import numpy as np

from ..layouts import EYE_NAMES_CN, FINDINGS, LOW_QUALITY_SCORE

NORMAL_PHRASES: tuple[str, ...] = (
    "未见明显异常。",
    "眼底未见明显异常。",
    "视网膜未见明显病变。",
    "双眼底检查未见明显异常，建议定期体检。",
)
EYE_NORMAL_PHRASES: tuple[str, ...] = NORMAL_PHRASES[:3]
"""Normal phrases that fit one eye (no "双眼")."""
BOTH_NORMAL_PHRASES: tuple[str, ...] = ("双眼眼底未见明显异常。", "双眼未见明显异常，建议定期复查。")
"""A whole report for a patient whose eyes are both normal (used half of the time)."""

DR_PHRASES: Mapping[int, tuple[str, ...]] = MappingProxyType({
    1: ("糖尿病视网膜病变（轻度非增殖期），建议定期复查。",
        "可见微血管瘤，考虑轻度非增殖期糖尿病视网膜病变。",
        "疑似轻度糖尿病视网膜病变。"),
    2: ("糖尿病视网膜病变（中度非增殖期），建议眼科随诊。",
        "可见出血斑及硬性渗出，考虑中度非增殖期糖尿病视网膜病变。",
        "可见出血斑，疑似糖尿病视网膜病变（中度）。"),
    3: ("糖尿病视网膜病变（重度非增殖期），建议尽快眼科就诊。",
        "可见多发出血斑、硬性渗出及棉絮斑，考虑重度非增殖期糖尿病视网膜病变。",
        "重度非增殖期糖尿病视网膜病变，建议转诊。"),
    4: ("增殖期糖尿病视网膜病变，建议尽快眼科就诊。",
        "可见视网膜新生血管，考虑增殖期糖尿病视网膜病变。",
        "糖尿病视网膜病变（增殖期），建议转诊眼底专科。"),
})
"""ICDR grade -> phrases (grade 0 has none)."""

FINDING_PHRASES: Mapping[str, tuple[str, ...]] = MappingProxyType({
    "is_dme": ("疑似糖尿病黄斑水肿。", "黄斑区可见硬性渗出，考虑黄斑水肿。", "黄斑水肿可能，建议行OCT检查。"),
    "is_amd": ("黄斑区可见玻璃膜疣，疑似年龄相关性黄斑变性。", "疑似年龄相关性黄斑变性。",
               "年龄相关性黄斑变性，建议眼科随诊。"),
    "is_gc": ("疑似青光眼。", "视杯扩大，杯盘比增大，疑似青光眼。", "青光眼可疑，建议进一步检查眼压及视野。"),
    "is_aon": ("视盘色淡，疑似视神经萎缩。", "疑似视神经萎缩。", "视神经萎缩可能，建议神经眼科就诊。"),
    "is_pm": ("病理性近视眼底改变。", "疑似病理性近视。", "高度近视眼底改变，视盘旁可见萎缩弧。"),
    "is_tessellated": ("视网膜豹纹状改变。", "豹纹状眼底。", "眼底呈豹纹状改变。"),
    "is_rvo": ("沿静脉可见火焰状出血，疑似视网膜静脉阻塞。", "疑似视网膜静脉阻塞。",
               "视网膜分支静脉阻塞可能，建议眼科就诊。"),
    "is_htr": ("疑似高血压性视网膜病变。", "动脉变细，可见动静脉交叉压迹，考虑高血压性视网膜病变。"),
    "is_mh": ("疑似黄斑裂孔。", "黄斑区可见裂孔样改变。"),
    "is_em": ("疑似黄斑前膜。", "黄斑区可见前膜样反光。"),
    "is_crp": ("疑似脉络膜视网膜病变。", "周边视网膜可见色素沉着。"),
    "is_md": ("疑似黄斑病变。", "黄斑区色素紊乱。"),
    "is_treated": ("可见激光光凝斑。", "视网膜激光治疗后改变。"),
})
"""Binary finding -> phrases."""

LOW_QUALITY_PHRASES: tuple[str, ...] = (
    "图像质量欠佳，建议重新拍摄。",
    "图像模糊，结果仅供参考。",
    "图像曝光不足，建议复查。",
)

CAPTION_ORDER: tuple[str, ...] = (
    "dr", "is_dme", "is_rvo", "is_htr", "is_amd", "is_gc", "is_aon", "is_pm", "is_tessellated",
    "is_mh", "is_em", "is_md", "is_crp", "is_treated",
)
"""Order of the sentences in a caption (``"dr"`` = ``dr_grade > 0``)."""
assert set(CAPTION_ORDER) == set(FINDINGS) | {"dr"}


def _phrases(finding: str, grade: int) -> tuple[str, ...]:
    return DR_PHRASES[grade] if finding == "dr" else FINDING_PHRASES[finding]


def present_findings(labels: Mapping[str, object]) -> list[str]:
    """The caption findings a label row has, in :data:`CAPTION_ORDER` (``"dr"`` for DR > 0)."""
    return [f for f in CAPTION_ORDER if (int(labels["dr_grade"]) > 0 if f == "dr" else int(labels[f]))]


def make_caption(labels: Mapping[str, object], rng: np.random.Generator, noise: float = 0.03,
                 normal: Sequence[str] = NORMAL_PHRASES) -> str:
    """Caption for a label row; with probability ``noise`` one finding is dropped or swapped.

    A swap replaces a finding by an absent one (a caption error); a dropped last finding leaves
    a "normal" sentence (one of ``normal``). Low-quality photos get a closing quality remark.
    """
    findings = present_findings(labels)
    grade = int(labels["dr_grade"])
    if noise > 0 and rng.random() < noise:
        if findings and rng.random() < 0.5:
            findings.pop(int(rng.integers(len(findings))))
        else:
            absent = [f for f in CAPTION_ORDER if f not in findings]
            if findings:
                findings.pop(int(rng.integers(len(findings))))
            new = absent[int(rng.integers(len(absent)))]
            if new == "dr":
                grade = int(rng.integers(1, 5))
            findings = [f for f in CAPTION_ORDER if f in findings or f == new]
    if findings:
        parts = [_pick(_phrases(f, grade), rng) for f in findings]
    else:
        parts = [_pick(tuple(normal), rng)]
    if float(labels["retinal_region_quality_score"]) < LOW_QUALITY_SCORE:
        parts.append(_pick(LOW_QUALITY_PHRASES, rng))
    return "".join(parts)


def make_patient_report(eyes: Mapping[str, Mapping[str, object]], rng: np.random.Generator,
                        noise: float = 0.03) -> str:
    """A patient's report from the label rows of their eyes (``{"right": ..., "left": ...}``).

    Each eye's caption (as :func:`make_caption`, with its own noise draw) becomes one clause,
    right eye first: ``右眼：…；左眼：…。``. When every eye is normal and well imaged, half of the
    reports say so in one sentence instead (``双眼…未见明显异常``).
    """
    order = [eye for eye in EYE_NAMES_CN if eye in eyes]
    clauses = {eye: make_caption(eyes[eye], rng, noise, EYE_NORMAL_PHRASES) for eye in order}
    if len(order) == 2 and all(c in EYE_NORMAL_PHRASES for c in clauses.values()) and rng.random() < 0.5:
        return _pick(BOTH_NORMAL_PHRASES, rng)
    return "；".join(f"{EYE_NAMES_CN[eye]}：{clauses[eye].rstrip('。').replace('。', '，')}" for eye in order) + "。"


def _pick(options: tuple[str, ...], rng: np.random.Generator) -> str:
    return options[int(rng.integers(len(options)))]
