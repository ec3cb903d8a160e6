"""Batch inference set-up and the fast decode path: BatchNorm folding, array decoding, bad files."""
import io
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from cn_clip_ext import create_model, eval_transform
from cn_clip_ext.synth.generator import write_eval_sets
from cn_clip_ext.errors import UserError
from cn_clip_ext.evaluation import encode_images, load_dataset_table, load_eval_set
from cn_clip_ext.model.inference import (CPU_BATCH, FirstTokenAttentionPool, batchnorm_folded, cpu_count, decode_workers,
                                   default_workers, first_token_attention_pools, forward_batch, image_inference)
from cn_clip_ext.model.transforms import box_reduce, open_rgb, place_array, read_rgb
from vclip_eval.evaluate import DATASETS_TABLE, main

MODEL = "RN-tiny@BERT-tiny-chinese"


def _model_with_running_stats(seed: int = 0) -> torch.nn.Module:
    """A tiny model whose BatchNorm layers have non-trivial running statistics and affine terms."""
    model = create_model(MODEL, seed=seed).eval()
    g = torch.Generator().manual_seed(seed)
    for m in model.visual.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.rand(m.num_features, generator=g) - 0.5)
            m.running_var.copy_(0.5 + torch.rand(m.num_features, generator=g))
            m.weight.data.copy_(0.5 + torch.rand(m.num_features, generator=g))
            m.bias.data.copy_(torch.rand(m.num_features, generator=g) - 0.5)
    return model


@pytest.fixture(scope="module")
def fives(tmp_path_factory):
    root = tmp_path_factory.mktemp("inference_sets")
    write_eval_sets(root, 12, seed=3, size=160, names=("fives",), progress=False)
    return root


def test_folded_tower_computes_the_same_features_without_batchnorm():
    model = _model_with_running_stats()
    tower = model.visual
    before = {name: m for name, m in tower.named_modules()}
    x = torch.randn(3, 3, 128, 128)
    with torch.inference_mode():
        plain = tower(x)
        with batchnorm_folded(tower) as n:
            assert n == 19
            assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in tower.modules())
            folded = tower(x)
    assert torch.allclose(folded, plain, atol=1e-4, rtol=1e-4)
    assert {name: m for name, m in tower.named_modules()} == before  # the same modules are back


def test_nothing_is_folded_while_training_or_without_a_convolution_before():
    model = create_model(MODEL, seed=0)
    with batchnorm_folded(model.visual.train()) as n:
        assert n == 0 and any(isinstance(m, torch.nn.BatchNorm2d) for m in model.visual.modules())
    with batchnorm_folded(torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU()).eval()) as n:
        assert n == 0
    relu_bn = torch.nn.Sequential(torch.nn.ReLU(), torch.nn.BatchNorm2d(3)).eval()
    with batchnorm_folded(relu_bn) as n:
        assert n == 0 and isinstance(relu_bn[1], torch.nn.BatchNorm2d)


def test_first_token_attention_pool_equals_the_full_pool():
    model = create_model(MODEL, seed=3).eval()
    pool = model.visual.attnpool
    x = torch.randn(4, pool.k_proj.in_features, 4, 4)
    with torch.inference_mode():
        assert torch.allclose(FirstTokenAttentionPool(pool)(x), pool(x), atol=1e-5, rtol=1e-5)
    with first_token_attention_pools(model.visual) as n:
        assert n == 1 and isinstance(model.visual.attnpool, FirstTokenAttentionPool)
    assert model.visual.attnpool is pool


def test_image_inference_is_undone_after_the_block():
    model = _model_with_running_stats(1)
    tower, conv1 = model.visual, model.visual.conv1
    x = torch.randn(2, 3, 128, 128)
    with torch.inference_mode():
        plain = model.encode_image(x)
        with image_inference(model, "cpu", workers=0):
            assert model.visual.conv1 is not conv1 and model.visual.conv1.weight.is_contiguous(
                memory_format=torch.channels_last)
            inside = model.encode_image(x.contiguous(memory_format=torch.channels_last))
    assert model.visual is tower and tower.conv1 is conv1 and conv1.weight.is_contiguous()
    assert type(tower.attnpool).__name__ == "AttentionPool2d"
    assert torch.allclose(inside, plain, atol=1e-4, rtol=1e-4)


def test_encode_images_equals_the_plain_model_on_per_image_transforms(fives):
    model = _model_with_running_stats(2)
    s = load_eval_set(load_dataset_table(DATASETS_TABLE)["fives"], fives / "fives")
    transform = eval_transform(model.vclip_config.image_size)
    feats = encode_images(model, s, transform, batch_size=5, workers=0, progress=False)
    with torch.inference_mode():
        ref = torch.stack([transform(open_rgb(p)) for p in s.images])
        expected = torch.nn.functional.normalize(model.encode_image(ref), dim=-1)
    assert feats.shape == expected.shape
    assert torch.allclose(feats, expected, atol=1e-4)


def test_a_failed_encoding_leaves_the_model_as_it_was(fives, tmp_path):
    root = tmp_path / "fives"
    shutil.copytree(fives / "fives", root)
    victim = sorted((root / "test" / "Original").glob("*.png"))[0]
    victim.write_bytes(b"\x89PNG\r\n\x1a\n broken")
    model = create_model(MODEL, seed=0).eval()
    conv1, bn1 = model.visual.conv1, model.visual.bn1
    s = load_eval_set(load_dataset_table(DATASETS_TABLE)["fives"], root)
    with pytest.raises(UserError, match=victim.name) as exc:
        encode_images(model, s, eval_transform(128), batch_size=4, workers=0, progress=False)
    assert exc.value is not None  # the traceback is still held here, and yet:
    assert model.visual.conv1 is conv1 and model.visual.bn1 is bn1


def test_cpu_forward_batches_are_capped():
    assert forward_batch(64, "cpu") == CPU_BATCH
    assert forward_batch(4, "cpu") == 4
    assert forward_batch(64, "cuda") == 64


def test_read_rgb_equals_pil_for_png_and_jpeg(tmp_path):
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 256, (70, 90, 3), dtype=np.uint8)
    Image.fromarray(arr).save(tmp_path / "a.png")
    Image.fromarray(arr).save(tmp_path / "a.jpg", quality=90)
    Image.fromarray(arr[..., 0]).save(tmp_path / "grey.png")  # not RGB: through PIL
    png = read_rgb(tmp_path / "a.png")
    assert png.dtype == np.uint8 and np.array_equal(png, arr)
    with Image.open(tmp_path / "a.jpg") as im:
        assert np.array_equal(read_rgb(tmp_path / "a.jpg"), np.asarray(im.convert("RGB")))
    assert np.array_equal(read_rgb(io.BytesIO((tmp_path / "a.png").read_bytes())), arr)
    grey = read_rgb(tmp_path / "grey.png")
    assert grey.shape == (70, 90, 3) and np.array_equal(grey[..., 1], arr[..., 0])
    assert np.array_equal(np.asarray(open_rgb(tmp_path / "a.png")), arr)


def test_unreadable_file_names_itself(tmp_path):
    (tmp_path / "x.png").write_bytes(b"not an image")
    with pytest.raises(Image.UnidentifiedImageError, match="x.png"):
        read_rgb(tmp_path / "x.png")


def test_arrays_and_pil_images_are_placed_identically():
    rng = np.random.default_rng(1)
    arr = rng.integers(0, 256, (301, 257, 3), dtype=np.uint8)
    for mode in ("fov", "pad", "squash"):
        assert np.array_equal(place_array(arr, 64, mode), place_array(Image.fromarray(arr), 64, mode))


@pytest.mark.parametrize("factor", [2, 3, 4])
def test_box_reduce_is_the_block_mean(factor):
    rng = np.random.default_rng(factor)
    arr = rng.integers(0, 256, (50, 47, 3), dtype=np.uint8)
    h, w = 50 // factor, 47 // factor
    exact = arr[:h * factor, :w * factor].reshape(h, factor, w, factor, 3).mean(axis=(1, 3))
    out = box_reduce(arr, factor)
    assert out.shape == (h, w, 3) and out.dtype == np.uint8
    assert np.abs(out - exact).max() < 0.6  # the mean, rounded (fixed-point) to a uint8 level


def test_cli_corrupt_image_is_one_line_naming_the_file(fives, tmp_path, capsys):
    root = tmp_path / "fives"
    shutil.copytree(fives / "fives", root)
    victim = sorted((root / "train" / "Original").glob("*.png"))[0]
    victim.write_bytes(victim.read_bytes()[:60])  # cut inside the image data
    rc = main(["--untrained", MODEL, "--data", f"fives={root}", "--out", str(tmp_path / "o"), "--workers", "1",
               "--quiet", "--bootstrap", "10"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2
    assert victim.name in err[-1] and "cannot read image" in err[-1]
    assert "Traceback" not in "\n".join(err)
    assert not (tmp_path / "o" / "report.json").exists()


def test_device_and_worker_defaults_follow_the_machine(capsys):
    assert default_workers("cpu") == min(2, cpu_count())
    assert 1 <= default_workers("cuda") <= 8
    assert decode_workers(16, None, "cpu") == default_workers("cpu") and decode_workers(16, 0, "cpu") == 0
    for batch, workers in ((0, 2), (16, -1)):
        with pytest.raises(UserError, match="--workers at least 0"):
            decode_workers(batch, workers, "cpu")
    for argv in (["--device", "gpu"], ["--device", "cuda:x"]):
        with pytest.raises(SystemExit) as exc:
            main(["--untrained", MODEL, "--out", "/nonexistent", *argv])
        assert exc.value.code == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert "argument --device" in err[-1] and "Traceback" not in "\n".join(err)
    if not torch.cuda.is_available():
        with pytest.raises(SystemExit):
            main(["--untrained", MODEL, "--out", "/nonexistent", "--device", "cuda"])
        assert "CUDA is not available" in capsys.readouterr().err


def test_audit_model_encoder_gives_the_same_embeddings_in_its_session(tmp_path):
    from cn_clip_ext.audit.encoders import ModelEncoder
    from cn_clip_ext.audit.hashing import fov_view

    model = _model_with_running_stats(5)
    torch.save({"epoch": 0, "step": 0, "state_dict": model.state_dict(),
                "config": {"model": MODEL, "preprocess": "fov", "context_length": 52}}, tmp_path / "m.pt")
    encoder = ModelEncoder(tmp_path / "m.pt")
    rng = np.random.default_rng(0)
    views = [fov_view(Image.fromarray(rng.integers(0, 256, (150, 170, 3), dtype=np.uint8)), encoder.view_size)
             for _ in range(3)]
    inputs = [encoder.prepare(v) for v in views]
    plain = encoder.encode(inputs)
    with encoder.session(workers=0):
        inside = encoder.encode(inputs)
    with torch.no_grad():
        expected = torch.nn.functional.normalize(model.encode_image(torch.stack(inputs)), dim=-1).numpy()
    assert plain.shape == (3, encoder.dim)
    np.testing.assert_allclose(plain, expected, atol=1e-5)
    np.testing.assert_allclose(inside, expected, atol=1e-4)


def test_only_a_small_tower_leaves_cores_to_the_decoding_workers(monkeypatch):
    from cn_clip_ext import create_model
    from cn_clip_ext.model import inference

    monkeypatch.setattr(inference, "cpu_count", lambda: 4)
    before = torch.get_num_threads()
    torch.set_num_threads(4)
    try:
        with inference.threads_beside_workers("cpu", 2):  # the decoding is the bottleneck: a core per worker
            assert torch.get_num_threads() == 2
        assert torch.get_num_threads() == 4
        with inference.threads_beside_workers("cpu", 2, heavy=True):  # the model is: it keeps all cores
            assert torch.get_num_threads() == 4
        with inference.threads_beside_workers("cpu", 0):  # no workers: nothing to leave
            assert torch.get_num_threads() == 4
        tiny = create_model(MODEL, seed=0).eval()
        assert 0 < inference.tower_parameters(tiny) < inference.HEAVY_TOWER_PARAMS
        assert inference.tower_parameters(tiny) == sum(p.numel() for p in tiny.visual.parameters())
        with inference.image_inference(tiny, "cpu", workers=2):
            assert torch.get_num_threads() == 2
        monkeypatch.setattr(inference, "HEAVY_TOWER_PARAMS", inference.tower_parameters(tiny))
        with inference.image_inference(tiny, "cpu", workers=2):  # as large as a heavy tower
            assert torch.get_num_threads() == 4
        assert torch.get_num_threads() == 4
    finally:
        torch.set_num_threads(before)
