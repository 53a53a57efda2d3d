"""Target P7: time and memory of ``harness.metrics.matchmap_scores`` (misa pooling) against a dense
einsum + max + mean reference, and against the bare GEMM of the same inner products.

    reference:  torch.einsum("ild,jtd->ijlt", V, W).amax(2).mean(-1) on chunks of images whose dense
                [b_i, B_t, L, T] map fits ``--reference-chunk-mb``;
    bare GEMM:  the [B_i·L, D] @ [D, B_t·T] products alone, in the same blocks, no max and no mean —
                the least any exact computation has to do.

All run in this process on the same data, interleaved over the repeats; the best time of each is kept.
Peak memory is measured in a fresh child process per measurement: the resident-set high-water mark
during the call (reset through /proc/self/clear_refs) minus the resident set before it, so the inputs
do not count and the [B_i, B_t] output does. The training-size check runs forward and backward at
B = 180, L = 196, T = 32, D = 768, where the dense map alone would take 775 MiB.

    python benchmarks/bench_matchmap.py                 # 1,000 images x 5,000 captions, L=49, T=16, D=256
    python benchmarks/bench_matchmap.py --small         # 200 x 1,000, a quick check
    python benchmarks/bench_matchmap.py --threads 1     # when other jobs share the cores
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

import torch

from _measure import print_peak_delta, timed  # benchmarks/_measure.py
from harness.metrics import matchmap_scores


def make_data(n_images: int, n_captions: int, locations: int, tokens: int, dim: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n_images, locations, dim, generator=g),
            torch.randn(n_captions, tokens, dim, generator=g))


def dense_reference(images, texts, chunk_bytes):
    """The whole match map of a chunk of images against every caption, then max and mean."""
    per_image = texts.shape[0] * images.shape[1] * texts.shape[1] * 4
    rows = max(1, chunk_bytes // per_image)
    return torch.cat([torch.einsum("ild,jtd->ijlt", images[r:r + rows], texts).amax(2).mean(-1)
                      for r in range(0, images.shape[0], rows)])


def bare_gemm(images, texts, chunk_bytes):
    x, y = images.reshape(-1, images.shape[-1]), texts.reshape(-1, texts.shape[-1])
    rows = max(images.shape[1], chunk_bytes // (y.shape[0] * 4) // images.shape[1] * images.shape[1])
    out = torch.empty(rows, y.shape[0])
    for r in range(0, x.shape[0], rows):
        torch.mm(x[r:r + rows], y.T, out=out[: min(rows, x.shape[0] - r)])


def child_memory(what: str, sizes: list[int], threads: int, chunk_bytes: int) -> None:
    torch.set_num_threads(threads)
    train = what == "train"
    images, texts = make_data(*sizes)
    images.requires_grad_(train)
    texts.requires_grad_(train)

    def call(a, b):
        if what == "reference":
            return dense_reference(a, b, chunk_bytes)
        scores = matchmap_scores(a, b)
        if train:
            scores.sum().backward()
        return scores

    call(images[:2], texts[:3])  # kernels, thread pools and allocator warmed before the baseline
    images.grad = texts.grad = None
    print_peak_delta(lambda: call(images, texts))


def measure_memory(what: str, sizes, threads: int, chunk_bytes: int) -> dict:
    cmd = [sys.executable, __file__, "--_memory-child", what, *map(str, sizes), str(threads), str(chunk_bytes)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--small", action="store_true", help="200 images x 1,000 captions")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch CPU threads")
    ap.add_argument("--reference-chunk-mb", type=int, default=256,
                    help="dense match map per reference chunk (default 256 MB)")
    ap.add_argument("--skip-train-size", action="store_true", help="skip the B=180, D=768 backward check")
    ap.add_argument("--_memory-child", nargs=8, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args._memory_child:
        what, *numbers = args._memory_child
        numbers = list(map(int, numbers))
        child_memory(what, numbers[:5], numbers[5], numbers[6])
        return

    torch.set_num_threads(args.threads)
    chunk_bytes = args.reference_chunk_mb * 2**20
    sizes = (200, 1000, 49, 16, 256) if args.small else (1000, 5000, 49, 16, 256)
    images, texts = make_data(*sizes)
    print(f"{sizes[0]} images x {sizes[1]} captions, L = {sizes[2]}, T = {sizes[3]}, D = {sizes[4]}, "
          f"float32, misa; torch {torch.__version__}, {args.threads} threads, {os.cpu_count()} CPUs, "
          f"load average {os.getloadavg()[0]:.1f}")

    small = make_data(8, 20, *sizes[2:])
    matchmap_scores(*small), dense_reference(*small, chunk_bytes), bare_gemm(*small, chunk_bytes)
    times = {"matchmap_scores": [], "reference": [], "gemm": []}
    for _ in range(args.repeats):
        dt, ours = timed(matchmap_scores, images, texts)
        times["matchmap_scores"].append(dt)
        dt, ref = timed(dense_reference, images, texts, chunk_bytes)
        times["reference"].append(dt)
        times["gemm"].append(timed(bare_gemm, images, texts, chunk_bytes)[0])
    best = {k: min(v) for k, v in times.items()}
    diff = float((ours - ref).abs().max())
    assert diff < 1e-3, diff
    print("times (s): " + "; ".join(f"{k} {' '.join(f'{t:.2f}' for t in v)}" for k, v in times.items()))
    print(f"best of {args.repeats}: matchmap_scores {best['matchmap_scores']:.2f} s, dense einsum reference "
          f"{best['reference']:.2f} s, bare GEMM {best['gemm']:.2f} s; largest difference {diff:.1e}")
    print(f"matchmap_scores / dense reference = {best['matchmap_scores'] / best['reference']:.2f}x "
          f"(target <= 1.3x); / bare GEMM = {best['matchmap_scores'] / best['gemm']:.2f}x")

    ours_mem = measure_memory("scores", sizes, args.threads, chunk_bytes)
    ref_mem = measure_memory("reference", sizes, args.threads, chunk_bytes)
    output_mb = sizes[0] * sizes[1] * 4 / 2**20
    print(f"peak RSS increase: matchmap_scores {ours_mem['peak_delta_mb']:.0f} MB (incl. the {output_mb:.0f} MB "
          f"output; target <= 256 MB), dense reference {ref_mem['peak_delta_mb']:.0f} MB "
          f"(chunks of {args.reference_chunk_mb} MB)")
    if not args.skip_train_size:
        b, l, t, d = 180, 196, 32, 768
        train = measure_memory("train", (b, b, l, t, d), args.threads, chunk_bytes)
        print(f"training size B = {b}, L = {l}, T = {t}, D = {d}, forward + backward: peak RSS increase "
              f"{train['peak_delta_mb']:.0f} MB (incl. the input gradients, {b * (l + t) * d * 4 / 2**20:.0f} MB; "
              f"the dense map alone: {b * b * l * t * 4 / 2**20:.0f} MB), {train['seconds']:.1f} s")


if __name__ == "__main__":
    main()
