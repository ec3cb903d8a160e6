"""Benchmark vclip-audit (not a test): feature extraction rate, search throughput and memory at 100k.

Stages, each in a fresh subprocess so its peak memory is its own:

* ``features``: the corpus streaming pass (decode, FOV circle fit, 512-bit hash, and the vessel
  descriptor) over ``--images`` generated SynFundus PNGs at ``--size`` px, with ``--workers``
  processes; reported as images/s for hashes only and for hashes + descriptor;
* ``search``: chunked exact search of ``--queries`` evaluation images x 7 query rotations against
  ``--corpus`` corpus rows: Hamming top-5 over 512-bit codes, and cosine top-5 over float16
  embeddings (the vessel descriptor's 2304-d and a RN50-sized 1024-d), read from ``.npy`` memory
  maps like the cache. The corpus rows are synthetic (random codes and unit vectors): a flat
  search costs the same whatever the values.

Peak memory: ``ru_maxrss`` (includes the memory-mapped cache pages the process touched, which
the kernel can drop) and the sampled peak of anonymous memory (``RssAnon``, what the process
really holds).

    .venv/bin/python bench/bench_audit.py --images 600 --corpus 100000 --queries 1000
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from results import write_section



class AnonPeak:
    """Samples ``RssAnon`` of this process every 20 ms."""

    def __init__(self):
        self.peak, self._stop = 0, threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _read(self) -> int:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("RssAnon:"):
                    return int(line.split()[1]) * 1024
        return 0

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._read())
            time.sleep(0.02)

    def __enter__(self):
        self.base = self._read()
        self._t.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()
        self.peak = max(self.peak, self._read())


def _mib(n: float) -> float:
    return round(n / 2 ** 20, 1)


def stage_features(args) -> dict:
    from cn_clip_ext.audit import VesselEncoder, corpus_features, open_corpus
    from cn_clip_ext.synth.generator import write_synfundus

    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        write_synfundus(tmp, args.images, seed=0, size=args.size, workers=args.workers, progress=False)
        gen = time.perf_counter() - t
        src = open_corpus(Path(tmp) / "Fundus")
        out = {"images": len(src), "size": args.size, "workers": args.workers, "generate_s": round(gen, 1)}
        with AnonPeak() as mem:
            for label, enc in (("hash", None), ("hash+vessel", VesselEncoder())):
                t = time.perf_counter()
                corpus_features(src, enc, Path(tmp) / f"cache-{label}", batch_size=32, workers=args.workers,
                                progress=False)
                dt = time.perf_counter() - t
                out[f"{label}_img_per_s"] = round(len(src) / dt, 1)
        out["peak_anon_mib"] = _mib(mem.peak)
        out["ru_maxrss_mib"] = _mib(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
        return out


def stage_search(args) -> dict:
    from cn_clip_ext.audit import search_rotated
    from cn_clip_ext.audit.hashing import QUERY_ROTATIONS

    rng = np.random.default_rng(0)
    r = len(QUERY_ROTATIONS)
    out = {"corpus": args.corpus, "queries": args.queries, "rotations": r, "k": 5, "chunk": args.chunk}
    with tempfile.TemporaryDirectory() as tmp:
        codes = np.lib.format.open_memmap(Path(tmp) / "hashes.npy", "w+", np.uint8, (args.corpus, 64))
        for s in range(0, args.corpus, 50000):
            codes[s:s + 50000] = rng.integers(0, 256, (min(50000, args.corpus - s), 64), dtype=np.uint8)
        codes.flush()
        del codes
        codes = np.load(Path(tmp) / "hashes.npy", mmap_mode="r")
        q = rng.integers(0, 256, (args.queries, r, 64), dtype=np.uint8)
        with AnonPeak() as mem:
            t = time.perf_counter()
            search_rotated(q, codes, 5, binary=True, chunk=args.chunk)
            dt = time.perf_counter() - t
        out["hash"] = {"s": round(dt, 2), "query_images_per_s": round(args.queries / dt, 1),
                       "corpus_rows_x_queries_per_s": f"{args.corpus * args.queries * r / dt:.3g}",
                       "peak_anon_delta_mib": _mib(mem.peak - mem.base)}
        for dim in (2304, 1024):
            path = Path(tmp) / f"emb{dim}.npy"
            emb = np.lib.format.open_memmap(path, "w+", np.float16, (args.corpus, dim))
            for s in range(0, args.corpus, 20000):
                x = rng.normal(size=(min(20000, args.corpus - s), dim)).astype(np.float32)
                emb[s:s + len(x)] = x / np.linalg.norm(x, axis=1, keepdims=True)
            emb.flush()
            del emb
            emb = np.load(path, mmap_mode="r")
            qe = rng.normal(size=(args.queries, r, dim)).astype(np.float32)
            qe /= np.linalg.norm(qe, axis=2, keepdims=True)
            with AnonPeak() as mem:
                t = time.perf_counter()
                search_rotated(qe, emb, 5, binary=False, chunk=args.chunk)
                dt = time.perf_counter() - t
            out[f"cosine_{dim}d"] = {"s": round(dt, 2), "query_images_per_s": round(args.queries / dt, 1),
                                     "cache_file_mib": _mib(path.stat().st_size),
                                     "peak_anon_delta_mib": _mib(mem.peak - mem.base)}
            del emb
    out["ru_maxrss_mib"] = _mib(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    return out


def _child(stage: str, argv: list[str]) -> dict:
    res = subprocess.run([sys.executable, __file__, "--stage", stage, *argv], capture_output=True, text=True,
                         check=True)
    return json.loads(res.stdout.strip().splitlines()[-1])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=600, help="generated images for the features stage")
    p.add_argument("--size", type=int, default=512, help="their side in pixels (SynFundus: 512)")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--corpus", type=int, default=100_000, help="corpus rows for the search stage")
    p.add_argument("--queries", type=int, default=1000, help="evaluation images (x 7 rotations)")
    p.add_argument("--chunk", type=int, default=65536)
    p.add_argument("--stage", choices=["features", "search"], help=argparse.SUPPRESS)
    p.add_argument("--no-write", action="store_true", help="do not update bench/RESULTS.md")
    args = p.parse_args()
    if args.stage:
        print(json.dumps(stage_features(args) if args.stage == "features" else stage_search(args)))
        return 0
    argv = [a for a in sys.argv[1:] if a != "--no-write"]
    load0 = os.getloadavg()[0]
    t = time.perf_counter()
    base = json.loads(subprocess.run([sys.executable, "-c", "import json,resource,cn_clip_ext.audit;"
                                      "print(json.dumps(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss))"],
                                     capture_output=True, text=True, check=True).stdout)
    feats = _child("features", argv)
    search = _child("search", argv)
    total = time.perf_counter() - t
    load1 = os.getloadavg()[0]
    print(json.dumps({"import_maxrss_kib": base, "features": feats, "search": search}, indent=1))
    cmd = "`.venv/bin/python bench/bench_audit.py " + " ".join(argv) + "`" if argv else \
        "`.venv/bin/python bench/bench_audit.py`"
    h, c1, c2 = search["hash"], search["cosine_2304d"], search["cosine_1024d"]
    text = f"""## Leakage audit throughput and memory (`bench/bench_audit.py`)

{cmd} ({total:.0f} s). Machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, \
load average {load0:.1f} at the start and {load1:.1f} at the end (shared box: rates are depressed and noisy). \
faiss-cpu {__import__('faiss').__version__}.

| measure | value |
|---|---|
| corpus pass, hashes only ({feats['images']} generated {feats['size']}-px PNGs, {feats['workers']} workers) | \
{feats['hash_img_per_s']} images/s |
| corpus pass, hashes + vessel descriptor (one decode) | {feats['hash+vessel_img_per_s']} images/s |
| corpus pass peak memory: anonymous / ru_maxrss (importing alone: {_mib(base * 1024)} MiB ru_maxrss) | \
{feats['peak_anon_mib']} / {feats['ru_maxrss_mib']} MiB |
| hash search: {search['queries']} evaluation images x {search['rotations']} rotations vs {search['corpus']:,} \
codes (512 bits), top-5 | {h['s']} s ({h['query_images_per_s']} images/s; {h['corpus_rows_x_queries_per_s']} \
code comparisons/s) |
| embedding search, 2304-d vessel descriptor (float16 cache {c1['cache_file_mib']} MiB), same queries | \
{c1['s']} s ({c1['query_images_per_s']} images/s) |
| embedding search, 1024-d (RN50 size, cache {c2['cache_file_mib']} MiB), same queries | \
{c2['s']} s ({c2['query_images_per_s']} images/s) |
| search peak extra anonymous memory: hash / 2304-d / 1024-d (chunk {search['chunk']} rows, at most 256 MiB \
of float32 per embedding chunk) | \
{h['peak_anon_delta_mib']} / {c1['peak_anon_delta_mib']} / {c2['peak_anon_delta_mib']} MiB |
| search stage ru_maxrss (includes the touched pages of the memory-mapped caches) | {search['ru_maxrss_mib']} MiB |

What is measured: the features stage runs the real streaming pass (`corpus_features`, writing the `.npy` \
cache) on generated images; the search stage uses synthetic random codes and unit vectors of the real \
shapes and dtypes in `.npy` memory maps (a flat exact search costs the same whatever the values). \
Search memory is bounded by the chunk (rows x dim x 4 bytes for the float32 copy of a chunk, plus faiss's \
result buffers), not by the corpus size; the time is linear in corpus rows, so 1M rows take about 10x the \
100k figures. At 1M images the cache holds 61 MiB of hashes and 4.4 GiB (vessel, float16) or 2 GiB \
(1024-d model) of embeddings on disk.
"""
    if not args.no_write:
        write_section("audit-bench", text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
