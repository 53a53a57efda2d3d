"""Target P2: `infonce` forward + backward on CPU, timed against references in the same run.

1. B = 4096, D = 256: ``infonce`` vs a bare normalize + matmul + cross-entropy reference
   (target: ≤ 1.15× its time).
2. B = 512, D = 256: ``infonce`` vs pytorch-metric-learning's ``NTXentLoss`` called both ways with
   ``ref_emb`` (target: ≥ 100× faster; PML builds a B × B(B−1) mask, so it cannot run at 4096).
3. Peak memory of one forward + backward, each B in a fresh process (Linux VmHWM), against
   B²·4 bytes (one float32 similarity matrix) and B²·D·4 bytes (a per-pair feature tensor):
   the ratio to B² stays flat as B doubles, so memory is O(B²), not O(B²·D).

Run: ``python benchmarks/bench_infonce.py [--threads N]`` (one to two minutes on 2 cores). Ratios,
not absolute times, are what transfers between machines. On a machine that other processes keep busy,
``--threads 1`` avoids OpenMP stalls that add milliseconds to every multi-threaded op.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import torch
import torch.nn.functional as F

from harness_plugins.contrastive.losses import InfoNCE

TAU = 0.07


def reference(image: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
    """The bare computation the loss is held to."""
    logits = F.normalize(image, dim=-1) @ F.normalize(text, dim=-1).T / TAU
    target = torch.arange(len(image))
    return (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2


def pml_both_ways():
    from pytorch_metric_learning.losses import NTXentLoss
    loss = NTXentLoss(temperature=TAU)

    def run(image, text):
        labels, ref_labels = torch.arange(len(image)), torch.arange(len(image))
        return (loss(image, labels, ref_emb=text, ref_labels=ref_labels)
                + loss(text, labels, ref_emb=image, ref_labels=ref_labels)) / 2
    return run


def inputs(b: int, d: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    image = torch.randn(b, d, generator=g)
    text = image + torch.randn(b, d, generator=g)
    return image.requires_grad_(), text.requires_grad_()


def step_seconds(fn, image, text) -> float:
    image.grad = text.grad = None
    start = time.perf_counter()
    fn(image, text).backward()
    return time.perf_counter() - start


def compare(fns: dict, b: int, d: int, repeats: int) -> dict[str, float]:
    """Median seconds per forward+backward; the candidates alternate so drift hits all alike."""
    image, text = inputs(b, d)
    for fn in fns.values():  # warm-up (allocator, thread pool)
        step_seconds(fn, image, text)
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            times[name].append(step_seconds(fn, image, text))
    return {name: statistics.median(t) for name, t in times.items()}


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def peak_memory(which: str, b: int, d: int) -> int:
    """Extra peak RSS (bytes) of one forward+backward, measured in this (fresh) process."""
    image, text = inputs(b, d)
    fn = {"infonce": InfoNCE(TAU), "reference": reference}[which]
    fn(*inputs(8, d)).backward()  # first-call allocations (thread pools, kernels) are not the loss
    # Writing 5 to clear_refs resets the peak (VmHWM) to the current RSS (Linux ≥ 4.0), so the
    # imports' own peak does not hide the loss's.
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    before = _status_kib("VmRSS")
    fn(image, text).backward()
    return (_status_kib("VmHWM") - before) * 1024


def measure_memory_in_subprocess(which: str, b: int, d: int) -> int:
    out = subprocess.run([sys.executable, __file__, "--threads", str(torch.get_num_threads()),
                          "--memory", which, str(b), str(d)],
                         check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])["bytes"]


def main(threads: int | None) -> None:
    if threads:
        torch.set_num_threads(threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, float32 CPU, tau={TAU}")
    load, cores = os.getloadavg()[0], os.cpu_count() or 1
    if torch.get_num_threads() > 1 and load > cores - 1:
        # Other processes hold the cores: every multi-threaded op then waits for a descheduled
        # OpenMP worker (milliseconds each), a fixed cost that swamps small-B timings.
        print(f"note: load average {load:.1f} on {cores} cores; small-B timings will carry OpenMP "
              f"stalls, rerun with --threads 1 for ratios that reflect the computation")
    infonce = InfoNCE(TAU)

    # correctness first: the timed functions compute the same value
    image, text = inputs(256, 64)
    assert torch.allclose(infonce(image, text), reference(image, text), rtol=1e-5)
    assert torch.allclose(infonce(image, text), pml_both_ways()(image, text), rtol=1e-4)

    t = compare({"infonce": infonce, "reference": reference}, 4096, 256, repeats=7)
    ratio = t["infonce"] / t["reference"]
    print(f"\nB=4096 D=256  infonce {t['infonce'] * 1e3:8.1f} ms   bare reference "
          f"{t['reference'] * 1e3:8.1f} ms   ratio {ratio:.3f}x  (target <= 1.15x: "
          f"{'met' if ratio <= 1.15 else 'NOT met'})")

    t = compare({"infonce": infonce, "pml": pml_both_ways()}, 512, 256, repeats=5)
    speedup = t["pml"] / t["infonce"]
    print(f"B=512  D=256  infonce {t['infonce'] * 1e3:8.2f} ms   PML NTXentLoss x2 "
          f"{t['pml'] * 1e3:8.1f} ms   speed-up {speedup:.0f}x  (target >= 100x: "
          f"{'met' if speedup >= 100 else 'NOT met'})")

    print("\npeak extra RSS of one forward+backward (fresh process per row), D=256:")
    print(f"{'B':>6} {'infonce MB':>11} {'reference MB':>13} {'infonce / B^2*4B':>17} "
          f"{'B^2*D*4B (GB)':>14}")
    for b in (1024, 2048, 4096):
        ours = measure_memory_in_subprocess("infonce", b, 256)
        ref = measure_memory_in_subprocess("reference", b, 256)
        print(f"{b:>6} {ours / 2**20:>11.0f} {ref / 2**20:>13.0f} {ours / (4 * b * b):>17.1f} "
              f"{4 * b * b * 256 / 2**30:>14.1f}")
    print("a flat 'infonce / B^2*4B' column as B doubles is O(B^2) memory; O(B^2*D) would need the "
          "last column")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--memory", nargs=3, metavar=("WHICH", "B", "D"),
                        help=argparse.SUPPRESS)  # internal: one memory measurement
    parser.add_argument("--threads", type=int, default=None,
                        help="intra-op threads (default: torch's choice); on a loaded machine "
                             "1 avoids OpenMP stalls that add a fixed cost to every call")
    args = parser.parse_args()
    if args.memory:
        if args.threads:
            torch.set_num_threads(args.threads)
        which, b, d = args.memory
        print(json.dumps({"bytes": peak_memory(which, int(b), int(d))}))
    else:
        main(args.threads)
