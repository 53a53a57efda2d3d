"""P9: `harness run` of the smoke benchmark with two jobs (two seeds), `--launcher processes
--launcher-opt jobs=2` against the default `inline` launcher: wall time of the whole command, each
measured in its own fresh results folder, alternating, best of ``--repeat``; prints the ratio and
whether the metrics agree.

    python benchmarks/bench_launchers.py [--epochs 1] [--repeat 3]

Inline runs its jobs one after another on all cores; processes runs them at once, the cores split
between them (one torch thread each on 2 cores), so the two use different thread counts and their
metrics agree to float rounding, not bit for bit.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _measure import timed  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
LAUNCHERS = {"inline": [], "processes": ["--launcher", "processes", "--launcher-opt", "jobs=2"]}


def run_once(launcher: str, epochs: int) -> tuple[float, dict]:
    with tempfile.TemporaryDirectory(prefix="bench-launchers-") as out:
        cmd = [sys.executable, "-m", "harness", "run", str(ROOT / "benchmarks" / "smoke.yaml"),
               "--set", "seeds=[0, 1]", "--set", f"defaults.train.epochs={epochs}", "--out", out,
               "--no-progress", *LAUNCHERS[launcher]]
        seconds, done = timed(lambda: subprocess.run(cmd, capture_output=True, text=True))
        if done.returncode != 0:
            raise SystemExit(f"{launcher} failed:\n{done.stderr[-3000:]}")
        metrics = {p.name: json.loads(p.read_text())["metrics"]
                   for p in sorted(Path(out, "smoke").glob("*/seed-*.json"))}
    return seconds, metrics


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=1, help="smoke.yaml's epochs (default: its own, 1)")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    times: dict[str, list[float]] = {name: [] for name in LAUNCHERS}
    metrics: dict[str, dict] = {}
    for _ in range(args.repeat):
        for name in LAUNCHERS:
            seconds, metrics[name] = run_once(name, args.epochs)
            times[name].append(seconds)
            print(f"{name:>9}: {seconds:6.2f} s", flush=True)
    best = {name: min(values) for name, values in times.items()}
    worst = max(abs(a - b) for seed in metrics["inline"] for a, b in
                zip(metrics["inline"][seed].values(), metrics["processes"][seed].values()))
    print(f"best of {args.repeat}: inline {best['inline']:.2f} s, processes {best['processes']:.2f} s; "
          f"ratio processes/inline = {best['processes'] / best['inline']:.2f} (target <= 0.65)")
    print(f"largest metric difference between the launchers: {worst:.3g}")


if __name__ == "__main__":
    main()
