"""Tables 2–5 of Podguzova & Nguyen 2020 next to this harness's runs of ``benchmarks/podguzova.yaml``.

    python benchmarks/podguzova_compare.py results/podguzova

Reads the result files only (the paper's numbers are the published ones, typed in below) and prints, for
each table, validation and training accuracy, loss and average similarity — ours as mean ± std over the
seeds — and the train − val accuracy gap, as markdown.
"""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from pathlib import Path

from harness.results import load_results

sys.path.insert(0, str(Path(__file__).parent))
from _measure import mean_std_cell  # noqa: E402  (benchmarks/_measure.py)

# (setting, paper val accuracy, loss, avg similarity, paper train accuracy, loss, avg similarity)
PAPER = {
    "Table 2 (batch size)": [
        ("16", 0.595, 1.213, 0.028, 0.858, 0.448, 0.228), ("32", 0.602, 1.180, 0.031, 0.757, 0.788, 0.117),
        ("48", 0.610, 1.140, 0.038, 0.685, 1.042, 0.073), ("64", 0.617, 1.146, 0.034, 0.612, 1.312, 0.035)],
    "Table 3 (queue size, batch 64)": [
        ("0.3", 0.561, 1.276, 0.020, 0.553, 1.513, 0.016), ("0.5", 0.574, 1.232, 0.023, 0.560, 1.481, 0.018),
        ("0.7", 0.593, 1.208, 0.026, 0.585, 1.424, 0.023), ("1.0", 0.610, 1.141, 0.035, 0.622, 1.297, 0.037)],
    "Table 4 (gaze p, batch 64)": [
        ("0.0", 0.617, 1.146, 0.034, 0.612, 1.312, 0.035), ("0.3", 0.596, 1.190, 0.028, 0.585, 1.428, 0.024),
        ("0.5", 0.589, 1.217, 0.025, 0.574, 1.418, 0.023), ("0.7", 0.575, 1.265, 0.021, 0.554, 1.500, 0.015)],
    "Table 5 (gaze p, batch 48)": [
        ("0.0", 0.610, 1.140, 0.038, 0.685, 1.042, 0.073), ("0.3", 0.597, 1.177, 0.031, 0.648, 1.161, 0.056),
        ("0.5", 0.591, 1.207, 0.029, 0.653, 1.162, 0.055), ("0.7", 0.581, 1.232, 0.025, 0.632, 1.206, 0.051)],
}
# our method (variant) name for each row of each table
OURS = {
    "Table 2 (batch size)": [f"batch@batch_size={b}" for b in (16, 32, 48, 64)],
    "Table 3 (queue size, batch 64)": [f"queue@size={s}" for s in (307, 512, 717, 1024)],
    "Table 4 (gaze p, batch 64)": ["batch@batch_size=64", "gaze-b64-p0.3", "gaze-b64-p0.5", "gaze-b64-p0.7"],
    "Table 5 (gaze p, batch 48)": ["batch@batch_size=48", "gaze-b48-p0.3", "gaze-b48-p0.5", "gaze-b48-p0.7"],
}
METRICS = [f"{split}/in-batch/{m}" for split in ("val", "train") for m in ("accuracy", "loss", "avg_similarity")]


def _cell(values: list[float], digits: int = 3) -> str:
    return mean_std_cell(values, digits)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("directory", help="the podguzova benchmark folder (results/podguzova)")
    args = parser.parse_args(argv)
    runs: dict[str, list] = defaultdict(list)
    for result in load_results(args.directory):
        if result.status == "ok":
            runs[result.method].append(result)
    if not runs:
        print(f"no ok results under {args.directory}", file=sys.stderr)
        return 1
    for table, rows in PAPER.items():
        print(f"\n**{table}** — paper / ours (mean ± std over seeds)\n")
        print("| setting | val acc | val loss | val avg sim | train acc | train loss | train avg sim "
              "| train − val acc |")
        print("|---|---|---|---|---|---|---|---|")
        for (setting, *paper), method in zip(rows, OURS[table]):
            ours = runs.get(method, [])
            cells = [f"{p:.3f} / {_cell([r.metrics[m] for r in ours if m in r.metrics])}"
                     for p, m in zip(paper, METRICS)]
            gaps = [r.metrics["train/in-batch/accuracy"] - r.metrics["val/in-batch/accuracy"] for r in ours]
            cells.append(f"{paper[3] - paper[0]:+.3f} / {_cell(gaps)}")
            print(f"| {setting} | " + " | ".join(cells) + " |")
    extra = runs.get("teachers-without-norm", [])
    if extra:
        acc = _cell([r.metrics["val/in-batch/accuracy"] for r in extra])
        print(f"\nteachers without batch norm (batch 64): val accuracy {acc} "
              f"(with it: {_cell([r.metrics['val/in-batch/accuracy'] for r in runs['batch@batch_size=64']])})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
