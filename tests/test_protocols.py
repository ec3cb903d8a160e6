"""The optional capabilities of models, transforms and datasets (cn_clip_ext.model.protocols, training.data), and the
fundus transforms' call contracts."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import Dataset

import cn_clip_ext as vc
from cn_clip_ext.model.inference import SplitTransform
from cn_clip_ext.model.protocols import (BatchStep, MultiScaled, PixelsThenBatch, SingleEyeScaled, SquareOutput,
                                         TowerChecked, logit_scale_names, square_size)
from cn_clip_ext.model.transforms import Affine, FundusTransform, accepts_arrays, place_array
from cn_clip_ext.model.tripartite import LOGIT_SCALES, create_tripartite_model
from cn_clip_ext.training.data import ColumnLabelled, KindedData, LabelledDataset, SeededDataset
from cn_clip_ext.training.distributed import unwrap
from cn_clip_ext.training.objectives import objective_for

MODEL = vc.VISIONCLIP_TINY


def _fundus(size: int = 96) -> Image.Image:
    yy, xx = np.mgrid[:size, :size]
    inside = (xx - size / 2) ** 2 + (yy - size / 2) ** 2 < (0.45 * size) ** 2
    rgb = np.zeros((size, size, 3), np.uint8)
    rgb[inside] = (200, 90, 40)
    return Image.fromarray(rgb)


def test_each_fundus_transform_returns_what_its_own_class_promises():
    img = _fundus()
    pre, ev, tr = vc.FundusPreprocess(64), vc.eval_transform(64), vc.train_transform(64)
    out = pre(img)
    assert isinstance(out, Image.Image) and out.size == (64, 64) and out.mode == "RGB"
    assert ev(img).dtype == torch.float32 and ev(img).shape == (3, 64, 64)
    assert tr(img).dtype == torch.uint8 and tr(img).shape == (3, 64, 64)
    for t in (pre, ev, tr):
        assert isinstance(t, FundusTransform) and accepts_arrays(t) and square_size(t) == 64
        assert isinstance(t(np.asarray(img)), type(t(img)))  # arrays in, the same kind out
    # a tensor-returning transform is no longer a kind of the image-returning preprocessing
    assert not isinstance(ev, vc.FundusPreprocess) and not isinstance(tr, vc.FundusPreprocess)
    assert repr(pre) == "FundusPreprocess(size=64, mode='fov')" and repr(ev) == "EvalTransform(size=64, mode='fov')"
    assert not accepts_arrays(lambda image: image)


def test_transform_capabilities_decide_how_batches_are_encoded():
    ev, tr = vc.eval_transform(32), vc.train_transform(32)
    assert isinstance(ev, PixelsThenBatch) and isinstance(ev, BatchStep)
    assert isinstance(tr, BatchStep) and not isinstance(tr, PixelsThenBatch)
    assert not isinstance(vc.FundusPreprocess(32), BatchStep)
    split = SplitTransform.of(ev)
    assert split.per_batch is not None and split.min_size == 64 and split.wants_array
    img = _fundus()
    pixels = split.per_image(img)
    assert pixels.dtype == torch.uint8
    torch.testing.assert_close(split.per_batch(pixels[None])[0], ev(img), atol=1e-5, rtol=1e-5)
    plain = SplitTransform.of(lambda image: torch.zeros(3, 2, 2))
    assert plain.per_batch is None and plain.min_size is None and not plain.wants_array

    class SequenceSized:  # torchvision's Resize((h, w)) holds a sequence as its size
        size = (32, 48)

        def __call__(self, image):
            return image

    assert isinstance(SequenceSized(), SquareOutput) and square_size(SequenceSized()) is None


def test_the_old_name_of_affine_still_imports_with_a_warning():
    from cn_clip_ext.model import transforms

    with pytest.warns(DeprecationWarning, match="Affine"):
        old = transforms.Geometry
    assert old is Affine
    rotated = place_array(np.asarray(_fundus()), 32, "pad", old(rotation_deg=90.0))
    assert rotated.shape == (32, 32, 3)
    with pytest.raises(AttributeError):
        transforms.NoSuchName  # noqa: B018


def test_model_capabilities_of_plain_and_tripartite_models():
    plain = vc.create_model(MODEL, seed=0)
    tri = create_tripartite_model(MODEL, seed=0)
    assert not isinstance(plain, SingleEyeScaled) and not isinstance(plain, MultiScaled)
    assert isinstance(tri, SingleEyeScaled) and isinstance(tri, MultiScaled)
    assert logit_scale_names(plain) == ("logit_scale",) and tuple(logit_scale_names(tri)) == tuple(LOGIT_SCALES)
    assert all(isinstance(getattr(tri, n), torch.Tensor) for n in logit_scale_names(tri))
    assert not isinstance(plain, TowerChecked)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        wrapped = torch.nn.DataParallel(plain)
    assert unwrap(wrapped) is plain and unwrap(plain) is plain


class _Rows(Dataset):
    """An LMDB-reader-shaped dataset: a side-table row per item and a kind."""

    kind = "patients"

    def __len__(self) -> int:
        return 3

    def __getitem__(self, index: int) -> int:
        return index

    def labels(self, index: int) -> dict[str, str]:
        return {"dr_grade": str(index)}


def test_dataset_capabilities_kind_and_label_columns():
    rows = _Rows()
    assert isinstance(rows, KindedData) and objective_for(rows).name == "tripartite"
    assert objective_for(SeededDataset(rows, 0)).name == "tripartite"  # the seeding wrapper passes the kind on

    class Pairs(Dataset):
        def __len__(self) -> int:
            return 1

    assert not isinstance(Pairs(), KindedData) and objective_for(Pairs()).name == "clip"
    labelled = LabelledDataset(rows)
    assert isinstance(labelled, ColumnLabelled) and list(labelled.labels["dr_grade"]) == [0, 1, 2]
