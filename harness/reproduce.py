"""``harness reproduce``: run again the job a result file describes, into a temporary folder, and compare
the metrics one by one with the file's. In the same environment (the fingerprints match) the values
must be identical; in another one, within the spread of the committed seeds of that method.
"""

from __future__ import annotations

import math
import random
import statistics
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from tabulate import tabulate

from harness.environment import differences
from harness.errors import HarnessError
from harness.jobs import plan
from harness.launchers import Task
from harness.results import RunResult, first_difference, open_result, read_result, result_files, result_path
from harness.runner import run_task_here
from harness.validation import prepare

#: in another environment a metric may move by this many sample stds of the committed seeds
SPREAD_FACTOR = 1.5
#: ... and at least this much when it is integer-valued: ranks, counts and their medians (whole or half)
INTEGER_FLOOR = 1.0
#: ... and at least this share of its size (float round-off of another BLAS or CPU)
ROUND_OFF = 1e-6


@dataclass(frozen=True)
class Check:
    """One metric of one result file: its committed and rerun values (None: not finite), the largest
    difference allowed, and the committed seeds' sample std (None: fewer than 2 seeds)."""

    metric: str
    committed: float | None
    rerun: float | None
    allowed: float
    std: float | None = None
    missing: str | None = None  # "in the rerun" or "in the file" when only one side has the metric

    @property
    def difference(self) -> float | None:
        if self.committed is None or self.rerun is None:
            return None
        return self.rerun - self.committed

    @property
    def ok(self) -> bool:
        if self.missing:
            return False
        if self.difference is None:  # non-finite: only the same non-finite outcome reproduces it
            return self.committed is None and self.rerun is None
        return abs(self.difference) <= self.allowed


def allowed_difference(committed: float, rerun: float, seed_values: Sequence[float],
                       same_environment: bool, absolute: float | None) -> float:
    """The largest |rerun − committed| accepted for one metric: ``absolute`` when given; else 0 in the
    same environment; else :data:`SPREAD_FACTOR` × the sample std of the committed seeds' values, at
    least :data:`INTEGER_FLOOR` when every value is a whole or half number (ranks, counts, medians of
    them) and :data:`ROUND_OFF` × its size."""
    if absolute is not None:
        return absolute
    if same_environment:
        return 0.0
    std = statistics.stdev(seed_values) if len(seed_values) > 1 else 0.0
    whole = all(float(2 * v).is_integer() for v in (*seed_values, committed, rerun))
    return max(SPREAD_FACTOR * std, INTEGER_FLOOR if whole else 0.0,
               ROUND_OFF * max(abs(committed), abs(rerun)))


def compare(committed: RunResult, rerun: RunResult, seeds: Sequence[RunResult],
            same_environment: bool, absolute: float | None) -> list[Check]:
    """Every metric of either file, checked (:func:`allowed_difference`); ``seeds``: the committed
    seeds of the same configuration, the committed file included."""
    checks = []
    for metric in dict.fromkeys([*committed.metrics, *rerun.metrics]):
        before, after = committed.metrics.get(metric), rerun.metrics.get(metric)
        values = [v for r in seeds if (v := r.metrics.get(metric)) is not None and math.isfinite(v)]
        std = statistics.stdev(values) if len(values) > 1 else None
        if metric not in rerun.metrics or metric not in committed.metrics:
            side = "in the rerun" if metric not in rerun.metrics else "in the file"
            checks.append(Check(metric, before, after, 0.0, std, missing=side))
        elif before is None or after is None:
            checks.append(Check(metric, before, after, 0.0, std))
        else:
            allowed = allowed_difference(before, after, values, same_environment, absolute)
            checks.append(Check(metric, before, after, allowed, std))
    return checks


def committed_seeds(path: Path, result: RunResult) -> list[RunResult]:
    """The ``ok`` results of ``result``'s configuration beside it (its other seeds), itself included."""
    seeds = []
    for other in sorted(path.parent.glob("seed-*.json")):
        try:
            candidate = result if other == path else read_result(other)
        except (OSError, ValueError):
            continue
        if candidate.status == "ok" and candidate.benchmark == result.benchmark \
                and candidate.configuration() == result.configuration():
            seeds.append(candidate)
    return seeds


def check_rerunnable(path: Path, result: RunResult) -> None:
    """Refuse, naming the file, a result that has nothing to compare or does not describe its job."""
    if result.status != "ok":
        raise HarnessError(f"{path}: status {result.status!r}: it has no metrics to reproduce")
    lacking = [name for name in ("dataset", "evaluators") if getattr(result, name) is None]
    if lacking:
        raise HarnessError(f"{path}: written by an older harness that did not record its "
                           f"{' and '.join(lacking)}, so its job cannot be rebuilt from it")


def rerun(path: Path, result: RunResult, out_dir: Path, plugins: Sequence[str] = ()) -> RunResult:
    """Run the job ``result`` describes (method config, dataset parameters, evaluators, eval splits,
    plugin modules, seed) and write its result under ``out_dir``. Modules that provided a component
    through ``-p`` are loaded again, since the file names them."""
    modules = list(dict.fromkeys([*plugins, *(p.module for p in result.providers or ()
                                              if p.module and p.module not in result.plugins)]))
    benchmark = {"name": result.benchmark, "dataset": {"name": result.dataset.name, **result.dataset.params},
                 "seeds": [result.seed], "methods": [result.config], "evaluators": result.evaluators,
                 "eval_splits": result.eval_splits, "plugins": result.plugins}
    try:
        spec, registry, _ = prepare(benchmark, plugins=modules, forward_check=False)
    except HarnessError as exc:
        raise HarnessError(f"{path}: cannot rebuild the job it describes: {exc}") from None
    # the rerun's file says what the committed one says about the job's place in its benchmark
    job = plan(spec, registry)[0].model_copy(update={
        "method_index": result.method_index, "sweep": result.sweep, "report_metrics": result.report_metrics})
    task = Task(index=0, job=job, path=result_path(out_dir, job.benchmark, job.name, job.seed),
                plugins=modules, progress=sys.stderr.isatty())
    return run_task_here(task, registry)


def environment_note(committed: RunResult, rerun: RunResult) -> tuple[bool, str]:
    """Whether both runs had the same environment (fingerprint), and one line saying how they differ."""
    old, new = committed.provenance.environment, rerun.provenance.environment
    if old is None or new is None:
        was, now = committed.provenance, rerun.provenance
        return False, (f"not known to be the same: the file records no environment fingerprint (written "
                       f"before environments were recorded); it was torch {was.torch}, Python "
                       f"{was.python}, here torch {now.torch}, Python {now.python}")
    if old.fingerprint == new.fingerprint:
        return True, f"the same (fingerprint {new.fingerprint})"
    changed = "; ".join(differences(old, new)) or "the recorded fields agree (fingerprinted otherwise)"
    return False, f"different (fingerprint {old.fingerprint} in the file, {new.fingerprint} here): {changed}"


def tolerance_note(same_environment: bool, absolute: float | None, seed_count: int) -> str:
    if absolute is not None:
        return f"|difference| ≤ {absolute:g} for every metric (--tolerance {absolute:g})"
    if same_environment:
        return "auto: identical values, since the environment is the same"
    spread = (f"{SPREAD_FACTOR:g} × the sample std of the {seed_count} committed seeds"
              if seed_count > 1 else "the committed seeds' spread, unknown here (one seed)")
    return (f"auto, another environment: within {spread}, at least {INTEGER_FLOOR:g} for integer-valued "
            f"metrics (medians, ranks) and {ROUND_OFF:g} relative for float round-off")


def _number(x: float | None, signed: bool = False) -> str:
    if x is None:
        return "—"
    return "0" if x == 0 else f"{x:+.6g}" if signed else f"{x:.6g}"


def report(path: Path, committed: RunResult, rerun_result: RunResult, seeds: Sequence[RunResult],
           absolute: float | None) -> tuple[list[str], list[Check]]:
    """The lines printed for one file, and its checks."""
    same, environment = environment_note(committed, rerun_result)
    lines = [f"== {path}: {committed.benchmark} / {committed.method}, seed {committed.seed} (rerun in "
             f"{rerun_result.provenance.duration_s:.1f} s)", f"environment: {environment}"]
    if rerun_result.status != "ok":
        return lines + [f"the rerun {rerun_result.status}: {rerun_result.error}"], []
    old, new = committed.configuration(), rerun_result.configuration()
    changed = first_difference(old, {part: value for part, value in new.items() if part in old})
    if changed:
        field, before, now = changed
        lines.append(f"note: the rerun's configuration differs at {field}: {before!r} in the file, "
                     f"{now!r} here (a changed plugin or dataset)")
    lines.append(f"tolerance: {tolerance_note(same, absolute, len(seeds))}")
    checks = compare(committed, rerun_result, seeds, same, absolute)
    rows = [[c.metric, _number(c.committed), _number(c.rerun),
             c.missing and f"missing {c.missing}" or _number(c.difference, signed=True),
             _number(c.std), _number(c.allowed), "ok" if c.ok else "OUTSIDE"] for c in checks]
    lines.append(tabulate(rows, headers=["metric", "committed", "rerun", "difference", "seeds' std",
                                         "allowed", ""], tablefmt="simple", disable_numparse=True))
    failed = [c.metric for c in checks if not c.ok]
    identical = sum(c.difference == 0 or (c.ok and c.committed is None) for c in checks)
    lines.append(f"reproduced: {len(checks)} of {len(checks)} metrics within tolerance ({identical} "
                 f"identical)" if not failed else
                 f"NOT reproduced: {len(failed)} of {len(checks)} metrics outside tolerance: "
                 f"{', '.join(failed)}")
    return lines, checks


def choose(files: list[Path], count: int, seed: int) -> list[Path]:
    """``count`` of ``files`` drawn with ``seed`` (all of them when there are no more), in order."""
    return sorted(random.Random(seed).sample(files, min(count, len(files))))


def reproduce(paths: Sequence[str | Path], *, sample: int | None = None, sample_seed: int | None = None,
              absolute: float | None = None, plugins: Sequence[str] = (), out_dir: str | Path | None = None,
              echo: Callable[[str], None] = print) -> bool:
    """Rerun the jobs of the result files ``paths`` name (files, or folders of them; ``sample`` of them
    drawn with ``sample_seed``, printed) and print each comparison; True when every metric of every file
    is within tolerance. Every file is read and checked before anything runs: a bad one raises a
    :class:`HarnessError` naming it."""
    files = result_files(list(paths))
    if sample is not None:
        seed = random.SystemRandom().randrange(1_000_000) if sample_seed is None else sample_seed
        chosen = choose(files, sample, seed)
        echo(f"sampled {len(chosen)} of {len(files)} result files with seed {seed} "
             f"(--sample {sample} --sample-seed {seed} draws them again)")
        files = chosen
    loaded = [(path, open_result(path)) for path in files]
    named = {Path(p) for p in paths}
    skipped = {path for path, r in loaded if r.status != "ok" and path not in named}
    for path, r in loaded:  # found in a folder: nothing to compare; named on its own: an error below
        if path in skipped:
            echo(f"skipping {path}: status {r.status!r}, no metrics to reproduce")
    loaded = [(path, r) for path, r in loaded if path not in skipped]
    if not loaded:
        raise HarnessError("no result file with status 'ok' to reproduce")
    for path, result in loaded:
        check_rerunnable(path, result)
    failures: list[str] = []
    with tempfile.TemporaryDirectory(prefix="harness-reproduce-") as temporary:
        where = Path(out_dir) if out_dir is not None else Path(temporary)
        for path, result in loaded:
            lines, checks = report(path, result, rerun(path, result, where, plugins),
                                   committed_seeds(path, result), absolute)
            echo("\n".join(lines) + "\n")
            bad = [c.metric for c in checks if not c.ok]
            if bad or not checks:
                failures.append(f"{path}: {', '.join(bad) if bad else 'the rerun did not finish'}")
    if failures:
        echo(f"not reproduced: {len(failures)} of {len(loaded)} result file(s):\n  " + "\n  ".join(failures))
    else:
        echo(f"reproduced: {len(loaded)} of {len(loaded)} result file(s)")
    return not failures


def parse_tolerance(text: str) -> float | None:
    """``--tolerance``: ``auto`` (None) or a non-negative absolute difference."""
    if text == "auto":
        return None
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value < 0:
        raise HarnessError(f"--tolerance: expected 'auto' or a non-negative number, got {text!r}")
    return value
