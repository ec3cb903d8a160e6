"""Builders for the model-family tests: randomly initialised models in each family's own library or
published key layout, saved in its published file format, and FLAIR's reference forward pass and
preprocessing written from its published description (independently of cn_clip_ext's adapter)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

WORDS = ("a fundus photograph of no diabetic retinopathy mild moderate severe proliferative age related macular "
         "degeneration glaucoma normal retina retinal image showing optic disc cup neovascularisation haemorrhages "
         "micro ##aneurysms exudates drusen healthy eye the with and signs suspected").split()


def write_tiny_bert(folder: Path, hidden: int = 32, layers: int = 3, seed: int = 0):
    """A Hugging Face BERT folder as the hub has it (``config.json`` + ``vocab.txt``), tiny; returns the config."""
    from transformers import BertConfig

    folder.mkdir(parents=True, exist_ok=True)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *dict.fromkeys(WORDS)]
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    config = BertConfig(vocab_size=len(vocab), hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=2,
                        intermediate_size=2 * hidden, max_position_embeddings=128)
    config.save_pretrained(str(folder))
    return config


def hf_tokenizer(folder: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(folder), local_files_only=True)


# -- FLAIR -------------------------------------------------------------------------------------
def _randomise_batchnorm(module: nn.Module, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    for m in module.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)


class ReferenceFlair:
    """FLAIR as published: a torchvision ResNet-50 without classifier and a BERT, each with a
    bias-free projection to 512 between L2 normalisations; text features from layers 1, 2 and last."""

    def __init__(self, bert_folder: Path, seed: int = 0):
        import torchvision
        from transformers import BertConfig, BertModel

        torch.manual_seed(seed)
        self.resnet = torchvision.models.resnet50(weights=None)
        self.resnet.fc = nn.Identity()
        _randomise_batchnorm(self.resnet, seed)
        config = BertConfig.from_pretrained(str(bert_folder))
        self.bert = BertModel(config)
        self.vision_proj = nn.Linear(2048, 512, bias=False)
        self.text_proj = nn.Linear(config.hidden_size, 512, bias=False)
        self.logit_scale = torch.log(torch.tensor(1 / 0.07))
        self.tokenizer = hf_tokenizer(bert_folder)
        self.tokenizer.model_max_length = 77
        for m in (self.resnet, self.bert):
            m.eval()

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The released file's keys (an older transformers also saved ``position_ids``)."""
        state = {f"vision_model.model.{k}": v for k, v in self.resnet.state_dict().items()}
        state["vision_model.projection_head_vision.projection.weight"] = self.vision_proj.weight.detach()
        state.update({f"text_model.model.{k}": v for k, v in self.bert.state_dict().items()})
        state["text_model.model.embeddings.position_ids"] = torch.arange(
            self.bert.config.max_position_embeddings)[None]
        state["text_model.projection_head_text.projection.weight"] = self.text_proj.weight.detach()
        state["logit_scale"] = self.logit_scale.clone()
        return state

    @torch.no_grad()
    def encode_image(self, x: torch.Tensor) -> torch.Tensor:
        f = self.resnet(x)
        f = self.vision_proj(f / f.norm(dim=-1, keepdim=True))
        return f / f.norm(dim=-1, keepdim=True)

    @torch.no_grad()
    def encode_text(self, prompts: list[str]) -> torch.Tensor:
        tok = self.tokenizer(prompts, truncation=True, padding=True, return_tensors="pt")
        out = self.bert(input_ids=tok["input_ids"], attention_mask=tok["attention_mask"], output_hidden_states=True)
        h = torch.stack([out.hidden_states[1], out.hidden_states[2], out.hidden_states[-1]])
        f = h.permute(1, 0, 2, 3).mean(2).mean(1)
        f = self.text_proj(f / f.norm(dim=-1, keepdim=True))
        return f / f.norm(dim=-1, keepdim=True)


def reference_flair_preprocess(rgb: np.ndarray, size: int = 512) -> torch.Tensor:
    """FLAIR's published preprocessing: float32 / 255, the longer side to ``size`` (antialiased
    bilinear), the shorter to ``int(side / scale)``, zeros right and below up to ``size`` x ``size``."""
    img = rgb.astype(np.float32)
    if img.max() > 0:
        img /= 255
    x = torch.tensor(np.transpose(img, (2, 0, 1)))[None]
    scale = max(x.shape[-2:]) / size
    x = F.interpolate(x, size=(int(x.shape[-2] / scale), int(x.shape[-1] / scale)), mode="bilinear",
                      align_corners=False, antialias=True)
    out = torch.zeros(1, 3, size, size)
    out[..., :x.shape[-2], :x.shape[-1]] = x
    return out[0]


def write_flair(folder: Path, seed: int = 0) -> tuple[Path, Path, ReferenceFlair]:
    """``(flair_resnet.pth, Bio_ClinicalBERT-layout text folder, reference)``: FLAIR's released format."""
    text = folder / "Bio_ClinicalBERT"
    write_tiny_bert(text, seed=seed)
    ref = ReferenceFlair(text, seed)
    weights = folder / "flair_resnet.pth"
    torch.save(ref.state_dict(), weights)
    return weights, text, ref


# -- open_clip ---------------------------------------------------------------------------------
BIOMED_TEXT = "microsoft/BiomedNLP-BiomedBERT-base-uncased-abstract"


def write_biomedclip_style(folder: Path, seed: int = 0, text_in_folder: bool = True) -> tuple[Path, nn.Module, Path]:
    """A hub-layout folder like BiomedCLIP's (timm ViT + Hugging Face BERT through open_clip's
    HFTextEncoder), tiny, built by open_clip itself: ``(folder, open_clip model, text folder)``."""
    from open_clip.model import CustomTextCLIP

    folder.mkdir(parents=True, exist_ok=True)
    text = folder if text_in_folder else folder.parent / f"{folder.name}-text"
    write_tiny_bert(text, seed=seed)
    model_cfg = {
        "embed_dim": 16,
        "vision_cfg": {"timm_model_name": "vit_tiny_patch16_224", "timm_model_pretrained": False, "timm_pool": "",
                       "timm_proj": "linear", "image_size": 224},
        "text_cfg": {"hf_model_name": BIOMED_TEXT, "hf_tokenizer_name": BIOMED_TEXT, "hf_proj_type": "mlp",
                     "hf_pooler_type": "cls_last_hidden_state_pooler", "context_length": 32},
    }
    (folder / "open_clip_config.json").write_text(json.dumps({
        "model_cfg": model_cfg,
        "preprocess_cfg": {"mean": [0.48145466, 0.4578275, 0.40821073], "std": [0.26862954, 0.26130258, 0.27577711]},
    }), encoding="utf-8")
    torch.manual_seed(seed)
    local_text = {**model_cfg["text_cfg"], "hf_model_name": str(text), "hf_tokenizer_name": str(text),
                  "hf_model_pretrained": False}
    model = CustomTextCLIP(embed_dim=16, vision_cfg=model_cfg["vision_cfg"], text_cfg=local_text).eval()
    torch.save(model.state_dict(), folder / "open_clip_pytorch_model.bin")
    return folder, model, text


def save_as_torchscript(state: dict[str, torch.Tensor], path: Path) -> None:
    """A TorchScript archive holding ``state`` under its names, as OpenAI's released CLIP files are."""

    class Holder(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x

    root = Holder()
    for key, value in state.items():
        *parents, leaf = key.split(".")
        node = root
        for name in parents:
            if not isinstance(getattr(node, name, None), nn.Module):
                node.add_module(name, Holder())
            node = getattr(node, name)
        node.register_buffer(leaf, value.clone())
    torch.jit.script(root).save(str(path))


def fundus_like(h: int, w: int, seed: int = 0) -> np.ndarray:
    """An ``[h, w, 3]`` uint8 image: a bright disc on black with noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:h, :w]
    disc = ((yy - h / 2) ** 2 + (xx - w / 2) ** 2) < (min(h, w) / 2.2) ** 2
    img = rng.integers(0, 255, (h, w, 3)).astype(np.float32) * 0.3 + disc[..., None] * np.array([150, 70, 30])
    return np.clip(img, 0, 255).astype(np.uint8)


__all__ = ["BIOMED_TEXT", "ReferenceFlair", "fundus_like", "hf_tokenizer", "reference_flair_preprocess",
           "save_as_torchscript", "write_biomedclip_style", "write_flair", "write_tiny_bert"]
