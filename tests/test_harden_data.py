"""Careless and hostile input to vclip-build-lmdb, vclip-synth and the LMDB reader: nothing lost,
nothing hangs, every failure one line naming the file, never a traceback (all through the real
programs on generated data)."""
from __future__ import annotations

import base64
import csv
import errno
import io
import json
import os
import pickle
import shutil
import subprocess
import sys
import time
from pathlib import Path

import lmdb
import numpy as np
import pytest
from PIL import Image

from cn_clip_ext.errors import UserError
from cn_clip_ext.lmdb import writer as lmdb_writer
from cn_clip_ext.lmdb.digest import content_digest, verify_output
from cn_clip_ext.lmdb.reader import LmdbPairDataset
from cn_clip_ext.lmdb.splits import SPLITS
from cn_clip_ext.outputs import OWNER_FILE
from test_lmdb_fixtures import COLUMNS, fundus_image, make_synfundus, put_record as _put, row_for, write_csv
from vclip_data_prep.build_lmdb import main

PROG = "vclip-build-lmdb"
SECRET = "SECRET-7f3a"
"""Planted in files the programs cannot parse: no message may show it."""


def _args(root: Path, out: Path, *extra: str) -> list[str]:
    return [str(root), "--out", str(out), "--workers", "1", "--size", "48", "--no-progress", *extra]


def _one_error(capsys, prog: str = PROG) -> str:
    """The single error line of a failed run (and no traceback)."""
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    lines = [ln for ln in err.splitlines() if ln.startswith(f"{prog}: error: ")]
    assert len(lines) == 1, err
    return lines[0]


def _rejects(out: Path) -> dict[str, tuple[str, str]]:
    with open(out / "rejects.csv", encoding="utf-8") as fh:
        return {r["file_name"]: (r["reason"], r["detail"]) for r in csv.DictReader(fh)}


def _splits(out: Path) -> list[dict[str, str]]:
    with open(out / "splits.csv", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("hd") / "syn"
    make_synfundus(root, 16, seed=21)
    return root


@pytest.fixture(scope="module")
def built(tmp_path_factory, corpus) -> Path:
    out = tmp_path_factory.mktemp("hd_built") / "out"
    assert main(_args(corpus, out, "--split", "1:0:0")) == 0
    return out


def _copy(built: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "copy"
    shutil.copytree(built, dst)
    return dst


# --------------------------------------------------------------------------- 1. --overwrite deletes only our build


def test_overwrite_never_deletes_a_folder_that_merely_looks_like_a_build(corpus, tmp_path, capsys):
    foreign = tmp_path / "colleague"
    for name in ("train", "test"):
        (foreign / name).mkdir(parents=True)
        (foreign / name / "results.txt").write_text("a week of work")
    (foreign / "summary.json").write_text("{}")
    assert main(_args(corpus, foreign, "--overwrite")) == 2
    line = _one_error(capsys)
    assert str(foreign) in line and "holds no LMDB build" in line
    assert (foreign / "train" / "results.txt").read_text() == "a week of work"
    assert (foreign / "test" / "results.txt").is_file() and (foreign / "summary.json").is_file()

    # a manifest that is not ours (no fingerprint) proves nothing either
    (foreign / "manifest.json").write_text(json.dumps({"complete": True}))
    assert main(_args(corpus, foreign, "--overwrite")) == 2
    assert "holds no LMDB build" in _one_error(capsys)
    assert (foreign / "train" / "results.txt").is_file()


def test_overwrite_replaces_our_own_build_and_only_its_files(corpus, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(_args(corpus, out)) == 0
    assert json.loads((out / OWNER_FILE).read_text())["kind"] == "lmdb-build"
    (out / "notes.txt").write_text("mine")  # a user's file in the build folder
    assert main(_args(corpus, out, "--size", "40")) == 2
    assert "pass --overwrite" in _one_error(capsys)
    assert main(_args(corpus, out, "--size", "40", "--overwrite")) == 0
    assert json.loads((out / "manifest.json").read_text())["fingerprint"]["image"]["size"] == 40
    assert (out / "notes.txt").read_text() == "mine"
    assert verify_output(out).ok


# --------------------------------------------------------------------------- 2. two builds at once


def test_a_second_concurrent_build_is_refused_and_the_first_is_not_mixed(corpus, tmp_path):
    ref = tmp_path / "ref"
    assert main(_args(corpus, ref, "--batch", "2")) == 0
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "vclip_data_prep.build_lmdb", *_args(corpus, out, "--batch", "2")]
    first = subprocess.Popen(cmd, env={**os.environ, lmdb_writer.THROTTLE_ENV: "0.3"},
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not (out / ".build" / "journal" / "data.mdb").exists():  # the first holds the lock by now
            assert first.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        second = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        assert first.poll() is None  # really concurrent: the first was still writing
        assert second.returncode == 2
        lines = [ln for ln in second.stderr.splitlines() if "error" in ln.lower()]
        assert "Traceback" not in second.stderr and len(lines) == 1, second.stderr
        assert lines[0].startswith(f"{PROG}: error: {out}: another command is writing"), second.stderr
        assert first.wait(timeout=180) == 0, first.stderr.read()
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    assert content_digest(out) == content_digest(ref)  # no mixed output
    assert verify_output(out).ok


# --------------------------------------------------------------------------- 3. FIFOs, devices, huge and empty files


def test_special_big_and_empty_files_are_rejected_at_once_and_the_build_goes_on(tmp_path):
    root = tmp_path / "syn"
    rows = make_synfundus(root, 6, seed=22)
    fundus = root / "Fundus"
    os.mkfifo(fundus / "fifo.png")  # opening it for reading would block forever
    (fundus / "folder.png").mkdir()
    (fundus / "empty.png").write_bytes(b"")
    big = io.BytesIO()
    fundus_image(np.random.default_rng(1), 200).save(big, "PNG")
    (fundus / "big.png").write_bytes(big.getvalue())
    rng = np.random.default_rng(3)
    names = ["fifo.png", "folder.png", "empty.png", "big.png"]
    write_csv(root / "SynFundus-1M_annotation.csv", rows + [dict(row_for(50 + i, rng), file_name=n)
                                                            for i, n in enumerate(names)])
    out = tmp_path / "out"
    limit = str(len(big.getvalue()) - 1)
    cmd = [sys.executable, "-m", "vclip_data_prep.build_lmdb", *_args(root, out, "--max-image-bytes", limit)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)  # a hang fails here
    assert done.returncode == 0, done.stderr
    rejects = _rejects(out)
    assert rejects["fifo.png"][0] == "not_a_regular_file" and "FIFO" in rejects["fifo.png"][1]
    assert rejects["folder.png"][0] == "not_a_regular_file" and "folder" in rejects["folder.png"][1]
    assert rejects["empty.png"] == ("zero_byte_file", f"{fundus / 'empty.png'}: empty file")
    assert rejects["big.png"][0] == "file_too_large" and limit in rejects["big.png"][1]
    summary = json.loads((out / "summary.json").read_text())
    assert sum(summary["images"].values()) == 6  # every good row kept


def test_a_fifo_as_the_annotation_csv_is_one_line_not_a_hang(tmp_path):
    os.mkfifo(tmp_path / "ann.csv")
    cmd = [sys.executable, "-m", "vclip_data_prep.build_lmdb", "--csv", str(tmp_path / "ann.csv"), "--out",
           str(tmp_path / "out"), "--no-progress"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines() == [f"{PROG}: error: {tmp_path / 'ann.csv'}: annotation CSV is a FIFO, "
                                                "not a regular file"]


# --------------------------------------------------------------------------- 4. damaged data.mdb


@pytest.mark.parametrize("damage", ["truncated", "zero", "garbage"])
@pytest.mark.parametrize("db", ["imgs", "pairs"])
def test_a_damaged_data_mdb_is_one_line_naming_it_never_sigbus(built, tmp_path, damage, db):
    out = _copy(built, tmp_path)
    data = out / "train" / db / "data.mdb"
    size = data.stat().st_size
    if damage == "truncated":
        os.truncate(data, size // 2)
    elif damage == "zero":
        os.truncate(data, 0)
    else:
        data.write_bytes(os.urandom(size))
    probe = ("import sys\nfrom cn_clip_ext.errors import UserError\nfrom cn_clip_ext.lmdb.reader import LmdbPairDataset\n"
             "try:\n    ds = LmdbPairDataset(sys.argv[1])\n    [ds[i] for i in range(len(ds))]\n"
             "except UserError as e:\n    print(e)\n    sys.exit(3)\n")
    done = subprocess.run([sys.executable, "-c", probe, str(out / "train")], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 3, (done.returncode, done.stderr)  # a SIGBUS would be -7
    message = done.stdout.strip()
    assert "\n" not in message and message.startswith(str(data))
    assert {"truncated": "truncated LMDB database", "zero": "empty file",
            "garbage": "not a readable LMDB database"}[damage] in message
    verify = subprocess.run([sys.executable, "-m", "vclip_data_prep.build_lmdb", "--out", str(out), "--verify"],
                            capture_output=True, text=True, timeout=120)
    assert verify.returncode == 1 and "Traceback" not in verify.stderr
    assert str(data) in verify.stderr


def test_opening_a_database_checks_its_data_file_first_with_one_line_naming_it(tmp_path):
    from cn_clip_ext.lmdb.store import open_readonly, open_writable, put_all

    def refused(opener, folder: Path) -> str:
        with pytest.raises(UserError) as exc:
            opener(folder)
        return str(exc.value)

    data = tmp_path / "none" / "data.mdb"
    assert refused(open_readonly, tmp_path / "none") == f"{data}: no LMDB database (an unfinished or damaged build?)"
    for name, make in (("fifo", os.mkfifo), ("folder", os.mkdir)):
        (tmp_path / name).mkdir()
        make(tmp_path / name / "data.mdb")
        for opener in (open_readonly, open_writable):
            assert refused(opener, tmp_path / name) == \
                f"{tmp_path / name / 'data.mdb'}: not a regular file, so not an LMDB database", (name, opener)
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "data.mdb").write_bytes(b"")
    assert refused(open_readonly, tmp_path / "empty") == \
        f"{tmp_path / 'empty' / 'data.mdb'}: empty file, not an LMDB database; rebuild it"
    for folder in ("empty", "new"):  # to be written: an empty or missing data file is lmdb's to initialise
        env = open_writable(tmp_path / folder)
        put_all(env, [(b"k", folder.encode())])
        env.close()
        env = open_readonly(tmp_path / folder)
        with env.begin() as txn:
            assert txn.get(b"k") == folder.encode()
        env.close()


def test_the_audit_corpus_reader_uses_the_same_checked_opening(built, tmp_path):
    from cn_clip_ext.audit.corpus import LmdbSplitSource

    out = _copy(built, tmp_path)
    data = out / "train" / "imgs" / "data.mdb"
    os.truncate(data, data.stat().st_size // 2)
    with pytest.raises(UserError, match="truncated LMDB database"):
        LmdbSplitSource(out / "train")


# --------------------------------------------------------------------------- 5. paths mean what they say


def _path_corpus(tmp_path: Path) -> tuple[Path, list[dict]]:
    root = tmp_path / "syn"
    rows = make_synfundus(root, 8, seed=23)
    outside = tmp_path / "private.png"
    fundus_image(np.random.default_rng(4)).save(outside)
    (root / "Fundus" / "link.png").symlink_to(outside)
    rng = np.random.default_rng(5)
    extra = [dict(row_for(60, rng), file_name="../../private.png"),
             dict(row_for(61, rng), file_name=str(outside)),
             dict(row_for(62, rng), file_name="link.png"),
             dict(row_for(63, rng), file_name="./3.png"),
             dict(row_for(64, rng), file_name="sub/../4.png"),
             dict(row_for(65, rng), file_name=".//5.png")]
    write_csv(root / "SynFundus-1M_annotation.csv", rows + extra)
    return root, rows


def test_paths_leaving_the_root_are_rejected_and_spellings_of_one_file_are_one_image(tmp_path):
    root, rows = _path_corpus(tmp_path)
    out = tmp_path / "out"
    assert main(_args(root, out, "--shards", "2")) == 0
    names = []
    for shard in sorted(out.glob("shard-*")):
        names += [r["file_name"] for r in _splits(shard)]
        rejects = _rejects(shard)
        for name, why in (("../../private.png", "'..'"), (str(tmp_path / "private.png"), "absolute"),
                          ("link.png", "symlink")):
            if name in rejects:
                assert rejects[name][0] == "path_outside_root" and why in rejects[name][1]
        for name in ("./3.png", "sub/../4.png", ".//5.png"):
            if name in rejects:
                assert rejects[name][0] == "duplicate_file_name"
    assert sorted(names) == sorted(r["file_name"] for r in rows)  # each image once, in one shard and split
    all_rejects = {}
    for shard in sorted(out.glob("shard-*")):
        all_rejects.update(_rejects(shard))
    assert {k: v[0] for k, v in all_rejects.items()} == {
        "../../private.png": "path_outside_root", str(tmp_path / "private.png"): "path_outside_root",
        "link.png": "path_outside_root", "./3.png": "duplicate_file_name", "sub/../4.png": "duplicate_file_name",
        ".//5.png": "duplicate_file_name"}


def test_generic_csv_reaches_outside_its_root_only_with_the_flag(tmp_path, capsys):
    root, rows = _path_corpus(tmp_path)
    csv_path = root / "SynFundus-1M_annotation.csv"
    common = ["--csv", str(csv_path), "--image-root", str(root / "Fundus"), "--out"]
    assert main([*common, str(tmp_path / "strict"), "--workers", "1", "--no-progress"]) == 0
    assert {_rejects(tmp_path / "strict")[n][0] for n in ("../../private.png", "link.png")} == {"path_outside_root"}
    assert main([*common, str(tmp_path / "loose"), "--allow-outside-root", "--workers", "1", "--no-progress"]) == 0
    stored = {r["file_name"] for r in _splits(tmp_path / "loose")}
    assert {"../../private.png", str(tmp_path / "private.png"), "link.png"} <= stored
    assert main(_args(root, tmp_path / "x", "--allow-outside-root")) == 2  # ROOT mode: refused
    assert "--csv only" in _one_error(capsys)


# --------------------------------------------------------------------------- 6. messages never show file content


def test_no_message_shows_the_content_of_a_file_it_could_not_parse(corpus, built, tmp_path, capsys):
    alien = tmp_path / "alien.csv"
    alien.write_text(f"{SECRET},password\nx,y\n", encoding="utf-8")
    assert main(["--csv", str(alien), "--out", str(tmp_path / "o1"), "--no-progress"]) == 2
    line = _one_error(capsys)
    assert SECRET not in line and "missing required column" in line and str(alien) in line

    out = _copy(built, tmp_path)
    (out / "manifest.json").write_text(f"{{{SECRET}", encoding="utf-8")
    assert main(_args(corpus, out)) == 2
    line = _one_error(capsys)
    assert SECRET not in line and "manifest.json" in line

    class Hostile:
        def __reduce__(self):
            return (getattr(__import__("os"), "system"), (SECRET,))

    bad = _copy(built, tmp_path / "b")
    _put(bad / "train" / "pairs", b"0", pickle.dumps((0, 0, Hostile())).replace(b"posix", SECRET.encode()))
    _put(bad / "train" / "pairs", b"num_samples", SECRET.encode())
    with pytest.raises(UserError) as exc:
        LmdbPairDataset(bad / "train")
    assert SECRET not in str(exc.value) and "num_samples is not a count" in str(exc.value)
    report = verify_output(bad)
    assert report.problems and not any(SECRET in p for p in report.problems)


# --------------------------------------------------------------------------- 7. OS errors a user can cause


def test_output_that_is_a_file_or_under_a_file_is_one_line(corpus, tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert main(_args(corpus, blocker)) == 2
    assert str(blocker) in _one_error(capsys)
    assert main(_args(corpus, blocker / "sub")) == 2
    line = _one_error(capsys)
    assert str(blocker) in line and "choose another" in line
    assert blocker.read_text() == "x"


def test_permission_denied_is_one_line_with_what_to_do(corpus, tmp_path, capsys, monkeypatch):
    out = tmp_path / "ro"
    if os.geteuid() != 0:
        out.mkdir()
        out.chmod(0o555)
    else:  # root writes anywhere: make the first write in the folder fail as a read-only folder would
        def denied(folder, kind, **_):
            raise PermissionError(errno.EACCES, "Permission denied", str(Path(folder) / OWNER_FILE))
        monkeypatch.setattr(lmdb_writer, "write_owner_marker", denied)
    try:
        assert main(_args(corpus, out)) == 2
    finally:
        if out.exists():
            out.chmod(0o755)
    line = _one_error(capsys)
    assert str(out) in line and "permission denied" in line and "writable" in line


def test_disk_full_mid_build_is_one_line_and_the_rerun_resumes_to_the_same_build(corpus, tmp_path, capsys,
                                                                                   monkeypatch):
    ref = tmp_path / "ref"
    assert main(_args(corpus, ref, "--batch", "3")) == 0
    out = tmp_path / "out"
    real_put, calls = lmdb_writer.put_all, []

    def filling_disk(env, items):
        calls.append(1)
        if len(calls) > 9:  # a few blocks are in, then the disk fills up
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_put(env, items)

    monkeypatch.setattr(lmdb_writer, "put_all", filling_disk)
    assert main(_args(corpus, out, "--batch", "3")) == 2
    line = _one_error(capsys)
    assert "disk full" in line and str(out) in line and "resume" in line
    assert not (out / "manifest.json").exists() and (out / ".build").is_dir()
    monkeypatch.setattr(lmdb_writer, "put_all", real_put)
    assert main(_args(corpus, out, "--batch", "3")) == 0
    assert content_digest(out) == content_digest(ref) and verify_output(out).ok


def test_disk_full_while_writing_the_tables_is_resumable_too(corpus, tmp_path, capsys, monkeypatch):
    from cn_clip_ext.lmdb import tables

    out = tmp_path / "out"
    real = tables._write_json

    def full(path, obj):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    monkeypatch.setattr(tables, "_write_json", full)
    assert main(_args(corpus, out)) == 2
    assert "disk full" in _one_error(capsys)
    monkeypatch.setattr(tables, "_write_json", real)
    assert main(_args(corpus, out, "--verify")) == 0


# --------------------------------------------------------------------------- 8. invalid numbers at parse time


@pytest.mark.parametrize("argv, option", [
    (["--split", "nan:1:1"], "--split"), (["--split", "-1:1:1"], "--split"), (["--split", "inf:1:1"], "--split"),
    (["--size", "-1"], "--size"), (["--quality", "0"], "--quality"), (["--quality", "101"], "--quality"),
    (["--shards", "0"], "--shards"), (["--shard-index", "-1"], "--shard-index"), (["--batch", "0"], "--batch"),
    (["--workers", "-2"], "--workers"), (["--max-image-bytes", "0"], "--max-image-bytes"),
    (["--context-length", "-5"], "--context-length"),
])
def test_build_refuses_invalid_numbers_at_parse_time(corpus, tmp_path, capsys, argv, option):
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as exc:
        main(_args(corpus, out, *argv))
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert f"argument {option}:" in err and "Traceback" not in err
    assert not out.exists()


@pytest.mark.parametrize("argv, option", [
    (["--caption-noise", "nan"], "--caption-noise"), (["--low-quality-rate", "-0.1"], "--low-quality-rate"),
    (["--missing-eye-rate", "nan"], "--missing-eye-rate"), (["--patients", "-1"], "--patients"),
    (["--id-offset", "-1"], "--id-offset"), (["--seed", "-1"], "--seed"),
])
def test_synth_refuses_invalid_numbers_before_writing(tmp_path, capsys, argv, option):
    from vclip_data_prep.synth import main as synth_main

    out = tmp_path / "out"
    assert synth_main([str(out), *argv, "--no-progress"]) == 2
    assert option in _one_error(capsys, "vclip-synth")
    assert not out.exists()


# --------------------------------------------------------------------------- 9. hostile records


def _png_header(width: int, height: int) -> bytes:
    import struct
    import zlib

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    return b"\x89PNG\r\n\x1a\n" + struct.pack(">I", len(ihdr)) + chunk + struct.pack(">I", zlib.crc32(chunk))


def test_hostile_records_are_one_line_errors_naming_the_record(built, tmp_path):
    cases = {
        "pickle": (b"pairs", b"1", pickle.dumps((1, 1, type("X", (), {"__reduce__": lambda s: (os.system, ("true",))})())),
                   "record 1", "not a safe pair"),
        "base64": (b"imgs", b"1", b"***not base64***", "image 1", "not URL-safe base64"),
        "bomb": (b"imgs", b"1", base64.urlsafe_b64encode(_png_header(100_000, 100_000)), "image 1", "declares"),
    }
    for name, (db, key, value, where, verify_words) in cases.items():
        out = _copy(built, tmp_path / name)
        _put(out / "train" / db.decode(), key, value)
        ds = LmdbPairDataset(out / "train")
        with pytest.raises(UserError) as exc:
            ds[1]
        message = str(exc.value)
        assert "\n" not in message and where in message and str(out / "train" / db.decode() / "data.mdb") in message
        assert ds[0][0].shape[0] == 3  # the other records still read
        ds.close()
        report = verify_output(out)
        assert any(verify_words in p for p in report.problems), report.problems


def test_a_count_that_disagrees_with_the_records_is_refused(built, tmp_path):
    out = _copy(built, tmp_path)
    _put(out / "train" / "pairs", b"num_samples", b"999")
    with pytest.raises(UserError, match="num_samples says 999 but the database holds"):
        LmdbPairDataset(out / "train")
    assert any("num_samples is 999" in p for p in verify_output(out).problems)


def _logged(caplog) -> str:
    return "\n".join(r.getMessage() for r in caplog.records)


def test_verify_decodes_every_image_and_compares_the_recorded_digest(built, tmp_path, capsys, caplog):
    assert main(["--out", str(built), "--verify"]) == 0
    digest = capsys.readouterr().out.split()[0]
    assert digest == "sha256:" + json.loads((built / "manifest.json").read_text())["content_digest"]

    env = lmdb.open(str(built / "train" / "imgs"), readonly=True, lock=False)
    with env.begin() as txn:
        jpeg = base64.urlsafe_b64decode(txn.get(b"2"))
    env.close()
    corrupt = _copy(built, tmp_path / "corrupt")  # cut short: does not decode
    _put(corrupt / "train" / "imgs", b"2", base64.urlsafe_b64encode(jpeg[: len(jpeg) // 2]))
    assert main(["--out", str(corrupt), "--verify"]) == 1
    assert "Traceback" not in capsys.readouterr().err
    assert "image b'2' does not decode" in _logged(caplog)
    caplog.clear()

    flipped = _copy(built, tmp_path / "flipped")  # one byte of entropy data changed: decodes, digest differs
    data = bytearray(jpeg)
    data[len(data) - 40] ^= 0x01
    Image.open(io.BytesIO(bytes(data))).load()
    _put(flipped / "train" / "imgs", b"2", base64.urlsafe_b64encode(bytes(data)))
    assert main(["--out", str(flipped), "--verify"]) == 1
    assert "differs from the digest recorded by the build" in _logged(caplog)


# --------------------------------------------------------------------------- 10. empty results are never silent


def test_header_only_csv_and_unterminated_quote_are_one_line(tmp_path, capsys):
    root = tmp_path / "syn"
    (root / "Fundus").mkdir(parents=True)
    write_csv(root / "SynFundus-1M_annotation.csv", [])
    assert main(_args(root, tmp_path / "o1")) == 2
    assert "no data rows" in _one_error(capsys)
    rows = make_synfundus(root, 4, seed=24)
    text = (root / "SynFundus-1M_annotation.csv").read_text(encoding="utf-8")
    lines = text.splitlines(keepends=True)
    broken = lines[:3] + [lines[3].replace(",", ',"' + SECRET, 1)] + lines[4:]
    (root / "SynFundus-1M_annotation.csv").write_text("".join(broken), encoding="utf-8")
    assert main(_args(root, tmp_path / "o2")) == 2
    line = _one_error(capsys)
    assert "row 3: unterminated quote" in line and SECRET not in line
    assert len(rows) == 4


def test_a_folder_without_a_readable_image_is_an_error_and_its_lmdb_fails_verify(tmp_path, capsys, caplog):
    root = tmp_path / "syn"
    rows = make_synfundus(root, 5, seed=25)
    for r in rows:
        (root / "Fundus" / r["file_name"]).write_bytes(b"not an image")
    out = tmp_path / "out"
    assert main(_args(root, out)) == 2
    line = _one_error(capsys)
    assert "no sample was stored" in line and "all 5 rows rejected" in line
    assert main(_args(root, out)) == 2  # the finished (empty) build says so again
    _one_error(capsys)
    assert main(["--out", str(out), "--verify"]) == 1
    assert "holds no images" in _logged(caplog)


def test_an_empty_split_is_a_warning(corpus, tmp_path, caplog):
    out = tmp_path / "out"
    with caplog.at_level("WARNING"):
        assert main(_args(corpus, out, "--split", "1:0:1")) == 0
        LmdbPairDataset(out / "valid").close()
    assert any("no samples in the valid split" in r.getMessage() for r in caplog.records)
    assert any("the split holds no samples" in r.getMessage() for r in caplog.records)


# --------------------------------------------------------------------------- 11. small ones


def test_a_finished_build_rerun_reports_counts_in_split_order(corpus, tmp_path, caplog):
    out = tmp_path / "out"
    cfg = lmdb_writer.BuildConfig(lmdb_writer.InputSpec.synfundus(corpus), out, workers=1, progress=False)
    first = lmdb_writer.build_lmdb(cfg)[0]
    again = lmdb_writer.build_lmdb(cfg)[0]
    assert list(first.counts) == list(again.counts) == list(SPLITS) and dict(first.counts) == dict(again.counts)
    with caplog.at_level("INFO"):
        assert main(_args(corpus, tmp_path / "m")) == 0
        caplog.clear()
        assert main(_args(corpus, tmp_path / "m")) == 0
    summary = json.loads((tmp_path / "m" / "summary.json").read_text())
    expected = "/".join(str(summary["images"][s]) for s in SPLITS)
    assert any(f"train/valid/test {expected}," in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("module", ["vclip_data_prep.build_lmdb", "vclip_data_prep.synth"])
def test_help_shows_no_percent_escapes_and_no_doubled_defaults(module):
    done = subprocess.run([sys.executable, "-m", module, "--help"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0
    text = " ".join(done.stdout.split())
    assert "%%" not in text and "%(" not in text
    assert "(default: None)" not in text and "(default: False)" not in text
    import re

    for chunk in re.split(r"\s--?\w", text):
        assert chunk.count("default") <= 1, chunk
    assert COLUMNS[0] == "file_md5"
