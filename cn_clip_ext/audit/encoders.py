"""Image encoders for the nearest-neighbour level: a trained model, or the weight-free vessel descriptor.

An encoder turns a FOV view (:func:`cn_clip_ext.audit.hashing.fov_view`) into an input in a
DataLoader worker (``prepare``) and a batch of inputs into L2-normalised float32 rows in the
main process (``encode``). ``key`` names the encoder in cache file names.
"""
from __future__ import annotations

import contextlib
import hashlib
import logging
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from PIL import Image

from ..model.inference import image_inference
from ..model.transforms import to_normalized_tensor
from .hashing import VIEW_SIZE, VesselDescriptor

logger = logging.getLogger(__name__)


class Encoder:
    """Interface: ``key``, ``dim``, ``view_size``, ``default_min_cosine``, ``prepare``, ``encode``."""

    key: str = "encoder"
    dim: int = 0
    view_size: int = VIEW_SIZE
    default_min_cosine: float | None = None
    """A measured copy threshold for this encoder, or ``None``: calibrate on the corpus baseline."""

    def prepare(self, view: Image.Image) -> Any:
        raise NotImplementedError

    def encode(self, inputs: Sequence[Any]) -> np.ndarray:
        raise NotImplementedError

    def session(self, workers: int = 0) -> contextlib.AbstractContextManager:
        """Held around a pass of many :meth:`encode` calls (``workers`` decoding processes beside it)."""
        return contextlib.nullcontext()


class VesselEncoder(Encoder):
    """:class:`~cn_clip_ext.audit.hashing.VesselDescriptor` as an encoder (no weights, CPU only)."""

    default_min_cosine = 0.86
    """Measured on generated data (as for the hash threshold): planted copies >= 0.888 for each single
    alteration and 0.833 for the combined one, distinct images <= 0.813. The descriptor is the weaker
    level; the hash level catches the combined copies."""

    def __init__(self, descriptor: VesselDescriptor = VesselDescriptor()):
        self.descriptor = descriptor
        self.dim = descriptor.dim
        self.key = f"vessel{descriptor.grid}-{descriptor.low:g}-{descriptor.high:g}"

    def prepare(self, view: Image.Image) -> np.ndarray:
        return self.descriptor(view)

    def encode(self, inputs: Sequence[np.ndarray]) -> np.ndarray:
        return np.stack(inputs).astype(np.float32)


class ModelEncoder(Encoder):
    """Image embeddings of a VisionCLIP bundle, training checkpoint or cn_clip ``.pt`` (``load_pretrained``).

    The model sees the same FOV view as the hashes (at its own resolution), so copies are
    compared after the same robust field-of-view normalisation.
    """

    def __init__(self, path: str | Path, arch: str | None = None, device: str | torch.device = "cpu"):
        from ..model.pretrained import load_pretrained

        self.model, _, _ = load_pretrained(path, device=device, model_name=arch)
        self.model.require_tower("image")
        cfg = self.model.vclip_config
        self.dim, self.view_size = cfg.embed_dim, cfg.image_size
        path = Path(path)
        ident = _file_identity(path)
        self.key = f"model-{cfg.name.replace('@', '_')}-{ident}"

    def prepare(self, view: Image.Image) -> torch.Tensor:
        return to_normalized_tensor(view)

    def session(self, workers: int = 0) -> contextlib.AbstractContextManager:
        """The model's batch-inference set-up (:func:`~cn_clip_ext.model.inference.image_inference`)."""
        return image_inference(self.model, self.model.device, workers)

    @torch.no_grad()
    def encode(self, inputs: Sequence[torch.Tensor]) -> np.ndarray:
        batch = torch.stack(list(inputs)).contiguous(memory_format=torch.channels_last)
        return self.model.encode_image(batch).float().cpu().numpy()


def _file_identity(path: Path) -> str:
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    h = hashlib.sha256()
    for f in files:
        st = f.stat()
        h.update(f"{f.name}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:12]


__all__ = ["Encoder", "ModelEncoder", "VesselEncoder"]
