"""Benchmark: the Table-1 harness's image encoding against each family's bare forward loop.

    .venv/bin/python bench/bench_families.py --n 48 --size 768 --repeats 3

For each family (VisionCLIP ``RN50@RoBERTa-wwm-ext-base-chinese``, open_clip ``RN50``, FLAIR's
ResNet-50 at 512 px; all randomly initialised, saved in the family's published file format and
loaded through ``load_pretrained``), the same ``N`` generated fundus photographs (PNG, ``--size``
px) are encoded two ways, in this one process, alternating (``--repeats``; best and median
reported, since other jobs share the machine):

- bare: the loop a user of the family's own code writes: decode each image with PIL, apply the
  family's ``preprocess`` to it, stack ``--batch`` of them, ``model.encode_image`` under
  ``torch.no_grad()``;
- harness: ``cn_clip_ext.evaluation.encode_images`` as ``vclip-eval --models`` runs it (decoding
  workers, ``uint8`` batches where the family's transform allows, BatchNorm folding,
  channels-last), with ``--workers`` processes.

Overhead is ``harness / bare - 1`` (negative: the harness is faster). The pure forward pass on
tensors already in memory is also timed, the floor of both. Results go to stdout and to
bench/RESULTS.md between ``<!-- families-bench:begin -->`` and ``<!-- families-bench:end -->``.
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "RESULTS.md"
BEGIN, END = "<!-- families-bench:begin -->", "<!-- families-bench:end -->"
sys.path.insert(0, str(ROOT / "tests"))  # the family builders of the tests (published formats)


def build_families(folder: Path) -> dict[str, tuple[Path, dict]]:
    """``{family: (path, options)}`` of randomly initialised models in each published format."""
    import open_clip

    import cn_clip_ext as vc
    from family_support import write_flair

    torch.manual_seed(0)
    ours = vc.create_model(vc.VISIONCLIP, seed=0)
    torch.save({"state_dict": ours.state_dict(), "config": {"model": vc.VISIONCLIP}}, folder / "visionclip.pt")
    del ours
    torch.save(open_clip.create_model("RN50").state_dict(), folder / "RN50.pt")
    weights, text, _ = write_flair(folder, seed=0)
    return {"visionclip": (folder / "visionclip.pt", {}), "open_clip": (folder / "RN50.pt", {"arch": "RN50"}),
            "flair": (weights, {"text_config": str(text)})}


def write_images(folder: Path, n: int, size: int) -> list[str]:
    from PIL import Image

    from family_support import fundus_like

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        path = folder / f"{i:04d}_N.png"
        Image.fromarray(fundus_like(size, size * 4 // 3, seed=i)).save(path)
        paths.append(str(path))
    return paths


@torch.no_grad()
def bare(model, preprocess, paths: list[str], batch: int) -> float:
    from PIL import Image

    t0 = time.perf_counter()
    for i in range(0, len(paths), batch):
        x = torch.stack([preprocess(Image.open(p).convert("RGB")) for p in paths[i:i + batch]])
        model.encode_image(x)
    return time.perf_counter() - t0


@torch.no_grad()
def forward_only(model, tensors: list[torch.Tensor]) -> float:
    t0 = time.perf_counter()
    for x in tensors:
        model.encode_image(x)
    return time.perf_counter() - t0


def harness(model, preprocess, eval_set, batch: int, workers: int) -> float:
    from cn_clip_ext.evaluation import encode_images

    t0 = time.perf_counter()
    encode_images(model, eval_set, preprocess, batch, workers, "cpu", progress=False)
    return time.perf_counter() - t0


def run(args: argparse.Namespace) -> list[dict]:
    from PIL import Image

    import cn_clip_ext as vc
    from cn_clip_ext.evaluation import EvalSet

    rows = []
    # /var/tmp rather than /tmp: a long run must not lose its images to a /tmp clean-up by other jobs
    with tempfile.TemporaryDirectory(prefix="bench_families_", dir=os.environ.get("VCLIP_BENCH_TMP", "/var/tmp")) as tmp:
        tmp = Path(tmp)
        paths = write_images(tmp / "images", args.n, args.size)
        eval_set = EvalSet("bench", ("normal",), tuple(paths), (0,) * len(paths))
        for family, (path, options) in build_families(tmp).items():
            model, preprocess, _ = vc.load_pretrained(path, family=family, **options)
            tensors = [torch.stack([preprocess(Image.open(p).convert("RGB")) for p in paths[i:i + args.batch]])
                       for i in range(0, len(paths), args.batch)]
            times = {"bare": [], "harness": [], "forward": []}
            harness(model, preprocess, eval_set, args.batch, args.workers)  # warm-up (worker start, folding)
            for _ in range(args.repeats):
                times["bare"].append(bare(model, preprocess, paths, args.batch))
                times["harness"].append(harness(model, preprocess, eval_set, args.batch, args.workers))
                times["forward"].append(forward_only(model, tensors))
            best = {k: min(v) for k, v in times.items()}
            med = {k: statistics.median(v) for k, v in times.items()}
            rows.append({"family": family, "preprocess": " ".join(repr(preprocess).split())[:60],
                         **{f"{k}_best": v for k, v in best.items()}, **{f"{k}_median": v for k, v in med.items()},
                         "overhead_best": best["harness"] / best["bare"] - 1,
                         "overhead_median": med["harness"] / med["bare"] - 1})
            print(rows[-1], flush=True)
            del model, tensors
    return rows


def markdown(rows: list[dict], args: argparse.Namespace) -> str:
    head = (f"{args.n} generated {args.size}x{args.size * 4 // 3} PNG fundus photographs, batch {args.batch}, "
            f"{args.workers} decoding workers for the harness, CPU ({os.cpu_count()} cores, {platform.machine()}, "
            f"torch {torch.__version__}), best / median of {args.repeats} alternating runs.\n\n"
            "Command: `.venv/bin/python bench/bench_families.py " + " ".join(sys.argv[1:]) + "`\n\n"
            "| family | preprocessing | bare loop s | harness s | forward only s | harness overhead over bare |\n"
            "|---|---|---|---|---|---|\n")
    for r in rows:
        head += (f"| {r['family']} | `{r['preprocess']}` | {r['bare_best']:.2f} / {r['bare_median']:.2f} | "
                 f"{r['harness_best']:.2f} / {r['harness_median']:.2f} | {r['forward_best']:.2f} / "
                 f"{r['forward_median']:.2f} | {100 * r['overhead_best']:+.1f}% / {100 * r['overhead_median']:+.1f}% |\n")
    return head


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=48)
    p.add_argument("--size", type=int, default=768, help="image height (width 4/3 of it)")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--no-write", action="store_true", help="print only; leave bench/RESULTS.md alone")
    args = p.parse_args()
    rows = run(args)
    text = markdown(rows, args)
    print(text)
    if not args.no_write:
        results = RESULTS.read_text(encoding="utf-8")
        section = f"{BEGIN}\n{text}{END}"
        if BEGIN in results:
            results = results[:results.index(BEGIN)] + section + results[results.index(END) + len(END):]
        else:
            results += ("\n## Table-1 harness overhead per model family (`bench/bench_families.py`)\n\n"
                        + section + "\n")
        RESULTS.write_text(results, encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
