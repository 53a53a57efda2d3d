"""Result files grouped into table rows: one :class:`MethodRow` per (benchmark, method, configuration),
labelled apart when a method name has several configurations; and what the files say about their metrics
(the reported ones, their directions and units)."""

from __future__ import annotations

import json
import math
import statistics
from collections import Counter
from typing import Iterable, Sequence

from harness.errors import HarnessError, did_you_mean
from harness.results import RunResult, first_difference


class MethodRow:
    """All runs of one configuration of one method of one benchmark: their statuses and per-metric
    values over ``ok`` seeds. ``label`` is the method name, followed by the first field where its
    configuration differs from another configuration of the same name (``infonce [train.epochs=5]``)."""

    def __init__(self, method: str, runs: list[RunResult], label: str | None = None):
        self.method = method
        self.label = label or method
        self.benchmark = runs[0].benchmark
        self.runs = sorted(runs, key=lambda r: r.seed)
        self.ok = [r for r in self.runs if r.status == "ok"]
        self.order = min(r.method_index for r in runs)
        self.configuration = runs[0].configuration()
        self.sweep = runs[0].sweep

    def values(self, metric: str) -> list[float]:
        return [float(r.metrics[metric]) for r in self.ok
                if r.metrics.get(metric) is not None and math.isfinite(r.metrics[metric])]

    def by_seed(self, metric: str) -> dict[int, tuple[float, str | None]]:
        """Seed -> (value, dataset fingerprint) of the ``ok`` runs that measured ``metric``; empty
        when a seed occurs twice (runs merged from several folders), since then seeds cannot pair."""
        runs = [r for r in self.ok
                if r.metrics.get(metric) is not None and math.isfinite(r.metrics[metric])]
        out = {r.seed: (float(r.metrics[metric]), r.dataset.fingerprint if r.dataset else None)
               for r in runs}
        return out if len(out) == len(runs) else {}

    def mean_std(self, metric: str) -> tuple[float, float] | None:
        values = self.values(metric)
        if not values:
            return None
        return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)

    def environments(self) -> list[str]:
        """The environments (:func:`environment_label`) of the ``ok`` runs, in seed order, each once."""
        return list(dict.fromkeys(environment_label(r) for r in self.ok))

    def status(self) -> str:
        counts = Counter(r.status for r in self.runs)
        if set(counts) == {"ok"}:
            return "ok"
        return ", ".join(f"{counts[s]} {s}" for s in ("ok", "diverged", "failed") if counts[s])


def _key(configuration: dict) -> str:
    return json.dumps(configuration, sort_keys=True, default=str)


def group_runs(results: Iterable[RunResult]) -> list[MethodRow]:
    """One row per (benchmark, method, configuration): runs are averaged only when everything but the
    seed is the same (:meth:`RunResult.configuration`). A method name with several configurations
    gives several rows, each labelled by the first field where it differs from the others."""
    # keyed by benchmark too: two benchmarks' "infonce" runs are different experiments, never one row
    by_config: dict[tuple[str, str], dict[str, list[RunResult]]] = {}
    for r in results:
        by_config.setdefault((r.benchmark, r.method), {}).setdefault(_key(r.configuration()), []).append(r)
    rows = []
    for (_, method), groups in by_config.items():
        if len(groups) == 1:
            rows.append(MethodRow(method, next(iter(groups.values()))))
            continue
        configs = [runs[0].configuration() for runs in groups.values()]
        labels = [f"{method} [{_distinguishing(config, configs)}]" for config in configs]
        for i, (runs, label) in enumerate(zip(groups.values(), labels)):
            unique = label if labels.count(label) == 1 else f"{label} #{i + 1}"
            rows.append(MethodRow(method, runs, unique))
    return sorted(rows, key=lambda row: (row.benchmark, row.order, row.label))


def _distinguishing(config: dict, others: list[dict]) -> str:
    """``field=value`` for the first field in which ``config`` differs from another configuration."""
    for other in others:
        found = first_difference(config, other) if other is not config else None
        if found:
            path, value, _ = found
            text = str(value)
            return f"{path.removeprefix('method.')}={text if len(text) <= 16 else text[:12] + '…'}"
    return "?"


def environment_label(result: RunResult) -> str:
    """The environment a run computed in, for telling environments apart: its fingerprint with a summary,
    or, for files written before environments were recorded, the torch and Python they name."""
    env, prov = result.provenance.environment, result.provenance
    if env is not None:
        return f"{env.fingerprint}: {env.summary()}"
    return f"torch {prov.torch}, Python {prov.python} (no fingerprint recorded)"


def environment_letters(rows: Sequence[MethodRow]) -> dict[str, str]:
    """Environment label -> ``A``, ``B``, … in order of appearance over the rows' ``ok`` runs."""
    labels = dict.fromkeys(label for row in rows for label in row.environments())
    return {label: _letter(i) for i, label in enumerate(labels)}


def _letter(i: int) -> str:
    return chr(ord("A") + i) if i < 26 else f"E{i + 1}"


def by_benchmark(results: Iterable[RunResult]) -> dict[str, list[RunResult]]:
    """Results split by benchmark name, in name order."""
    groups: dict[str, list[RunResult]] = {}
    for r in results:
        groups.setdefault(r.benchmark, []).append(r)
    return dict(sorted(groups.items()))


def default_metrics(results: Sequence[RunResult]) -> list[str]:
    """The benchmark's ``report.metrics`` when the files carry them, else every metric seen."""
    for r in results:
        if r.report_metrics:
            return list(r.report_metrics)
    seen: dict[str, None] = {}
    for r in results:
        seen.update(dict.fromkeys(r.metrics))
    return list(seen)


def check_metrics(results: Sequence[RunResult], metrics: Sequence[str]) -> None:
    """Reject requested metrics that no result measured (a typo would otherwise be a silent "—"
    column). Only the ``metrics`` of the files count, not their ``report_metrics``: a name listed there
    that no run measured is a typo too. A metric missing only from failed runs is fine."""
    known: dict[str, None] = {}
    for r in results:
        known.update(dict.fromkeys(r.metrics))
    unknown = [m for m in metrics if m not in known]
    if unknown:
        names = ", ".join(f"{m!r}{did_you_mean(m, known)}" for m in unknown)
        raise HarnessError(f"unknown metric{'s' if len(unknown) > 1 else ''} {names}; "
                           f"available: {', '.join(known) or 'none'}")


def directions(results: Sequence[RunResult]) -> dict[str, bool]:
    out: dict[str, bool] = {}
    for r in results:
        out.update(r.higher_is_better)
    return out


def units(results: Sequence[RunResult]) -> dict[str, str]:
    """Metric -> unit ("%") as the evaluators declared them (older files declare none)."""
    out: dict[str, str] = {}
    for r in results:
        out.update(r.units)
    return out
