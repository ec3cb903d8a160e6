"""Zero-shot classification: class embeddings from prompts, prediction by cosine similarity.

A class embedding is the mean of its L2-normalised prompt embeddings, renormalised.
"""
from __future__ import annotations

from typing import Callable, Protocol, Sequence, runtime_checkable

import torch
import torch.nn.functional as F


@runtime_checkable
class PromptsPerClass(Protocol):
    """A model whose text embedding depends on the other texts of its batch (FLAIR averages every
    token position, padding included): its authors encode one class's prompts per batch, and
    :func:`class_embeddings` does the same for it when ``encodes_prompts_per_class`` is true."""

    encodes_prompts_per_class: bool


def encodes_per_class(model: object) -> bool:
    """Whether ``model``'s class prompts are encoded one class per batch (see :class:`PromptsPerClass`)."""
    return isinstance(model, PromptsPerClass) and bool(model.encodes_prompts_per_class)


@torch.no_grad()
def class_embeddings(encode_text: Callable[[torch.Tensor], torch.Tensor], tokenizer: Callable,
                     class_prompts: Sequence[Sequence[str]], device: torch.device | str = "cpu",
                     batch_size: int = 256, per_class: bool = False) -> torch.Tensor:
    """``[num_classes, dim]``: one unit vector per class from its list of prompts (all classes'
    prompts are encoded together, ``batch_size`` at a time; with ``per_class``, each class's alone)."""
    if any(not prompts for prompts in class_prompts):
        raise ValueError("every class needs at least one prompt")
    runs = [list(p) for p in class_prompts] if per_class else [[p for prompts in class_prompts for p in prompts]]
    emb = torch.cat([F.normalize(encode_text(tokenizer(run[i:i + batch_size]).to(device)).float(), dim=-1)
                     for run in runs for i in range(0, len(run), batch_size)])
    groups = emb.split([len(prompts) for prompts in class_prompts])
    return torch.stack([F.normalize(g.mean(0), dim=-1) for g in groups])


def predict(image_features: torch.Tensor, class_emb: torch.Tensor) -> torch.Tensor:
    """Index of the most similar class for each (normalised) image feature."""
    return (F.normalize(image_features.float(), dim=-1) @ class_emb.t().to(image_features.device)).argmax(-1)


__all__ = ["PromptsPerClass", "class_embeddings", "encodes_per_class", "predict"]
