"""Fundus transforms keep the circular field of view and never invert or flip."""
import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw
from skimage.data import retina
from torchvision import transforms as T

import cn_clip_ext as vc
from cn_clip_ext.model.transforms import CLIP_MEAN, CLIP_STD, ColorJitterNormalize, fov_bbox, to_normalized_tensor


def _disc_image(width: int, height: int, diameter: int, mode: str = "RGB") -> Image.Image:
    """A bright round field of view centred on a black, non-square canvas."""
    img = Image.new("RGB", (width, height))
    x0, y0 = (width - diameter) // 2, (height - diameter) // 2
    ImageDraw.Draw(img).ellipse([x0, y0, x0 + diameter - 1, y0 + diameter - 1], fill=(200, 90, 40))
    return img.convert(mode)


def _fov_mask(tensor: torch.Tensor) -> np.ndarray:
    """Undo the normalisation and threshold the brightest channel."""
    mean, std = torch.tensor(CLIP_MEAN)[:, None, None], torch.tensor(CLIP_STD)[:, None, None]
    rgb = (tensor * std + mean).clamp(0, 1)
    return (rgb.max(dim=0).values > 0.15).numpy()


def _roundness(mask: np.ndarray) -> tuple[float, float, float]:
    """(bbox height / width, fill of the bbox, fraction of the frame the bbox spans)."""
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    h, w = rows[-1] - rows[0] + 1, cols[-1] - cols[0] + 1
    return h / w, mask.sum() / (h * w), max(h, w) / mask.shape[0]


@pytest.mark.parametrize("mode", ["fov", "pad"])
def test_eval_transform_keeps_the_disc_round(mode):
    tf = vc.eval_transform(128, preprocess=mode)
    out = tf(_disc_image(640, 420, 400))
    assert out.shape == (3, 128, 128)
    aspect, fill, span = _roundness(_fov_mask(out))
    assert aspect == pytest.approx(1.0, abs=0.03)
    assert fill == pytest.approx(np.pi / 4, abs=0.03)  # a disc fills pi/4 of its box
    if mode == "fov":
        assert span > 0.97  # cropped to the field of view: the disc fills the frame


def test_squash_distorts_what_fov_keeps():
    aspect, _, _ = _roundness(_fov_mask(vc.eval_transform(128, preprocess="squash")(_disc_image(640, 420, 400))))
    assert abs(aspect - 1.0) > 0.2  # cn_clip's resize turns the disc into an ellipse


def test_real_fundus_photograph_keeps_its_field_of_view():
    photo = Image.fromarray(retina())  # CC0 fundus photograph shipped with scikit-image
    out = vc.eval_transform(224)(photo)
    mask = _fov_mask(out)
    aspect, fill, span = _roundness(mask)
    assert aspect == pytest.approx(1.0, abs=0.05) and span > 0.95
    assert fill > 0.7
    for corner in (mask[:8, :8], mask[:8, -8:], mask[-8:, :8], mask[-8:, -8:]):
        assert not corner.any()  # the black surround stays black


@pytest.mark.parametrize("mode", ["L", "RGBA", "I;16"])
def test_any_image_mode_becomes_rgb(mode):
    img = _disc_image(300, 300, 280, "RGB")
    if mode == "I;16":
        img = Image.fromarray((np.asarray(img.convert("L"), dtype=np.uint16) * 256))
    else:
        img = img.convert(mode)
    assert vc.eval_transform(64)(img).shape == (3, 64, 64)


def test_fov_bbox_falls_back_to_whole_image_when_dark():
    assert fov_bbox(Image.new("RGB", (50, 40))) == (0, 0, 50, 40)
    assert fov_bbox(_disc_image(200, 100, 80)) == pytest.approx((60, 10, 140, 90), abs=2)


def _train_view(tf, image: Image.Image) -> torch.Tensor:
    """One training sample as the trainer sees it: worker geometry, then the batch colour step."""
    sample = tf(image)
    assert sample.dtype == torch.uint8 and sample.shape == (3, tf.size, tf.size)
    return tf.batch_transform(sample[None])[0]


def test_training_augmentation_is_mild_and_fundus_safe():
    train_tf = vc.train_transform(128, vc.AugmentConfig())

    def tf(image):
        return _train_view(train_tf, image)

    photo = Image.fromarray(retina())
    ref = _fov_mask(vc.eval_transform(128)(photo)).mean()
    # a marker that reveals flips: a bright block in the left half of the field of view
    marked = _disc_image(400, 400, 380)
    ImageDraw.Draw(marked).rectangle([60, 180, 120, 220], fill=(255, 255, 255))
    torch.manual_seed(0)
    outputs = []
    for _ in range(12):
        out = tf(photo)
        outputs.append(out)
        assert abs(_fov_mask(out).mean() - ref) < 0.2  # mild zoom: the field of view stays about as large
        assert out[:, 40:88, 40:88].mean() > out[:, :6, :6].mean()  # not inverted
        m = tf(marked).sum(0)
        assert m[:, :64].max() > m[:, 64:].max()  # never flipped: the marker stays on the left
    assert not torch.equal(outputs[0], outputs[1])  # it is random
    torch.manual_seed(0)
    assert torch.equal(tf(photo), outputs[0])  # reproducible from torch's seed


def test_no_augmentation_equals_the_eval_transform():
    none = vc.AugmentConfig(rotation_deg=0, scale=0, translate=0, brightness=0, contrast=0, saturation=0)
    photo = Image.fromarray(retina())
    torch.testing.assert_close(_train_view(vc.train_transform(96, none), photo), vc.eval_transform(96)(photo))


def _jittered_reference(image: Image.Image, brightness: float, contrast: float, saturation: float) -> torch.Tensor:
    """The colour factors applied one at a time to one image, as their definitions say."""
    grey_weights = np.array([0.299, 0.587, 0.114], np.float32)
    arr = np.asarray(image, dtype=np.float32) * brightness
    mean = float((arr @ grey_weights).mean())
    arr = (arr - mean) * contrast + mean
    grey = (arr @ grey_weights)[..., None]
    arr = np.clip((arr - grey) * saturation + grey, 0.0, 255.0)
    return to_normalized_tensor(arr)


def test_batch_colour_jitter_equals_the_per_image_colour_factors():
    rng = np.random.default_rng(1)
    images = [Image.fromarray(retina()).resize((40, 40)),
              Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8))]
    batch = torch.stack([torch.from_numpy(np.array(im)).permute(2, 0, 1) for im in images])
    factors = torch.tensor([[1.2, 0.8, 1.1], [0.85, 1.15, 0.9]])
    expected = torch.stack([_jittered_reference(im, *f.tolist()) for im, f in zip(images, factors)])
    torch.testing.assert_close(ColorJitterNormalize.apply(batch, factors), expected, atol=1e-5, rtol=1e-5)
    jitter = vc.train_transform(40).batch_transform
    gen = torch.Generator().manual_seed(3)
    drawn = jitter.draw(1000, gen)
    assert drawn.min(0).values.tolist() == pytest.approx([0.8, 0.8, 0.9], abs=0.01)  # AugmentConfig's ranges
    assert drawn.max(0).values.tolist() == pytest.approx([1.2, 1.2, 1.1], abs=0.01)
    out1 = jitter(batch, torch.Generator().manual_seed(7))
    torch.testing.assert_close(out1, jitter(batch, torch.Generator().manual_seed(7)))  # reproducible per seed
    assert out1.dtype == torch.float32 and not torch.equal(out1, jitter(batch, torch.Generator().manual_seed(8)))


def test_normalisation_matches_torchvision():
    img = Image.fromarray(np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8))
    expected = T.Normalize(CLIP_MEAN, CLIP_STD)(T.ToTensor()(img))
    torch.testing.assert_close(to_normalized_tensor(img), expected, atol=1e-5, rtol=1e-5)


def test_unknown_mode_is_refused():
    with pytest.raises(ValueError, match="preprocess mode"):
        vc.FundusPreprocess(64, mode="stretch")
