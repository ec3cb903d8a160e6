"""Output folders: one writer at a time (a real second process is refused), and removal only of
what a command can prove it wrote."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from cn_clip_ext.errors import UserError
from cn_clip_ext.files import check_input_file
from cn_clip_ext.outputs import OWNER_FILE, output_lock, owner_kind, prove_owned, write_owner_marker

HOLD = textwrap.dedent("""
    import sys, time
    from cn_clip_ext.outputs import output_lock
    with output_lock(sys.argv[1], "test folder"):
        print("locked", flush=True)
        time.sleep(30)
""")


def test_a_second_process_is_refused_while_the_first_holds_the_lock(tmp_path: Path) -> None:
    folder = tmp_path / "out"
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(folder)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(UserError, match="another command is writing this test folder"):
            with output_lock(folder, "test folder"):
                pass
    finally:
        holder.kill()
        holder.wait()
    with output_lock(folder, "test folder") as held:  # a killed holder leaves no stale lock
        assert held == folder


def test_lock_on_a_file_is_one_line(tmp_path: Path) -> None:
    target = tmp_path / "file"
    target.write_text("x")
    with pytest.raises(UserError, match="exists and is not a folder"):
        with output_lock(target):
            pass


def test_prove_owned(tmp_path: Path) -> None:
    prove_owned(tmp_path / "missing", "bundle")  # nothing there: nothing to protect
    empty = tmp_path / "empty"
    empty.mkdir()
    prove_owned(empty, "bundle")
    foreign = tmp_path / "foreign"
    (foreign / "train").mkdir(parents=True)
    with pytest.raises(UserError, match="not a bundle written by this toolkit"):
        prove_owned(foreign, "bundle")
    write_owner_marker(foreign, "lmdb-build")
    assert owner_kind(foreign) == "lmdb-build"
    with pytest.raises(UserError, match="not a bundle"):
        prove_owned(foreign, "bundle")  # ours, but another kind of artefact
    prove_owned(foreign, "lmdb-build")
    (foreign / OWNER_FILE).write_text("{not json")
    assert owner_kind(foreign) is None


def test_check_input_file_refuses_special_files_at_once(tmp_path: Path) -> None:
    fifo = tmp_path / "image.png"
    os.mkfifo(fifo)
    with pytest.raises(UserError, match="is a FIFO"):
        check_input_file(fifo, "image")
    with pytest.raises(UserError, match="is a folder"):
        check_input_file(tmp_path, "image")
    with pytest.raises(UserError, match="is a device"):
        check_input_file("/dev/zero", "image")
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    with pytest.raises(UserError, match="empty file"):
        check_input_file(empty, "image")
    assert check_input_file(empty, "image", allow_empty=True) == 0
    with pytest.raises(UserError, match="is a FIFO"):
        check_input_file(fifo, "image", allow_empty=True)
    big = tmp_path / "big.png"
    big.write_bytes(b"x" * 2048)
    with pytest.raises(UserError, match="above the limit of 1024"):
        check_input_file(big, "image", max_bytes=1024)
    assert check_input_file(big, "image", max_bytes=None) == 2048
    with pytest.raises(UserError, match="not found"):
        check_input_file(tmp_path / "nope.png", "image")
