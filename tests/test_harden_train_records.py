"""A hostile record in a real LMDB build stops vclip-train with one line naming the record and the
file, with and without DataLoader workers (the error crosses the worker process as that line),
never a traceback, and a pickle that would run code never runs."""
from __future__ import annotations

import base64
import os
import pickle
import shutil
import struct
import subprocess
import zlib
from pathlib import Path

import pytest

from cn_clip_ext.synth.generator import write_synfundus
from test_lmdb_fixtures import put_record as _put
from test_train_support import PYTHON, ROOT, TEST_MODEL, cpu_env, model_config_dir
from vclip_data_prep.build_lmdb import main as build_main

PROG = "vclip-train"
HOSTILE_KEY = b"5"


def _hostile_pickle(marker: Path) -> bytes:
    """A pickle whose loading runs ``touch marker`` (``os.system`` through ``__reduce__``)."""

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    return pickle.dumps(Payload())


def _png_bomb(side: int = 10_000) -> bytes:
    """A valid 1-bit greyscale PNG of ``side`` x ``side`` pixels (10^8 here): a few kilobytes that
    decode to hundreds of megabytes once converted to RGB."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    row = b"\x00" * (1 + (side + 7) // 8)  # filter byte + packed pixels
    pixels = zlib.compress(row * side, 9)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0))
            + chunk(b"IDAT", pixels) + chunk(b"IEND", b""))


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("records")
    write_synfundus(tmp / "syn", 12, seed=4, size=64, progress=False)
    out = tmp / "lmdb"
    assert build_main([str(tmp / "syn"), "--out", str(out), "--size", "64", "--split", "1:0:0", "--workers", "1",
                       "--no-progress"]) == 0
    return out


def test_the_hostile_pickle_really_runs_code_when_loaded_plainly(tmp_path):
    """The payload is no dummy: plain ``pickle.loads`` creates the marker (so its absence below means
    the reader never ran it)."""
    marker = tmp_path / "ran"
    pickle.loads(_hostile_pickle(marker))
    assert marker.exists()


# (environment, key, value maker, what the message must say after "<data.mdb>: ")
CASES = {
    "pickle-as-pair": ("pairs", HOSTILE_KEY, _hostile_pickle, "record 5: refusing to load a global"),
    "pickle-as-image": ("imgs", HOSTILE_KEY, lambda m: base64.urlsafe_b64encode(_hostile_pickle(m)),
                        "image 5 is not a recognised image"),
    "image-bomb": ("imgs", HOSTILE_KEY, lambda m: base64.urlsafe_b64encode(_png_bomb()),
                   "image 5 declares 10000 x 10000 pixels"),
    "count-beyond-records": ("pairs", b"num_samples", lambda m: b"20", "num_samples says 20 but the database holds 12"),
}


@pytest.mark.parametrize("workers", [1, 0])
@pytest.mark.parametrize("case", list(CASES))
def test_a_hostile_record_stops_training_with_one_line_naming_it(built, tmp_path, case, workers):
    env_name, key, make, words = CASES[case]
    data = tmp_path / "lmdb"
    shutil.copytree(built, data)
    marker = tmp_path / "pickle-ran"
    _put(data / "train" / env_name, key, make(marker))
    out = tmp_path / "run"
    proc = subprocess.run(
        [str(PYTHON), "-m", "vclip_train.train", "--preset", "tiny", "--model", TEST_MODEL,
         "--model-config-dir", str(model_config_dir(tmp_path)), "--data", str(data), "--output-dir", str(out),
         "--batch-size", "4", "--num-workers", str(workers), "--max-steps", "6", "--save-every", "1000",
         "--valid-every", "0", "--no-progress", "--no-plot", "--no-tensorboard", "--seed", "1"],
        capture_output=True, text=True, env=cpu_env(), cwd=ROOT, timeout=300)
    err = proc.stderr
    assert proc.returncode == 2, err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    last = [ln for ln in err.splitlines() if ln.strip()][-1]
    database = data / "train" / env_name / "data.mdb"
    assert last.startswith(f"{PROG}: error: {database}: {words}"), last
    assert sum(ln.startswith(f"{PROG}: error:") for ln in err.splitlines()) == 1, err[-3000:]
    assert not marker.exists()  # the hostile pickle never ran, in the main process or a worker
    assert not (out / "checkpoints" / "latest.pt").exists()
