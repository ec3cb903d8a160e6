"""What a model or a transform may offer beyond the plain ``CLIP``/callable, as ``typing.Protocol`` s.

The library's code asks ``isinstance(x, Protocol)`` instead of probing attributes by name, so each optional
capability is written down once, with its meaning. A new model family or transform gets a capability by having the
members (no base class to inherit):

- :class:`TowerChecked`: a model that may lack a tower (a bundle exported with ``--image-only``/``--text-only``)
  and says so with a one-line error before any work;
- :class:`SingleEyeScaled`: a model whose zero-shot classification of single photos uses one of several heads'
  temperatures (RET-CLIP's tripartite model);
- :class:`MultiScaled`: a model trained with several temperatures, named;
- :class:`SquareOutput`: a transform whose output is a square of ``size`` pixels (JPEGs may then be decoded at a
  reduced scale);
- :class:`BatchStep`: a per-image transform whose collated batches get a second step on the device;
- :class:`PixelsThenBatch`: a transform that can also give the ``uint8`` pixels alone, leaving the batch step
  (normalisation) to the encoding process.
"""
from __future__ import annotations

from typing import Any, Callable, Protocol, Sequence, runtime_checkable

import torch


@runtime_checkable
class TowerChecked(Protocol):
    def require_tower(self, tower: str) -> None:
        """Raise a one-line user error when the model has no ``tower`` (``"image"`` or ``"text"``)."""


@runtime_checkable
class SingleEyeScaled(Protocol):
    @property
    def single_eye_scale(self) -> torch.Tensor:
        """The log temperature zero-shot classification of a single photo uses."""


@runtime_checkable
class MultiScaled(Protocol):
    @property
    def logit_scale_names(self) -> Sequence[str]:
        """Names of the model's log-temperature parameters (``logit_scale`` and the heads')."""


def logit_scale_names(model: object) -> Sequence[str]:
    """The model's log-temperature parameter names: its own list, or cn_clip's one ``logit_scale``."""
    return model.logit_scale_names if isinstance(model, MultiScaled) else ("logit_scale",)


@runtime_checkable
class SquareOutput(Protocol):
    @property
    def size(self) -> Any:
        """Side of the square output in pixels (an ``int``; torchvision transforms may hold a sequence here)."""


def square_size(transform: object) -> int | None:
    """The side of ``transform``'s square output, or ``None`` when it does not declare one as an ``int``."""
    size = transform.size if isinstance(transform, SquareOutput) else None
    return size if isinstance(size, int) else None


@runtime_checkable
class BatchStep(Protocol):
    @property
    def batch_transform(self) -> Callable[[torch.Tensor], torch.Tensor]:
        """What turns a collated batch of the per-image outputs into the model's input."""


@runtime_checkable
class PixelsThenBatch(BatchStep, Protocol):
    def pixels(self, image: Any) -> torch.Tensor:
        """``uint8`` ``[3, H, W]`` pixels of ``image``; :attr:`batch_transform` finishes a batch of them."""


__all__ = ["BatchStep", "MultiScaled", "PixelsThenBatch", "SingleEyeScaled", "SquareOutput", "TowerChecked",
           "logit_scale_names", "square_size"]
