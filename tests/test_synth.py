"""The synthetic data generator: determinism, layouts, label/caption/image consistency, CLI errors."""
from __future__ import annotations

import csv
import hashlib
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image, ImageDraw

from cn_clip_ext.synth import generator as synth
from cn_clip_ext.synth.captions import make_caption
from cn_clip_ext.synth.renderer import render_fundus
from cn_clip_ext.layouts import (CAPTION_KEYWORDS, FINDINGS, FIVES, MESSIDOR2, NORMAL_KEYWORD, REFUGE,
                                     SYNFUNDUS_COLUMNS, SYNFUNDUS_CSV, SYNFUNDUS_IMAGE_DIR)
from cn_clip_ext.outputs import OWNER_FILE
from cn_clip_ext.synth.generator import SynthConfig, generate, sample_labels, write_synfundus
from vclip_data_prep.synth import main

N_CORPUS, N_EVAL, SIZE = 40, 24, 160


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("synth")
    generate(root, SynthConfig(n_images=N_CORPUS, n_eval=N_EVAL, size=SIZE), progress=False)
    return root


@pytest.fixture(scope="module")
def table(data_root) -> pd.DataFrame:
    return pd.read_csv(data_root / SYNFUNDUS_CSV, keep_default_na=False)


def _labels(**kw) -> dict:
    lab = {f: 0 for f in FINDINGS}
    lab.update(eyes_side=1, dr_grade=0, retinal_region_quality_score=0.9)
    lab.update(kw)
    return lab


def _render(seed: int, size: int = 256, **kw) -> tuple[np.ndarray, object]:
    r = render_fundus(_labels(**kw), np.random.default_rng([99, seed]), size)
    return np.asarray(r.image).astype(np.int32), r.geometry


# --------------------------------------------------------------------------- determinism


def test_same_seed_same_bytes_any_worker_count(tmp_path, data_root):
    write_synfundus(tmp_path / "w2", N_CORPUS, size=SIZE, workers=2, progress=False)
    ref = {k: v for k, v in _tree(data_root).items() if k.startswith(SYNFUNDUS_IMAGE_DIR) or k == SYNFUNDUS_CSV}
    assert _tree(tmp_path / "w2") == ref


def test_image_i_does_not_depend_on_n_and_seed_matters(tmp_path, data_root):
    write_synfundus(tmp_path / "few", 5, size=SIZE, progress=False)
    write_synfundus(tmp_path / "other", 5, seed=1, size=SIZE, progress=False)
    few, other = _tree(tmp_path / "few"), _tree(tmp_path / "other")
    for name, data in few.items():
        if name.startswith(SYNFUNDUS_IMAGE_DIR):
            assert data == (data_root / name).read_bytes()
            assert data != other[name]
    rows = (data_root / SYNFUNDUS_CSV).read_text(encoding="utf-8").splitlines()
    assert (tmp_path / "few" / SYNFUNDUS_CSV).read_text(encoding="utf-8").splitlines() == rows[:6]


def test_eval_sets_deterministic(tmp_path, data_root):
    synth.write_eval_sets(tmp_path, N_EVAL, size=SIZE, workers=2, progress=False)
    for folder in ("messidor2", "fives", "refuge"):
        assert _tree(tmp_path / folder) == _tree(data_root / folder)


# --------------------------------------------------------------------------- the corpus files


def test_csv_columns_and_round_trip(data_root, table):
    assert list(table.columns) == list(SYNFUNDUS_COLUMNS)
    assert len(table) == N_CORPUS
    with open(data_root / SYNFUNDUS_CSV, encoding="utf-8", newline="") as fh:
        rows = list(csv.reader(fh))
    assert tuple(rows[0]) == SYNFUNDUS_COLUMNS
    assert all(len(r) == len(SYNFUNDUS_COLUMNS) for r in rows[1:]) and len(rows) == N_CORPUS + 1
    assert [r[-1] for r in rows[1:]] == table["diagnosticAdvice"].tolist()
    assert synth.sample_captions(N_CORPUS) == table["diagnosticAdvice"].tolist()
    assert table["file_name"].tolist() == [f"{synth.ID_OFFSET + i}.png" for i in range(N_CORPUS)]
    assert not list(data_root.glob(".vclip-synth-*"))  # no staging left behind


def test_md5_and_images(data_root, table):
    for name, md5 in zip(table["file_name"], table["file_md5"]):
        data = (data_root / SYNFUNDUS_IMAGE_DIR / name).read_bytes()
        assert hashlib.md5(data).hexdigest() == md5
    for name in table["file_name"][:10]:
        im = Image.open(data_root / SYNFUNDUS_IMAGE_DIR / name)
        assert im.mode == "RGB" and im.size == (SIZE, SIZE)
        a = np.asarray(im).astype(int)
        for corner in (a[:6, :6], a[:6, -6:], a[-6:, :6], a[-6:, -6:]):
            assert corner.max() == 0
        lum = a.max(axis=2)
        fov = lum > 15
        assert 0.6 < fov.mean() < 0.8  # a round field of view: pi/4 * 0.96^2 = 0.72
        c = SIZE // 2
        assert fov[c - 20:c + 20, c - 20:c + 20].all()


def test_label_values_and_derived_columns(table):
    ints = table.drop(columns=["file_md5", "file_name", "retinal_region_quality_score", "diagnosticAdvice"])
    assert ints.dtypes.map(lambda t: t.kind == "i").all()
    assert ints.drop(columns="dr_grade").isin([0, 1]).all().all()
    assert table["dr_grade"].between(0, 4).all()
    assert table["retinal_region_quality_score"].between(0, 1).all()
    finding = (table["dr_grade"] > 0) | table[list(FINDINGS)].any(axis=1)
    assert (table["is_abnormal"] == finding.astype(int)).all()
    assert (table["is_fundus"] == 1).all()
    assert (table.loc[table["dr_grade"] > 0, "is_dm"] == 1).all()
    assert (table.loc[table["is_pm"] == 1, "is_tessellated"] == 1).all()


# --------------------------------------------------------------------------- labels and captions


def _caption_ok(labels: dict, text: str) -> bool:
    for key, words in CAPTION_KEYWORDS.items():
        present = int(labels["dr_grade"]) > 0 if key == "dr" else bool(int(labels[key]))
        if present != any(w in text for w in words):
            return False
    abnormal = int(labels["dr_grade"]) > 0 or any(int(labels[f]) for f in FINDINGS)
    return abnormal != (NORMAL_KEYWORD in text)


def test_captions_follow_labels_without_noise():
    for i in range(1500):
        lab = sample_labels(np.random.default_rng([5, i]))
        text = make_caption(lab, np.random.default_rng([6, i]), noise=0.0)
        assert _caption_ok(lab, text), (lab, text)
        assert text.endswith("。")


def test_caption_noise_rate(table):
    rows = table.to_dict("records")
    assert np.mean([_caption_ok(r, r["diagnosticAdvice"]) for r in rows]) >= 0.85
    bad = []
    for i in range(2000):
        lab = sample_labels(np.random.default_rng([7, i]))
        bad.append(not _caption_ok(lab, make_caption(lab, np.random.default_rng([8, i]), noise=0.2)))
    assert 0.12 < np.mean(bad) < 0.28


def test_prevalences_are_plausible():
    rows = pd.DataFrame([sample_labels(np.random.default_rng([3, i])) for i in range(4000)])
    assert 0.55 < 1 - rows["is_abnormal"].mean() < 0.8  # most eyes normal
    grades = rows["dr_grade"].value_counts(normalize=True)
    assert grades[0] > 0.6 and grades.get(4, 0) < 0.06 and set(grades.index) == {0, 1, 2, 3, 4}
    for f in ("is_amd", "is_gc", "is_rvo", "is_pm"):
        assert 0.005 < rows[f].mean() < 0.1, f
    assert rows.loc[rows["dr_grade"] >= 3, "is_dme"].mean() > rows.loc[rows["dr_grade"] == 1, "is_dme"].mean()
    low = rows["retinal_region_quality_score"] < 0.6
    assert 0.02 < low.mean() < 0.12
    assert rows.loc[low, "is_retinal_region_readable"].mean() < rows.loc[~low, "is_retinal_region_readable"].mean()


def test_low_quality_is_degraded():
    lab, rendered = synth.synfundus_example(0, low_quality_rate=1.0, size=128)
    assert lab["retinal_region_quality_score"] < 0.6 and rendered.geometry.degradation in ("blur", "dark", "haze")
    lab, rendered = synth.synfundus_example(0, low_quality_rate=0.0, size=128)
    assert lab["retinal_region_quality_score"] >= 0.7 and rendered.geometry.degradation == ""


# --------------------------------------------------------------------------- visible signs


def test_dr_signs_grow_with_grade():
    """Same eye, rising grade: more dark-red changed pixels and more yellow exudate pixels."""
    red, yellow = np.zeros(5), np.zeros(5)
    for seed in range(4):
        base, _ = _render(seed)
        for g in range(5):
            img, _ = _render(seed, dr_grade=g)
            changed = np.abs(img - base).sum(axis=2) > 60
            r, gr, b = img[..., 0], img[..., 1], img[..., 2]
            red[g] += (changed & (gr < 0.3 * r) & (r < 170)).sum()
            yellow[g] += (changed & (r > 190) & (gr > 150) & (b < 150)).sum()
    assert red[0] == 0 and yellow[0] == 0
    assert red[1] < red[2] < red[3] and red[1] > 0
    assert yellow[2] > yellow[1] and yellow[3] > yellow[1]


def _yellow_near_fovea(img: np.ndarray, geom, radius: float) -> int:
    h, w, _ = img.shape
    yy, xx = np.mgrid[:h, :w]
    near = (xx - geom.fovea[0]) ** 2 + (yy - geom.fovea[1]) ** 2 < radius ** 2
    r, g, b = img[..., 0], img[..., 1], img[..., 2]
    return int((near & (r > 190) & (g > 140) & (b < 150)).sum())


def test_amd_drusen_at_macula():
    for seed in range(3):
        normal, geom = _render(seed)
        amd, _ = _render(seed, is_amd=1)
        assert _yellow_near_fovea(amd, geom, 0.25 * 128) > _yellow_near_fovea(normal, geom, 0.25 * 128) + 100


def _pale_in_disc(img: np.ndarray, geom) -> int:
    (cx, cy), r = geom.disc_center, geom.disc_radius
    win = img[int(cy - 1.2 * r):int(cy + 1.2 * r), int(cx - 1.2 * r):int(cx + 1.2 * r)]
    return int(((win[..., 1] > 190) & (win[..., 2] > 150)).sum())


def test_glaucoma_large_pale_cup_and_optic_atrophy():
    for seed in range(3):
        normal, g_n = _render(seed)
        glaucoma, g_g = _render(seed, is_gc=1)
        atrophy, _ = _render(seed, is_aon=1)
        assert g_g.cup_to_disc > 0.65 > 0.45 > g_n.cup_to_disc
        assert _pale_in_disc(glaucoma, g_g) > 1.5 * _pale_in_disc(normal, g_n)
        (cx, cy), r = g_n.disc_center, g_n.disc_radius
        ring = lambda a: a[int(cy - 0.9 * r):int(cy + 0.9 * r), int(cx - 0.9 * r):int(cx + 0.9 * r), 2].mean()
        assert ring(atrophy) > ring(normal) + 20  # a pale (less orange) disc


def test_disc_side_follows_eye():
    for eye in (0, 1):
        img, geom = _render(3, eyes_side=eye)
        lum = img.sum(axis=2).astype(float)
        col = np.argmax(lum.sum(axis=0))  # the disc is the brightest column band
        assert (geom.disc_center[0] > 128) == (eye == 1)
        assert (col > 128) == (eye == 1)


def test_tessellation_rvo_and_laser_signs():
    for seed in range(3):
        normal, geom = _render(seed)
        tess, _ = _render(seed, is_tessellated=1)
        # choroidal pattern: typical (median) block contrast of the green channel rises
        def texture(a):
            g = a[32:224, 32:224, 1].astype(float).reshape(12, 16, 12, 16).transpose(0, 2, 1, 3)
            return np.median(g.reshape(144, -1).std(axis=1))
        assert texture(tess) > 1.15 * texture(normal)
        rvo, g_rvo = _render(seed, is_rvo=1)
        changed = np.abs(rvo - normal).sum(axis=2) > 60
        assert changed.sum() > 400 and g_rvo.lesions["flame_haemorrhages"] >= 30
        treated, g_t = _render(seed, is_treated=1)
        assert g_t.lesions["laser_scars"] >= 30 and (np.abs(treated - normal).sum(axis=2) > 60).sum() > 1000


def test_each_sharp_lesion_painter_draws_only_for_its_own_label():
    """The lesion registry: with no label every painter draws nothing; a painter's own label makes it draw."""
    from cn_clip_ext.synth import lesions
    from cn_clip_ext.synth.anatomy import paint_anatomy, place_eye
    from cn_clip_ext.synth.camera import SYNFUNDUS_CAMERA
    from cn_clip_ext.synth.vessels import draw_vessels, vessel_tree

    own = {"_laser_scars": {"is_treated": 1}, "_pigment_clumps": {"is_crp": 1}, "_macular_mottling": {"is_md": 1},
           "_macular_hole": {"is_mh": 1}, "_diabetic": {"dr_grade": 4}, "_flame_haemorrhages": {"is_rvo": 1},
           "_splinter_haemorrhages": {"is_htr": 1}}
    assert [p.__name__ for p in lesions.SHARP_LESIONS] == list(own)

    def scene(labels):
        rng = np.random.default_rng(5)
        eye = place_eye(rng, labels, 128, SYNFUNDUS_CAMERA)
        anatomy = paint_anatomy(rng, eye, labels, SYNFUNDUS_CAMERA)
        vessels = vessel_tree(rng, eye, False)
        lesion_rng = np.random.default_rng(6)
        occluded = lesions.occlude_vein(lesion_rng, vessels) if labels.get("is_rvo") else None
        pic = draw_vessels(anatomy, eye, vessels)
        return pic, lesions.Scene(ImageDraw.Draw(pic), eye, labels, lesion_rng, vessels, occluded)

    for paint in lesions.SHARP_LESIONS:
        pic, sc = scene({"eyes_side": 1, "dr_grade": 0})
        before = np.asarray(pic).copy()
        assert paint(sc) == {} and np.array_equal(np.asarray(pic), before), paint.__name__
        pic, sc = scene({"eyes_side": 1, "dr_grade": 0, **own[paint.__name__]})
        before = np.asarray(pic).copy()
        counts = paint(sc)
        assert counts and all(n >= 1 for n in counts.values()), paint.__name__
        assert (np.abs(np.asarray(pic).astype(int) - before).sum(axis=2) > 0).sum() > 20, paint.__name__


# --------------------------------------------------------------------------- evaluation sets


def test_messidor2_layout(data_root):
    folder = data_root / MESSIDOR2.folder
    df = pd.read_csv(folder / MESSIDOR2.csv)
    assert tuple(df.columns) == MESSIDOR2.columns and len(df) == N_EVAL
    for name in df["image_id"]:
        assert (folder / MESSIDOR2.image_dir / name).is_file()
        assert re.fullmatch(r"\d{8}_\d{5}_0[12]00_PP\.png|IM\d{6}\.JPG", name), name
    ungradable = df[df["adjudicated_gradable"] == 0]
    assert len(ungradable) >= 1 and ungradable["adjudicated_dr_grade"].isna().all()
    graded = df[df["adjudicated_gradable"] == 1]
    assert graded["adjudicated_dr_grade"].between(0, 4).all() and graded["adjudicated_dme"].isin([0, 1]).all()
    im = Image.open(folder / MESSIDOR2.image_dir / df["image_id"][0])
    assert im.size == (round(SIZE * 1.5), SIZE) and im.mode == "RGB"


def test_fives_layout(data_root):
    folder = data_root / FIVES.folder
    n_train = round(N_EVAL * FIVES.train_fraction)
    for split, count in zip(FIVES.splits, (n_train, N_EVAL - n_train)):
        names = sorted(p.name for p in (folder / split / FIVES.image_dir).iterdir())
        assert len(names) == count
        assert sorted(int(n.split("_")[0]) for n in names) == list(range(1, count + 1))
        per_class = pd.Series([n[:-4].split("_")[1] for n in names]).value_counts()
        assert set(per_class.index) == set(FIVES.classes) and per_class.max() - per_class.min() <= 1
        masks = sorted(p.name for p in (folder / split / FIVES.mask_dir).iterdir())
        assert masks == names
        m = np.asarray(Image.open(folder / split / FIVES.mask_dir / names[0]))
        assert set(np.unique(m)) == {0, 255} and 0.03 < (m > 0).mean() < 0.3


def test_refuge_layout(data_root):
    folder = data_root / REFUGE.folder / REFUGE.image_dir
    glaucoma = sorted(p.name for p in (folder / "Glaucoma").iterdir())
    normal = sorted(p.name for p in (folder / "Non-Glaucoma").iterdir())
    assert glaucoma == [f"g{k:04d}.jpg" for k in range(1, len(glaucoma) + 1)]
    assert normal == [f"n{k:04d}.jpg" for k in range(1, len(normal) + 1)]
    assert len(glaucoma) + len(normal) == N_EVAL and len(glaucoma) == round(N_EVAL * REFUGE.glaucoma_fraction)
    assert Image.open(folder / "Glaucoma" / glaucoma[0]).format == "JPEG"
    mask = np.asarray(Image.open(data_root / REFUGE.folder / REFUGE.mask_dir / "Glaucoma" / "g0001.bmp"))
    assert set(np.unique(mask)) == {0, 128, 255}
    cup, disc = (mask == 0).sum(), (mask <= 128).sum()
    assert np.sqrt(cup / disc) > 0.65  # vertical/horizontal cup-to-disc of a glaucomatous disc
    mask_n = np.asarray(Image.open(data_root / REFUGE.folder / REFUGE.mask_dir / "Non-Glaucoma" / "n0001.bmp"))
    assert np.sqrt((mask_n == 0).sum() / (mask_n <= 128).sum()) < 0.55


# --------------------------------------------------------------------------- failures and the CLI


def test_failed_write_leaves_nothing(tmp_path, monkeypatch):
    calls = []

    def failing_png(image):
        calls.append(1)
        if len(calls) > 3:
            raise OSError(28, "No space left on device")
        return b"png"

    monkeypatch.setattr(synth, "_png", failing_png)
    with pytest.raises(OSError):
        write_synfundus(tmp_path, 8, size=64, progress=False)
    assert list(tmp_path.iterdir()) == []
    assert main([str(tmp_path), "--n-images", "8", "--size", "64", "--no-eval", "--no-progress"]) == 2
    assert list(tmp_path.iterdir()) == []


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("vclip-synth: error: "), err
    return lines[0]


@pytest.mark.parametrize("argv, words", [
    (["--n-images", "-3"], "--n-images"),
    (["--n-eval", "-1"], "--n-eval"),
    (["--size", "0"], "--size"),
    (["--workers", "0"], "--workers"),
    (["--caption-noise", "1.5"], "--caption-noise"),
])
def test_cli_bad_numbers(tmp_path, capsys, argv, words):
    out = tmp_path / "out"
    assert main([str(out), *argv, "--no-progress"]) != 0
    assert words in _one_line_error(capsys)
    assert not out.exists()


def test_cli_unwritable_dir(tmp_path, capsys):
    blocker = tmp_path / "file.txt"
    blocker.write_text("x")
    assert main([str(blocker / "sub"), "--n-images", "2", "--no-progress"]) != 0
    assert "file.txt" in _one_line_error(capsys)
    assert main([str(blocker), "--n-images", "2", "--no-progress"]) != 0
    _one_line_error(capsys)


def test_cli_writes_everything(tmp_path, capsys):
    out = tmp_path / "d"
    rc = main([str(out), "--n-images", "4", "--n-eval", "4", "--size", "64", "--seed", "3", "--workers", "1",
               "--no-progress"])
    assert rc == 0
    assert len(list((out / SYNFUNDUS_IMAGE_DIR).glob("*.png"))) == 4
    assert len(pd.read_csv(out / SYNFUNDUS_CSV)) == 4
    assert (out / MESSIDOR2.folder / MESSIDOR2.csv).is_file()
    assert not list(out.glob(".vclip-synth-*"))
    assert main([str(tmp_path / "e"), "--n-images", "3", "--no-eval", "--size", "64", "--no-progress"]) == 0
    assert sorted(p.name for p in (tmp_path / "e").iterdir()) == [OWNER_FILE, SYNFUNDUS_IMAGE_DIR, SYNFUNDUS_CSV]


def test_cli_help(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for flag in ("--n-images", "--n-eval", "--seed", "--size", "--workers", "--no-eval", "--no-corpus"):
        assert flag in out
