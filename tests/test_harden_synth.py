"""vclip-synth writes only where it may: an empty folder or one it wrote before (its owner marker),
one run at a time (the folder's lock), and never a byte of a folder that another command or a
colleague wrote. Every refusal is one line, exit status 2, and leaves the folder as it was."""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from cn_clip_ext.evaluation.report import REPORT_KIND
from cn_clip_ext.layouts import SYNFUNDUS_CSV, SYNFUNDUS_IMAGE_DIR
from cn_clip_ext.outputs import LOCK_FILE, OWNER_FILE, owner_kind, write_owner_marker
from cn_clip_ext.synth.generator import OWNER_KIND
from vclip_data_prep.build_lmdb import main as build_main
from vclip_data_prep.synth import main

PROG = "vclip-synth"
TINY = ["--n-images", "4", "--n-eval", "3", "--size", "64", "--no-progress"]


def _tree(folder: Path) -> dict[str, str]:
    """Every entry under ``folder`` (hidden ones too): a file's SHA-256, a link's target, ``dir``."""
    out = {}
    for path in sorted(folder.rglob("*")):
        rel = str(path.relative_to(folder))
        if path.is_symlink():
            out[rel] = f"link:{os.readlink(path)}"
        elif path.is_dir():
            out[rel] = "dir"
        else:
            out[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def _one_error(err: str) -> str:
    """The single line of a refused run: nothing else on stderr, no traceback."""
    assert "Traceback" not in err, err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"{PROG}: error: "), err
    return lines[0]


def _colleague(tmp_path: Path) -> Path:
    """A colleague's folder in the SynFundus layout: real-looking names, their own bytes."""
    folder = tmp_path / "colleague"
    (folder / SYNFUNDUS_IMAGE_DIR).mkdir(parents=True)
    (folder / SYNFUNDUS_IMAGE_DIR / "1000.png").write_bytes(b"a week of grading")
    (folder / SYNFUNDUS_CSV).write_text("file_name,diagnosticAdvice\n1000.png,their own caption\n", encoding="utf-8")
    return folder


def test_rerun_into_its_own_folder_rewrites_the_same_bytes_and_keeps_other_files(tmp_path, capsys):
    out = tmp_path / "data"
    assert main([str(out), *TINY]) == 0
    assert owner_kind(out) == OWNER_KIND == "synthetic-data"
    assert not (out / LOCK_FILE).exists() and not list(out.glob(".vclip-synth-*"))
    first = _tree(out)
    (out / "notes.txt").write_text("mine", encoding="utf-8")  # a user's file beside the data
    assert main([str(out), *TINY]) == 0
    assert _tree(out) == {**first, "notes.txt": hashlib.sha256(b"mine").hexdigest()}

    # a changed run (the demo re-runs the stage when its settings change) also writes into its own folder
    assert main([str(out), "--n-images", "6", "--no-eval", "--size", "64", "--no-progress"]) == 0
    assert len(pd.read_csv(out / SYNFUNDUS_CSV)) == 6
    assert (out / "notes.txt").read_text(encoding="utf-8") == "mine"
    assert "error" not in capsys.readouterr().err


def test_a_colleagues_folder_is_refused_and_not_a_byte_changes(tmp_path, capsys):
    folder = _colleague(tmp_path)
    before = _tree(folder)
    assert main([str(folder), *TINY]) == 2
    line = _one_error(capsys.readouterr().err)
    assert str(folder) in line and "holds no synthetic data" in line and OWNER_FILE in line
    assert _tree(folder) == before  # no image, no marker, no lock file left behind


def test_another_commands_output_is_refused_untouched(tmp_path, capsys):
    # a real LMDB build folder (vclip-build-lmdb's own marker) ...
    corpus = tmp_path / "corpus"
    assert main([str(corpus), "--n-images", "4", "--no-eval", "--size", "64", "--no-progress"]) == 0
    lmdb = tmp_path / "lmdb"
    assert build_main([str(corpus), "--out", str(lmdb), "--size", "48", "--workers", "1", "--no-progress"]) == 0
    capsys.readouterr()
    # ... and an evaluation report folder (the kind vclip-eval --out records)
    report = tmp_path / "eval"
    report.mkdir()
    (report / "report.json").write_text(json.dumps({"results": {}}), encoding="utf-8")
    write_owner_marker(report, REPORT_KIND)
    for folder, kind in ((lmdb, "lmdb-build"), (report, REPORT_KIND)):
        before = _tree(folder)
        assert main([str(folder), *TINY]) == 2
        line = _one_error(capsys.readouterr().err)
        assert line.startswith(f"{PROG}: error: {folder}: holds a {kind} written by another command"), line
        assert _tree(folder) == before


def test_a_subfolder_it_would_write_that_another_command_owns_or_a_link_is_refused(tmp_path, capsys):
    out = tmp_path / "data"
    assert main([str(out), *TINY]) == 0
    (out / "fives").rename(tmp_path / "old_fives")
    report = out / "fives"  # vclip-eval --out data/fives
    report.mkdir()
    (report / "report.json").write_text("{}", encoding="utf-8")
    write_owner_marker(report, REPORT_KIND)
    before = _tree(out)
    assert main([str(out), *TINY]) == 2
    line = _one_error(capsys.readouterr().err)
    assert line.startswith(f"{PROG}: error: {report}: holds a {REPORT_KIND} written by another command"), line
    assert _tree(out) == before

    # the image folder a link into a colleague's folder: writes would land there
    colleague = _colleague(tmp_path)
    theirs = _tree(colleague)
    (report / OWNER_FILE).unlink()
    (report / "report.json").unlink()
    report.rmdir()
    (tmp_path / "old_fives").rename(out / "fives")
    mine = out / SYNFUNDUS_IMAGE_DIR
    mine.rename(tmp_path / "old_fundus")
    mine.symlink_to(colleague / SYNFUNDUS_IMAGE_DIR, target_is_directory=True)
    before = _tree(out)
    assert main([str(out), *TINY]) == 2
    line = _one_error(capsys.readouterr().err)
    assert line.startswith(f"{PROG}: error: {mine}: is a symbolic link"), line
    assert _tree(out) == before and _tree(colleague) == theirs


HOLD_LOCK = """
import sys
from cn_clip_ext.outputs import output_lock
with output_lock(sys.argv[1], "folder"):
    print("held", flush=True)
    sys.stdin.read()
"""


def test_a_folder_locked_by_another_process_is_refused_in_one_line(tmp_path, capsys):
    out = tmp_path / "data"
    assert main([str(out), *TINY]) == 0
    capsys.readouterr()
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(out)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        before = _tree(out)
        assert main([str(out), "--n-images", "5", "--no-eval", "--size", "64", "--no-progress"]) == 2
        line = _one_error(capsys.readouterr().err)
        assert line == (f"{PROG}: error: {out}: another command is writing this synthetic data folder now; "
                        "wait for it to finish or choose another folder")
        assert _tree(out) == before
    finally:
        holder.communicate("", timeout=60)
    assert holder.returncode == 0
    assert main([str(out), "--n-images", "5", "--no-eval", "--size", "64", "--no-progress"]) == 0  # free again


def test_two_runs_at_once_the_second_is_refused_and_the_first_is_whole(tmp_path):
    out = tmp_path / "data"
    n = 400
    cmd = [sys.executable, "-m", "vclip_data_prep.synth", str(out), "--no-eval", "--size", "64", "--no-progress"]
    first = subprocess.Popen([*cmd, "--n-images", str(n)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                             text=True)
    try:
        deadline = time.monotonic() + 120
        while not list(out.glob(".vclip-synth-*")):  # the first holds the lock and is writing by now
            assert first.poll() is None and time.monotonic() < deadline
            time.sleep(0.02)
        second = subprocess.run([*cmd, "--n-images", "3", "--seed", "1"], capture_output=True, text=True,
                                timeout=120)
        assert first.poll() is None  # really concurrent: the first was still writing
        assert second.returncode == 2
        line = _one_error(second.stderr)
        assert line.startswith(f"{PROG}: error: {out}: another command is writing this synthetic data folder"), line
        assert first.wait(timeout=180) == 0, first.stderr.read()
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    # the first run's corpus is whole and its own: every listed image there, with the bytes its CSV records
    table = pd.read_csv(out / SYNFUNDUS_CSV)
    assert len(table) == n
    images = sorted(p.name for p in (out / SYNFUNDUS_IMAGE_DIR).iterdir())
    assert images == sorted(table["file_name"])
    assert all(hashlib.md5((out / SYNFUNDUS_IMAGE_DIR / name).read_bytes()).hexdigest() == md5
               for name, md5 in zip(table["file_name"], table["file_md5"]))
    assert owner_kind(out) == OWNER_KIND and not (out / LOCK_FILE).exists()


@pytest.mark.parametrize("flags", [["--no-corpus", "--no-eval"], ["--n-images", "0", "--n-eval", "0"]])
def test_nothing_to_write_claims_nothing(tmp_path, caplog, flags):
    folder = _colleague(tmp_path)
    before = _tree(folder)
    assert main([str(folder), *flags, "--no-progress"]) == 0
    assert any("nothing to write" in r.getMessage() for r in caplog.records)
    assert _tree(folder) == before
