"""GPU speed settings of a training run: kernel choice, memory layout, compilation.

- ``cudnn.benchmark`` on CUDA (cuDNN times its convolution algorithms once per shape), and TF32
  for any fp32 matrix product left outside autocast;
- ``deterministic``: deterministic cuDNN/cuBLAS kernels instead, so a resumed run repeats the
  uninterrupted run's losses bit for bit (slower; what the GPU check's resume test uses);
- ``channels_last`` for the image tower's weights and its input batches on CUDA (the layout
  tensor-core convolutions read without transposes);
- ``compile``: :func:`torch.compile` of the model's forward (the state dict keeps its names: the
  trainer saves the module it compiled, not the compiled wrapper).

Fused AdamW on CUDA is chosen by :func:`cn_clip_ext.training.optim.build_optimizer`; pinned host
memory and non-blocking copies by the trainer's DataLoader and the objectives' ``to_device``.
"""
from __future__ import annotations

import logging
import os

import torch
from torch import nn

logger = logging.getLogger(__name__)


def configure_backends(device: torch.device, deterministic: bool) -> None:
    """Set cuDNN/cuBLAS for speed, or for bit-for-bit repeatable kernels."""
    if device.type != "cuda":
        return
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True
        torch.use_deterministic_algorithms(True, warn_only=True)
    else:
        torch.backends.cudnn.benchmark = True


def uses_channels_last(requested: bool, device: torch.device) -> bool:
    """Channels-last only pays on CUDA (on the CPU the tiny towers run slower with it)."""
    return requested and device.type == "cuda"


def image_tower_channels_last(model: nn.Module) -> nn.Module:
    """Convert the image tower (``model.visual``) to channels-last in place; returns ``model``."""
    visual = getattr(model, "visual", None)
    if visual is not None:
        visual.to(memory_format=torch.channels_last)
    return model


def channels_last_images(images: torch.Tensor) -> torch.Tensor:
    """A float ``[B, 3, H, W]`` image batch in channels-last layout (other tensors unchanged)."""
    if images.dim() == 4 and images.is_floating_point():
        return images.contiguous(memory_format=torch.channels_last)
    return images


COMPILE_BACKEND = "inductor"
"""The :func:`torch.compile` backend ``compile=True`` uses (``aot_eager`` traces without generating kernels)."""


def compiled(model: nn.Module, enabled: bool) -> nn.Module:
    """``torch.compile(model)`` when enabled (compilation itself happens at the first call)."""
    if not enabled:
        return model
    logger.info("torch.compile (%s): the first steps compile the model", COMPILE_BACKEND)
    return torch.compile(model, backend=COMPILE_BACKEND)  # type: ignore[return-value]


__all__ = ["COMPILE_BACKEND", "channels_last_images", "compiled", "configure_backends", "image_tower_channels_last",
           "uses_channels_last"]
