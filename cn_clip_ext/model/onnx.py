"""ONNX export of the image and text encoders, with a parity check against PyTorch on onnxruntime.

Each encoder is one graph with a dynamic batch dimension and an L2-normalised output::

    image_encoder.onnx   image      float32 [batch, 3, S, S]  ->  embedding float32 [batch, D]
    text_encoder.onnx    input_ids  int64   [batch, L]        ->  embedding float32 [batch, D]

``S`` is the model's resolution and ``L`` its context length (52), fixed at export. The
TorchScript-based exporter (``dynamo=False``) is used: it needs only the ``onnx`` package.
"""
from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from .bundle import ONNX_FILES, TOWERS
from ..errors import UserError, first_line
from ..extras import require

logger = logging.getLogger(__name__)

DEFAULT_OPSET = 17
PARITY_TOLERANCE = 1e-4
INPUT_NAMES = {"image": "image", "text": "input_ids"}
OUTPUT_NAME = "embedding"
SAMPLE_CAPTIONS = ("疑似青光眼。", "眼底照片显示轻度非增殖期糖尿病视网膜病变，建议定期复查。", "未见明显异常。",
                   "年龄相关性黄斑变性")


class _ImageEncoder(nn.Module):
    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.model.encode_image(image)


class _TextEncoder(nn.Module):
    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.model.encode_text(input_ids)


@dataclass(frozen=True)
class ParityResult:
    """How closely an ONNX encoder matches PyTorch on one batch."""

    tower: str
    path: str
    batch_size: int
    max_abs_diff: float
    tolerance: float

    @property
    def ok(self) -> bool:
        return self.max_abs_diff < self.tolerance


def sample_inputs(model: nn.Module, tower: str, batch_size: int, seed: int = 0) -> torch.Tensor:
    """A deterministic input batch for ``tower``: noise images, or real Chinese captions."""
    if tower == "image":
        size = model.vclip_config.image_size
        gen = torch.Generator().manual_seed(seed)
        return torch.randn(batch_size, 3, size, size, generator=gen)
    captions = [SAMPLE_CAPTIONS[i % len(SAMPLE_CAPTIONS)] for i in range(batch_size)]
    return model.tokenizer(captions)


def export_encoder(model: nn.Module, tower: str, path: str | Path, opset: int = DEFAULT_OPSET) -> Path:
    """Write one encoder of a :class:`~cn_clip_ext.model.pretrained.VisionCLIPModel` to ``path``."""
    require("onnx", extra="export", purpose="ONNX export")  # the TorchScript exporter serialises through it
    if tower not in TOWERS:
        raise ValueError(f"tower must be one of {TOWERS}, got {tower!r}")
    path = Path(path)
    module = (_ImageEncoder if tower == "image" else _TextEncoder)(model).eval()
    example = sample_inputs(model, tower, batch_size=2).to(model.device)
    name = INPUT_NAMES[tower]
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)  # shape checks inside attention, batch-independent
        warnings.simplefilter("ignore", DeprecationWarning)  # the TorchScript exporter is deprecated upstream
        torch.onnx.export(module, (example,), str(path), input_names=[name], output_names=[OUTPUT_NAME],
                          dynamic_axes={name: {0: "batch"}, OUTPUT_NAME: {0: "batch"}}, opset_version=opset,
                          do_constant_folding=True, dynamo=False)
    logger.info("wrote %s (%.1f MB)", path, path.stat().st_size / 1e6)
    return path


def _session(path: Path):
    ort = require("onnxruntime", extra="export", purpose="the ONNX parity check")
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = max(1, torch.get_num_threads())
    opts.log_severity_level = 3
    try:
        return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own exception types
        raise UserError(f"{path}: onnxruntime cannot load it ({first_line(exc)})") from None


def run_onnx(path: str | Path, inputs: torch.Tensor | np.ndarray) -> np.ndarray:
    """Embeddings from an exported encoder on onnxruntime's CPU provider."""
    sess = _session(Path(path))
    array = inputs.cpu().numpy() if torch.is_tensor(inputs) else np.asarray(inputs)
    return sess.run([OUTPUT_NAME], {sess.get_inputs()[0].name: array})[0]


@torch.no_grad()
def check_parity(model: nn.Module, path: str | Path, tower: str, inputs: torch.Tensor | None = None,
                 batch_size: int = 3, tolerance: float = PARITY_TOLERANCE) -> ParityResult:
    """Compare an ONNX encoder with PyTorch; the default batch (3) differs from the export batch (2)."""
    if inputs is None:
        inputs = sample_inputs(model, tower, batch_size, seed=1)
    encode = model.encode_image if tower == "image" else model.encode_text
    expected = encode(inputs.to(model.device)).float().cpu().numpy()
    actual = run_onnx(path, inputs)
    if actual.shape != expected.shape:
        raise UserError(f"{path}: ONNX output shape {actual.shape} differs from PyTorch's {expected.shape}")
    diff = float(np.abs(actual - expected).max())
    return ParityResult(tower, str(path), int(inputs.shape[0]), diff, tolerance)


def export_onnx(model: nn.Module, folder: str | Path, towers: Sequence[str] | None = None,
                opset: int = DEFAULT_OPSET, tolerance: float = PARITY_TOLERANCE) -> dict[str, Any]:
    """Export the model's towers to ``folder`` and check each; a failed check is a :class:`UserError`.

    Returns a summary (opset, towers, max absolute differences) for the bundle's ``config.json``.
    """
    folder = Path(folder)
    towers = [t for t in TOWERS if t in (towers or model.towers)]
    results: list[ParityResult] = []
    for tower in towers:
        path = export_encoder(model, tower, folder / ONNX_FILES[tower], opset)
        result = check_parity(model, path, tower, tolerance=tolerance)
        logger.info("ONNX %s encoder parity: max abs difference %.2e over %d inputs", tower,
                    result.max_abs_diff, result.batch_size)
        if not result.ok:
            raise UserError(f"{path}: ONNX {tower} encoder differs from PyTorch by {result.max_abs_diff:.2e} "
                            f"(tolerance {tolerance:.0e})")
        results.append(result)
    return {"opset": opset, "towers": towers, "inputs": {t: INPUT_NAMES[t] for t in towers},
            "output": OUTPUT_NAME, "tolerance": tolerance,
            "max_abs_diff": {r.tower: r.max_abs_diff for r in results}}


def bundle_hook(opset: int = DEFAULT_OPSET, tolerance: float = PARITY_TOLERANCE):
    """A ``write_bundle(onnx=...)`` hook: load the half-written bundle as a user would, export, check."""
    def hook(folder: Path, towers: Sequence[str]) -> dict[str, Any]:
        from .pretrained import load_pretrained

        model, _, _ = load_pretrained(folder, verify=False)
        return export_onnx(model, folder, towers, opset, tolerance)

    return hook


__all__ = ["DEFAULT_OPSET", "INPUT_NAMES", "OUTPUT_NAME", "PARITY_TOLERANCE", "ParityResult", "bundle_hook",
           "check_parity", "export_encoder", "export_onnx", "run_onnx", "sample_inputs"]
