"""Model families behind load_pretrained: the registry, explicit families against auto-detection, and
the one strict/lenient loader with its rename rules."""
from __future__ import annotations

import pytest
import torch

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
