"""Measure the ``shapes`` generator's single-core throughput against its 5,000 samples/s target.

Usage: ``python benchmarks/bench_shapes_generator.py [--samples 20000] [--image-size 64] [--repeats 3]``.
No cache is read or written. Prints samples/s (best and median of the repeats) and the best's ratio to the target.
"""

from __future__ import annotations

import os

# Pin every math library to one thread before numpy / torch load, so the number is a one-core number.
for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMEXPR_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402

import torch  # noqa: E402

from harness_plugins.datasets.shapes import generate_split  # noqa: E402

TARGET = 5000.0  # samples per second on one core, 64x64 images


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=20000)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    generate_split("test", 256, image_size=args.image_size)  # warm-up: geometry tables, lazy imports
    times = []
    for repeat in range(args.repeats):
        start = time.perf_counter()
        generate_split("train", args.samples, image_size=args.image_size, seed=repeat)
        times.append(time.perf_counter() - start)
    rate = args.samples / min(times)
    print(f"shapes generator: {args.samples} samples of {args.image_size}x{args.image_size}, "
          f"best of {args.repeats}: {min(times):.3f} s -> {rate:,.0f} samples/s "
          f"(median {args.samples / statistics.median(times):,.0f}/s); "
          f"{rate / TARGET:.2f}x the {TARGET:,.0f}/s target, 1 thread")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
