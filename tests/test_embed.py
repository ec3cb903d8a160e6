"""vclip-embed: folders, CSVs and caption files to embeddings.npy + index.csv; bad images are skipped."""
import csv
import os
from pathlib import Path

import numpy as np
import pytest
import torch

import cn_clip_ext as vc
from cn_clip_ext.synth.generator import synfundus_example
from vclip_export.embed import main as embed_main
from bundle_support import write_tiny_bundle


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("embed_model")
    return write_tiny_bundle(root, seed=2, step=1)


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    """Five readable fundus photos (one in a subfolder, one JPEG), a corrupt PNG and a truncated JPEG."""
    folder = tmp_path_factory.mktemp("photos")
    (folder / "left").mkdir()
    for i, name in enumerate(["a.png", "b.png", "left/c.png", "d.jpg", "e.png"]):
        synfundus_example(i, seed=4, size=120 + 10 * i)[1].image.save(folder / name)
    (folder / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"not really an image" * 20)
    (folder / "truncated.jpg").write_bytes((folder / "d.jpg").read_bytes()[:200])
    (folder / "notes.txt").write_text("not an image", encoding="utf-8")
    return folder


def _rows(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def test_folder_with_corrupt_images_finishes_and_reports_them(bundle, photos, tmp_path, capsys, caplog):
    out = tmp_path / "emb"
    rc = embed_main(["--model", str(bundle), "--images", str(photos), "--out", str(out), "--batch-size", "2",
                     "--workers", "2", "--quiet"])
    assert rc == 0
    emb = np.load(out / "embeddings.npy")
    index = _rows(out / "index.csv")
    assert emb.shape == (5, 128) and emb.dtype == np.float32
    assert np.allclose(np.linalg.norm(emb, axis=1), 1, atol=1e-5)
    assert [r["path"] for r in index] == ["a.png", "b.png", "d.jpg", "e.png", "left/c.png"]
    assert [r["row"] for r in index] == ["0", "1", "2", "3", "4"]
    skipped = _rows(out / "skipped.csv")
    assert sorted(Path(r["path"]).name for r in skipped) == ["corrupt.png", "truncated.jpg"]
    assert all(r["reason"] for r in skipped)
    assert "5 embeddings of width 128" in capsys.readouterr().out
    assert "2 of 7 images skipped" in caplog.text
    model, preprocess, _ = vc.load_pretrained(bundle)  # rows are the model's embeddings of those files
    from PIL import Image
    ref = model.encode_image(torch.stack([preprocess(Image.open(photos / r["path"])) for r in index])).numpy()
    assert np.abs(emb - ref).max() < 1e-5


def test_csv_keeps_its_columns_and_skips_missing_files(bundle, photos, tmp_path):
    table = tmp_path / "list.csv"
    rel = Path(os.path.relpath(photos, tmp_path))  # relative paths are relative to the CSV's folder
    table.write_text(f"image,label\n{photos / 'a.png'},glaucoma\n{rel / 'missing.png'},normal\n"
                     f"{rel / 'e.png'},normal\n", encoding="utf-8")
    out = tmp_path / "emb"
    assert embed_main(["--model", str(bundle), "--images", str(table), "--out", str(out), "--workers", "0",
                       "--quiet"]) == 0
    index = _rows(out / "index.csv")
    assert [r["label"] for r in index] == ["glaucoma", "normal"] and index[1]["image"].endswith("e.png")
    assert np.load(out / "embeddings.npy").shape == (2, 128)
    (miss,) = _rows(out / "skipped.csv")
    assert miss["path"].endswith("missing.png") and "FileNotFoundError" in miss["reason"]


def test_captions(bundle, tmp_path):
    captions = tmp_path / "captions.txt"
    captions.write_text("疑似青光眼。\n\n未见明显异常。\n黄斑区色素紊乱。\n", encoding="utf-8")
    out = tmp_path / "emb"
    assert embed_main(["--model", str(bundle), "--captions", str(captions), "--out", str(out), "--batch-size", "2",
                       "--quiet"]) == 0
    emb = np.load(out / "embeddings.npy")
    index = _rows(out / "index.csv")
    assert [(r["line"], r["text"]) for r in index] == [("1", "疑似青光眼。"), ("3", "未见明显异常。"), ("4", "黄斑区色素紊乱。")]
    model, _, _ = vc.load_pretrained(bundle)
    assert np.abs(emb - model.encode_text([r["text"] for r in index]).numpy()).max() < 1e-5


def test_bad_inputs_are_one_line_errors(bundle, photos, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    bad_csv = tmp_path / "bad.csv"
    bad_csv.write_text("name,label\nx.png,1\n", encoding="utf-8")
    cases = [
        (["--images", str(empty)], "empty: no image files"),
        (["--images", str(bad_csv)], "bad.csv: no image column"),
        (["--captions", str(tmp_path / "none.txt")], "none.txt: captions file not found"),
    ]
    for extra, message in cases:
        assert embed_main(["--model", str(bundle), *extra, "--out", str(tmp_path / "o"), "--quiet"]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and message in err, err
    assert embed_main(["--model", str(tmp_path / "nope"), "--images", str(photos), "--out", str(tmp_path / "o")]) == 2
    assert "nope: no such bundle folder or checkpoint file" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
