"""Target P10: time and memory of ``harness.metrics.ranking_metrics`` against
``harness.metrics.retrieval_metrics_from_scores`` on the same scores (target: <= 1.3x).

Data: 5,000 images in clusters of 12 and 5 captions per image, 25,000 x 5,000 text->image scores
(float32) from noisy embeddings; a caption is relevant to the 12 images of its image's cluster (~12
relevant per query, a scipy.sparse CSR matrix).  Two regimes: ``spread`` (noisy captions, ranks spread
like a real model's) and ``easy`` (nearly every query has a relevant item first, so every row goes
through the top-k step that locates the positions within the top R: the slow case for ranking_metrics).  The
reference gets the same scores in its own layout, ``[n_images, n_texts]`` (a contiguous transpose made
before timing), with each caption's own image.  Both run in this process, interleaved over the repeats;
the best time of each is kept.  Peak memory is measured in a fresh child process per function: its
resident-set high-water mark during the call (reset via /proc/self/clear_refs) minus its RSS before.

    python benchmarks/bench_ranking.py            # 25,000 x 5,000
    python benchmarks/bench_ranking.py --small    # 5,000 x 1,000, a quick check
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

import numpy as np
import scipy.sparse as sp
import torch

from _measure import print_peak_delta  # benchmarks/_measure.py
from harness.metrics import ranking_metrics, retrieval_metrics_from_scores

KS = (1, 5, 10)
PER_IMAGE = 5
CLUSTER = 12


REGIMES = {"spread": (0.8, 3.0), "easy": (0.8, 1.5)}  # (image noise around its cluster, caption noise)


def make_data(n_images: int, regime: str = "spread", dim: int = 64, seed: int = 0):
    """Scores [n_texts, n_images], the cluster relevance (CSR) and each text's own image."""
    image_noise, text_noise = REGIMES[regime]
    g = torch.Generator().manual_seed(seed)
    cluster = torch.arange(n_images) // CLUSTER
    centres = torch.randn(int(cluster.max()) + 1, dim, generator=g)
    images = centres[cluster] + image_noise * torch.randn(n_images, dim, generator=g)
    text_to_image = torch.arange(n_images).repeat_interleave(PER_IMAGE)
    texts = images[text_to_image] + text_noise * torch.randn(len(text_to_image), dim, generator=g)
    images = torch.nn.functional.normalize(images, dim=1)
    texts = torch.nn.functional.normalize(texts, dim=1)
    scores = texts @ images.T
    # relevant[j, i]: image i is in the cluster of caption j's image
    t_cluster = cluster[text_to_image].numpy()
    members = [np.flatnonzero(cluster.numpy() == c) for c in range(int(cluster.max()) + 1)]
    cols = np.concatenate([members[c] for c in t_cluster])
    indptr = np.concatenate([[0], np.cumsum([len(members[c]) for c in t_cluster])])
    relevant = sp.csr_array((np.ones(len(cols), dtype=bool), cols, indptr), shape=tuple(scores.shape))
    return scores, relevant, text_to_image


def run(name: str, data):
    scores, relevant, text_to_image, scores_t = data
    if name == "ranking_metrics":
        return ranking_metrics(scores, relevant, ks=KS)
    return retrieval_metrics_from_scores(scores_t, text_to_image, ks=KS)


def prepared(n_images: int, regime: str = "spread"):
    scores, relevant, text_to_image = make_data(n_images, regime)
    return scores, relevant, text_to_image, scores.T.contiguous()


def child_memory(name: str, n_images: int) -> None:
    data = prepared(n_images)
    run(name, prepared(24))  # load kernels and thread pools before the baseline
    print_peak_delta(lambda: run(name, data))


def measure_memory(name: str, n_images: int) -> float:
    cmd = [sys.executable, __file__, "--_memory-child", name, str(n_images)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])["peak_delta_mb"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--small", action="store_true", help="5,000 captions x 1,000 images")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--no-memory", action="store_true", help="skip the peak-memory child processes")
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    ap.add_argument("--_memory-child", nargs=2, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args._memory_child:
        child_memory(args._memory_child[0], int(args._memory_child[1]))
        return

    if args.threads:
        torch.set_num_threads(args.threads)
    n_images = 1000 if args.small else 5000
    names = ("retrieval_metrics_from_scores", "ranking_metrics")
    small = prepared(24)
    for name in names:  # warm up thread pools and the allocator
        run(name, small)
    print(f"{n_images * PER_IMAGE} captions x {n_images} images, float32, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads")
    for regime in REGIMES:
        data = prepared(n_images, regime)
        scores, relevant = data[0], data[1]
        times: dict[str, list[float]] = {name: [] for name in names}
        results = {}
        for _ in range(args.repeats):
            for name in names:
                t0 = time.perf_counter()
                results[name] = run(name, data)
                times[name].append(time.perf_counter() - t0)
        best = {name: min(v) for name, v in times.items()}
        ours, ref = results["ranking_metrics"], results["retrieval_metrics_from_scores"]
        print(f"[{regime}] {relevant.nnz / scores.shape[0]:.1f} relevant per caption")
        print(f"  ranking_metrics: R@1/5/10 {ours['R@1']:.2f}/{ours['R@5']:.2f}/{ours['R@10']:.2f}  "
              f"R-Precision {ours['R-Precision']:.2f}  mAP@R {ours['mAP@R']:.2f}  medr {ours['medr']:.1f}  "
              f"({ours['n_queries']:.0f} queries, {ours['n_empty']:.0f} empty)")
        print(f"  retrieval_metrics_from_scores (own image only): t2i R@1/5/10 {ref['t2i_R@1']:.2f}/"
              f"{ref['t2i_R@5']:.2f}/{ref['t2i_R@10']:.2f}  i2t R@1 {ref['i2t_R@1']:.2f}")
        print(f"  best of {args.repeats}: retrieval_metrics_from_scores {best[names[0]]:.3f} s, "
              f"ranking_metrics {best[names[1]]:.3f} s")
        print(f"  P10: ranking_metrics / retrieval_metrics_from_scores = "
              f"{best[names[1]] / best[names[0]]:.3f}x   (target <= 1.3x)")
    if not args.no_memory:
        mem = {name: measure_memory(name, n_images) for name in names}
        full_mb = n_images * n_images * PER_IMAGE * 4 / 2**20
        print(f"peak RSS increase ({list(REGIMES)[0]}): ranking_metrics {mem[names[1]]:.0f} MB, "
              f"retrieval_metrics_from_scores {mem[names[0]]:.0f} MB (the scores themselves: {full_mb:.0f} MB)")


if __name__ == "__main__":
    main()
