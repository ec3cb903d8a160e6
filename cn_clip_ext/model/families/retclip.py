"""RET-CLIP's released weights: cn_clip's towers with three heads (left eye, right eye, patient),
mapped by name onto :class:`~cn_clip_ext.model.tripartite.TripartiteCLIP` (the rename rule is
:func:`cn_clip_ext.model.weights.retclip_state_to_ours`); loaded leniently, with what did not fit
logged. The architecture defaults to ViT-B-16@RoBERTa-wwm-ext-base-chinese."""
from __future__ import annotations

from .base import Family
from .visionclip import load_cn_clip_family

FAMILY = Family(
    "retclip", lambda path, device, **o: load_cn_clip_family(path, device, checkpoint_format="retclip", **o),
    ("model_name", "preprocess", "single_eye_head"), "zh",
    "RET-CLIP's released weights (tripartite heads; single_eye_head picks the one for single images)",
    missing="no such checkpoint file", fetch_hint="download RET-CLIP's released checkpoint (linked from the RET-CLIP README) and pass its path")

__all__ = ["FAMILY"]
