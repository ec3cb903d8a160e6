"""Zero-shot classification: class embeddings from prompts, prediction by cosine similarity.

A class embedding is the mean of its L2-normalised prompt embeddings, renormalised.
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch
import torch.nn.functional as F


@torch.no_grad()
def class_embeddings(encode_text: Callable[[torch.Tensor], torch.Tensor], tokenizer: Callable,
                     class_prompts: Sequence[Sequence[str]], device: torch.device | str = "cpu",
                     batch_size: int = 256) -> torch.Tensor:
    """``[num_classes, dim]``: one unit vector per class from its list of prompts (all classes'
    prompts are encoded together, ``batch_size`` at a time)."""
    if any(not prompts for prompts in class_prompts):
        raise ValueError("every class needs at least one prompt")
    flat = [p for prompts in class_prompts for p in prompts]
    emb = torch.cat([F.normalize(encode_text(tokenizer(flat[i:i + batch_size]).to(device)).float(), dim=-1)
                     for i in range(0, len(flat), batch_size)])
    groups = emb.split([len(prompts) for prompts in class_prompts])
    return torch.stack([F.normalize(g.mean(0), dim=-1) for g in groups])


def predict(image_features: torch.Tensor, class_emb: torch.Tensor) -> torch.Tensor:
    """Index of the most similar class for each (normalised) image feature."""
    return (F.normalize(image_features.float(), dim=-1) @ class_emb.t().to(image_features.device)).argmax(-1)


__all__ = ["class_embeddings", "predict"]
