"""vclip-export bundles, load_pretrained, ONNX parity, and refusal of damaged or malicious files."""
import json
import os
import re
import shutil
import zipfile
from argparse import Namespace
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import cn_clip_ext as vc
from cn_clip_ext.model.bundle import BundleConfig, file_sha256
from cn_clip_ext.synth.generator import synfundus_example
from cn_clip_ext.errors import UserError
from cn_clip_ext.model.checkpoints import load_checkpoint_model
from cn_clip_ext.model.onnx import check_parity
from cn_clip_ext.model.pretrained import MissingTowerError
from cn_clip_ext.model.tokenizer import vocab_sha256
from cn_clip_ext.training.checkpoint import atomic_save
from vclip_export.export import main as export_main

ROOT = Path(__file__).resolve().parents[1]
CAPTIONS = ["疑似青光眼。", "未见明显异常。", "眼底照片显示中度非增殖期糖尿病视网膜病变，建议眼科随访。"]


def fundus_images(n: int, size: int = 160) -> list:
    return [synfundus_example(i, seed=3, size=size)[1].image for i in range(n)]


def make_checkpoint(path: Path, step: int = 7) -> Path:
    """A training-format checkpoint of the tiny model with every weight perturbed (no zero-init BN)."""
    model = vc.create_model(vc.VISIONCLIP_TINY, seed=0)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if t.is_floating_point() and "logit_scale" not in name:
                t.add_(0.02 * torch.randn(t.shape, generator=gen))
                if "running_var" in name:
                    t.abs_().add_(0.5)
    config = {"model": vc.VISIONCLIP_TINY, "preprocess": "fov", "context_length": 52, "model_config_dir": None}
    atomic_save({"epoch": 1, "step": step, "name": vc.VISIONCLIP_TINY, "state_dict": model.state_dict(),
                 "optimizer": {}, "config": config, "rng": [], "format_version": 1}, path)
    return path


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("ckpt") / "latest.pt")


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("report") / "report.json"
    path.write_text(json.dumps({"meta": {"prompts": "plain"}, "results": {"tiny": {"refuge": {
        "n_images": 24, "metrics": {"balanced_accuracy": 0.625, "top1": 0.5, "macro_f1": 0.48}}}}}),
        encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def bundle(ckpt, report, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("bundles") / "visionclip-bundle"
    assert export_main([str(ckpt), str(out), "--onnx", "--report", str(report)]) == 0
    return out


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


def test_bundle_contents(bundle, ckpt):
    names = sorted(p.relative_to(bundle).as_posix() for p in bundle.rglob("*") if p.is_file())
    assert names == ["README.md", "config.json", "eval_report.json", "image_encoder.onnx", "model.safetensors",
                     "preprocessing.json", "prompts/expert.yaml", "prompts/plain.yaml", "special_tokens_map.json",
                     "text_encoder.onnx", "tokenizer.json", "tokenizer_config.json", "vocab.txt"]
    cfg = BundleConfig.from_file(bundle / "config.json")
    assert (cfg.architecture, cfg.embed_dim, cfg.image_size, cfg.context_length) == (vc.VISIONCLIP_TINY, 128, 128, 52)
    assert cfg.preprocess == "fov" and cfg.mean == vc.CLIP_MEAN and cfg.std == vc.CLIP_STD
    assert cfg.vocab_sha256 == vocab_sha256() and cfg.towers == ("image", "text")
    assert cfg.source["sha256"] == file_sha256(ckpt) and cfg.source["step"] == 7
    assert set(cfg.files) == set(names) - {"config.json"}
    assert all(file_sha256(bundle / n) == h for n, h in cfg.files.items())
    raw = (bundle / "model.safetensors").read_bytes()
    header_len = int.from_bytes(raw[:8], "little")
    assert raw[8:9] == b"{" and json.loads(raw[8:8 + header_len])  # a JSON header, not a pickle
    card = (bundle / "README.md").read_text(encoding="utf-8")
    for needle in ("SynFundus-1M", "CC BY-NC-SA 4.0", "research use only", "Intended use", "Limitations",
                   "| tiny | refuge | 24 | 0.625 | 0.500 | 0.480 |", "load_pretrained"):
        assert needle in card
    assert not list(bundle.parent.glob(".*tmp*"))  # the temporary folder was renamed away


def test_export_then_load_gives_the_checkpoints_embeddings(bundle, ckpt):
    clip, _ = load_checkpoint_model(ckpt)
    model, preprocess, tokenizer = vc.load_pretrained(bundle)
    from_ckpt, _, _ = vc.load_pretrained(ckpt)
    images = torch.stack([preprocess(im) for im in fundus_images(3)])
    ids = tokenizer(CAPTIONS)
    with torch.no_grad():
        ref_img = F.normalize(clip.encode_image(images), dim=-1)
        ref_txt = F.normalize(clip.encode_text(ids), dim=-1)
    for m in (model, from_ckpt):
        assert torch.equal(m.encode_image(images), ref_img)
        assert torch.equal(m.encode_text(ids), ref_txt)
        assert torch.equal(m.encode_text(CAPTIONS), ref_txt)  # strings are tokenized by the model
    assert torch.allclose(model.encode_image(images).norm(dim=-1), torch.ones(3))
    assert float(model.logit_scale) == float(clip.logit_scale.detach())
    assert not any(p.requires_grad for p in model.parameters()) and not model.training


def test_onnx_matches_pytorch(bundle):
    model, preprocess, tokenizer = vc.load_pretrained(bundle)
    images = torch.stack([preprocess(im) for im in fundus_images(5)])  # batch 5: export used batch 2
    img = check_parity(model, bundle / "image_encoder.onnx", "image", images)
    txt = check_parity(model, bundle / "text_encoder.onnx", "text", tokenizer(CAPTIONS + CAPTIONS[:1]))
    assert img.batch_size == 5 and txt.batch_size == 4
    assert img.max_abs_diff < 1e-4 and txt.max_abs_diff < 1e-4, (img, txt)
    recorded = json.loads((bundle / "config.json").read_text(encoding="utf-8"))["onnx"]
    assert recorded["max_abs_diff"]["image"] < 1e-4 and recorded["max_abs_diff"]["text"] < 1e-4


def test_single_tower_and_fp16_bundles(bundle, tmp_path):
    full, preprocess, _ = vc.load_pretrained(bundle)
    images = torch.stack([preprocess(im) for im in fundus_images(2)])
    image_only, text_only = tmp_path / "image", tmp_path / "text"
    assert export_main([str(bundle), str(image_only), "--image-only", "--fp16", "--no-prompts"]) == 0
    assert export_main([str(bundle), str(text_only), "--text-only"]) == 0
    assert (image_only / "model.safetensors").stat().st_size < 0.5 * (bundle / "model.safetensors").stat().st_size
    m, _, _ = vc.load_pretrained(image_only)
    assert m.clip.bert is None and next(m.parameters()).dtype == torch.float32
    assert torch.allclose(m.encode_image(images), full.encode_image(images), atol=1e-2)
    with pytest.raises(MissingTowerError, match="no text tower"):
        m.encode_text(CAPTIONS)
    t, _, _ = vc.load_pretrained(text_only)
    assert torch.equal(t.encode_text(CAPTIONS), full.encode_text(CAPTIONS))
    with pytest.raises(MissingTowerError, match="no image tower"):
        t.encode_image(images)
    assert BundleConfig.from_file(text_only / "config.json").source == \
        BundleConfig.from_file(bundle / "config.json").source  # provenance survives a re-export


def _missing(b: Path) -> str:
    (b / "vocab.txt").unlink()
    return "vocab.txt: missing"


def _mismatched_weights(b: Path) -> str:
    raw = bytearray((b / "model.safetensors").read_bytes())
    raw[-5] ^= 0xFF  # one flipped byte inside a tensor
    (b / "model.safetensors").write_bytes(bytes(raw))
    return "model.safetensors: contents do not match"


def _swapped_prompts(b: Path) -> str:
    shutil.copyfile(b / "prompts" / "plain.yaml", b / "prompts" / "expert.yaml")
    return "expert.yaml: contents do not match"


def _no_config(b: Path) -> str:
    (b / "config.json").unlink()
    return "not a VisionCLIP bundle"


def _future_format(b: Path) -> str:
    cfg = json.loads((b / "config.json").read_text(encoding="utf-8"))
    cfg["format_version"] = 99
    (b / "config.json").write_text(json.dumps(cfg), encoding="utf-8")
    return "format version 99 is not supported"


@pytest.mark.parametrize("damage", [_missing, _mismatched_weights, _swapped_prompts, _no_config, _future_format])
def test_damaged_bundle_is_refused_in_one_line(bundle, tmp_path, capsys, damage):
    broken = tmp_path / "broken"
    shutil.copytree(bundle, broken)
    expected = damage(broken)
    with pytest.raises(UserError, match=re.escape(expected)) as err:
        vc.load_pretrained(broken)
    assert len(str(err.value).splitlines()) == 1
    capsys.readouterr()
    assert export_main([str(broken), str(tmp_path / "again")]) == 2  # the CLI: exit 2, one line, no traceback
    assert expected in one_line_error(capsys)
    assert not (tmp_path / "again").exists()


class _Evil:
    """Pickles as a call to os.system: loading it without weights_only would create the marker file."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_malicious_pickle_is_refused_and_never_run(tmp_path, capsys):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pt"
    torch.save({"state_dict": {"x": torch.zeros(1)}, "config": {"model": vc.VISIONCLIP_TINY},
                "payload": _Evil(marker)}, evil)
    with zipfile.ZipFile(evil) as z:  # the file really does carry a call to os.system
        pickled = z.read(next(n for n in z.namelist() if n.endswith("data.pkl")))
    assert b"system" in pickled
    with pytest.raises(UserError, match="evil.pt: corrupted or unreadable checkpoint") as err:
        vc.load_pretrained(evil)
    assert len(str(err.value).splitlines()) == 1
    assert export_main([str(evil), str(tmp_path / "out")]) == 2
    assert "evil.pt" in one_line_error(capsys)
    assert not marker.exists() and not (tmp_path / "out").exists()


def test_export_refuses_bad_inputs_without_leaving_files(ckpt, tmp_path, capsys):
    bad_report = tmp_path / "report.json"
    bad_report.write_text("{not json", encoding="utf-8")
    out = tmp_path / "out"
    assert export_main([str(ckpt), str(out), "--report", str(bad_report)]) == 2
    assert "report.json: not a readable JSON" in one_line_error(capsys)
    assert export_main([str(tmp_path / "nope.pt"), str(out)]) == 2
    assert "nope.pt: checkpoint not found" in one_line_error(capsys)
    assert not out.exists() and os.listdir(tmp_path) == ["report.json"]
    out.mkdir()
    assert export_main([str(ckpt), str(out), "--no-prompts"]) == 2
    assert "already exists" in one_line_error(capsys)
    assert export_main([str(ckpt), str(out), "--no-prompts", "--force"]) == 0
    assert (out / "model.safetensors").is_file() and not (out / "prompts").exists()


def test_cn_clip_format_checkpoint_needs_and_takes_a_model_name(ckpt, tmp_path):
    state = torch.load(ckpt, weights_only=True)["state_dict"]
    cn = tmp_path / "cn_clip.pt"
    torch.save({"epoch": 1, "step": 3, "name": "x", "state_dict": {f"module.{k}": v for k, v in state.items()}}, cn)
    with pytest.raises(UserError, match="does not record its architecture"):
        vc.load_pretrained(cn)
    model, preprocess, _ = vc.load_pretrained(cn, model_name=vc.VISIONCLIP_TINY)
    ref, _, _ = vc.load_pretrained(ckpt)
    assert torch.equal(model.encode_text(CAPTIONS), ref.encode_text(CAPTIONS))
    assert model.preprocess_mode == "squash"  # cn_clip's own resize, unless told otherwise


def test_vclip_eval_takes_a_bundle(bundle):
    from vclip_eval.evaluate import _models

    (label, model, arch), = list(_models(Namespace(checkpoint=[f"{bundle}=tiny"], untrained=[], model=None,
                                                    device="cpu")))
    assert (label, arch) == ("tiny", vc.VISIONCLIP_TINY)
    assert model.vclip_config.image_size == 128 and float(model.logit_scale.exp()) > 1


def _readme_blocks() -> list[str]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("## Use a trained model", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", section, flags=re.S)


def test_readme_example_runs(bundle, tmp_path, monkeypatch):
    blocks = _readme_blocks()
    three = [line for line in blocks[0].splitlines() if line.strip()]
    assert len(three) == 3 and "load_pretrained(\"visionclip-bundle\")" in blocks[0]
    shutil.copytree(bundle, tmp_path / "visionclip-bundle")
    fundus_images(1, size=200)[0].save(tmp_path / "fundus.png")
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    for block in blocks:
        exec(compile(block, "README.md", "exec"), scope)
    emb = scope["emb"]
    assert emb.shape == (1, 128) and abs(float(emb.norm()) - 1) < 1e-5
    assert scope["probs"].shape == (1, 2) and abs(float(scope["probs"].sum()) - 1) < 1e-5
    assert np.abs(scope["onnx_emb"] - emb.numpy()).max() < 1e-4


def test_tripartite_checkpoint_exports_and_loads_with_its_heads(tmp_path):
    from cn_clip_ext.model.tripartite import TripartiteCLIP, create_tripartite_model

    model = create_tripartite_model(vc.VISIONCLIP_TINY, seed=4).eval()
    model.set_single_eye_head("left")
    config = {"model": vc.VISIONCLIP_TINY, "preprocess": "fov", "context_length": 52, "model_config_dir": None}
    ckpt = atomic_save({"epoch": 1, "step": 3, "state_dict": model.state_dict(), "optimizer": {}, "config": config,
                        "rng": [], "format_version": 1}, tmp_path / "patients.pt")
    full, image_only, text_only = tmp_path / "full", tmp_path / "img", tmp_path / "txt"
    assert export_main([str(ckpt), str(full), "--no-prompts", "--onnx"]) == 0
    assert export_main([str(ckpt), str(image_only), "--image-only", "--no-prompts"]) == 0
    assert export_main([str(ckpt), str(text_only), "--text-only", "--no-prompts"]) == 0
    cfg = BundleConfig.from_file(full / "config.json")
    assert cfg.heads == "tripartite" and cfg.single_eye_head == "global"  # a checkpoint does not keep the choice
    assert "RET-CLIP's three" in (full / "README.md").read_text(encoding="utf-8")

    loaded, preprocess, tokenizer = vc.load_pretrained(full)
    assert isinstance(loaded.clip, TripartiteCLIP)
    images = torch.stack([preprocess(im) for im in fundus_images(3)])
    tokens = tokenizer(CAPTIONS)
    model.set_single_eye_head("global")
    with torch.no_grad():
        want_img = F.normalize(model.encode_image(images), dim=-1)
        want_txt = F.normalize(model.encode_text(tokens), dim=-1)
        assert torch.allclose(loaded.encode_image(images), want_img, atol=1e-5)
        assert torch.allclose(loaded.encode_text(tokens), want_txt, atol=1e-5)
        loaded.clip.set_single_eye_head("left")
        model.set_single_eye_head("left")
        assert torch.allclose(loaded.encode_image(images), F.normalize(model.encode_image(images), dim=-1), atol=1e-5)
        img_model, _, _ = vc.load_pretrained(image_only)
        txt_model, _, _ = vc.load_pretrained(text_only)
        assert torch.allclose(img_model.encode_image(images), want_img, atol=1e-5)
        assert torch.allclose(txt_model.encode_text(tokens), want_txt, atol=1e-5)
    assert img_model.clip.text_projection_left is None and txt_model.clip.left_feature_mapping is None
    with pytest.raises(MissingTowerError):
        txt_model.encode_image(images)
    onnx = json.loads((full / "config.json").read_text(encoding="utf-8"))["onnx"]
    assert set(onnx["towers"]) == {"image", "text"} and max(onnx["max_abs_diff"].values()) < 1e-3
