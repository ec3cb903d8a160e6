"""The restricted unpickler refuses hostile LMDB records; the reader never runs their code."""
from __future__ import annotations

import os
import pickle
from pathlib import Path

import lmdb
import pytest

from cn_clip_ext.lmdb.digest import verify_output
from cn_clip_ext.lmdb.reader import LmdbPairDataset, UnsafeRecordError, safe_loads_pair
from cn_clip_ext.lmdb.writer import BuildConfig, build_lmdb
from cn_clip_ext.lmdb.splits import SplitRatios
from cn_clip_ext.lmdb.rows import InputSpec
from test_lmdb_fixtures import make_synfundus


class _Exploit:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_plain_pairs_load():
    assert safe_loads_pair(pickle.dumps((3, 3, "视网膜"))) == (3, 3, "视网膜")
    assert safe_loads_pair(pickle.dumps(("a", 7, "x"), protocol=2)).image_id == "a"


@pytest.mark.parametrize("payload", [[1, 2, "x"], {"a": 1}, (1, 2, 3.5), (1, 2, b"x"), (1, 2), (1, 2, "x", 4),
                                     (1, (2, [3]), "x"), (True, 1, "x")])
def test_non_pair_shapes_are_refused(payload):
    with pytest.raises(UnsafeRecordError):
        safe_loads_pair(pickle.dumps(payload))


def test_malicious_record_is_refused_without_running_code(tmp_path):
    marker = tmp_path / "pwned"
    evil = pickle.dumps((0, 0, _Exploit(marker)))
    with pytest.raises(UnsafeRecordError, match="posix.system|os.system|refusing"):
        safe_loads_pair(evil)
    assert not marker.exists()

    make_synfundus(tmp_path / "syn", 6, seed=13)
    out = tmp_path / "out"
    build_lmdb(BuildConfig(InputSpec.synfundus(tmp_path / "syn"), out, ratios=SplitRatios(1, 0, 0), workers=1,
                           progress=False))
    env = lmdb.open(str(out / "train" / "pairs"))
    with env.begin(write=True) as txn:
        txn.put(b"0", evil)
    env.close()
    ds = LmdbPairDataset(out / "train")
    with pytest.raises(UnsafeRecordError):
        ds[0]
    assert ds.record(1).text  # other records still read
    ds.close()
    report = verify_output(out)
    assert not report.ok and any("not a safe pair" in p for p in report.problems)
    assert not marker.exists()
