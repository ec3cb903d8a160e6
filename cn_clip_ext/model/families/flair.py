"""The FLAIR family: the released FLAIR weights (``flair_resnet.pth``, or the same state dict as
``model.safetensors`` in a hub folder) loaded into a model with FLAIR's published layout, written
here from its description (torchvision and transformers build the towers):

=============================================  ===================================================
``vision_model.model.*``                        torchvision ResNet-50, classifier replaced by identity (2048-d)
``vision_model.projection_head_vision.projection.weight``  Linear(2048, 512, bias=False)
``text_model.model.*``                          a Hugging Face ``BertModel`` (Bio_ClinicalBERT, pooler included)
``text_model.projection_head_text.projection.weight``      Linear(768, 512, bias=False)
``logit_scale``                                 log temperature (FLAIR clamps it to at most log 100)
=============================================  ===================================================

Both projection heads L2-normalise their input, project, and L2-normalise again. A text's feature
is the mean over token positions (padding included, as FLAIR computes it) of the hidden states of
the first, the second and the last BERT layer, averaged over the three.

Preprocessing (:class:`FlairPreprocess`), FLAIR's: RGB as float32 divided by 255 (when any pixel
is above 0), the longer side resized to 512 with antialiased bilinear interpolation and the other
to ``int(side / scale)``, zero padding at the right and the bottom to 512 x 512, no mean/std
normalisation. Prompts are tokenized with truncation at 77 tokens and padded to the longest of a
call; FLAIR encodes the prompts of one class together, which the zero-shot classifier does for
models with :attr:`FlairModel.encodes_prompts_per_class`.

``text_config=DIR`` names the local folder with Bio_ClinicalBERT's ``config.json`` and tokenizer
files (``vocab.txt``); nothing is downloaded.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from ...errors import UserError, describe
from ..weights import is_hf_position_ids, load_strict, read_state_file, strip_module, without
from .base import Family, Loaded

logger = logging.getLogger(__name__)

IMAGE_SIZE = 512
PROJECTION_DIM = 512
CONTEXT_LENGTH = 77
MAX_LOGIT_SCALE = 4.6052  # log(100): FLAIR clamps its temperature there
TEXT_MODEL = "emilyalsentzer/Bio_ClinicalBERT"
HUB_WEIGHTS = ("model.safetensors", "pytorch_model.bin", "flair_resnet.pth")


class FlairPreprocess:
    """FLAIR's image preprocessing (see the module docstring): RGB image -> ``[3, 512, 512]`` float32.

    It resizes the full-resolution image in float, so the decoding workers send these float
    tensors (no ``uint8`` step, which would round the resized values)."""

    def __init__(self, image_size: int = IMAGE_SIZE):
        self.image_size = image_size

    def __call__(self, image: Any) -> torch.Tensor:
        from torchvision.transforms import functional as TF

        arr = np.asarray(image.convert("RGB") if isinstance(image, Image.Image) else image, dtype=np.float32)
        if arr.max() > 0:
            arr = arr / 255
        x = torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1)))[None]
        scale = max(x.shape[-2:]) / self.image_size
        x = TF.resize(x, [int(x.shape[-2] / scale), int(x.shape[-1] / scale)], antialias=True)
        x = F.pad(x, (0, self.image_size - x.shape[-1], 0, self.image_size - x.shape[-2], 0, 0))
        return x[0].to(torch.float32)

    def __repr__(self) -> str:
        return f"FlairPreprocess(size={self.image_size}: longer side resized, zero-padded right/bottom, /255)"


class ProjectionHead(nn.Module):
    """Normalise, project (no bias), normalise: FLAIR's ``ProjectionLayer`` with projection and norm on."""

    def __init__(self, in_dim: int, out_dim: int = PROJECTION_DIM):
        super().__init__()
        self.projection = nn.Linear(in_dim, out_dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.projection(F.normalize(x, dim=-1)), dim=-1)


class FlairVision(nn.Module):
    def __init__(self):
        super().__init__()
        import torchvision

        self.model = torchvision.models.resnet50(weights=None)
        self.model.fc = nn.Identity()
        self.projection_head_vision = ProjectionHead(2048)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.projection_head_vision(self.model(images))



def _transformers():
    from ...extras import require

    return require("transformers", extra="open_clip", purpose="the FLAIR family")

class FlairText(nn.Module):
    def __init__(self, config: Any):
        super().__init__()
        BertModel = _transformers().BertModel

        self.model = BertModel(config, add_pooling_layer=True)
        self.projection_head_text = ProjectionHead(config.hidden_size)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.model(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True).hidden_states
        layers = torch.stack([hidden[1], hidden[2], hidden[-1]], dim=1)  # [B, 3, L, H]
        return self.projection_head_text(layers.mean(dim=2).mean(dim=1))


class FlairModel(nn.Module):
    """FLAIR with the family contract: normalised ``encode_image``/``encode_text`` and ``logit_scale``."""

    encodes_prompts_per_class = True
    """Its text feature averages padding positions too, so a prompt's embedding depends on the longest
    prompt it is padded with: the zero-shot classifier encodes one class's prompts per call, as FLAIR does."""

    def __init__(self, text_config: Any, tokenizer: Any):
        super().__init__()
        self.vision_model = FlairVision()
        self.text_model = FlairText(text_config)
        self.logit_scale = nn.Parameter(torch.log(torch.tensor(1 / 0.07)))
        self.tokenizer = tokenizer

    @property
    def visual(self) -> nn.Module:
        """The ResNet-50 (the batch encoders fold its BatchNorms while encoding)."""
        return self.vision_model.model

    @property
    def device(self) -> torch.device:
        return self.logit_scale.device

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        return self.vision_model(images.to(self.device, torch.float32)).float()

    def encode_text(self, texts: str | Sequence[str] | Mapping[str, torch.Tensor] | torch.Tensor) -> torch.Tensor:
        """Strings, the tokenizer's output (``input_ids`` and ``attention_mask``) or token ids (no padding)."""
        if isinstance(texts, str) or (isinstance(texts, Sequence) and not torch.is_tensor(texts)):
            texts = self.tokenizer([texts] if isinstance(texts, str) else list(texts))
        if torch.is_tensor(texts):
            ids, mask = texts, torch.ones_like(texts)
        else:
            ids, mask = texts["input_ids"], texts["attention_mask"]
        return self.text_model(ids.to(self.device), mask.to(self.device)).float()


class FlairTokenizer:
    """Bio_ClinicalBERT's tokenizer as FLAIR calls it: truncation at 77 tokens, padding to the longest,
    PyTorch tensors (``input_ids``, ``attention_mask``)."""

    def __init__(self, folder: Path):
        AutoTokenizer = _transformers().AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
        self.tokenizer.model_max_length = CONTEXT_LENGTH

    def __call__(self, texts: str | Sequence[str]) -> Any:
        texts = [texts] if isinstance(texts, str) else list(texts)
        return self.tokenizer(texts, truncation=True, padding=True, return_tensors="pt")


def _text_folder(text_config: str | Path | None) -> Path:
    hint = (f"download config.json and vocab.txt of {TEXT_MODEL} from huggingface.co/{TEXT_MODEL} into a folder "
            f"and pass text_config=DIR")
    if not text_config:
        raise UserError(f"the flair family needs text_config=DIR: {hint}")
    folder = Path(text_config)
    for name in ("config.json", "vocab.txt"):
        if not (folder / name).is_file() and not (name == "vocab.txt" and (folder / "tokenizer.json").is_file()):
            raise UserError(f"{folder / name}: not found; {hint}")
    return folder


def _weights_file(path: Path) -> Path:
    if path.is_file():
        return path
    for name in HUB_WEIGHTS:
        if (path / name).is_file():
            return path / name
    raise UserError(f"{path}: no FLAIR weights ({' or '.join(HUB_WEIGHTS)}); download flair_resnet.pth (linked "
                    f"from the jusiro/FLAIR README) or the jusiro2/FLAIR hub folder")


def load_flair(path: Path, device: str | torch.device = "cpu", *, text_config: str | Path | None = None) -> Loaded:
    """``(FlairModel, FlairPreprocess, FlairTokenizer)`` from FLAIR's released state dict."""
    BertConfig = _transformers().BertConfig

    folder = _text_folder(text_config)
    weights = _weights_file(path)
    try:
        config = BertConfig.from_pretrained(str(folder), local_files_only=True)
        tokenizer = FlairTokenizer(folder)
    except Exception as exc:  # noqa: BLE001 - a broken config.json or vocabulary
        raise UserError(f"{folder}: not a readable BERT config and tokenizer ({describe(exc)})") from None
    state = without(strip_module(read_state_file(weights, "FLAIR weights")), is_hf_position_ids)
    model = FlairModel(config, tokenizer)
    load_strict(model, state, weights, f"FLAIR (ResNet-50 + {folder.name})", optional=lambda key: False)
    with torch.no_grad():
        model.logit_scale.clamp_(0, MAX_LOGIT_SCALE)
    model = model.float().to(device).eval().requires_grad_(False)
    logger.info("loaded FLAIR from %s (text tower %s)", weights, folder)
    return Loaded(model, FlairPreprocess(), tokenizer)


FAMILY = Family(
    "flair", load_flair, ("text_config",), "en",
    "FLAIR (ResNet-50 + Bio_ClinicalBERT, 512 px padded, no normalisation); text_config=DIR: Bio_ClinicalBERT's "
    "config.json and vocab.txt",
    missing="no such FLAIR weights",
    fetch_hint="download flair_resnet.pth (linked from the jusiro/FLAIR README) and pass its path")

__all__ = ["FAMILY", "FlairModel", "FlairPreprocess", "FlairTokenizer", "load_flair"]
