"""A tiny exported bundle for the tests that load, embed with or install against one (helpers only)."""
from __future__ import annotations

from pathlib import Path

import cn_clip_ext as vc
from cn_clip_ext.training.checkpoint import atomic_save
from vclip_export.export import main as export_main


def write_tiny_bundle(root: Path, seed: int, step: int) -> Path:
    """Export a randomly initialised ``VISIONCLIP_TINY`` checkpoint (``root/latest.pt``, recorded
    preprocessing ``fov``) to ``root/bundle`` without prompt embeddings; returns the bundle folder."""
    model = vc.create_model(vc.VISIONCLIP_TINY, seed=seed)
    atomic_save({"epoch": 0, "step": step, "state_dict": model.state_dict(),
                 "config": {"model": vc.VISIONCLIP_TINY, "preprocess": "fov", "context_length": 52}},
                root / "latest.pt")
    assert export_main([str(root / "latest.pt"), str(root / "bundle"), "--no-prompts"]) == 0
    return root / "bundle"
