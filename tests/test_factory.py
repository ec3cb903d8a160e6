"""The model factory: architectures, parameter counts, forward pass, user configs."""
import json

import pytest
import torch
from cn_clip.clip.model import CLIP

import cn_clip_ext as vc


def _n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _cn_clip_reference(name: str) -> CLIP:
    """The same architecture built by cn_clip's own config reader (its create_model path)."""
    from cn_clip.clip.utils import create_model

    return create_model(name)


def test_visionclip_matches_cn_clip_towers():
    ours = vc.create_model(vc.VISIONCLIP, seed=0)
    ref = _cn_clip_reference(vc.VISIONCLIP)
    assert isinstance(ours, CLIP)
    assert _n_params(ours.visual) == _n_params(ref.visual)
    assert _n_params(ours.bert) == _n_params(ref.bert)
    assert ours.text_projection.shape == ref.text_projection.shape == (768, 1024)
    # RoBERTa-wwm-ext-base: 12 layers of width 768 over a 21,128-token vocabulary
    assert ours.bert.embeddings.word_embeddings.weight.shape == (21128, 768)
    assert len(ours.bert.encoder.layer) == 12
    assert next(ours.parameters()).dtype == torch.float32  # cn_clip's create_model gives fp16


def test_seed_makes_initialisation_reproducible_without_touching_global_rng():
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    a = vc.create_model(vc.VISIONCLIP_TINY, seed=7)
    assert torch.equal(torch.rand(1), before)  # global stream untouched
    b = vc.create_model(vc.VISIONCLIP_TINY, seed=7)
    c = vc.create_model(vc.VISIONCLIP_TINY, seed=8)
    for (ka, va), (_, vb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(va, vb), ka
    assert not torch.equal(a.text_projection, c.text_projection)


@pytest.mark.parametrize("name", [vc.VISIONCLIP_TINY, vc.VISIONCLIP])
def test_forward_gives_normalised_embeddings(name):
    model, _, eval_tf = vc.create_model_and_transforms(name, seed=0)
    model.eval()
    cfg = vc.get_model_config(name)
    images = torch.randn(2, 3, cfg.image_size, cfg.image_size)
    texts = vc.get_tokenizer(name)(["疑似青光眼。", "可见出血斑。"])
    with torch.no_grad():
        img, txt, scale = model(images, texts)
    assert img.shape == txt.shape == (2, cfg.embed_dim)
    torch.testing.assert_close(img.norm(dim=-1), torch.ones(2))
    torch.testing.assert_close(txt.norm(dim=-1), torch.ones(2))
    assert scale.item() == pytest.approx(1 / 0.07, rel=1e-4)


def test_list_models_has_every_pairing():
    models = vc.list_models()
    assert vc.VISIONCLIP in models and vc.VISIONCLIP_TINY in models
    for name in ("ViT-B-16@RoBERTa-wwm-ext-base-chinese", "RN50@RBT3-chinese", "ViT-L-14@RoBERTa-wwm-ext-large-chinese"):
        assert name in models


def test_unknown_model_names_choices():
    with pytest.raises(vc.UnknownModelError, match="RN50"):
        vc.get_model_config("RN51@RoBERTa-wwm-ext-base-chinese")
    with pytest.raises(vc.UnknownModelError):
        vc.get_model_config("RN50")


def test_configs_are_immutable():
    cfg = vc.get_model_config(vc.VISIONCLIP)
    with pytest.raises(TypeError):
        cfg.vision["embed_dim"] = 3  # type: ignore[index]


def test_user_config_folder_adds_a_tower(tmp_path):
    (tmp_path / "RN-micro.json").write_text(json.dumps({
        "embed_dim": 32, "image_resolution": 64, "vision_layers": "[1,1,1,1]",
        "vision_width": 8, "vision_patch_size": None}))
    (tmp_path / "notes.json").write_text(json.dumps({"comment": "neither tower"}))
    vc.add_model_config(tmp_path)
    assert "RN-micro@BERT-tiny-chinese" in vc.list_models()
    model, train_tf, eval_tf = vc.create_model_and_transforms("RN-micro@BERT-tiny-chinese", seed=0)
    with torch.no_grad():
        out = model.encode_image(torch.zeros(1, 3, 64, 64))
    assert out.shape == (1, 32)


def test_broken_user_config_is_a_clear_error(tmp_path):
    bad = tmp_path / "broken.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="broken.json"):
        vc.add_model_config(bad)
    with pytest.raises(FileNotFoundError):
        vc.add_model_config(tmp_path / "missing")


def test_context_length_beyond_positions_is_refused():
    with pytest.raises(ValueError, match="positions"):
        vc.get_model_config(vc.VISIONCLIP_TINY, context_length=65)


def test_context_longer_than_the_text_tower_is_a_one_line_user_error():
    from cn_clip_ext.errors import UserError

    with pytest.raises(UserError, match=r"context length 100 exceeds the 64 positions of BERT-tiny-chinese") as err:
        vc.get_model_config(vc.VISIONCLIP_TINY, context_length=100)
    assert isinstance(err.value, ValueError) and len(str(err.value).splitlines()) == 1
    assert vc.get_model_config(vc.VISIONCLIP, context_length=100).context_length == 100  # RoBERTa-base has 512
