"""Training objectives: what one micro-batch is, how it reaches the device, and its loss.

The trainer is the same for every objective; the data selects one through its ``kind``
attribute (``"pairs"`` when absent):

=============  ==============  =====================================================================
data kind      objective       micro-batch and loss
=============  ==============  =====================================================================
``pairs``      ``clip``        ``(images, tokens)``; CLIP's symmetric loss (:class:`ContrastiveLoss`)
``patients``   ``tripartite``  ``(left, right, has_left, has_right, tokens)``; RET-CLIP's patient +
                               left + right losses (:class:`TripartiteLoss`) on a
                               :class:`~cn_clip_ext.model.tripartite.TripartiteCLIP`
=============  ==============  =====================================================================

An objective returns ``(loss, parts)``: ``parts`` maps a part name to its (detached-or-not)
loss tensor and is logged as ``loss_<part>``; the CLIP objective has no parts.

For feature-cached accumulation (:mod:`.accumulation`) an objective also splits its work in two:
:meth:`Objective.embed` gives a micro-batch's :class:`Embedding` (per-sample rows and the
temperatures), and :meth:`Objective.loss_of` computes the loss of an already gathered, possibly
accumulated, set of rows (no communication inside).
"""
from __future__ import annotations

import contextlib
from typing import Callable, Mapping, NamedTuple, Sequence

import torch
from torch import nn
from torch.utils.data import Dataset

from ..errors import UserError
from .data import KindedData
from .distributed import DistEnv
from .validation import ValidationOptions, evaluate, evaluate_patients
from .loss import ContrastiveLoss, TripartiteLoss, clip_loss, tripartite_loss

Batch = Sequence[torch.Tensor]
AutocastFactory = Callable[[], contextlib.AbstractContextManager]


class Embedding(NamedTuple):
    """One micro-batch's model outputs, split for the loss: ``rows`` have one entry per sample along
    dim 0 (features, and boolean masks that take no gradient); ``scales`` are the temperatures
    (parameters of the model, the same for every sample)."""

    rows: dict[str, torch.Tensor]
    scales: dict[str, torch.Tensor]


class Objective:
    """Base class: an objective for one kind of training data."""

    name = ""
    data_kind = ""
    parts: tuple[str, ...] = ()
    image_slots: tuple[int, ...] = (0,)  # positions of image tensors in a micro-batch

    def prepare_model(self, model: nn.Module, seed: int | None = None) -> nn.Module:
        """The model this objective trains, built around a factory ``CLIP`` (default: itself)."""
        return model

    def to_device(self, batch: Batch, device: torch.device) -> list[torch.Tensor]:
        """The micro-batch on ``device`` (non-blocking copies)."""
        raise NotImplementedError

    def map_images(self, batch: list[torch.Tensor], fn: Callable[[torch.Tensor], torch.Tensor]) -> list[torch.Tensor]:
        """Apply a device-side image transform to every image tensor of a micro-batch."""
        for i in self.image_slots:
            batch[i] = fn(batch[i])
        return batch

    def loss(self, model: nn.Module, batch: list[torch.Tensor],
             autocast: AutocastFactory = contextlib.nullcontext) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """``(loss, parts)`` of one device micro-batch (the forward runs under ``autocast``)."""
        raise NotImplementedError

    def embed(self, model: nn.Module, batch: list[torch.Tensor],
              autocast: AutocastFactory = contextlib.nullcontext) -> Embedding:
        """The model's outputs for one device micro-batch, as :class:`Embedding`."""
        raise NotImplementedError

    def loss_of(self, rows: Mapping[str, torch.Tensor],
                scales: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """``(loss, parts)`` of rows already gathered from every rank (and micro-batch)."""
        raise NotImplementedError

    def evaluate(self, model: nn.Module, dataset: Dataset, env: DistEnv, tokenizer: Callable,
                 options: ValidationOptions) -> dict[str, float]:
        """Validation metrics (see :mod:`cn_clip_ext.training.validation`)."""
        raise NotImplementedError


class ClipObjective(Objective):
    """Image-report pairs and CLIP's contrastive loss (the trainer's original behaviour)."""

    name, data_kind = "clip", "pairs"

    def __init__(self) -> None:
        self.loss_fn = ContrastiveLoss()

    def to_device(self, batch: Batch, device: torch.device) -> list[torch.Tensor]:
        images, tokens = batch
        return [images.to(device, non_blocking=True), tokens.to(device, non_blocking=True).long()]

    def loss(self, model: nn.Module, batch: list[torch.Tensor],
             autocast: AutocastFactory = contextlib.nullcontext) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        with autocast():
            img_f, txt_f, scale = model(*batch)
        return self.loss_fn(img_f, txt_f, scale), {}

    def embed(self, model: nn.Module, batch: list[torch.Tensor],
              autocast: AutocastFactory = contextlib.nullcontext) -> Embedding:
        with autocast():
            img_f, txt_f, scale = model(*batch)
        return Embedding({"image": img_f, "text": txt_f}, {"scale": scale})

    def loss_of(self, rows: Mapping[str, torch.Tensor],
                scales: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return clip_loss(rows["image"], rows["text"], scales["scale"].mean()), {}

    def evaluate(self, model: nn.Module, dataset: Dataset, env: DistEnv, tokenizer: Callable,
                 options: ValidationOptions) -> dict[str, float]:
        return evaluate(model, dataset, env, tokenizer, options)


class TripartiteObjective(Objective):
    """Patients with two eye slots and a report; RET-CLIP's three-part loss."""

    name, data_kind = "tripartite", "patients"
    parts = ("global", "left", "right")
    image_slots = (0, 1)

    def __init__(self) -> None:
        self.loss_fn = TripartiteLoss()

    def prepare_model(self, model: nn.Module, seed: int | None = None) -> nn.Module:
        from ..model.tripartite import to_tripartite

        return to_tripartite(model, seed)

    def to_device(self, batch: Batch, device: torch.device) -> list[torch.Tensor]:
        left, right, has_left, has_right, tokens = batch
        return [left.to(device, non_blocking=True), right.to(device, non_blocking=True),
                has_left.to(device, non_blocking=True).bool(), has_right.to(device, non_blocking=True).bool(),
                tokens.to(device, non_blocking=True).long()]

    def loss(self, model: nn.Module, batch: list[torch.Tensor],
             autocast: AutocastFactory = contextlib.nullcontext) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        with autocast():
            out = model(*batch)
        return self.loss_fn(out)

    _ROWS = ("image_global", "image_left", "image_right", "text_global", "text_left", "text_right",
             "has_left", "has_right")
    _SCALES = ("scale_global", "scale_left", "scale_right")

    def embed(self, model: nn.Module, batch: list[torch.Tensor],
              autocast: AutocastFactory = contextlib.nullcontext) -> Embedding:
        with autocast():
            out = model(*batch)
        return Embedding({k: getattr(out, k) for k in self._ROWS}, {k: getattr(out, k) for k in self._SCALES})

    def loss_of(self, rows: Mapping[str, torch.Tensor],
                scales: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return tripartite_loss(rows, scales)

    def evaluate(self, model: nn.Module, dataset: Dataset, env: DistEnv, tokenizer: Callable,
                 options: ValidationOptions) -> dict[str, float]:
        return evaluate_patients(model, dataset, env, tokenizer, options)


OBJECTIVES: Mapping[str, type[Objective]] = {cls.name: cls for cls in (ClipObjective, TripartiteObjective)}
"""Objective name -> class."""
BY_DATA_KIND: Mapping[str, str] = {cls.data_kind: cls.name for cls in OBJECTIVES.values()}
"""Data kind -> objective name."""


def get_objective(name: str) -> Objective:
    """A new objective by name (``clip`` or ``tripartite``)."""
    try:
        return OBJECTIVES[name]()
    except KeyError:
        raise UserError(f"unknown training objective {name!r}; choose from {sorted(OBJECTIVES)}") from None


def objective_for(dataset: Dataset) -> Objective:
    """The objective for a dataset's ``kind`` (``"pairs"`` when it declares none)."""
    kind = dataset.kind if isinstance(dataset, KindedData) else "pairs"
    if kind not in BY_DATA_KIND:
        raise UserError(f"training data of kind {kind!r} has no objective; known kinds: {sorted(BY_DATA_KIND)}")
    return get_objective(BY_DATA_KIND[kind])


__all__ = ["BY_DATA_KIND", "ClipObjective", "Embedding", "OBJECTIVES", "Objective", "TripartiteObjective", "get_objective",
           "objective_for"]
