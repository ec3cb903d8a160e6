"""RET-CLIP mode data: generated paired eyes + reports -> patient-level LMDB -> reader, rejects, resume."""
from __future__ import annotations

import csv
import json
import os
import pickle
import random
from pathlib import Path

import lmdb
import numpy as np
import pytest
import torch
from PIL import Image

from cn_clip_ext.outputs import OWNER_FILE
from cn_clip_ext.synth.captions import make_patient_report
from cn_clip_ext.lmdb.digest import content_digest, verify_output
from cn_clip_ext.lmdb.reader import (
    LmdbPairDataset, LmdbPatientDataset, UnsafeRecordError, dataset_kind, open_lmdb_dataset, safe_loads_patient,
)
from cn_clip_ext.lmdb.writer import BuildConfig, build_lmdb
from cn_clip_ext.synth.toys import (
    TensorPatients, make_toy_patients, parse_toy_patients_spec, toy_patient_report, toy_patient_splits,
)
from cn_clip_ext.layouts import PATIENT_COLUMNS, PATIENT_LABEL_COLUMNS, PATIENTS_CSV, PATIENTS_DIR
from cn_clip_ext.lmdb.splits import SPLITS, split_of
from cn_clip_ext.synth.generator import patient_example, sample_patient, write_patients
from cn_clip_ext.lmdb.images import ImageOptions
from cn_clip_ext.lmdb.rows import InputSpec
from cn_clip_ext.model.transforms import eval_transform
from test_lmdb_fixtures import kill_build_midway, make_synfundus
from vclip_data_prep.build_lmdb import main as build_main
from vclip_data_prep.synth import main as synth_main

N_PATIENTS, SIZE, STORED = 20, 64, 48
BAD = {  # patient id -> (left cell, right cell, report): the rows appended to the generated CSV
    "X-bad-left": ("bad/zero.png", "bad/good_r.png", "右眼：未见明显异常；左眼：疑似青光眼。"),
    "X-both-bad": ("bad/missing.png", "bad/trunc.png", "右眼：疑似青光眼；左眼：疑似青光眼。"),
    "X-no-eyes": ("", "", "双眼未见明显异常。"),
    "X-empty-report": ("bad/good_l.png", "bad/good_r.png", "  "),
    "": ("bad/good_l.png", "bad/good_r.png", "右眼：未见明显异常。"),
}


def _read_csv(path: Path, encoding: str = "utf-8-sig") -> list[dict[str, str]]:
    with open(path, encoding=encoding, newline="") as fh:
        return list(csv.DictReader(fh))


def _write_csv(path: Path, rows: list[dict[str, str]], columns=None, encoding: str = "utf-8") -> None:
    with open(path, "w", encoding=encoding, newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(columns or rows[0]), extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)


def _build(csv_path: Path, out: Path, **kw) -> BuildConfig:
    cfg = BuildConfig(InputSpec(csv_path, csv_path.parent), out, image=ImageOptions(size=STORED),
                      workers=kw.pop("workers", 2), progress=False, **kw)
    build_lmdb(cfg)
    return cfg


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """Generated patients plus one row per bad case; returns (csv path, generated rows)."""
    root = tmp_path_factory.mktemp("patients")
    csv_path = write_patients(root, N_PATIENTS, seed=5, size=SIZE, missing_eye_rate=0.3, progress=False)
    rows = _read_csv(csv_path)
    folder = csv_path.parent
    (folder / "bad").mkdir()
    good = (folder / rows[0]["right_image"]).read_bytes()
    (folder / "bad" / "zero.png").write_bytes(b"")
    (folder / "bad" / "trunc.png").write_bytes(good[: len(good) // 2])
    for name in ("good_l.png", "good_r.png"):
        (folder / "bad" / name).write_bytes(good)
    extra = [{"patient_id": pid, "left_image": l, "right_image": r, "report": rep} for pid, (l, r, rep) in BAD.items()]
    extra.append(dict(rows[1], report="右眼：重复。"))  # a duplicate patient id
    _write_csv(csv_path, rows + extra, columns=(*PATIENT_COLUMNS, *PATIENT_LABEL_COLUMNS))
    return csv_path, rows


@pytest.fixture(scope="module")
def built(corpus, tmp_path_factory):
    csv_path, rows = corpus
    out = tmp_path_factory.mktemp("built") / "out"
    _build(csv_path, out, batch_rows=5)
    return out, rows


# --------------------------------------------------------------------------- generator


def test_generated_patients_share_findings_and_some_lack_an_eye(corpus):
    csv_path, rows = corpus
    assert list(rows[0]) == [*PATIENT_COLUMNS, *PATIENT_LABEL_COLUMNS] and len(rows) == N_PATIENTS
    missing = [r for r in rows if not (r["left_image"] and r["right_image"])]
    assert 0 < len(missing) < N_PATIENTS // 2 and all(r["left_image"] or r["right_image"] for r in rows)
    for r in rows:
        for eye in ("left", "right"):
            assert (csv_path.parent / r[f"{eye}_image"]).is_file() == bool(r[f"{eye}_image"])
        assert ("右眼" in r["report"] and "左眼" in r["report"]) or r["report"].startswith("双眼")
    # diabetic retinopathy is bilateral with per-eye grades at most one apart
    rng = np.random.default_rng(0)
    patients = [sample_patient(rng) for _ in range(400)]
    dr = [p for p in patients if max(e["dr_grade"] for e in p.values()) > 0]
    assert dr and all(min(e["dr_grade"] for e in p.values()) >= 1 for p in dr)
    assert all(abs(p["left"]["dr_grade"] - p["right"]["dr_grade"]) <= 1 for p in dr)
    assert any(p["left"]["dr_grade"] != p["right"]["dr_grade"] for p in dr)
    assert all(p["left"]["eyes_side"] == 0 and p["right"]["eyes_side"] == 1 for p in patients)
    assert all(p["left"]["is_pm"] == p["right"]["is_pm"] for p in patients)
    assert not any(p["left"]["is_rvo"] and p["right"]["is_rvo"] for p in patients)
    # deterministic per patient, and the report follows the two eyes
    row, renders = patient_example(3, seed=5, size=SIZE)
    again, renders2 = patient_example(3, seed=5, size=SIZE)
    assert row == again and all(renders[e].image.tobytes() == renders2[e].image.tobytes() for e in renders)
    eyes = {"right": dict(patients[0]["right"], is_gc=1), "left": dict(patients[0]["left"], dr_grade=2)}
    report = make_patient_report(eyes, np.random.default_rng(1), noise=0.0)
    assert report.index("右眼：") < report.index("青光眼") < report.index("；左眼：") < report.index("糖尿病视网膜病变")


def test_synth_cli_writes_patients(tmp_path):
    assert synth_main([str(tmp_path), "--patients", "3", "--no-corpus", "--no-eval", "--size", "48",
                       "--no-progress"]) == 0
    rows = _read_csv(tmp_path / PATIENTS_DIR / PATIENTS_CSV)
    assert [r["patient_id"] for r in rows] == ["P000001", "P000002", "P000003"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [OWNER_FILE, PATIENTS_DIR]


# --------------------------------------------------------------------------- build + reader


def test_reader_yields_each_patients_own_eyes_and_report(built, corpus):
    out, rows = built
    by_id = {r["patient_id"]: r for r in rows}
    folder = corpus[0].parent
    seen = set()
    for split in SPLITS:
        ds = open_lmdb_dataset(out / split, eval_transform(STORED))
        assert isinstance(ds, LmdbPatientDataset) and ds.kind == "patients" and dataset_kind(out / split) == "patients"
        for i in range(len(ds)):
            rec = ds.record(i)
            seen.add(rec.patient_id)
            if rec.patient_id.startswith("X-"):
                continue
            src = by_id[rec.patient_id]
            assert rec.report == src["report"] and split_of(rec.patient_id) == split
            labels = ds.labels(i)
            assert {c: labels[c] for c in PATIENT_LABEL_COLUMNS} == {c: src[c] for c in PATIENT_LABEL_COLUMNS}
            left, right, has_left, has_right, tokens = ds[i]
            assert left.shape == right.shape == (3, STORED, STORED) and tokens.shape == (52,)
            assert (bool(has_left), bool(has_right)) == (bool(src["left_image"]), bool(src["right_image"]))
            assert has_left.dtype == torch.bool and (has_left or not left.any()) and (has_right or not right.any())
            stored = ds.images(i)
            for eye, image in zip(("left", "right"), stored):
                if image is None:
                    continue
                # the stored photo is this eye's: closer to its own source than to the other eye's
                own = np.asarray(Image.open(folder / src[f"{eye}_image"]).resize((STORED, STORED)), np.float32)
                other_eye = src["right_image" if eye == "left" else "left_image"]
                if other_eye:
                    other = np.asarray(Image.open(folder / other_eye).resize((STORED, STORED)), np.float32)
                    got = np.asarray(image, np.float32)
                    assert np.abs(got - own).mean() < np.abs(got - other).mean()
        if split == "train":
            batch = next(iter(torch.utils.data.DataLoader(ds, batch_size=4, num_workers=1)))
            assert [tuple(t.shape) for t in batch] == [(4, 3, STORED, STORED)] * 2 + [(4,), (4,), (4, 52)]
        ds.close()
    assert seen == {r["patient_id"] for r in rows} | {"X-bad-left"}


def test_rejects_summary_and_bad_eye_handling(built):
    out, rows = built
    rejects = _read_csv(out / "rejects.csv")
    assert list(rejects[0]) == ["row", "patient_id", "eye", "file_name", "reason", "detail"]
    got = sorted((r["patient_id"], r["eye"], r["reason"]) for r in rejects)
    assert got == sorted([
        ("X-bad-left", "left", "zero_byte_file"),
        ("X-both-bad", "", "no_usable_eye"), ("X-both-bad", "left", "missing_file"),
        ("X-both-bad", "right", "truncated_image"),
        ("X-no-eyes", "", "no_eye_image"), ("X-empty-report", "", "empty_caption"), ("", "", "empty_patient_id"),
        (rows[1]["patient_id"], "", "duplicate_patient_id"),
    ])
    assert all(r["row"].isdigit() and r["detail"] for r in rejects)
    kept = next(r for r in _read_csv(out / "splits.csv") if r["patient_id"] == "X-bad-left")
    ds = LmdbPatientDataset(out / kept["split"])
    rec = ds.record(int(kept["sample_id"]))
    assert rec.left_image_id == -1 and rec.right_image_id >= 0
    left, right, has_left, has_right, _ = ds[int(kept["sample_id"])]
    assert not has_left and has_right and not left.any() and right.any()
    ds.close()
    summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    n_kept = N_PATIENTS + 1
    assert summary["kind"] == "patients" and sum(summary["patients"].values()) == n_kept
    assert summary["rejected"] == {"total": 5, "by_reason": {
        "duplicate_patient_id": 1, "empty_caption": 1, "empty_patient_id": 1, "no_eye_image": 1, "no_usable_eye": 1}}
    assert summary["rejected_images"]["by_reason"] == {"missing_file": 1, "truncated_image": 1, "zero_byte_file": 1}
    n_one_eyed = sum(not (r["left_image"] and r["right_image"]) for r in rows) + 1
    assert summary["eyes"]["both"] == n_kept - n_one_eyed
    assert sum(summary["images"].values()) == 2 * n_kept - n_one_eyed
    manifest = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["kind"] == "patients" and manifest["patients"] == summary["patients"]
    report = verify_output(out)
    assert report.ok, report.problems


def test_split_is_stable_under_reordering_and_additions(corpus, built, tmp_path):
    csv_path, rows = corpus
    out, _ = built
    first = {r["patient_id"]: r["split"] for r in _read_csv(out / "splits.csv")}
    subset = rows[: N_PATIENTS // 2] + [dict(rows[0], patient_id="NEW-1"), dict(rows[2], patient_id="NEW-2")]
    random.Random(0).shuffle(subset)
    _write_csv(tmp_path / "p.csv", subset)
    build_lmdb(BuildConfig(InputSpec(tmp_path / "p.csv", csv_path.parent), tmp_path / "out",
                           image=ImageOptions(size=STORED), workers=1, progress=False))
    second = {r["patient_id"]: r["split"] for r in _read_csv(tmp_path / "out" / "splits.csv")}
    assert len(second) == len(subset) and all(second[p] == first[p] for p in second if not p.startswith("NEW"))
    assert all(split_of(p, 0) == s for p, s in second.items())


@pytest.mark.parametrize("encoding", ["gbk", "utf-8-sig"])
def test_gbk_and_bom_patient_csv_through_the_program(corpus, tmp_path, encoding):
    csv_path, rows = corpus
    _write_csv(tmp_path / "p.csv", rows[:4], encoding=encoding)
    rc = build_main(["--csv", str(tmp_path / "p.csv"), "--image-root", str(csv_path.parent), "--out",
                     str(tmp_path / "out"), "--size", str(STORED), "--workers", "1", "--no-progress"])
    assert rc == 0
    reports = set()
    for split in SPLITS:
        ds = LmdbPatientDataset(tmp_path / "out" / split)
        reports |= {ds.record(i).report for i in range(len(ds))}
        ds.close()
    assert reports == {r["report"] for r in rows[:4]}


def test_missing_patient_column_is_one_line_error(corpus, tmp_path, capsys):
    csv_path, rows = corpus
    _write_csv(tmp_path / "p.csv", rows[:3], columns=[c for c in rows[0] if c != "right_image"])
    rc = build_main(["--csv", str(tmp_path / "p.csv"), "--out", str(tmp_path / "out"), "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "Traceback" not in err
    assert "'right_image'" in err and "p.csv" in err and not (tmp_path / "out").exists()
    make_synfundus(tmp_path / "syn", 2)  # --patients on a one-image-per-row CSV names every patient column
    rc = build_main(["--patients", "--csv", str(tmp_path / "syn" / "SynFundus-1M_annotation.csv"),
                     "--out", str(tmp_path / "out"), "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and all(f"'{c}'" in err for c in PATIENT_COLUMNS)


# --------------------------------------------------------------------------- resume


def test_killed_patient_build_resumes_to_identical_digest(corpus, tmp_path, capsys):
    csv_path, _ = corpus
    args = ["--patients", str(csv_path.parent), "--size", str(STORED), "--batch", "2", "--workers", "2",
            "--no-progress"]  # ROOT holding patients.csv
    assert build_main([*args, "--out", str(tmp_path / "whole"), "--verify"]) == 0
    whole = capsys.readouterr().out.split()[0]
    assert whole == "sha256:" + content_digest(tmp_path / "whole")
    out = tmp_path / "resumed"
    cursor = kill_build_midway([*args, "--out", str(out)], out, after_row=6, timeout=60)
    assert cursor.images is not None and not (out / "manifest.json").exists()
    assert build_main([*args, "--out", str(out), "--verify"]) == 0
    assert capsys.readouterr().out.split()[0] == whole
    assert verify_output(out).ok and not (out / ".build").exists()


# --------------------------------------------------------------------------- safety


class _Exploit:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.mark.parametrize("payload", [("p", 0, 1, "r"), ("p", -1, 3, "r")])
def test_plain_patient_records_load(payload):
    assert safe_loads_patient(pickle.dumps(payload)) == payload


@pytest.mark.parametrize("payload", [("p", -1, -1, "r"), ("p", 0, 1), (1, 0, 1, "r"), ("p", 0.0, 1, "r"),
                                     ["p", 0, 1, "r"], ("p", 0, 1, b"r"), ("p", True, 1, "r"), ("p", -2, 1, "r")])
def test_other_patient_record_shapes_are_refused(payload):
    with pytest.raises(UnsafeRecordError):
        safe_loads_patient(pickle.dumps(payload))


def test_malicious_patient_record_is_refused_without_running_code(built, tmp_path):
    import shutil

    marker = tmp_path / "pwned"
    evil = pickle.dumps(("p", 0, 1, _Exploit(marker)))
    with pytest.raises(UnsafeRecordError, match="refusing"):
        safe_loads_patient(evil)
    out = tmp_path / "out"
    shutil.copytree(built[0], out)
    env = lmdb.open(str(out / "train" / "pairs"))
    with env.begin(write=True) as txn:
        txn.put(b"0", evil)
    env.close()
    ds = LmdbPatientDataset(out / "train")
    with pytest.raises(UnsafeRecordError):
        ds[0]
    assert ds.record(1).report
    ds.close()
    report = verify_output(out)
    assert not report.ok and any("not a safe patient record" in p for p in report.problems)
    assert not marker.exists()


def test_open_lmdb_dataset_keeps_single_image_builds(tmp_path):
    make_synfundus(tmp_path / "syn", 4, seed=3)
    build_lmdb(BuildConfig(InputSpec.synfundus(tmp_path / "syn"), tmp_path / "out", workers=1, progress=False))
    ds = open_lmdb_dataset(tmp_path / "out" / "train")
    assert type(ds) is LmdbPairDataset and ds.kind == "pairs"
    ds.close()
    assert "kind" not in json.loads((tmp_path / "out" / "manifest.json").read_text(encoding="utf-8"))
    (tmp_path / "out" / "manifest.json").unlink()  # no manifest: the record shape decides
    assert dataset_kind(tmp_path / "out" / "train") == "pairs"


# --------------------------------------------------------------------------- toy patients


def test_toy_patients_match_the_lmdb_item_shape():
    ds = make_toy_patients(24, 32, seed=1, missing_rate=0.25)
    assert isinstance(ds, TensorPatients) and ds.kind == "patients" and len(ds) == 24
    left, right, has_left, has_right, tokens = torch.utils.data.default_collate([ds[i] for i in range(24)])
    assert left.shape == right.shape == (24, 3, 32, 32) and tokens.shape == (24, 52)
    assert has_left.dtype == torch.bool and bool((has_left | has_right).all())
    assert not bool((has_left & has_right).all())
    assert not left[~has_left].any() and not right[~has_right].any() and left[has_left].abs().sum(dim=(1, 2, 3)).all()
    assert ds.labels["dr_grade"] == [max(a, b) for a, b in zip(ds.labels["left_dr_grade"], ds.labels["right_dr_grade"])]
    assert toy_patient_report(0, 0) == "双眼未见明显异常。" and toy_patient_report(1, 2).startswith("右眼：轻度")
    same = make_toy_patients(24, 32, seed=1, missing_rate=0.25)
    assert torch.equal(same.left, ds.left) and torch.equal(same.tokens, ds.tokens)
    assert parse_toy_patients_spec("toy-patients:16") == 16 and parse_toy_patients_spec("toy-patients") == 512
    assert parse_toy_patients_spec("toy:16") is None and parse_toy_patients_spec("toy-patients:x") is None
    train, valid = toy_patient_splits("toy-patients:16", 32, 0, 52)
    assert len(train) == 16 and len(valid) == 8
