"""Chinese-CLIP's own checkpoints (``clip_cn_rn50.pt`` ...): cn_clip's ``CLIP``, loaded strictly; they
do not record their architecture, so pass ``model_name``."""
from __future__ import annotations

from .base import Family
from .visionclip import load_cn_clip_family

FAMILY = Family(
    "cn_clip", lambda path, device, **o: load_cn_clip_family(path, device, checkpoint_format="cn_clip", **o),
    ("model_name", "preprocess"), "zh", "Chinese-CLIP checkpoints (.pt; pass model_name, e.g. "
    "RN50@RBT3-chinese)",
    missing="no such checkpoint file", fetch_hint="download the checkpoint from the Chinese-CLIP release (OFA-Sys/Chinese-CLIP README, "
               "e.g. clip_cn_rn50.pt) and pass its path")

__all__ = ["FAMILY"]
