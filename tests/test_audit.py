"""vclip-audit: planted copies of evaluation images are found in a corpus, distinct images are not,
the thresholds sit between measured copy and distinct distances, and --exclude changes vclip-eval."""
import json
import shutil

import numpy as np
import pytest
from PIL import Image

from cn_clip_ext.audit import (COPY_TRANSFORMS, MAX_HASH_DISTANCE, VesselEncoder, fov_circle, make_copy, measure,
                               neighbours, open_corpus, read_exclude, search, search_rotated)
from cn_clip_ext.audit.hashing import hamming
from cn_clip_ext.synth.generator import write_eval_sets, write_synfundus
from cn_clip_ext.evaluation import load_dataset_table, load_eval_set
from vclip_eval.audit import main as audit_main
from vclip_eval.evaluate import DATASETS_TABLE
from vclip_eval.evaluate import main as eval_main

N_CORPUS, N_EVAL, SIZE = 150, 12, 256
SETS = ("messidor2", "fives", "refuge")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """A generated corpus folder with two planted copies per alteration, and the evaluation sets."""
    root = tmp_path_factory.mktemp("audit")
    write_synfundus(root / "syn", N_CORPUS, seed=0, size=SIZE, progress=False)
    write_eval_sets(root / "eval", N_EVAL, seed=1, size=SIZE, progress=False)
    corpus = root / "corpus"
    shutil.copytree(root / "syn" / "Fundus", corpus)
    table = load_dataset_table(DATASETS_TABLE)
    sets = {name: load_eval_set(table[name], root / "eval" / name) for name in SETS}
    planted = {}  # corpus file name -> the evaluation image it copies
    transforms = list(COPY_TRANSFORMS)
    for n in range(2 * len(transforms)):  # two copies per alteration, of 14 different evaluation images
        transform = transforms[n % len(transforms)]
        s = sets[SETS[n % len(SETS)]]
        i = (n // len(SETS)) * 2 + 1
        name = f"planted_{n}_{transform}.png"
        make_copy(s.load(i), transform, seed=n).save(corpus / name)
        planted[name] = s.images[i]
    return root, corpus, sets, planted


def _audit_args(root, corpus, out, *extra):
    args = ["--corpus", str(corpus), "--out", str(out), "--quiet", "--workers", "0", "--baseline-samples", "30"]
    for name in SETS:
        args += ["--data", f"{name}={root / 'eval' / name}"]
    return args + list(extra)


@pytest.fixture(scope="module")
def audit(data):
    root, corpus, _, _ = data
    out = root / "report"
    assert audit_main(_audit_args(root, corpus, out)) == 0
    return out, json.loads((out / "audit.json").read_text(encoding="utf-8"))


def test_every_planted_copy_is_found_and_nothing_else(data, audit):
    _, _, _, planted = data
    out, report = audit
    found = {(p["corpus_ref"], p["eval_ref"]) for p in report["pairs"]}
    assert found == set(planted.items())  # every planted copy, no distinct image
    assert read_exclude(out / "exclude.txt") == frozenset(planted.values())
    assert report["thresholds"]["max_hash_distance"] == MAX_HASH_DISTANCE
    by_hash = {p["corpus_ref"] for p in report["pairs"] if "hash" in p["levels"]}
    assert by_hash == set(planted)  # the hash level alone catches every alteration, rotations included
    assert sum(s["n_flagged_images"] for s in report["eval_sets"].values()) == len(planted)
    nn = report["nearest_neighbour"]["hash_distance"]
    assert nn["corpus vs corpus"]["min"] > MAX_HASH_DISTANCE  # the same-distribution baseline is clear
    assert set(nn) >= {f"{s} vs corpus" for s in SETS} | {f"{s} vs itself" for s in SETS}
    with Image.open(out / "contact_sheet.png") as sheet:
        assert sheet.width > 300 and sheet.height > 150
    assert (out / "nn_distributions.png").stat().st_size > 0
    assert "| fives |" in (out / "audit.md").read_text(encoding="utf-8")


def test_cache_is_reused_and_keyed_by_content(data, audit, caplog):
    root, corpus, _, _ = data
    caches = list((root / "report" / "audit_cache").glob("v*"))
    assert len(caches) == 1 and (caches[0] / "hashes.npy").is_file()
    assert list(caches[0].glob("emb-vessel*.npy"))
    out2 = root / "report2"
    with caplog.at_level("INFO"):
        assert audit_main(_audit_args(root, corpus, out2, "--no-embedding", "--cache-dir",
                                      str(root / "report" / "audit_cache"))) == 0
    assert "reusing cached corpus features" in caplog.text
    report = json.loads((out2 / "audit.json").read_text(encoding="utf-8"))
    assert report["encoder"] is None and len(report["pairs"]) == len(data[3])


def test_thresholds_sit_between_copies_and_distinct_images(data):
    root, _, sets, _ = data
    originals = [sets[n].load(i) for n in SETS for i in range(0, 8, 2)]
    others = [Image.open(p).convert("RGB") for p in sorted((root / "syn" / "Fundus").glob("*.png"))[:40]]
    enc = VesselEncoder()
    cal = measure(originals, others, enc)
    worst_copy, closest_distinct = cal.hash_window()
    assert worst_copy < MAX_HASH_DISTANCE < closest_distinct
    single = [v for k, v in cal.copy_min_cosine.items() if k != "combined"]
    assert min(single) >= enc.default_min_cosine > cal.distinct_max_cosine


def test_exclusion_list_changes_the_reported_metrics(data, audit, tmp_path):
    root, _, sets, planted = data
    out, _ = audit
    report_dir = tmp_path / "eval"
    args = ["--untrained", "RN-tiny@BERT-tiny-chinese", "--bootstrap", "10", "--workers", "0", "--quiet",
            "--out", str(report_dir), "--exclude", str(out / "exclude.txt")]
    for name in SETS:
        args += ["--data", f"{name}={root / 'eval' / name}"]
    assert eval_main(args) == 0
    results = next(iter(json.loads((report_dir / "report.json").read_text(encoding="utf-8"))["results"].values()))
    for name in SETS:
        n = sum(ref in sets[name].images for ref in planted.values())
        key = f"{name} (excl. {n} suspicious)"
        assert n > 0 and key in results
        assert results[key]["n_images"] == results[name]["n_images"] - n
    # the excluded column is recomputed on the remaining images: its top-1 is the full predictions' top-1
    # without the excluded rows
    import csv

    name = "fives"
    n = sum(ref in sets[name].images for ref in planted.values())
    with open(report_dir / f"predictions__RN-tiny_BERT-tiny-chinese_untrained__{name}.csv", encoding="utf-8") as f:
        rows = [r for r in csv.DictReader(f) if r["image"] not in planted.values()]
    top1 = np.mean([r["label"] == r["prediction"] for r in rows])
    assert results[f"{name} (excl. {n} suspicious)"]["metrics"]["top1"] == pytest.approx(top1)


def test_bad_input_is_one_line_and_writes_nothing(data, tmp_path, capsys):
    root, corpus, _, _ = data
    out = tmp_path / "never"
    assert audit_main(["--corpus", str(tmp_path / "nowhere"), "--data", f"fives={root / 'eval' / 'fives'}",
                       "--out", str(out)]) == 2
    assert audit_main(_audit_args(root, corpus, out, "--min-cosine", "high")) == 2
    assert audit_main(["--corpus", str(corpus), "--out", str(out)]) == 2  # no evaluation set
    err = capsys.readouterr().err.strip().splitlines()
    assert [line.startswith("vclip-audit: error:") for line in err].count(True) == 3
    assert "Traceback" not in "".join(err) and not out.exists()


def test_chunked_search_is_exact_with_and_without_faiss(monkeypatch):
    rng = np.random.default_rng(0)
    codes = rng.integers(0, 256, (1000, 64), dtype=np.uint8)
    q = rng.integers(0, 256, (7, 3, 64), dtype=np.uint8)
    emb = rng.normal(size=(1000, 32)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    qe = emb[[3, 10, 500]][:, None] + 0.01 * rng.normal(size=(3, 2, 32)).astype(np.float32)
    brute_h = np.min([hamming(q[:, r], codes) for r in range(3)], axis=0)
    for fa in (neighbours.faiss, None):
        monkeypatch.setattr(neighbours, "faiss", fa)
        d, i = search_rotated(q, codes, 4, binary=True, chunk=96)
        assert np.array_equal(d[:, 0], brute_h.min(1))
        assert np.array_equal(np.take_along_axis(brute_h, i, 1), d.astype(int))
        s, j = search_rotated(qe, emb, 2, binary=False, chunk=128)
        assert list(j[:, 0]) == [3, 10, 500]
        s, j = search_rotated(qe, emb, 2, binary=False, chunk=128, exclude=[3, 10, 500])
        assert 3 not in j[0] and 10 not in j[1]
        valid = np.ones(1000, bool)
        valid[[3, 10]] = False
        _, j = search(qe[:, 0], emb, 1, binary=False, valid=valid)
        assert j[0, 0] != 3 and j[1, 0] != 10 and j[2, 0] == 500


def test_fov_circle_ignores_padding_and_noise(data):
    _, _, sets, _ = data
    image = sets["fives"].load(0)
    cx, cy, r = fov_circle(image)
    padded = Image.new("RGB", (image.width + 100, image.height + 40))
    padded.paste(image, (70, 10))
    noisy = np.asarray(padded, np.float32) + np.random.default_rng(0).normal(0, 8, (padded.height, padded.width, 3))
    px, py, pr = fov_circle(Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8)))
    assert abs(px - cx - 70) < 3 and abs(py - cy - 10) < 3 and abs(pr - r) < 3


def test_lmdb_and_csv_corpora(data, tmp_path):
    root, corpus, _, _ = data
    files = sorted(corpus.glob("*.png"))[:5]
    csv_path = tmp_path / "list.csv"
    csv_path.write_text("path\n" + "".join(f"{p}\n" for p in files), encoding="utf-8")
    src = open_corpus(csv_path)
    assert len(src) == 5 and src.open(0).mode == "RGB" and src.content_key() == open_corpus(csv_path).content_key()
    from cn_clip_ext.lmdb.writer import BuildConfig, build_lmdb
    from cn_clip_ext.lmdb.rows import InputSpec

    build_lmdb(BuildConfig(InputSpec.synfundus(root / "syn"), tmp_path / "lmdb", workers=1, progress=False))
    lmdb = open_corpus(tmp_path / "lmdb")
    assert len(lmdb) == N_CORPUS and lmdb.refs[0].split("/")[0] in ("train", "valid", "test")
    assert lmdb.open(len(lmdb) - 1).size == (SIZE, SIZE)
    assert open_corpus(tmp_path / "lmdb", ["train"]).location == tmp_path / "lmdb"
