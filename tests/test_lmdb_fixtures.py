"""Small generated SynFundus-like corpora for the LMDB tests (helpers only, no tests here)."""
from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

COLUMNS = (
    "file_md5 file_name eyes_side is_abnormal is_amd is_aon is_crp is_dm is_dme dr_grade is_em is_gc is_md "
    "is_mh is_htr has_lesion is_pm is_rvo is_tessellated is_treated is_fundus is_macular_readable "
    "is_optic_disc_readable is_retinal_region_readable retinal_region_quality_score diagnosticAdvice"
).split()
LABELS = [c for c in COLUMNS if c not in ("file_md5", "file_name", "diagnosticAdvice")]
CAPTIONS = (
    "双眼眼底未见明显异常，建议定期复查。",
    "视网膜可见微血管瘤及点状出血，考虑糖尿病视网膜病变，建议内分泌科就诊。",
    "黄斑区可见玻璃膜疣，考虑年龄相关性黄斑变性，建议眼科随访。",
    "视盘边界清，杯盘比约0.6，建议排除青光眼。",
    "豹纹状眼底，高度近视改变，建议定期检查。",
)


def fundus_image(rng: np.random.Generator, size: int = 48) -> Image.Image:
    """A bright disc on black with noise: the look of a fundus photograph."""
    yy, xx = np.mgrid[:size, :size]
    r = size / 2
    disc = (yy - r + 0.5) ** 2 + (xx - r + 0.5) ** 2 < (0.46 * size) ** 2
    base = np.array([190, 90, 40]) + rng.integers(-30, 30, 3)
    arr = base + rng.normal(0, 18, (size, size, 3))
    arr = np.clip(arr, 0, 255).astype(np.uint8)
    arr[~disc] = 0
    return Image.fromarray(arr, "RGB")


def row_for(i: int, rng: np.random.Generator, caption: str | None = None) -> dict[str, str]:
    row = {c: str(int(rng.integers(0, 2))) for c in LABELS}
    row.update(file_md5=f"{i:032x}", file_name=f"{i}.png", eyes_side=rng.choice(["left", "right"]),
               dr_grade=str(int(rng.integers(0, 5))),
               retinal_region_quality_score=str(int(rng.integers(1, 6))),
               diagnosticAdvice=caption if caption is not None else CAPTIONS[int(rng.integers(len(CAPTIONS)))])
    return row


def write_csv(path: Path, rows: list[dict[str, str]], encoding: str = "utf-8",
              columns: tuple[str, ...] | list[str] = COLUMNS) -> None:
    with open(path, "w", encoding=encoding, newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(columns), extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)


def make_synfundus(root: Path, n: int, seed: int = 0, size: int = 48, encoding: str = "utf-8") -> list[dict]:
    """Write ``root/Fundus/{i}.png`` and ``root/SynFundus-1M_annotation.csv``; returns the rows."""
    rng = np.random.default_rng(seed)
    (root / "Fundus").mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        fundus_image(rng, size).save(root / "Fundus" / f"{i}.png")
        rows.append(row_for(i, rng))
    write_csv(root / "SynFundus-1M_annotation.csv", rows, encoding)
    return rows


def kill_build_midway(args: list[str], out: Path, after_row: int, timeout: float = 120) -> Any:
    """Run ``vclip-build-lmdb ARGS`` (writing to ``out``) in a subprocess, throttled, and SIGKILL its process
    group, workers included, like ``kill -9``, once its journal has passed ``after_row``; the journal cursor then."""
    import pytest

    from cn_clip_ext.lmdb.journal import read_cursor
    from cn_clip_ext.lmdb.writer import THROTTLE_ENV

    proc = subprocess.Popen([sys.executable, "-m", "vclip_data_prep.build_lmdb", *args],
                            env={**os.environ, THROTTLE_ENV: "0.2"}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            cursor = read_cursor(out) if (out / ".build").exists() else None
            if cursor is not None and cursor.next_row > after_row:
                break
            assert proc.poll() is None, "the build ended before it could be killed"
            time.sleep(0.02)
        else:
            pytest.fail("the build made no progress")
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    return cursor


def put_record(db: Path, key: bytes, value: bytes) -> None:
    """Write one raw ``key -> value`` into the LMDB environment ``db`` (to corrupt a built copy)."""
    import lmdb

    env = lmdb.open(str(db), map_size=64 << 20)
    with env.begin(write=True) as txn:
        txn.put(key, value)
    env.close()
