"""Benchmark: our LMDB build and reader vs Chinese-CLIP's own TSV/JSONL -> LMDB path.

    .venv/bin/python bench/bench_lmdb.py --n 2000                 # (a)-(d) on 2,000 512x512 PNGs
    .venv/bin/python bench/bench_lmdb.py --n 0 --rows 1000000     # (d) streaming memory, 1M rows

(a) build rate, end to end from the SynFundus layout: ``vclip-build-lmdb`` (decodes, checks,
    resizes and re-encodes every image) vs cn_clip's path (write ``{split}_imgs.tsv`` of base64
    file bytes and ``{split}_texts.jsonl``, then run ``cn_clip.preprocess.build_lmdb_dataset``);
(b) DataLoader samples/s (2 workers, batch 32): our reader on our LMDB vs
    ``cn_clip.training.data.LMDBDataset`` on cn_clip's, each with its training transform. Ours
    yields ``uint8`` geometry-only samples; its colour jitter and normalisation run per batch on the
    training device (``train_transform(...).batch_transform``), so a second row also times that
    batch step in the loading process on the CPU, the case with no GPU. Our LMDB is read as built
    (``--size 256``) and built again at the paper model's input size (``--size 224``);
(c) bytes on disk of both LMDB sets;
(d) peak RSS of the build (its main process and its largest worker).

``--rows N`` builds an N-row SynFundus annotation CSV whose images are hard links to a pool of
64 tiny PNGs, and runs the full build on it: every row is read, checked, split, decoded,
re-encoded, written and tabulated, so the main process's peak RSS shows the streaming design's
memory for a 1M-row release (the image bytes per row are tiny, so it measures the per-row state,
not image buffers, which are bounded by the blocks in flight). Results go to stdout and to the
LMDB section of bench/RESULTS.md.
"""
from __future__ import annotations

import argparse
import functools
import base64
import json
import multiprocessing as mp
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
from test_lmdb_fixtures import COLUMNS, row_for, write_csv  # noqa: E402

from results import write_section  # noqa: E402  (bench/ is on the path of a script run from it)
CAPTION = "Fundus/{}"
WRAPPER = (
    "import json, resource, sys, time\n"
    "t = time.perf_counter()\n"
    "from vclip_data_prep.build_lmdb import main\n"
    "t_import = time.perf_counter() - t\n"
    "rc = main(sys.argv[1:])\n"
    "self_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
    "kids_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss\n"
    "print(json.dumps({'rc': rc, 'import_s': t_import, 'self_kb': self_kb, 'children_kb': kids_kb}))\n"
)


# --- data -----------------------------------------------------------------------------------------

def _noisy_fundus(args: tuple[int, int, str]) -> None:
    i, size, folder = args
    rng = np.random.default_rng(i)
    yy, xx = np.mgrid[:size, :size]
    r = size / 2
    disc = (yy - r) ** 2 + (xx - r) ** 2 < (0.47 * size) ** 2
    base = np.array([185, 85, 35]) + rng.integers(-25, 25, 3)
    shade = 1 - 0.35 * np.sqrt((yy - r) ** 2 + (xx - r) ** 2)[..., None] / r
    arr = np.clip(base * shade + rng.normal(0, 14, (size, size, 3)), 0, 255).astype(np.uint8)
    arr[~disc] = 0
    Image.fromarray(arr, "RGB").save(Path(folder) / f"{i}.png")


def make_corpus(root: Path, n: int, size: int, workers: int) -> None:
    """``n`` noisy ``size``-px PNGs in the SynFundus layout (reused when already there)."""
    marker = root / f".complete-{n}-{size}"
    if marker.exists():
        return
    (root / "Fundus").mkdir(parents=True, exist_ok=True)
    with mp.Pool(workers) as pool:
        pool.map(_noisy_fundus, [(i, size, str(root / "Fundus")) for i in range(n)], chunksize=16)
    rng = np.random.default_rng(0)
    write_csv(root / "SynFundus-1M_annotation.csv", [row_for(i, rng) for i in range(n)])
    marker.touch()


def make_big_csv(root: Path, rows: int) -> None:
    """``rows`` CSV rows; each image a hard link to one of 64 tiny PNGs (no real image payload)."""
    marker = root / f".complete-{rows}"
    if marker.exists():
        return
    pool = root / "pool"
    fundus = root / "Fundus"
    pool.mkdir(parents=True, exist_ok=True)
    fundus.mkdir(exist_ok=True)
    for i in range(64):
        _noisy_fundus((i, 24, str(pool)))
    existing = {p.name for p in os.scandir(fundus)}
    for i in range(rows):
        name = f"{i}.png"
        if name not in existing:
            os.link(pool / f"{i % 64}.png", fundus / name)
    rng = np.random.default_rng(0)

    def stream():
        for i in range(rows):
            yield row_for(i, rng)

    import csv

    with open(root / "SynFundus-1M_annotation.csv", "w", encoding="utf-8", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(COLUMNS))
        w.writeheader()
        w.writerows(stream())
    marker.touch()


# --- (a) builds -----------------------------------------------------------------------------------

def run_ours(root: Path, out: Path, extra: list[str]) -> dict:
    import shutil

    shutil.rmtree(out, ignore_errors=True)
    t = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", WRAPPER, str(root), "--out", str(out), "--no-progress", *extra],
                          capture_output=True, text=True, check=True)
    wall = time.perf_counter() - t
    stats = json.loads(proc.stdout.strip().splitlines()[-1])
    summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    return {"wall_s": wall, "build_s": wall - stats["import_s"], **stats,
            "images": sum(summary["images"].values()), "rejected": summary["rejected"]["total"]}


def run_cn_clip(root: Path, work: Path) -> dict:
    """cn_clip's documented path: base64 TSV + JSONL per split, then its build_lmdb_dataset."""
    import csv
    import shutil

    from cn_clip_ext.lmdb.splits import SPLITS, split_of

    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    t = time.perf_counter()
    tsv = {s: open(work / f"{s}_imgs.tsv", "w", encoding="utf-8") for s in SPLITS}
    jsonl = {s: open(work / f"{s}_texts.jsonl", "w", encoding="utf-8") for s in SPLITS}
    with open(root / "SynFundus-1M_annotation.csv", encoding="utf-8", newline="") as fh:
        for i, row in enumerate(csv.DictReader(fh)):
            s = split_of(row["file_name"])
            b64 = base64.urlsafe_b64encode((root / "Fundus" / row["file_name"]).read_bytes()).decode()
            tsv[s].write(f"{i}\t{b64}\n")
            jsonl[s].write(json.dumps({"text_id": i, "text": row["diagnosticAdvice"], "image_ids": [i]},
                                      ensure_ascii=False) + "\n")
    for f in (*tsv.values(), *jsonl.values()):
        f.close()
    t_tsv = time.perf_counter() - t
    subprocess.run([sys.executable, "-m", "cn_clip.preprocess.build_lmdb_dataset", "--data_dir", str(work),
                    "--splits", ",".join(SPLITS), "--lmdb_dir", str(work / "lmdb")],
                   capture_output=True, text=True, check=True)
    wall = time.perf_counter() - t
    return {"wall_s": wall, "tsv_s": t_tsv, "lmdb_s": wall - t_tsv}


@functools.lru_cache(maxsize=1)
def import_rss_mib() -> float:
    """Peak RSS of a process that only imports the build program (torch-free). Measured on first
    call: Linux carries a parent's peak RSS through fork and exec, so call it while this one is small."""
    code = "import resource, vclip_data_prep.build_lmdb; print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    return int(out.split()[-1]) / 1024


def lmdb_bytes(folder: Path) -> tuple[int, int]:
    """(file bytes, allocated bytes) of every data.mdb under ``folder``."""
    files = list(folder.rglob("data.mdb"))
    return sum(f.stat().st_size for f in files), sum(f.stat().st_blocks * 512 for f in files)


# --- (b) loaders ----------------------------------------------------------------------------------

def loader_rate(dataset, workers: int, batch: int, seconds: float, batch_fn=None) -> float:
    """Samples per second after the first batch, over at most ``seconds`` of loading; ``batch_fn``
    (if given) runs on each batch of images in this process, inside the timing."""
    import torch

    loader = torch.utils.data.DataLoader(dataset, batch_size=batch, num_workers=workers, shuffle=True,
                                         generator=torch.Generator().manual_seed(0), drop_last=True)
    it = iter(loader)
    next(it)  # worker start-up and first batch
    n, t = 0, time.perf_counter()
    for images, *_ in it:
        if batch_fn is not None:
            batch_fn(images)
        n += len(images)
        if time.perf_counter() - t > seconds:
            break
    return n / (time.perf_counter() - t)


def bench_loaders(ours: Path, ours224: Path, theirs: Path, workers: int, batch: int, seconds: float) -> dict:
    import torch
    from cn_clip.training.data import LMDBDataset

    from cn_clip_ext.lmdb.reader import LmdbPairDataset
    from cn_clip_ext.model.transforms import train_transform

    tf = train_transform(224)
    gen = torch.Generator().manual_seed(0)

    def on_cpu(images):
        tf.batch_transform(images, gen)

    stock = LMDBDataset(str(theirs / "train"), split="train", max_txt_length=52, use_augment=False, resolution=224)
    stock_tf = stock.transform
    res = {"cn_clip": loader_rate(stock, workers, batch, seconds)}
    stock.transform = tf
    res["cn_clip+fundus_tf"] = loader_rate(stock, workers, batch, seconds)
    del stock
    res["ours+fundus_tf"] = loader_rate(LmdbPairDataset(ours / "train", tf), workers, batch, seconds)
    res["ours+fundus_tf+cpu_batch"] = loader_rate(LmdbPairDataset(ours / "train", tf), workers, batch, seconds,
                                                  on_cpu)
    res["ours224+fundus_tf"] = loader_rate(LmdbPairDataset(ours224 / "train", tf), workers, batch, seconds)
    res["ours224+fundus_tf+cpu_batch"] = loader_rate(LmdbPairDataset(ours224 / "train", tf), workers, batch,
                                                     seconds, on_cpu)
    res["ours+cn_clip_tf"] = loader_rate(LmdbPairDataset(ours / "train", stock_tf), workers, batch, seconds)
    return res


# --- report ---------------------------------------------------------------------------------------

def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=2000, help="images for (a)-(c) (0 skips them)")
    p.add_argument("--size", type=int, default=512, help="side of the generated PNGs")
    p.add_argument("--rows", type=int, default=0, help="rows for the streaming-memory run (e.g. 1000000)")
    p.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "vclip-bench-lmdb")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="build workers")
    p.add_argument("--loader-workers", type=int, default=2)
    p.add_argument("--batch", type=int, default=32, help="DataLoader batch size")
    p.add_argument("--seconds", type=float, default=20.0, help="time budget per loader measurement")
    p.add_argument("--no-write", action="store_true", help="do not update bench/RESULTS.md")
    args = p.parse_args()
    import_rss_mib()  # before this process grows (see its docstring)
    work = args.workdir
    machine = (f"Measured {time.strftime('%Y-%m-%d', time.gmtime())}. "
               f"Machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
               f"load average {os.getloadavg()[0]:.1f} at the start (other jobs share this box).")
    sections: dict[str, list[str]] = {}
    if args.n:
        lines = sections["build"] = [
            "## LMDB build and loading (`bench/bench_lmdb.py`)\n",
            f"`.venv/bin/python bench/bench_lmdb.py --n {args.n}`. {machine}"]
        corpus = work / f"synfundus-{args.n}-{args.size}"
        print(f"generating {args.n} {args.size}px PNGs in {corpus} ...", flush=True)
        make_corpus(corpus, args.n, args.size, args.workers)
        theirs = run_cn_clip(corpus, work / "cn_clip")
        ours = run_ours(corpus, work / "ours", ["--workers", str(args.workers)])
        ours224 = run_ours(corpus, work / "ours224", ["--workers", str(args.workers), "--size", "224"])
        png = sum(f.stat().st_size for f in (corpus / "Fundus").iterdir())
        b_ours, b_theirs = lmdb_bytes(work / "ours"), lmdb_bytes(work / "cn_clip" / "lmdb")
        b_ours224 = lmdb_bytes(work / "ours224")
        print("loading ...", flush=True)
        load = bench_loaders(work / "ours", work / "ours224", work / "cn_clip" / "lmdb", args.loader_workers,
                             args.batch, args.seconds)
        n = args.n
        r_ours_e2e, r_theirs = n / ours["wall_s"], n / theirs["wall_s"]
        r_ours_build = n / ours["build_s"]
        lines += [
            f"\n{n} noisy {args.size}x{args.size} RGB PNGs, {png / n / 1024:.0f} KiB each on average; "
            f"{args.workers} build workers.\n",
            "| measure | ours | cn_clip | ratio |", "|---|---|---|---|",
            f"| (a) build, images/s, end to end incl. interpreter start ({ours['import_s']:.1f} s of imports) "
            f"| {r_ours_e2e:.0f} | {r_theirs:.0f} | {r_ours_e2e / r_theirs:.2f}x |",
            f"| (a) build, images/s, after imports | {r_ours_build:.0f} | {r_theirs:.0f} "
            f"| {r_ours_build / r_theirs:.2f}x |",
            f"| (b) DataLoader samples/s, {args.loader_workers} workers, batch {args.batch}, each with its own train "
            f"transform (ours: fundus `train_transform(224)`, `uint8` geometry-only samples, colour + normalisation "
            f"per batch on the device; cn_clip: its `use_augment=False` one) "
            f"| {load['ours+fundus_tf']:.0f} | {load['cn_clip']:.0f} | **{load['ours+fundus_tf'] / load['cn_clip']:.2f}x** |",
            f"| (b) same, plus our per-batch colour + normalisation in the loading process on the CPU (no GPU) "
            f"| {load['ours+fundus_tf+cpu_batch']:.0f} | {load['cn_clip']:.0f} "
            f"| {load['ours+fundus_tf+cpu_batch'] / load['cn_clip']:.2f}x |",
            f"| (b) same as the first (b) row, our LMDB built at 224 px (`--size 224`, the paper model's input) "
            f"| {load['ours224+fundus_tf']:.0f} | {load['cn_clip']:.0f} | {load['ours224+fundus_tf'] / load['cn_clip']:.2f}x |",
            f"| (b) 224-px build, plus the per-batch step on the CPU | {load['ours224+fundus_tf+cpu_batch']:.0f} "
            f"| {load['cn_clip']:.0f} | {load['ours224+fundus_tf+cpu_batch'] / load['cn_clip']:.2f}x |",
            f"| (b) both with cn_clip's transform (storage effect only) | {load['ours+cn_clip_tf']:.0f} "
            f"| {load['cn_clip']:.0f} | {load['ours+cn_clip_tf'] / load['cn_clip']:.2f}x |",
            f"| (b) both with the fundus `train_transform` (reader and storage effect) | {load['ours+fundus_tf']:.0f} "
            f"| {load['cn_clip+fundus_tf']:.0f} | {load['ours+fundus_tf'] / load['cn_clip+fundus_tf']:.2f}x |",
            f"| (c) bytes on disk (data.mdb), KiB per image | {b_ours[0] / n / 1024:.1f} | {b_theirs[0] / n / 1024:.1f} "
            f"| {b_theirs[0] / b_ours[0]:.1f}x fewer |",
            f"| (c) same, 224-px build | {b_ours224[0] / n / 1024:.1f} | {b_theirs[0] / n / 1024:.1f} "
            f"| {b_theirs[0] / b_ours224[0]:.1f}x fewer |",
            f"| (d) build peak RSS, main process / largest worker (import alone: {import_rss_mib():.0f} MiB) "
            f"| {ours['self_kb'] / 1024:.0f} / {ours['children_kb'] / 1024:.0f} MiB | n/a | |",
            "",
            f"cn_clip's path: {theirs['tsv_s']:.1f} s writing base64 TSV/JSONL + {theirs['lmdb_s']:.1f} s in "
            f"`build_lmdb_dataset`; it validates nothing and stores the PNGs as they are. Ours decodes, checks, "
            f"resizes (longest side 256) and re-encodes (JPEG q95) every image; {ours['rejected']} rejected. "
            f"The 224-px build ran at {n / ours224['build_s']:.0f} images/s after imports.",
        ]
    if args.rows:
        big = work / f"rows-{args.rows}"
        print(f"making a {args.rows}-row CSV (hard-linked tiny images) in {big} ...", flush=True)
        make_big_csv(big, args.rows)
        res = run_ours(big, work / "ours-rows", ["--workers", str(args.workers), "--batch", "2048"])
        sections["rows"] = [
            f"### LMDB build memory on {args.rows:,} rows\n",
            f"`.venv/bin/python bench/bench_lmdb.py --n 0 --rows {args.rows}`. {machine}",
            f"\n(d) streaming memory: a {args.rows:,}-row SynFundus CSV "
            f"({(big / 'SynFundus-1M_annotation.csv').stat().st_size / 2**20:.0f} MiB), every row a hard link to "
            f"one of 64 tiny PNGs, full build (read, check, split, decode, re-encode, write, side tables): "
            f"{res['images']:,} images in {res['wall_s']:.0f} s; peak RSS main process "
            f"**{res['self_kb'] / 1024:.0f} MiB**, largest worker {res['children_kb'] / 1024:.0f} MiB "
            f"(of which {import_rss_mib():.0f} MiB is just importing the program).",
        ]
    for name, lines in sections.items():
        section = "\n".join(lines)
        print(section)
        if not args.no_write:
            write_section(f"lmdb-bench:{name}", section)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
