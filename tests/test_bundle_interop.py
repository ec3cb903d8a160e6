"""A bundle outside this library: tokenizer.json, the model card's Hugging Face metadata, the preprocessing
spec followed by a numpy-only implementation, and bundles inside a local Hugging Face cache."""
import json
import math
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

import cn_clip_ext as vc
from cn_clip_ext.errors import UserError
from cn_clip_ext.model.bundle import CARD_FRONT_MATTER, file_sha256
from cn_clip_ext.model.transforms import place_array, preprocessing_spec
from cn_clip_ext.synth.generator import synfundus_example
from vclip_export.embed import main as embed_main
from bundle_support import write_tiny_bundle

CAPTIONS = [
    "疑似青光眼。",
    "右眼：糖尿病视网膜病变（中度非增殖期）；左眼：未见明显异常。",
    "Café naïve ÉCOLE, OCT 12.5mm DR-3 / C/D=0.7",  # accents, case, digits, punctuation
    "a" * 150 + " b",  # a word longer than tokenizers' default 100-character limit (cn_clip's is 200)
    "x" * 250,  # longer than cn_clip's limit: [UNK]
    "眼底" * 40,  # truncated at the context length
    "  \t\n混合 English text!? 和数字 1234567 ¥€ 🙂 \u200b零宽\x00\ufffd",  # whitespace, controls, emoji
    "",
]


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("interop")
    return write_tiny_bundle(root, seed=5, step=3)


def cn_clip_ids(texts, context_length=52) -> list[list[int]]:
    from cn_clip.clip import tokenize

    return tokenize(texts, context_length=context_length).tolist()


def test_tokenizer_json_gives_cn_clips_ids(bundle):
    from tokenizers import Tokenizer

    raw = Tokenizer.from_file(str(bundle / "tokenizer.json"))
    assert [e.ids for e in raw.encode_batch(CAPTIONS)] == cn_clip_ids(CAPTIONS)
    assert raw.get_vocab_size() >= 21128 and raw.token_to_id("[PAD]") == 0


def test_transformers_loads_the_bundle_folder_with_identical_ids(bundle):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(bundle), local_files_only=True)
    ids = tok(CAPTIONS, padding="max_length", truncation=True, max_length=52)["input_ids"]
    assert ids == cn_clip_ids(CAPTIONS)
    assert tok("疑似青光眼。")["input_ids"] == cn_clip_ids(["疑似青光眼。"])[0][:8]  # unpadded: [CLS] 6 tokens [SEP]
    assert tok.model_max_length == 52 and tok.pad_token_id == 0
    assert vc.load_pretrained(bundle)[0].encode_text(torch.tensor(ids)).shape == (len(CAPTIONS), 128)


def _front_matter(card: str) -> dict:
    assert card.startswith("---\n")
    return yaml.safe_load(card.split("---\n", 2)[1])


def test_model_card_has_hugging_face_metadata(bundle):
    card = (bundle / "README.md").read_text(encoding="utf-8")
    meta = _front_matter(card)
    assert meta == CARD_FRONT_MATTER
    assert meta["license"] == "cc-by-nc-sa-4.0" and meta["pipeline_tag"] == "zero-shot-image-classification"
    assert meta["library_name"] == "visionclip-cn" and "SynFundus-1M" in meta["datasets"]
    assert {"retina", "fundus", "clip"} <= set(meta["tags"])
    body = card.split("---\n", 2)[2]
    assert body.lstrip().startswith("# VisionCLIP-CN model")
    assert "## Preprocessing for servers without Python" in body and "preprocessing.json" in body
    assert "threshold 20" in body and str(list(vc.CLIP_STD)) in body and "tokenizer.json" in body


def numpy_preprocess(rgb: np.ndarray, spec: dict) -> tuple[np.ndarray, np.ndarray]:
    """The preprocessing written from ``preprocessing.json`` alone, in numpy: ``(input tensor, uint8 pixels)``."""
    size, mode = spec["size"], spec["mode"]
    h, w = rgb.shape[:2]
    img = rgb.astype(np.float64)
    if mode == "fov":
        fov = spec["field_of_view"]
        step = max(1, max(w, h) // fov["probe_size"])
        mask = rgb[::step, ::step].max(axis=2) > fov["threshold"]
        if mask.mean() < fov["min_fraction"]:
            left, top, right, bottom = 0, 0, w, h
        else:
            cols, rows = np.flatnonzero(mask.any(axis=0)), np.flatnonzero(mask.any(axis=1))
            left, right = step * cols[0], min(w, step * (cols[-1] + 1))
            top, bottom = step * rows[0], min(h, step * (rows[-1] + 1))
        cx, cy = (left + right) / 2, (top + bottom) / 2
        width = height = max(right - left, bottom - top)
    elif mode == "pad":
        cx, cy, width, height = w / 2, h / 2, max(w, h), max(w, h)
    else:
        cx, cy, width, height = w / 2, h / 2, w, h
    kx, ky = width / size, height / size
    f = math.floor(min(kx, ky))
    if f >= 2:
        h, w = h // f, w // f
        img = np.floor(img[:h * f, :w * f].reshape(h, f, w, f, 3).mean(axis=(1, 3)) + 0.5)
        cx, cy, kx, ky = cx / f, cy / f, kx / f, ky / f
    offset = spec["pixel_centre_offset"]
    grid = np.arange(size) + offset - size / 2
    xs, ys = cx + grid * kx - offset, cy + grid * ky - offset
    x0, y0 = np.floor(xs).astype(int), np.floor(ys).astype(int)
    fx, fy = (xs - x0)[None, :, None], (ys - y0)[:, None, None]
    framed = np.zeros((h + 2, w + 2, 3))  # one black pixel around the image: outside samples are black
    framed[1:-1, 1:-1] = img

    def at(yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
        return framed[np.clip(yy + 1, 0, h + 1)[:, None], np.clip(xx + 1, 0, w + 1)[None, :]]

    out = (at(y0, x0) * (1 - fy) * (1 - fx) + at(y0, x0 + 1) * (1 - fy) * fx
           + at(y0 + 1, x0) * fy * (1 - fx) + at(y0 + 1, x0 + 1) * fy * fx)
    pixels = np.clip(np.floor(out + 0.5), 0, 255)
    tensor = (pixels * spec["scale"] - np.array(spec["mean"])) / np.array(spec["std"])
    return tensor.astype(np.float32).transpose(2, 0, 1), pixels


def _photo(width: int, height: int, fov: int, dx: int = 7, dy: int = -3) -> np.ndarray:
    """A fundus photograph of ``fov`` px placed off-centre on a black ``width`` x ``height`` frame."""
    canvas = Image.new("RGB", (width, height))
    canvas.paste(synfundus_example(1, seed=3, size=fov)[1].image.convert("RGB"),
                 ((width - fov) // 2 + dx, (height - fov) // 2 + dy))
    return np.asarray(canvas)


@pytest.mark.parametrize("mode", ["fov", "pad", "squash"])
@pytest.mark.parametrize("frame", [(512, 512, 512), (700, 560, 480), (2048, 1536, 1400), (300, 200, 180)])
def test_numpy_implementation_of_the_spec_matches_the_transform(bundle, mode, frame):
    spec = json.loads((bundle / "preprocessing.json").read_text(encoding="utf-8"))
    assert spec["mode"] == "fov" and spec["size"] == 128
    if mode != "fov":
        spec = preprocessing_spec(spec["size"], mode)
    rgb = _photo(*frame)
    tensor, pixels = numpy_preprocess(rgb, spec)
    _, preprocess, _ = vc.load_pretrained(bundle, preprocess=mode)
    expected = preprocess(rgb).numpy()
    diff = np.abs(pixels - place_array(rgb, spec["size"], mode).astype(np.float64))
    assert diff.max() <= 1 and diff.mean() < 0.1  # OpenCV interpolates in fixed point: at most one grey level
    assert tensor.shape == expected.shape == (3, 128, 128)
    assert np.abs(tensor - expected).max() <= 1.0 / (255 * min(spec["std"])) + 1e-6


def test_preprocessing_json_is_hashed_and_states_the_numbers(bundle, tmp_path):
    cfg = json.loads((bundle / "config.json").read_text(encoding="utf-8"))
    for name in ("preprocessing.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        assert cfg["files"][name] == file_sha256(bundle / name)
    spec = json.loads((bundle / "preprocessing.json").read_text(encoding="utf-8"))
    assert spec["mean"] == list(vc.CLIP_MEAN) and spec["std"] == list(vc.CLIP_STD)
    assert spec["field_of_view"]["threshold"] == 20 and len(spec["steps"]) == 5
    altered = shutil.copytree(bundle, tmp_path / "altered")
    (altered / "preprocessing.json").write_text(json.dumps({**spec, "size": 224}), encoding="utf-8")
    with pytest.raises(UserError, match="preprocessing.json: contents do not match"):
        vc.load_pretrained(altered)


def hf_cache(bundle: Path, cache: Path, repo: str = "org/visionclip-tiny", commit: str = "0123abcd" * 5) -> Path:
    """``bundle`` laid out as huggingface_hub caches a download: blobs named by hash, a snapshot of links."""
    root = cache / ("models--" + repo.replace("/", "--"))
    (root / "blobs").mkdir(parents=True)
    snapshot = root / "snapshots" / commit
    for path in sorted(p for p in bundle.rglob("*") if p.is_file()):
        blob = root / "blobs" / file_sha256(path)
        shutil.copyfile(path, blob)
        link = snapshot / path.relative_to(bundle)
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    (root / "refs").mkdir()
    (root / "refs" / "main").write_text(commit, encoding="utf-8")
    return root


def test_load_pretrained_reads_a_hugging_face_cache_offline(bundle, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    root = hf_cache(bundle, tmp_path / "hub")
    snapshot = root / "snapshots" / ("0123abcd" * 5)
    image = Image.fromarray(_photo(300, 260, 240))
    model, preprocess, _ = vc.load_pretrained(bundle)
    expected = model.encode_image(preprocess(image)[None])
    for path in (root, snapshot, str(root)):
        m, p, _ = vc.load_pretrained(path)
        assert torch.equal(m.encode_image(p(image)[None]), expected)
    from huggingface_hub import snapshot_download  # the official client finds the same snapshot offline

    assert Path(snapshot_download("org/visionclip-tiny", cache_dir=tmp_path / "hub", local_files_only=True)) == snapshot
    (tmp_path / "imgs").mkdir()
    image.save(tmp_path / "imgs" / "one.png")
    assert embed_main(["--model", str(root), "--images", str(tmp_path / "imgs"), "--out", str(tmp_path / "e"),
                       "--quiet", "--device", "cpu", "--workers", "0"]) == 0
    assert np.allclose(np.load(tmp_path / "e" / "embeddings.npy"), expected.numpy(), atol=1e-5)


def test_a_broken_hugging_face_cache_is_one_line(bundle, tmp_path, capsys):
    root = hf_cache(bundle, tmp_path / "hub")
    (root / "refs" / "main").write_text("feedface" * 5, encoding="utf-8")
    with pytest.raises(UserError, match=r"refs/main: names snapshot 'feedfacefeedface.*which is not in"):
        vc.load_pretrained(root)
    (root / "refs" / "main").unlink()
    (root / "snapshots" / "second").mkdir()
    (tmp_path / "c.txt").write_text("疑似青光眼。\n", encoding="utf-8")
    assert embed_main(["--model", str(root), "--captions", str(tmp_path / "c.txt"), "--out", str(tmp_path / "o"),
                       "--quiet", "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no refs/main and 2 snapshots" in err and "Traceback" not in err


def test_a_snapshot_link_outside_its_blobs_is_refused(bundle, tmp_path):
    root = hf_cache(bundle, tmp_path / "hub")
    snapshot = root / "snapshots" / ("0123abcd" * 5)
    elsewhere = tmp_path / "elsewhere.safetensors"
    shutil.copyfile(bundle / "model.safetensors", elsewhere)  # same bytes, so only the link's target is wrong
    (snapshot / "model.safetensors").unlink()
    (snapshot / "model.safetensors").symlink_to(elsewhere)
    with pytest.raises(UserError, match="model.safetensors: a symbolic link inside the bundle"):
        vc.load_pretrained(root)
