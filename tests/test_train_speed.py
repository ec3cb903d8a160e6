"""GPU speed settings checked where a CPU can: bf16 autocast, torch.compile, channels-last, --no-augment."""
from __future__ import annotations

import contextlib

import pytest
import torch

from cn_clip_ext.model.factory import add_model_config, create_model, create_model_and_transforms
from cn_clip_ext.model.transforms import NO_AUGMENT
from cn_clip_ext.synth.toys import make_toy_pairs
from cn_clip_ext.training import TrainConfig, load_checkpoint, train
from cn_clip_ext.training.checkpoint import LATEST
from cn_clip_ext.training.objectives import ClipObjective
from cn_clip_ext.training import speed
from cn_clip_ext.training.speed import channels_last_images, image_tower_channels_last
from test_train_support import TEST_MODEL, model_config_dir, train_losses


def _config(tmp_path, out: str, **kw) -> TrainConfig:
    base = dict(model=TEST_MODEL, model_config_dir=str(model_config_dir(tmp_path)), output_dir=str(tmp_path / out),
                batch_size=8, max_steps=2, num_workers=0, valid_every=0, save_every=2, log_every=1,
                progress=False, plot=False, tensorboard=False, seed=4, lr=1e-3, warmup_steps=0)
    base.update(kw)
    return TrainConfig.tiny(**base)


def test_bf16_autocast_loss_is_within_2e_2_of_fp32(tmp_path):
    add_model_config(model_config_dir(tmp_path))
    model = create_model(TEST_MODEL, seed=0).eval()
    data = make_toy_pairs(16, 64, seed=1)
    batch = [data.images, data.tokens]
    objective = ClipObjective()
    with torch.no_grad():
        fp32, _ = objective.loss(model, batch)
        bf16, _ = objective.loss(model, batch, lambda: torch.autocast("cpu", dtype=torch.bfloat16))
    assert abs(float(fp32) - float(bf16)) < 2e-2
    # the trainer's bf16 path, with accumulation's cache and gradient passes under autocast
    a = train_losses_of(train(_config(tmp_path, "fp32", accum_steps=2, batch_size=4, max_steps=1),
                              make_toy_pairs(8, 64, seed=1)))
    b = train_losses_of(train(_config(tmp_path, "bf16", accum_steps=2, batch_size=4, max_steps=1, precision="bf16"),
                              make_toy_pairs(8, 64, seed=1)))
    assert abs(a[1] - b[1]) < 2e-2


def train_losses_of(result) -> dict[int, float]:
    return train_losses(result.output_dir / "metrics.csv")


def _compiler_works() -> bool:
    try:
        fn = torch.compile(lambda x: (x * 2).sin(), backend="aot_eager")
        return bool(torch.allclose(fn(torch.ones(3)), torch.ones(3).mul(2).sin()))
    except Exception:  # noqa: BLE001 - no C++ compiler, unsupported Python, ...
        return False


def test_compiled_training_matches_eager_and_saves_plain_names(tmp_path, monkeypatch):
    if not _compiler_works():
        pytest.skip("torch.compile does not work on this machine")
    # the trainer's compile path with graph capture but without kernel generation: inductor's C++
    # kernels take minutes to build on a small CPU; bench/gpu_check.sh compiles for real on the GPU
    monkeypatch.setattr(speed, "COMPILE_BACKEND", "aot_eager")
    eager = train(_config(tmp_path, "eager"), make_toy_pairs(16, 64, seed=1))
    fast = train(_config(tmp_path, "compiled", compile=True), make_toy_pairs(16, 64, seed=1))
    a, b = train_losses_of(eager), train_losses_of(fast)
    assert sorted(a) == sorted(b) == [1, 2]
    for step in a:
        assert abs(a[step] - b[step]) < 1e-3
    keys = load_checkpoint(fast.output_dir / "checkpoints" / LATEST)["state_dict"]
    assert keys and not any("_orig_mod" in k for k in keys)  # loadable like any checkpoint


def test_channels_last_image_tower_gives_the_same_features(tmp_path):
    add_model_config(model_config_dir(tmp_path))
    model = create_model(TEST_MODEL, seed=0).eval()
    images = make_toy_pairs(4, 64, seed=1).images
    with torch.no_grad():
        want = model.encode_image(images)
        image_tower_channels_last(model)
        assert model.visual.conv1.weight.is_contiguous(memory_format=torch.channels_last)
        x = channels_last_images(images)
        assert x.is_contiguous(memory_format=torch.channels_last)
        got = model.encode_image(x)
    assert torch.allclose(got, want, atol=1e-5)


def test_no_augment_makes_the_train_transform_deterministic(tmp_path):
    add_model_config(model_config_dir(tmp_path))
    _, train_tf, eval_tf = create_model_and_transforms(TEST_MODEL, augment=NO_AUGMENT)
    image = (make_toy_pairs(1, 96, seed=1).images[0].permute(1, 2, 0) * 60 + 120).clamp(0, 255).byte().numpy()
    first, second = train_tf(image), train_tf(image)
    assert torch.equal(first, second) and torch.equal(first, eval_tf.pixels(image))
    batch = torch.stack([first, second])
    assert torch.allclose(train_tf.batch_transform(batch), eval_tf.batch_transform(batch))
    _, augmenting, _ = create_model_and_transforms(TEST_MODEL)
    torch.manual_seed(0)
    assert not torch.equal(augmenting(image), augmenting(image))  # the default does augment
    assert TrainConfig.from_dict({"augment": "false"}).augment is False
