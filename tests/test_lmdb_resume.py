"""Resume: a build killed with SIGKILL mid-way and run again equals an uninterrupted build."""
from __future__ import annotations

from pathlib import Path

import pytest

from cn_clip_ext.lmdb.digest import content_digest, verify_output
from cn_clip_ext.lmdb.journal import read_cursor
from test_lmdb_fixtures import kill_build_midway, make_synfundus
from vclip_data_prep.build_lmdb import main

ROWS, BATCH = 48, 4


def _args(root: Path, out: Path) -> list[str]:
    return [str(root), "--out", str(out), "--batch", str(BATCH), "--workers", "2", "--no-progress"]


def _start_and_kill(root: Path, out: Path, kill_after_row: int) -> int:
    """Run the real program in a subprocess, SIGKILL it mid-build; the cursor row."""
    return kill_build_midway(_args(root, out), out, kill_after_row).next_row


def test_killed_build_resumes_to_identical_digest(tmp_path, capsys):
    root = tmp_path / "syn"
    make_synfundus(root, ROWS, seed=11)
    assert main([*_args(root, tmp_path / "whole"), "--verify"]) == 0
    whole = capsys.readouterr().out.split()[0]
    assert whole == "sha256:" + content_digest(tmp_path / "whole")

    out = tmp_path / "resumed"
    first = _start_and_kill(root, out, kill_after_row=BATCH * 2)
    assert 1 < first <= ROWS and not (out / "manifest.json").exists()  # really stopped part-way
    second = _start_and_kill(root, out, kill_after_row=first + BATCH)  # killed again, later on
    assert second > first and not (out / "manifest.json").exists()
    assert main([*_args(root, out), "--verify"]) == 0
    assert capsys.readouterr().out.split()[0] == whole
    assert not (out / ".build").exists() and verify_output(out).ok

    # running the finished build again is a no-op with the same digest
    assert main([*_args(root, out), "--verify"]) == 0
    assert capsys.readouterr().out.split()[0] == whole


def test_crash_between_data_and_journal_commit_replays_identically(tmp_path, monkeypatch):
    """The worst moment: a block's images and pairs are in, its journal entry is not."""
    from cn_clip_ext.lmdb import journal as lmdb_journal
    from cn_clip_ext.lmdb.writer import BuildConfig, build_lmdb
    from cn_clip_ext.lmdb.rows import InputSpec

    root = tmp_path / "syn"
    make_synfundus(root, 20, seed=12)

    def cfg(out):
        return BuildConfig(InputSpec.synfundus(root), out, workers=1, batch_rows=3, progress=False)

    build_lmdb(cfg(tmp_path / "whole"))
    real_commit, calls = lmdb_journal.Journal.commit, []

    def crashing_commit(self, outcomes, cursor):
        calls.append(cursor.next_row)
        if len(calls) == 4:
            raise RuntimeError("simulated crash after the data commit")
        real_commit(self, outcomes, cursor)

    monkeypatch.setattr(lmdb_journal.Journal, "commit", crashing_commit)
    with pytest.raises(RuntimeError, match="simulated crash"):
        build_lmdb(cfg(tmp_path / "resumed"))
    monkeypatch.setattr(lmdb_journal.Journal, "commit", real_commit)
    assert read_cursor(tmp_path / "resumed").next_row == calls[2]  # three blocks recorded, the 4th's data in
    [result] = build_lmdb(cfg(tmp_path / "resumed"))
    assert result.resumed_from_row == calls[2]
    assert content_digest(tmp_path / "resumed") == content_digest(tmp_path / "whole")
