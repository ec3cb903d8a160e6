"""LMDB build validation: every bad-input case lands in rejects.csv; whole-file errors are one line."""
from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cn_clip_ext.lmdb.reader import LmdbPairDataset
from cn_clip_ext.lmdb.writer import BuildConfig, build_lmdb
from cn_clip_ext.lmdb.rows import InputSpec
from cn_clip_ext.errors import UserError
from test_lmdb_fixtures import COLUMNS, fundus_image, make_synfundus, row_for, write_csv
from vclip_data_prep.build_lmdb import main

GOOD = 12


def _png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, "PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def bad_corpus(tmp_path_factory):
    """12 good rows, then one row per bad case; returns (root, {file_name: expected reason})."""
    root = tmp_path_factory.mktemp("bad") / "syn"
    rows = make_synfundus(root, GOOD, seed=7)
    rng = np.random.default_rng(8)
    fundus = root / "Fundus"
    good = _png(fundus_image(rng))
    files = {
        "zero.png": b"",
        "trunc.png": good[: len(good) // 2],
        "junk.png": b"this is not an image" * 10,
        "grey.png": _png(fundus_image(rng).convert("L")),
        "rgba.png": _png(fundus_image(rng).convert("RGBA")),
        "deep.png": _png(Image.fromarray((np.arange(48 * 48).reshape(48, 48) * 25).astype(np.uint16))),
    }
    for name, data in files.items():
        (fundus / name).write_bytes(data)
    expected = {"zero.png": "zero_byte_file", "trunc.png": "truncated_image", "junk.png": "undecodable_image",
                "grey.png": "wrong_mode", "rgba.png": "wrong_mode", "deep.png": "wrong_mode",
                "missing.png": "missing_file"}
    extra = [dict(row_for(100 + i, rng), file_name=name) for i, name in enumerate(expected)]
    fundus_image(rng).save(fundus / "blank.png")
    fundus_image(rng).save(fundus / "space.png")
    extra += [dict(row_for(200, rng), file_name="blank.png", diagnosticAdvice=""),
              dict(row_for(201, rng), file_name="space.png", diagnosticAdvice=" \t　"),
              dict(row_for(202, rng), file_name=rows[3]["file_name"])]  # a duplicate of a good row
    write_csv(root / "SynFundus-1M_annotation.csv", rows + extra)
    with open(root / "SynFundus-1M_annotation.csv", "a", encoding="utf-8") as fh:
        fh.write("only,three,fields\n")  # a malformed row
    expected.update({"blank.png": "empty_caption", "space.png": "empty_caption"})
    return root, expected


def _build(root: Path, out: Path, **kw) -> None:
    build_lmdb(BuildConfig(InputSpec.synfundus(root), out, workers=2, progress=False, **kw))


def _rejects(out: Path) -> list[dict[str, str]]:
    with open(out / "rejects.csv", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def test_every_bad_row_is_rejected_with_its_reason_and_no_good_row_is_lost(bad_corpus, tmp_path):
    root, expected = bad_corpus
    _build(root, tmp_path / "out")
    rejects = _rejects(tmp_path / "out")
    by_name = {r["file_name"]: r["reason"] for r in rejects if r["file_name"] in expected}
    assert by_name == expected
    reasons = [r["reason"] for r in rejects]
    assert reasons.count("duplicate_file_name") == 1 and reasons.count("malformed_row") == 1
    assert all(r["row"].isdigit() and r["detail"] for r in rejects)
    summary = json.loads((tmp_path / "out" / "summary.json").read_text(encoding="utf-8"))
    assert sum(summary["images"].values()) == GOOD
    assert summary["rejected"]["total"] == len(rejects) == len(expected) + 2
    assert summary["rejected"]["by_reason"]["wrong_mode"] == 3
    assert summary["caption_tokens"]["count"] == GOOD and summary["caption_tokens"]["min"] > 0
    assert set(summary["labels"]["dr_grade"]) <= {"0", "1", "2", "3", "4"}
    assert sum(v["all"] for v in summary["labels"]["retinal_region_quality_score"].values()) == GOOD


def test_summary_describes_fractional_scores_instead_of_counting_values():
    from cn_clip_ext.lmdb.tables import _LabelCounts

    counts = _LabelCounts(("dr_grade", "retinal_region_quality_score", "note"))
    for split, grade, score, note in [("train", "0", "0.25", "a"), ("train", "2", "0.75", "1.5"),
                                      ("test", "2", "1.0", "b")]:
        counts.add(split, [grade, score, note])
    out = counts.as_json()
    assert out["dr_grade"]["2"] == {"all": 2, "train": 1, "valid": 0, "test": 1}
    assert out["retinal_region_quality_score"]["all"] == {"count": 3, "min": 0.25, "mean": 0.666667, "max": 1.0}
    assert out["retinal_region_quality_score"]["train"]["count"] == 2
    assert set(out["note"]) == {"a", "1.5", "b"}  # text with a number in it is still counted


def test_convert_modes_keeps_grey_rgba_and_16_bit(bad_corpus, tmp_path):
    from cn_clip_ext.lmdb.images import ImageOptions

    root, _ = bad_corpus
    _build(root, tmp_path / "out", image=ImageOptions(convert_modes=True))
    rejected = {r["file_name"] for r in _rejects(tmp_path / "out")}
    assert not rejected & {"grey.png", "rgba.png", "deep.png"}


@pytest.mark.parametrize("encoding", ["gbk", "utf-8-sig"])
def test_gbk_and_bom_csv(tmp_path, encoding):
    rows = make_synfundus(tmp_path / "syn", 6, seed=9, encoding=encoding)
    # a generic CSV whose first column is the image column: a BOM would hide it if mishandled
    cols = ["path", "caption", "grade"]
    generic = [{"path": f"Fundus/{r['file_name']}", "caption": r["diagnosticAdvice"], "grade": r["dr_grade"]}
               for r in rows]
    write_csv(tmp_path / "generic.csv", generic, encoding, columns=cols)
    rc = main(["--csv", str(tmp_path / "generic.csv"), "--image-root", str(tmp_path / "syn"), "--image-col", "path",
               "--text-col", "caption", "--out", str(tmp_path / "out"), "--no-progress", "--workers", "1"])
    assert rc == 0
    captions = set()
    for split in ("train", "valid", "test"):
        ds = LmdbPairDataset(tmp_path / "out" / split)
        captions |= {ds.record(i).text for i in range(len(ds))}
        if len(ds):
            assert set(ds.labels(0)) == {"image_id", "file_name", "grade"}
        ds.close()
    assert captions == {r["diagnosticAdvice"] for r in rows}
    _build(tmp_path / "syn", tmp_path / "out2")  # the SynFundus layout in the same encoding
    assert not _rejects(tmp_path / "out2")


def _run(argv: list[str], capsys) -> tuple[int, str]:
    rc = main([*argv, "--no-progress", "--workers", "1"])
    return rc, capsys.readouterr().err


def test_missing_column_is_one_line_error_and_writes_nothing(tmp_path, capsys):
    rows = make_synfundus(tmp_path / "syn", 3)
    write_csv(tmp_path / "syn" / "SynFundus-1M_annotation.csv", rows,
              columns=[c for c in COLUMNS if c != "diagnosticAdvice"])
    rc, err = _run([str(tmp_path / "syn"), "--out", str(tmp_path / "out")], capsys)
    assert rc == 2 and err.count("\n") == 1 and "Traceback" not in err
    assert "diagnosticAdvice" in err and "SynFundus-1M_annotation.csv" in err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("content", [b"\x80\x81\xff\xfe\xff\x00garbage", b"", b"a,b\n1,\x002\n"])
def test_unreadable_csv_is_one_line_error(tmp_path, capsys, content):
    (tmp_path / "imgs").mkdir()
    (tmp_path / "bad.csv").write_bytes(content)
    rc, err = _run(["--csv", str(tmp_path / "bad.csv"), "--image-root", str(tmp_path / "imgs"),
                    "--out", str(tmp_path / "out")], capsys)
    assert rc == 2 and err.count("\n") == 1 and "bad.csv" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_missing_csv_and_mismatched_rebuild_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="no such annotation CSV"):
        build_lmdb(BuildConfig(InputSpec(tmp_path / "nope.csv", tmp_path), tmp_path / "out"))
    make_synfundus(tmp_path / "syn", 4)
    _build(tmp_path / "syn", tmp_path / "out")
    with pytest.raises(UserError, match="different settings"):
        _build(tmp_path / "syn", tmp_path / "out", seed=1)
    _build(tmp_path / "syn", tmp_path / "out", seed=1, overwrite=True)
    assert json.loads((tmp_path / "out" / "manifest.json").read_text())["fingerprint"]["seed"] == 1


def test_fast_png_path_decodes_like_pil_and_still_rejects_corrupted_data():
    from cn_clip_ext.model import png
    from cn_clip_ext.lmdb import images, rows

    rng = np.random.default_rng(11)
    data = _png(fundus_image(rng))
    options = images.ImageOptions()
    fast = images.check_image(data, options)
    idat = data.index(b"IDAT") + 8
    corrupted = bytearray(data)
    corrupted[idat + (len(data) - idat) // 2] ^= 0x10  # one bit inside the compressed pixels
    truncated = data[: len(data) - 40]
    saved, png.pyspng = png.pyspng, None
    try:
        slow = images.check_image(data, options)
        expected = {}
        for name, bad in (("corrupted", bytes(corrupted)), ("truncated", truncated)):
            with pytest.raises(rows.RowReject) as exc:
                images.check_image(bad, options)
            expected[name] = exc.value.reason
    finally:
        png.pyspng = saved
    assert fast.mode == "RGB" and np.array_equal(np.asarray(fast), np.asarray(slow))
    for name, bad in (("corrupted", bytes(corrupted)), ("truncated", truncated)):
        with pytest.raises(rows.RowReject) as exc:
            images.check_image(bad, options)
        assert exc.value.reason == expected[name], name
    assert expected == {"corrupted": "undecodable_image", "truncated": "truncated_image"}
