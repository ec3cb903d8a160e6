"""Model families behind load_pretrained: the registry, explicit families against auto-detection, and
the one strict/lenient loader with its rename rules."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import cn_clip_ext as vc
from cn_clip_ext.errors import UserError
from cn_clip_ext.model.families import FAMILIES
from cn_clip_ext.model.tripartite import create_tripartite_model
from cn_clip_ext.model.weights import (hf_bert_to_cn_clip, is_pooler, load_lenient, load_strict,
                                       retclip_state_to_ours, strip_module)

TINY = vc.VISIONCLIP_TINY
CAPTIONS = ["疑似青光眼。", "未见明显异常。"]


def _images(n: int = 2, size: int = 128) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(0))


def test_registry_names_the_cn_clip_families_with_their_language():
    assert {"visionclip", "cn_clip", "retclip"} <= set(FAMILIES)
    assert all(FAMILIES[name].language == "zh" for name in ("visionclip", "cn_clip", "retclip"))
    with pytest.raises(UserError, match="unknown model family 'nope'"):
        vc.load_pretrained("x.pt", family="nope")


def test_cn_clip_checkpoint_loads_alike_through_its_family_and_auto_detection(tmp_path):
    source = vc.create_model(TINY, seed=3).eval()
    state = {f"module.{k}": v for k, v in source.state_dict().items()}  # as cn_clip saves it, from DDP
    torch.save({"state_dict": state, "epoch": 1, "step": 10}, tmp_path / "cn.pt")

    auto, _, tok = vc.load_pretrained(tmp_path / "cn.pt", model_name=TINY)
    named, preprocess, _ = vc.load_pretrained(tmp_path / "cn.pt", family="cn_clip", model_name=TINY)
    assert named.preprocess_mode == auto.preprocess_mode == "squash"  # cn_clip's own resize
    assert preprocess.size == 128
    with torch.no_grad():
        ref = torch.nn.functional.normalize(source.encode_image(_images()), dim=-1)
        assert torch.allclose(named.encode_image(_images()), ref, atol=1e-5)
        assert torch.equal(named.encode_text(CAPTIONS), auto.encode_text(tok(CAPTIONS)))
    # our trainer's family insists on our checkpoints: this one records no architecture
    with pytest.raises(UserError, match="does not record its architecture"):
        vc.load_pretrained(tmp_path / "cn.pt", family="visionclip")
    with pytest.raises(UserError, match="option 'arch' is not one of the cn_clip family's"):
        vc.load_pretrained(tmp_path / "cn.pt", family="cn_clip", arch="RN50")
    with pytest.raises(UserError, match="missing.pt: no such checkpoint file; download the checkpoint from the Chinese-CLIP"):
        vc.load_pretrained(tmp_path / "missing.pt", family="cn_clip")


def test_retclip_family_reads_a_bare_state_dict_with_a_chosen_head(tmp_path):
    source = create_tripartite_model(TINY, seed=4).eval()
    torch.save({f"module.{k}": v for k, v in source.state_dict().items()}, tmp_path / "ret.pt")
    model, _, _ = vc.load_pretrained(tmp_path / "ret.pt", family="retclip", model_name=TINY,
                                     single_eye_head="left")
    assert model.clip.single_eye_head == "left"
    source.set_single_eye_head("left")
    with torch.no_grad():
        ref = torch.nn.functional.normalize(source.encode_image(_images()), dim=-1)
        assert torch.allclose(model.encode_image(_images()), ref, atol=1e-5)


def test_rename_rules_and_the_two_loaders():
    state = {"module.bert.pooler.dense.weight": torch.zeros(1), "module.visual.conv1.weight": torch.ones(1)}
    assert strip_module(state).keys() == {"bert.pooler.dense.weight", "visual.conv1.weight"}
    assert is_pooler("bert.pooler.dense.bias") and not is_pooler("bert.encoder.layer.0.output.dense.bias")
    assert hf_bert_to_cn_clip({"pooler.dense.weight": torch.zeros(1), "embeddings.LayerNorm.gamma": torch.ones(1),
                               "cls.predictions.bias": torch.zeros(1)}) == {"bert.embeddings.LayerNorm.weight":
                                                                           torch.ones(1)}
    assert list(retclip_state_to_ours(state)) == ["visual.conv1.weight"]

    model = torch.nn.Linear(2, 2)
    with pytest.raises(UserError, match="f.pt: no weights match architecture lin"):
        load_strict(model, {"other": torch.zeros(1)}, "f.pt", "lin")
    with pytest.raises(UserError, match=r"weights do not fit lin \(1 missing, 0 unexpected, e.g. 'bias'\)"):
        load_strict(model, {"weight": torch.zeros(2, 2)}, "f.pt", "lin")
    report = load_lenient(model, {"weight": torch.full((2, 2), 7.0), "bias": torch.zeros(3), "x": torch.zeros(1)},
                          "f.pt", "lin")
    assert report.loaded == ("weight",) and report.unexpected == ("x",) and report.missing == ("bias",)
    assert report.mismatched == ("bias (3,) vs (2,)",) and bool((model.weight == 7).all())
    with pytest.raises(UserError, match="no warm-start weights match model keys"):
        load_lenient(model, {"x": torch.zeros(1)}, "f.pt", "lin", what="warm-start weights", target="model keys")


# -- open_clip ---------------------------------------------------------------------------------
def _pil(h: int, w: int, seed: int = 0):
    from PIL import Image

    from family_support import fundus_like

    return Image.fromarray(fundus_like(h, w, seed))


def test_open_clip_weights_file_loads_through_open_clip_and_matches_its_forward(tmp_path):
    import open_clip

    from family_support import save_as_torchscript

    torch.manual_seed(0)
    ref = open_clip.create_model("RN50-quickgelu").eval()  # OpenAI's RN50 (QuickGELU text tower), random
    torch.save(ref.state_dict(), tmp_path / "RN50-state.pt")
    save_as_torchscript(ref.state_dict(), tmp_path / "RN50.pt")  # OpenAI's released format
    ref_pre = open_clip.image_transform(224, is_train=False)
    ref_tok = open_clip.get_tokenizer("RN50")
    images = [_pil(300, 260, 1), _pil(240, 320, 2)]
    prompts = ["a fundus photograph of glaucoma", "a fundus photograph of a normal retina"]
    with torch.no_grad():
        x = torch.stack([ref_pre(im) for im in images])
        want_img = F.normalize(ref.encode_image(x), dim=-1)
        want_txt = F.normalize(ref.encode_text(ref_tok(prompts)), dim=-1)
    for path, options in ((tmp_path / "RN50.pt", {}), (tmp_path / "RN50-state.pt", {"arch": "RN50-quickgelu"})):
        model, preprocess, tokenizer = vc.load_pretrained(path, family="open_clip", **options)
        got = torch.stack([preprocess(im) for im in images])
        assert torch.equal(got, x)  # open_clip's own transform
        batch = preprocess.batch_transform(torch.stack([preprocess.pixels(im) for im in images]))
        assert torch.equal(batch, x)  # uint8 pixels per image, scaled and normalised per batch: the same
        with torch.no_grad():
            assert torch.allclose(model.encode_image(x), want_img, atol=1e-4)
            assert torch.allclose(model.encode_text(prompts), want_txt, atol=1e-4)
            assert torch.equal(model.encode_text(tokenizer(prompts)), model.encode_text(prompts))
        assert torch.equal(model.logit_scale, ref.logit_scale)
    with pytest.raises(UserError, match="does not name its architecture; pass arch="):
        vc.load_pretrained(tmp_path / "RN50-state.pt", family="open_clip")
    with pytest.raises(UserError, match="RN50-state.pt: open_clip cannot load these weights"):
        vc.load_pretrained(tmp_path / "RN50-state.pt", family="open_clip", arch="ViT-B-32")
    with pytest.raises(UserError, match="nope.pt: no such open_clip weights; download it first"):
        vc.load_pretrained(tmp_path / "nope.pt", family="open_clip", arch="RN50")


def test_biomedclip_style_hub_folder_loads_offline_with_its_bert_text_tower(tmp_path):
    from open_clip.tokenizer import HFTokenizer

    from family_support import write_biomedclip_style

    folder, ref, text = write_biomedclip_style(tmp_path / "BiomedCLIP", seed=3)
    prompts = ["a retinal image showing glaucoma", "a fundus photograph of a healthy eye with drusen"]
    images = [_pil(230, 250, 4), _pil(256, 224, 5)]
    ref_tok = HFTokenizer(str(text), context_length=32)
    model, preprocess, tokenizer = vc.load_pretrained(folder)  # recognised by open_clip_config.json
    assert type(model).__name__ == "OpenCLIPModel"
    x = torch.stack([preprocess(im) for im in images])
    assert torch.equal(tokenizer(prompts), ref_tok(prompts))
    with torch.no_grad():
        assert torch.allclose(model.encode_image(x), F.normalize(ref.encode_image(x), dim=-1), atol=1e-5)
        assert torch.allclose(model.encode_text(prompts), F.normalize(ref.encode_text(ref_tok(prompts)), dim=-1),
                              atol=1e-5)

    # the BERT's files elsewhere: text_config=DIR; missing: one line naming what to fetch
    other, ref2, text2 = write_biomedclip_style(tmp_path / "Biomed2", seed=6, text_in_folder=False)
    model2, _, _ = vc.load_pretrained(other, family="open_clip", text_config=text2)
    with torch.no_grad():
        assert torch.allclose(model2.encode_text(prompts), F.normalize(
            ref2.encode_text(HFTokenizer(str(text2), context_length=32)(prompts)), dim=-1), atol=1e-5)
    with pytest.raises(UserError, match="needs its config.json and tokenizer files .* download them from "
                                        "huggingface.co/microsoft/BiomedNLP-BiomedBERT-base-uncased-abstract"):
        vc.load_pretrained(other, family="open_clip")
    (other / "open_clip_pytorch_model.bin").unlink()
    with pytest.raises(UserError, match="no weights .* download open_clip_pytorch_model.bin"):
        vc.load_pretrained(other, family="open_clip", text_config=text2)


# -- FLAIR -------------------------------------------------------------------------------------
def test_flair_preprocessing_is_flairs_resize_pad_and_scaling():
    from cn_clip_ext.model.families.flair import FlairPreprocess

    from family_support import fundus_like, reference_flair_preprocess

    pre = FlairPreprocess()
    for h, w in ((700, 1000), (517, 333), (512, 512), (300, 300), (1001, 999)):
        rgb = fundus_like(h, w, seed=h)
        got = pre(rgb)
        assert got.shape == (3, 512, 512) and got.dtype == torch.float32
        assert torch.equal(got, reference_flair_preprocess(rgb)), (h, w)
        assert torch.equal(pre(_pil(h, w, seed=h)), got)  # a PIL image gives the same
    tall = pre(fundus_like(700, 350))
    assert float(tall[:, :, 256:].abs().max()) == 0 and float(tall[:, :, :256].max()) > 0  # padded on the right
    assert float(pre(np.zeros((40, 60, 3), np.uint8)).max()) == 0


def test_flair_released_state_dict_loads_and_matches_the_reference_forward(tmp_path):
    from family_support import reference_flair_preprocess, write_flair, fundus_like

    weights, text, ref = write_flair(tmp_path, seed=7)
    model, preprocess, tokenizer = vc.load_pretrained(weights, family="flair", text_config=text)
    rgbs = [fundus_like(600, 800, 1), fundus_like(512, 512, 2)]
    x = torch.stack([preprocess(r) for r in rgbs])
    assert torch.equal(x, torch.stack([reference_flair_preprocess(r) for r in rgbs]))
    prompts = ["a fundus photograph of glaucoma", "a fundus photograph of mild diabetic retinopathy with exudates"]
    with torch.no_grad():
        assert torch.allclose(model.encode_image(x), ref.encode_image(x), atol=1e-5)
        assert torch.allclose(model.encode_text(prompts), ref.encode_text(prompts), atol=1e-5)
        assert torch.allclose(model.encode_text(tokenizer(prompts)), ref.encode_text(prompts), atol=1e-5)
    assert float(model.logit_scale) == pytest.approx(float(ref.logit_scale))
    assert model.encodes_prompts_per_class

    with pytest.raises(UserError, match="needs text_config=DIR: download config.json and vocab.txt of "
                                        "emilyalsentzer/Bio_ClinicalBERT"):
        vc.load_pretrained(weights, family="flair")
    with pytest.raises(UserError, match="gone.pth: no such FLAIR weights; download flair_resnet.pth"):
        vc.load_pretrained(tmp_path / "gone.pth", family="flair", text_config=text)
    state = torch.load(weights, weights_only=True)
    del state["vision_model.projection_head_vision.projection.weight"]
    torch.save(state, tmp_path / "cut.pth")
    with pytest.raises(UserError, match=r"weights do not fit FLAIR .*1 missing"):
        vc.load_pretrained(tmp_path / "cut.pth", family="flair", text_config=text)
