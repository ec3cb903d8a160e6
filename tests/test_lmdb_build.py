"""LMDB build: Chinese-CLIP layout compatibility, reader, side tables, splits, shards, map growth."""
from __future__ import annotations

import base64
import csv
import io
import json
import pickle
import random
from pathlib import Path

import lmdb
import numpy as np
import pytest
import torch
from PIL import Image

from cn_clip_ext.lmdb import store as lmdb_store
from cn_clip_ext.lmdb.digest import verify_output
from cn_clip_ext.lmdb.reader import LmdbPairDataset, read_labels
from cn_clip_ext.lmdb.writer import BuildConfig, build_lmdb
from cn_clip_ext.lmdb.splits import SPLITS, SplitRatios, shard_of, split_of
from cn_clip_ext.lmdb.images import ImageOptions
from cn_clip_ext.lmdb.rows import InputSpec
from cn_clip_ext.model.transforms import train_transform
from test_lmdb_fixtures import COLUMNS, LABELS, make_synfundus, write_csv


def _build(root: Path, out: Path, **kw) -> BuildConfig:
    cfg = BuildConfig(InputSpec.synfundus(root), out, workers=kw.pop("workers", 2), progress=False, **kw)
    build_lmdb(cfg)
    return cfg


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    base = tmp_path_factory.mktemp("built")
    rows = make_synfundus(base / "syn", 40, seed=1, size=300)
    _build(base / "syn", base / "out", batch_rows=7)
    return base / "out", rows


def _pairs(split_dir: Path) -> dict[bytes, bytes]:
    env = lmdb.open(str(split_dir / "pairs"), readonly=True, lock=False)
    with env.begin() as txn:
        items = dict(txn.cursor())
    env.close()
    return items


def test_stock_cn_clip_lmdbdataset_reads_every_split(built):
    from cn_clip.training.data import LMDBDataset

    out, rows = built
    summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    assert sum(summary["images"].values()) == len(rows) and summary["rejected"]["total"] == 0
    for split in SPLITS:
        n = summary["images"][split]
        if not n:
            continue
        ds = LMDBDataset(str(out / split), split="train", max_txt_length=52, use_augment=False, resolution=224)
        assert len(ds) == ds.number_images == n
        texts = []
        for i in range(n):
            image, text, eos = ds[i]
            assert image.shape == (3, 224, 224) and text.shape == (52,) and int(text[eos]) == 102
            texts.append(text)
        del ds  # lmdb refuses a second open of the same environment in one process
        ours = LmdbPairDataset(out / split)
        assert all(torch.equal(ours[i][1], t) for i, t in enumerate(texts))  # cn_clip's token ids
        ours.close()


def test_layout_keys_match_chinese_clip(built):
    out, _ = built
    pairs = _pairs(out / "train")
    n = int(pairs.pop(b"num_samples"))
    assert sorted(pairs) == sorted(str(i).encode() for i in range(n))
    image_id, text_id, text = pickle.loads(pairs[b"0"])
    assert isinstance(image_id, int) and isinstance(text, str) and text
    env = lmdb.open(str(out / "train" / "imgs"), readonly=True, lock=False)
    with env.begin() as txn:
        assert int(txn.get(b"num_images")) == n
        image = Image.open(io.BytesIO(base64.urlsafe_b64decode(txn.get(str(image_id).encode()))))
    env.close()
    assert image.format == "JPEG" and max(image.size) == 256 and image.mode == "RGB"


def test_reader_gives_tensors_labels_and_works_in_dataloader_workers(built):
    out, rows = built
    by_name = {r["file_name"]: r for r in rows}
    ds = LmdbPairDataset(out / "train", train_transform(224))
    rec = ds.record(0)
    labels = ds.labels(0)
    source = by_name[labels["file_name"]]
    assert rec.text == source["diagnosticAdvice"]
    assert {c: labels[c] for c in LABELS} == {c: source[c] for c in LABELS}
    assert ds.image(0).size == (256, 256)
    loader = torch.utils.data.DataLoader(ds, batch_size=8, num_workers=2)
    batches = list(loader)
    assert sum(len(b[0]) for b in batches) == len(ds)
    assert batches[0][0].shape == (8, 3, 224, 224) and batches[0][1].shape == (8, 52)


def test_side_tables_record_every_split(built):
    out, rows = built
    with open(out / "splits.csv", encoding="utf-8") as fh:
        table = list(csv.DictReader(fh))
    assert sorted(r["file_name"] for r in table) == sorted(r["file_name"] for r in rows)
    for r in table:
        assert r["split"] == split_of(r["file_name"])
        assert read_labels(out / r["split"])[r["image_id"]]["file_name"] == r["file_name"]
    report = verify_output(out)
    assert report.ok, report.problems


def test_split_is_stable_under_reordering_and_additions(tmp_path):
    rows = make_synfundus(tmp_path / "syn", 24, seed=2)
    _build(tmp_path / "syn", tmp_path / "a", workers=1)
    # add images and shuffle the CSV: no existing image changes split
    rng = np.random.default_rng(5)
    from test_lmdb_fixtures import fundus_image, row_for

    for i in range(24, 34):
        fundus_image(rng).save(tmp_path / "syn" / "Fundus" / f"{i}.png")
        rows.append(row_for(i, rng))
    random.Random(0).shuffle(rows)
    write_csv(tmp_path / "syn" / "SynFundus-1M_annotation.csv", rows)
    _build(tmp_path / "syn", tmp_path / "b", workers=1)

    def table(out):
        with open(out / "splits.csv", encoding="utf-8") as fh:
            return {r["file_name"]: r["split"] for r in csv.DictReader(fh)}

    a, b = table(tmp_path / "a"), table(tmp_path / "b")
    assert len(b) == 34 and all(b[name] == split for name, split in a.items())


def test_split_ratios_and_seed():
    names = [f"{i}.png" for i in range(4000)]
    splits = [split_of(n, 0, SplitRatios.parse("8:1:1")) for n in names]
    assert abs(splits.count("train") / 4000 - 0.8) < 0.03
    assert abs(splits.count("test") / 4000 - 0.1) < 0.02
    assert [split_of(n, 0) for n in names] == splits  # deterministic
    assert [split_of(n, 1) for n in names] != splits  # the seed matters
    assert set(split_of(n, 0, SplitRatios.parse("0,0,1")) for n in names) == {"test"}
    assert {shard_of(n, 3) for n in names} == {0, 1, 2}


def test_shards_partition_the_images(tmp_path):
    from cn_clip.training.data import LMDBDataset

    rows = make_synfundus(tmp_path / "syn", 30, seed=3)
    cfg = _build(tmp_path / "syn", tmp_path / "out", shards=2, workers=1)
    names = []
    for shard, folder in cfg.shard_dirs():
        with open(folder / "splits.csv", encoding="utf-8") as fh:
            part = [r["file_name"] for r in csv.DictReader(fh)]
        assert all(shard_of(n, 2) == shard for n in part)
        names += part
        ds = LMDBDataset(str(folder / "train"), split="train", max_txt_length=52, resolution=224)
        assert ds[0][0].shape == (3, 224, 224)
        del ds
    assert sorted(names) == sorted(r["file_name"] for r in rows)
    assert verify_output(tmp_path / "out").ok


def test_png_format_size_option_and_map_growth(tmp_path, monkeypatch):
    monkeypatch.setattr(lmdb_store, "INITIAL_MAP_SIZE", 64 << 10)  # forces several grow() calls
    make_synfundus(tmp_path / "syn", 20, seed=4, size=120)
    _build(tmp_path / "syn", tmp_path / "out", image=ImageOptions(size=100, format="png"), workers=1)
    ds = LmdbPairDataset(tmp_path / "out" / "train")
    stored = Image.open(io.BytesIO(ds.image_bytes(ds.record(0).image_id)))
    assert stored.format == "PNG" and stored.size == (100, 100)
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["bytes"]["train"]["imgs"] > 64 << 10  # grew past the initial map


def test_cli_help_mentions_inputs(capsys):
    from vclip_data_prep.build_lmdb import main

    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    assert "--image-col" in text and "--shards" in text and "--verify" in text
    assert set(COLUMNS) >= {"file_name", "diagnosticAdvice"}


def test_packing_data_loads_no_torch():
    """The build tool (and its digest) never import torch or the model code: start-up stays short."""
    import subprocess
    import sys

    code = ("import sys, vclip_data_prep.build_lmdb, cn_clip_ext.lmdb.digest;"
            "from cn_clip_ext.lmdb.rows import caption_tokens;"
            "assert caption_tokens('可见出血斑。') == 6, caption_tokens('可见出血斑。');"
            "print(sorted(m for m in ('torch', 'cn_clip.clip.model') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
