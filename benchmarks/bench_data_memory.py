"""Peak memory of a streamed run over 20,000 fixture images against the same run over 2,000: images are read
from files on demand, so the difference must stay within 300 MB (it would be ~N × 3 × S² bytes, plus
the decoded batches' copies, if the split were held in memory).

Each run is a fresh ``python`` child running ``harness.run`` on an ``image-text-files`` benchmark (128 x 96
JPEGs read at ``--image-size`` px, default 96: held in memory, 20,000 of them would take 553 MB): small-cnn
+ gru, 1 epoch at batch 128 with 2 data workers, retrieval on a fixed 500-image test split (only the
training split grows: evaluation keeps an embedding per test image by design). Memory is sampled every
0.1 s as the proportional set size (PSS: shared pages split between the processes that map them, so the
forked data workers are not counted twice) summed over the child and its workers; the child's own
resident high-water mark (VmHWM) is printed too.

    python benchmarks/bench_data_memory.py                    # 2,000 vs 20,000 training images
    python benchmarks/bench_data_memory.py --sizes 1000 5000  # a quicker check
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

TEST_IMAGES = 500


def make_fixture(folder: Path, n_train: int, seed: int = 0) -> Path:
    """``n_train`` + 500 + 500 small JPEGs (128 x 96) with two captions each, and a JSONL listing the
    first ``n_train`` training images (the test and val images are the same for every size)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    words = ["a", "red", "blue", "dog", "cat", "on", "the", "sofa", "ball", "green", "small", "big"]
    rows = []
    for split, count in (("val", TEST_IMAGES), ("test", TEST_IMAGES), ("train", n_train)):
        for i in range(count):
            name = f"{split}/{i:06d}.jpg"
            path = folder / "images" / name
            if not path.exists():
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(rng.integers(0, 256, (96, 128, 3), dtype=np.uint8)).save(path, quality=85)
            for _ in range(2):
                rows.append({"image": name, "caption": " ".join(rng.choice(words, 6)), "split": split})
    listing = folder / f"pairs-{n_train}.jsonl"
    listing.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return listing


def config(listing: Path, images: Path, size: int) -> dict:
    return {
        "name": "memory",
        "dataset": {"name": "image-text-files", "path": str(listing), "images": str(images), "image_size": size},
        "seeds": [0],
        "defaults": {
            "encoders": {"image": {"name": "small-cnn", "channels": [8, 16]},
                         "text": {"name": "gru", "word_dim": 16, "hidden_dim": 32}},
            "embed_dim": 32,
            "train": {"epochs": 1, "batch_size": 128, "device": "cpu", "workers": 2, "threads": 1},
        },
        "methods": [{"name": "infonce", "loss": {"name": "infonce"}}],
        "evaluators": [{"name": "retrieval"}],
        "report": {"metrics": ["retrieval/rsum"]},
    }


def child(listing: str, images: str, out: str, size: str) -> None:
    import harness

    t0 = time.perf_counter()
    outcome = harness.run(config(Path(listing), Path(images), int(size)), out_dir=out, overwrite=True,
                          progress=False)
    with open("/proc/self/status") as fh:
        hwm = next(int(line.split()[1]) / 1024 for line in fh if line.startswith("VmHWM:"))
    print(json.dumps({"status": outcome.results[0].status, "error": outcome.results[0].error,
                      "seconds": time.perf_counter() - t0, "main_hwm_mb": hwm}))


def tree(pid: int) -> list[int]:
    """``pid`` and its descendants (Linux /proc)."""
    out, stack = [], [pid]
    while stack:
        p = stack.pop()
        out.append(p)
        try:
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as fh:
                    stack += [int(c) for c in fh.read().split()]
        except OSError:
            pass
    return out


def pss_mb(pids: list[int]) -> list[float]:
    """Each process's proportional set size, in MB."""
    sizes = []
    for p in pids:
        try:
            with open(f"/proc/{p}/smaps_rollup") as fh:
                sizes.append(next(int(line.split()[1]) for line in fh if line.startswith("Pss:")) / 1024)
        except (OSError, StopIteration):
            pass
    return sizes


def measure(listing: Path, images: Path, out: Path, size: int) -> dict:
    proc = subprocess.Popen([sys.executable, __file__, "--_child", str(listing), str(images), str(out), str(size)],
                            stdout=subprocess.PIPE, text=True)
    peak, split = 0.0, []
    while proc.poll() is None:
        sizes = pss_mb(tree(proc.pid))
        if sum(sizes) > peak:
            peak, split = sum(sizes), sizes
        time.sleep(0.1)
    report = json.loads(proc.stdout.read().strip().splitlines()[-1])
    report["peak_pss_mb"], report["at_peak"] = peak, split
    return report


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs=2, default=[2000, 20000], metavar=("SMALL", "LARGE"))
    ap.add_argument("--image-size", type=int, default=96, help="pixels the images are read at")
    ap.add_argument("--data", default=os.path.join(os.environ.get("TMPDIR", "/tmp"), "harness-bench-memory-128"))
    ap.add_argument("--_child", nargs=4, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args._child:
        child(*args._child)
        return
    folder = Path(args.data)
    listings = {n: make_fixture(folder, n) for n in args.sizes}
    held = (args.sizes[1] - args.sizes[0]) * 3 * args.image_size ** 2 / 2**20
    print(f"training images {args.sizes[0]:,} vs {args.sizes[1]:,} (128x96 JPEGs read at {args.image_size} px; "
          f"held in memory the difference would be {held:.0f} MB of uint8), {TEST_IMAGES} test images; "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}")
    reports = {}
    for n, listing in listings.items():
        reports[n] = measure(listing, folder / "images", folder / f"runs-{n}", args.image_size)
        r = reports[n]
        print(f"{n:>6,} images: {r['status']}{' ' + str(r['error']) if r['error'] else ''}, "
              f"peak PSS (main + workers) {r['peak_pss_mb']:.0f} MB "
              f"({' + '.join(f'{x:.0f}' for x in r['at_peak'])}), main VmHWM {r['main_hwm_mb']:.0f} MB, "
              f"{r['seconds']:.0f} s", flush=True)
    small, large = (reports[n] for n in args.sizes)
    print(f"difference: peak PSS {large['peak_pss_mb'] - small['peak_pss_mb']:+.0f} MB, main VmHWM "
          f"{large['main_hwm_mb'] - small['main_hwm_mb']:+.0f} MB (target: within 300 MB)")


if __name__ == "__main__":
    main()
