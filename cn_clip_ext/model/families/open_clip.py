"""The open_clip family: OpenAI CLIP and open_clip weights, and BiomedCLIP-style models in the Hugging
Face hub layout, all built and loaded by the ``open_clip_torch`` library itself (the ``open_clip``
extra: ``pip install visionclip-cn[open_clip]``); only local files are read.

- A weights file and ``arch`` (an open_clip model name): ``load_pretrained("RN50.pt",
  family="open_clip", arch="RN50")``. OpenAI's released files are TorchScript archives; those are
  read by open_clip's ``load_openai_model`` (which infers the architecture), any other file as a
  state dict (``weights_only``) by ``create_model_from_pretrained``.
- A folder with ``open_clip_config.json`` and ``open_clip_pytorch_model.bin`` (or
  ``.safetensors``), as the hub has BiomedCLIP. A Hugging Face text tower (``hf_model_name`` in the
  config, open_clip's ``HFTextEncoder``) is built from the BERT's ``config.json`` and tokenizer files
  in that folder, or in ``text_config=DIR``, never from the hub.

The model is wrapped in :class:`OpenCLIPModel` (normalised embeddings, strings or token ids); the
preprocessing is open_clip's own transform, split by :class:`SplitTorchvision` so the decoding
workers send ``uint8`` pixels and whole batches are scaled and normalised in the encoding process.
"""
from __future__ import annotations

import logging
import zipfile
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ...errors import UserError, describe
from ...files import read_structured
from .base import Family, Loaded

logger = logging.getLogger(__name__)

CONFIG_FILE = "open_clip_config.json"
WEIGHT_FILES = ("open_clip_model.safetensors", "open_clip_pytorch_model.safetensors", "open_clip_pytorch_model.bin")
"""Weight files of a hub-layout folder, in open_clip's order of preference."""
TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "vocab.json", "spiece.model", "sentencepiece.bpe.model")
INSTALL = "pip install 'open_clip_torch==3.3.0' (the open_clip extra of this project)"


def _open_clip():
    from ...extras import require

    return require("open_clip", extra="open_clip", purpose="the open_clip family")


class OpenCLIPModel(nn.Module):
    """An open_clip ``CLIP``/``CustomTextCLIP`` (``self.model``) with the family contract:
    ``encode_image(batch)`` and ``encode_text(strings or token ids)`` give L2-normalised ``[B, D]``
    float embeddings; ``logit_scale`` is open_clip's log temperature."""

    def __init__(self, model: nn.Module, tokenizer: Callable, name: str):
        super().__init__()
        self.model = model
        self.tokenizer = tokenizer
        self.name = name

    @property
    def visual(self) -> nn.Module:
        """The image tower (the batch encoders fold its BatchNorms while encoding)."""
        return self.model.visual

    @property
    def logit_scale(self) -> torch.Tensor:
        return self.model.logit_scale

    @property
    def device(self) -> torch.device:
        return self.model.logit_scale.device

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.model.encode_image(images.to(self.device)).float(), dim=-1)

    def encode_text(self, texts: torch.Tensor | str | Sequence[str]) -> torch.Tensor:
        ids = texts if torch.is_tensor(texts) else self.tokenizer([texts] if isinstance(texts, str) else list(texts))
        return F.normalize(self.model.encode_text(ids.to(self.device)).float(), dim=-1)

    def extra_repr(self) -> str:
        return f"open_clip={self.name!r}"


class SplitTorchvision:
    """A torchvision ``Compose`` whose steps before its ``ToTensor`` run per PIL image, cut there:
    :meth:`pixels` gives those steps' result as ``uint8`` ``[3, H, W]``, :attr:`batch_transform`
    turns a batch of them into what ``ToTensor`` and the later steps give (``/ 255`` in float32,
    then e.g. ``Normalize``, which broadcasts over the batch). Calling it runs the whole ``Compose``."""

    def __init__(self, compose: Any):
        steps = list(compose.transforms)
        from torchvision.transforms import ToTensor

        cut = next((i for i, t in enumerate(steps) if isinstance(t, ToTensor)), None)
        if cut is None:
            raise ValueError(f"no ToTensor step in {compose!r}")
        self.compose = compose
        self.before, self.after = steps[:cut], steps[cut + 1:]

    def __call__(self, image: Any) -> torch.Tensor:
        return self.compose(image)

    def pixels(self, image: Any) -> torch.Tensor:
        for step in self.before:
            image = step(image)
        arr = np.asarray(image.convert("RGB") if image.mode != "RGB" else image)
        return torch.from_numpy(arr.copy()).permute(2, 0, 1)

    def _batch(self, images: torch.Tensor) -> torch.Tensor:
        x = images.to(torch.float32).div(255)
        for step in self.after:
            x = step(x)
        return x

    @property
    def batch_transform(self) -> Callable[[torch.Tensor], torch.Tensor]:
        return self._batch

    def __repr__(self) -> str:
        from torchvision import transforms as T

        parts = []
        for step in (*self.before, *self.after):
            if isinstance(step, T.Resize):
                parts.append(f"Resize({step.size}, {step.interpolation.value})")
            elif isinstance(step, T.CenterCrop):
                parts.append(f"CenterCrop({step.size[0]})")
            elif isinstance(step, T.Normalize):
                parts.append(f"Normalize(mean {tuple(round(float(m), 3) for m in step.mean)}, "
                             f"std {tuple(round(float(v), 3) for v in step.std)})")
            elif type(step).__name__ != "MaybeConvertMode":  # the RGB conversion every family does
                parts.append(type(step).__name__)
        return "open_clip: " + ", ".join(parts)


def _is_torchscript(path: Path) -> bool:
    """Whether a file is a TorchScript archive (OpenAI's released CLIP files are)."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(name.endswith("/constants.pkl") for name in archive.namelist())


def _library_error(path: Path, exc: Exception) -> UserError:
    return UserError(f"{path}: open_clip cannot load these weights ({describe(exc)})")


def _from_file(path: Path, arch: str | None, device: str | torch.device) -> tuple[nn.Module, Any, Callable, str]:
    open_clip = _open_clip()
    if _is_torchscript(path):  # OpenAI's release: open_clip rebuilds the model from the archive's weights
        try:
            model = open_clip.load_openai_model(str(path), precision="fp32", device="cpu")
        except Exception as exc:  # noqa: BLE001 - a damaged archive
            raise _library_error(path, exc) from None
        name = arch or path.stem
        preprocess = open_clip.image_transform(model.visual.image_size, is_train=False,
                                               mean=model.visual.image_mean, std=model.visual.image_std)
        tokenizer = open_clip.get_tokenizer(arch) if arch else open_clip.get_tokenizer("RN50")  # OpenAI's BPE
        return model, preprocess, tokenizer, name
    if not arch:
        raise UserError(f"{path}: a state-dict file does not name its architecture; pass arch= (an open_clip "
                        f"model name such as RN50 or ViT-B-16)")
    if arch not in open_clip.list_models():
        raise UserError(f"{path}: unknown open_clip architecture {arch!r} (e.g. RN50, ViT-B-16, ViT-L-14)")
    try:
        model, preprocess = open_clip.create_model_from_pretrained(arch, pretrained=str(path), device="cpu")
    except Exception as exc:  # noqa: BLE001 - keys or shapes that do not fit, unreadable file
        raise _library_error(path, exc) from None
    return model, preprocess, open_clip.get_tokenizer(arch), arch


def _hf_text_folder(folder: Path, text_cfg: dict, text_config: str | Path | None) -> Path:
    """The local folder holding a Hugging Face text tower's ``config.json`` and tokenizer files."""
    text_dir = Path(text_config) if text_config else folder
    hub_name = text_cfg.get("hf_model_name") or text_cfg.get("hf_tokenizer_name")
    if not (text_dir / "config.json").is_file() or not any((text_dir / f).is_file() for f in TOKENIZER_FILES):
        raise UserError(f"{text_dir}: the text tower {hub_name} needs its config.json and tokenizer files "
                        f"({' or '.join(TOKENIZER_FILES[:2])}): download them from huggingface.co/{hub_name} "
                        f"into {text_dir} (or pass text_config=DIR)")
    return text_dir


def _from_folder(folder: Path, text_config: str | Path | None,
                 device: str | torch.device) -> tuple[nn.Module, Any, Callable, str]:
    config_path = folder / CONFIG_FILE
    if not config_path.is_file():
        raise UserError(f"{folder}: no {CONFIG_FILE}; an open_clip folder is in the Hugging Face hub layout "
                        f"({CONFIG_FILE} + {WEIGHT_FILES[-1]})")
    config = read_structured(config_path, "open_clip config")
    model_cfg = config.get("model_cfg") if isinstance(config, dict) else None
    if not isinstance(model_cfg, dict) or not isinstance(model_cfg.get("text_cfg"), dict):
        raise UserError(f"{config_path}: no model_cfg with a text_cfg")
    if not any((folder / f).is_file() for f in WEIGHT_FILES):
        raise UserError(f"{folder}: no weights ({' or '.join(WEIGHT_FILES[1:])}); download "
                        f"{WEIGHT_FILES[-1]} from the model's hub page into {folder}")
    open_clip = _open_clip()
    text_cfg = dict(model_cfg["text_cfg"])
    overrides: dict[str, Any] = {}
    tokenizer_dir = folder
    if "hf_model_name" in text_cfg or "hf_tokenizer_name" in text_cfg:
        tokenizer_dir = _hf_text_folder(folder, text_cfg, text_config)
        local = str(tokenizer_dir.resolve())  # a local path: transformers reads it and never the hub
        overrides["text_cfg"] = {**text_cfg, "hf_model_name": local, "hf_tokenizer_name": local,
                                 "hf_model_pretrained": False}
    try:
        model, preprocess = open_clip.create_model_from_pretrained(f"local-dir:{folder}", device="cpu", **overrides)
        if tokenizer_dir == folder:
            tokenizer = open_clip.get_tokenizer(f"local-dir:{folder}")
        else:
            tokenizer = open_clip.tokenizer.HFTokenizer(
                str(tokenizer_dir), context_length=text_cfg.get("context_length", 77),
                tokenizer_mode=text_cfg.get("tokenizer_mode"), **text_cfg.get("tokenizer_kwargs", {}))
    except UserError:
        raise
    except Exception as exc:  # noqa: BLE001 - keys or shapes that do not fit, unreadable files
        raise _library_error(folder, exc) from None
    return model, preprocess, tokenizer, folder.name


def load_open_clip(path: Path, device: str | torch.device = "cpu", *, arch: str | None = None,
                   text_config: str | Path | None = None) -> Loaded:
    """``(OpenCLIPModel, open_clip's eval transform split for batches, open_clip's tokenizer)``."""
    if path.is_dir():
        model, preprocess, tokenizer, name = _from_folder(path, text_config, device)
    else:
        if text_config:
            raise UserError(f"{path}: text_config is for hub-layout folders with a Hugging Face text tower")
        model, preprocess, tokenizer, name = _from_file(path, arch, device)
    wrapped = OpenCLIPModel(model.float().eval(), tokenizer, name).to(device).requires_grad_(False)
    logger.info("loaded open_clip %s from %s", name, path)
    return Loaded(wrapped, SplitTorchvision(preprocess), tokenizer)


FAMILY = Family(
    "open_clip", load_open_clip, ("arch", "text_config"), "en",
    "OpenAI CLIP / open_clip weights (arch=) and hub-layout folders such as BiomedCLIP, via open_clip_torch",
    fetch_hint="download it first: OpenAI's RN50.pt (the URL is in open_clip's pretrained.py) or a hub "
               "folder such as microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224 "
               "(open_clip_config.json, open_clip_pytorch_model.bin); nothing is downloaded here")

__all__ = ["FAMILY", "OpenCLIPModel", "SplitTorchvision", "load_open_clip"]
