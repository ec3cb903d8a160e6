"""A sharded build (vclip-build-lmdb --shards N) trains as one dataset from its root."""
from __future__ import annotations

import shutil

import pytest

from cn_clip_ext.errors import UserError
from cn_clip_ext.lmdb.reader import open_lmdb_dataset
from cn_clip_ext.model.factory import add_model_config, create_model_and_transforms
from cn_clip_ext.training import TrainConfig, train
from cn_clip_ext.training.loop import build_datasets
from cn_clip_ext.training.shards import ConcatSplit, shard_folders
from test_train_support import TEST_MODEL, model_config_dir
from vclip_eval.evaluate import DATASETS_TABLE, PROMPTS_DIR


@pytest.fixture(scope="module")
def sharded(tmp_path_factory):
    from cn_clip_ext.synth.generator import write_synfundus
    from vclip_data_prep.build_lmdb import main as build_main

    tmp = tmp_path_factory.mktemp("sharded")
    write_synfundus(tmp / "syn", n=48, seed=0, size=96, workers=1, progress=False)
    assert build_main([str(tmp / "syn"), "--out", str(tmp / "lmdb"), "--split", "6:2:0", "--size", "96",
                       "--shards", "2", "--workers", "1", "--no-progress"]) == 0
    return tmp / "lmdb"


def _config(tmp_path, root, **kw) -> TrainConfig:
    base = dict(model=TEST_MODEL, model_config_dir=str(model_config_dir(tmp_path)), data=str(root),
                output_dir=str(tmp_path / "run"), batch_size=4, num_workers=1, max_steps=2, save_every=2,
                valid_every=2, valid_batch_size=8, log_every=1, progress=False, plot=False, tensorboard=False,
                zeroshot_prompts=str(PROMPTS_DIR / "plain.yaml"), zeroshot_table=str(DATASETS_TABLE))
    base.update(kw)
    return TrainConfig.tiny(**base)


def test_sharded_root_trains_as_one_dataset_with_the_summed_count(sharded, tmp_path):
    shards = shard_folders(sharded)
    assert [p.name for p in shards] == ["shard-000-of-002", "shard-001-of-002"]
    per_shard = [len(open_lmdb_dataset(s / "train")) for s in shards]
    assert all(n > 0 for n in per_shard)

    cfg = _config(tmp_path, sharded)
    add_model_config(cfg.model_config_dir)
    _, train_tf, eval_tf = create_model_and_transforms(TEST_MODEL)
    train_set, valid_set = build_datasets(cfg, train_tf, eval_tf, 64)
    assert isinstance(train_set, ConcatSplit) and len(train_set) == sum(per_shard)
    # item i of the second shard is item per_shard[0] + i of the whole
    second = open_lmdb_dataset(shards[1] / "train", transform=eval_tf)
    assert train_set.record(per_shard[0]) == second.record(0)
    assert valid_set is not None and len(valid_set) == sum(len(open_lmdb_dataset(s / "valid")) for s in shards)

    result = train(cfg)
    assert result.step == 2
    assert "zs_dr_grade_bacc" in result.valid  # the side tables of every shard reach validation


def test_a_partial_sharded_build_is_refused_in_one_line(sharded, tmp_path):
    partial = tmp_path / "partial"
    partial.mkdir()
    shutil.copytree(sharded / "shard-000-of-002", partial / "shard-000-of-002")
    with pytest.raises(UserError, match="shard-001-of-002 missing") as err:
        train(_config(tmp_path, partial))
    assert "\n" not in str(err.value)
