"""Which torch device a command runs on: shared by the trainer and the inference programs."""
from __future__ import annotations

import torch

from .errors import UserError


def pick_device(requested: str, local_rank: int) -> torch.device:
    """``auto``: ``cuda:LOCAL_RANK`` when CUDA is available, else the CPU."""
    if requested == "cpu":
        return torch.device("cpu")
    if requested in ("auto", "cuda") or requested.startswith("cuda"):
        if torch.cuda.is_available():
            if requested.startswith("cuda:"):
                return torch.device(requested)
            return torch.device("cuda", local_rank % torch.cuda.device_count())
        if requested != "auto":
            raise UserError(f"device {requested!r} requested but CUDA is not available")
        return torch.device("cpu")
    raise UserError(f"unknown device {requested!r}: use auto, cpu or cuda")


__all__ = ["pick_device"]
