"""The cost of deterministic mode (``train.deterministic: true``) on this machine's CPU.

Usage: ``python benchmarks/bench_deterministic.py [--benchmark benchmarks/shapes.yaml] [--methods M …]
[--epochs 2] [--repeats 1]``. Runs each method of the benchmark (one seed, inline, one thread) with and
without deterministic mode, back to back so that both see the same load on a shared machine (the order
alternates between repeats), and prints per method the run times (training and evaluation, from the
results' provenance) and the ratio deterministic / default, then the ratio of the totals, and whether the
metrics came out identical.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import yaml

from harness.jobs import plan
from harness.runner import execute
from harness.validation import prepare

ROOT = Path(__file__).resolve().parent.parent


def jobs(benchmark: str, seed: int, deterministic: bool, epochs: int) -> dict:
    """Method name -> the job of its first seed, one thread, with or without deterministic mode (a
    method's own ``epochs``, student-teacher's, stays as written)."""
    overrides = [f"defaults.train.epochs={epochs}", "defaults.train.threads=1",
                 f"defaults.train.deterministic={str(deterministic).lower()}", f"seeds=[{seed}]"]
    spec, registry, _ = prepare(benchmark, overrides=overrides, forward_check=False)
    return {job.name: (job, registry) for job in plan(spec, registry)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--benchmark", default=str(ROOT / "benchmarks" / "shapes.yaml"))
    parser.add_argument("--methods", nargs="+", help="method names (default: every method of the file)")
    parser.add_argument("--epochs", type=int, default=2, help="epochs per run (default 2)")
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args(argv)
    config = yaml.safe_load(Path(args.benchmark).read_text())
    methods = [m for m in config["methods"] if not args.methods or m["name"] in args.methods]
    unknown = sorted(set(args.methods or ()) - {m["name"] for m in config["methods"]})
    if unknown:
        parser.error(f"{args.benchmark} has no method {', '.join(unknown)}; its methods: "
                     f"{', '.join(m['name'] for m in config['methods'])}")
    planned = {mode: jobs(args.benchmark, config["seeds"][0], mode, args.epochs) for mode in (False, True)}
    totals = {False: 0.0, True: 0.0}
    identical = []
    for method in methods:
        seconds: dict[bool, list[float]] = {False: [], True: []}
        metrics = {}
        for repeat in range(args.repeats):
            for deterministic in ((False, True) if repeat % 2 == 0 else (True, False)):
                job, registry = planned[deterministic][method["name"]]
                result = execute(job, registry, progress=False)  # training and evaluation, no files
                if result.status != "ok":
                    raise SystemExit(f"{job.name} (deterministic={deterministic}) {result.status}: "
                                     f"{result.error}")
                seconds[deterministic].append(result.provenance.duration_s)
                metrics[deterministic] = result.metrics
        best = {mode: min(times) for mode, times in seconds.items()}
        for mode in totals:
            totals[mode] += best[mode]
        same = metrics[False] == metrics[True]
        identical.append(same)
        print(f"{method['name']:>20}: default {best[False]:6.1f} s, deterministic {best[True]:6.1f} s, "
              f"ratio {best[True] / best[False]:.3f}, metrics {'identical' if same else 'DIFFERENT'}",
              flush=True)
    print(f"all {len(methods)} methods, {args.epochs} epochs, best of {args.repeats}: default "
          f"{totals[False]:.1f} s, deterministic {totals[True]:.1f} s, ratio deterministic/default "
          f"{totals[True] / totals[False]:.3f}; metrics identical in {sum(identical)} of {len(identical)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
