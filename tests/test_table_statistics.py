"""Seed statistics in tables: the 95 % confidence interval of the mean and the "not significantly worse
than the best" mark (paired t-test over seeds when the seeds and dataset match, else Welch's), on
constructed result sets whose answers are computed by hand here."""

import copy
import csv
import io
import math
import statistics
import warnings
from datetime import datetime, timezone

import pytest
from scipy.stats import t as student_t

from harness.results import DatasetRecord, RunResult, provenance
from harness.runner import run
from harness.tables import build_table, compare_with_best, confidence_interval, group_runs

# t_{0.975, n-1} from a printed table, so the interval is not checked against the code's own scipy call
T975 = {2: 12.7062047362, 3: 4.3026527297, 5: 2.7764451052}
METRIC = "r/R@1"  # higher is better
LOWER = "r/medr"  # lower is better


def _result(method, seed, value, index=0, fingerprint="data-A", metric=METRIC, status="ok"):
    now = datetime.now(timezone.utc)
    dataset = None if fingerprint is None else DatasetRecord(name="toy", params={}, fingerprint=fingerprint)
    return RunResult(benchmark="b", method=method, method_index=index, seed=seed, status=status,
                     metrics={metric: value} if status == "ok" else {},
                     higher_is_better={METRIC: True, LOWER: False}, report_metrics=[metric],
                     config={"name": method}, dataset=dataset, provenance=provenance(now, now, 0.0, "cpu"))


def _runs(method, values, index, seeds=None, **kwargs):
    seeds = range(len(values)) if seeds is None else seeds
    return [_result(method, seed, v, index, **kwargs) for seed, v in zip(seeds, values)]


def _csv_rows(results):
    return {row["method"]: row for row in csv.DictReader(io.StringIO(build_table(results, fmt="csv")))}


def _line(table, method):
    return next(line for line in table.splitlines() if line.startswith(f"| {method} "))


def _paired_p(a, b):
    """One-sided p of "a lower than b", paired: t = mean(d) / (sd(d)/√n), d = a - b."""
    d = [x - y for x, y in zip(a, b)]
    t = statistics.fmean(d) / (statistics.stdev(d) / math.sqrt(len(d)))
    return student_t.cdf(t, len(d) - 1)


def _welch_p(a, b):
    """One-sided p of "a lower than b", Welch: unequal variances, Welch–Satterthwaite df."""
    va, vb = statistics.variance(a) / len(a), statistics.variance(b) / len(b)
    t = (statistics.fmean(a) - statistics.fmean(b)) / math.sqrt(va + vb)
    df = (va + vb) ** 2 / (va ** 2 / (len(a) - 1) + vb ** 2 / (len(b) - 1))
    return student_t.cdf(t, df)


# the best varies a lot from seed to seed; "close" is below it on every seed by about 1: across seeds
# the two overlap (Welch: not significantly worse), seed by seed it always loses (paired: worse)
BEST = [10.0, 30.0, 50.0, 70.0, 90.0]
CLOSE = [9.0, 28.8, 49.1, 68.9, 89.2]
FAR = [1.0, 1.5, 0.5, 1.2, 0.8]


def test_the_constructed_seeds_make_the_two_tests_disagree():
    assert _paired_p(CLOSE, BEST) < 0.001 and _welch_p(CLOSE, BEST) > 0.4


def test_confidence_interval_is_the_t_interval_of_the_mean():
    for values in ([10.0, 12.0, 14.0], [3.0, 5.5], BEST):
        n, mean, s = len(values), statistics.fmean(values), statistics.stdev(values)
        half = T975[n] * s / math.sqrt(n)
        assert confidence_interval(values) == pytest.approx((mean - half, mean + half), rel=1e-10)
    assert confidence_interval([7.0]) is None and confidence_interval([]) is None
    assert confidence_interval([2.0, 2.0, 2.0]) == (2.0, 2.0)  # seeds that agree: no width


def test_the_interval_in_the_cell_and_in_csv():
    results = _runs("a", [10.0, 12.0, 14.0], 0) + _runs("b", [1.0, 2.0, 3.0], 1)
    half = T975[3] * 2.0 / math.sqrt(3)  # s = 2: 12 ± 4.968
    table = build_table(results)
    assert "**12.0 ± 2.0** [7.0, 17.0]†" in _line(table, "a")  # one decimal: the std is 2.0 / 1.0
    assert "2.0 ± 1.0 [-0.5, 4.5] |" in _line(table, "b")
    row = _csv_rows(results)["a"]
    assert float(row[f"{METRIC} ci95_low"]) == pytest.approx(12 - half, rel=1e-10)
    assert float(row[f"{METRIC} ci95_high"]) == pytest.approx(12 + half, rel=1e-10)
    assert float(row[f"{METRIC} mean"]) == 12.0 and float(row[f"{METRIC} std"]) == 2.0


def test_paired_test_when_seeds_and_dataset_match():
    results = _runs("best", BEST, 0) + _runs("close", CLOSE, 1) + _runs("far", FAR, 2)
    cells = compare_with_best(group_runs(results), METRIC)
    best, close, far = cells
    assert best.best and best.tied and best.test == "none" and best.p is None
    assert close.test == "paired" and close.p == pytest.approx(_paired_p(CLOSE, BEST), rel=1e-9)
    assert not close.tied  # loses on every seed: significantly worse, though its interval overlaps
    assert far.test == "paired" and not far.tied
    table = build_table(results)
    assert _line(table, "best").rstrip(" |").endswith("]†")
    assert not _line(table, "close").rstrip(" |").endswith("†")
    assert "Test: paired t-test, seed by seed (the same seeds and dataset as the best)." in table
    assert "Welch" not in table and "No test" not in table
    rows = _csv_rows(results)
    methods = ("best", "close", "far")
    assert [rows[m][f"{METRIC} test"] for m in methods] == ["none", "paired", "paired"]
    assert [rows[m][f"{METRIC} tied_with_best"] for m in methods] == ["true", "false", "false"]
    assert float(rows["close"][f"{METRIC} p"]) == pytest.approx(_paired_p(CLOSE, BEST), rel=1e-9)
    assert rows["best"][f"{METRIC} p"] == "" and rows["best"]["best"] == METRIC


@pytest.mark.parametrize("how", ["other seeds", "other dataset", "no dataset record", "a seed missing"])
def test_welch_test_when_seeds_or_dataset_differ(how):
    close = {"other seeds": _runs("close", CLOSE, 1, seeds=range(10, 15)),
             "other dataset": _runs("close", CLOSE, 1, fingerprint="data-B"),
             "no dataset record": _runs("close", CLOSE, 1, fingerprint=None),
             "a seed missing": _runs("close", CLOSE[:4], 1)}[how]
    results = _runs("best", BEST, 0) + close + _runs("far", FAR, 2, seeds=range(20, 25))
    _, close_cell, far_cell = compare_with_best(group_runs(results), METRIC)
    assert close_cell.test == "welch"
    assert close_cell.p == pytest.approx(_welch_p([r.metrics[METRIC] for r in close], BEST), rel=1e-9)
    assert close_cell.tied  # across seeds the two overlap: not significantly worse
    assert far_cell.test == "welch" and not far_cell.tied  # clearly worse either way
    table = build_table(results)
    assert _line(table, "close").rstrip(" |").endswith("]†")
    assert not _line(table, "far").rstrip(" |").endswith("†")
    assert "Test: Welch's t-test (the seeds or dataset differ from the best's)." in table
    assert "paired" not in table
    row = _csv_rows(results)["close"]
    assert row[f"{METRIC} test"] == "welch" and row[f"{METRIC} tied_with_best"] == "true"


def test_a_table_with_both_tests_names_the_welch_rows():
    results = (_runs("best", BEST, 0) + _runs("close", CLOSE, 1)
               + _runs("elsewhere", CLOSE, 2, fingerprint="data-B"))
    table = build_table(results)
    assert not _line(table, "close").rstrip(" |").endswith("†")  # paired: worse
    assert _line(table, "elsewhere").rstrip(" |").endswith("†")  # Welch: tied
    assert ("Test: paired t-test, seed by seed, where a method has the same seeds and dataset as the "
            "best; Welch's t-test otherwise: elsewhere.") in table
    # a row tested both ways lists the metrics of its Welch tests
    two = [_result("best", s, v, 0, metric=m) for m in (METRIC, LOWER) for s, v in enumerate(BEST)]
    mixed = [*[_result("x", s, v, 1, metric=METRIC) for s, v in enumerate(CLOSE)],
             *[_result("x", s, 200.0 - v, 1, metric=LOWER) for s, v in enumerate(CLOSE[:4])]]
    merged = _merge(two + mixed)
    assert f"Welch's t-test otherwise: x ({LOWER})." in build_table(merged, [METRIC, LOWER])


def _merge(results):
    """Results of one (method, seed) with different metrics, merged into one result each."""
    out = {}
    for r in results:
        key = (r.method, r.seed)
        if key in out:
            out[key].metrics.update(r.metrics)
        else:
            out[key] = r.model_copy(deep=True)
    for r in out.values():
        r.report_metrics = [METRIC, LOWER]
    return list(out.values())


def test_lower_is_better():
    low = [5.0, 3.0, 4.0, 6.0]
    results = (_runs("best", low, 0, metric=LOWER) + _runs("near", [5.5, 3.2, 4.6, 6.1], 1, metric=LOWER)
               + _runs("worse", [50.0, 41.0, 47.0, 52.0], 2, metric=LOWER)
               + _runs("noisy", [1.0, 9.0, 2.0, 9.5], 3, metric=LOWER, seeds=range(4, 8)))
    best, near, worse, noisy = compare_with_best(group_runs(results), LOWER, higher_is_better=False)
    assert best.best and best.mean == 4.5
    # one-sided toward "worse" = higher: p of "near higher than best" is 1 - cdf
    assert near.test == "paired" and near.p == pytest.approx(1 - _paired_p([5.5, 3.2, 4.6, 6.1], low))
    assert not near.tied  # higher on every seed
    assert worse.test == "paired" and worse.p < 1e-4 and not worse.tied
    assert noisy.test == "welch" and noisy.tied
    assert noisy.p == pytest.approx(1 - _welch_p([1.0, 9.0, 2.0, 9.5], low), rel=1e-9)
    table = build_table(results, [LOWER])
    assert "r/medr ↓" in table and "**4.5 ± 1.3**" in _line(table, "best")
    assert not _line(table, "worse").rstrip(" |").endswith("†")
    assert _line(table, "noisy").rstrip(" |").endswith("†")


def test_equal_means_are_all_best_and_constant_differences_are_certain():
    # identical seeds: a second best (no test: it is a best); a constant difference: worse for sure
    results = (_runs("a", BEST, 0) + _runs("twin", BEST, 1) + _runs("flat", [49.0] * 5, 2)
               + _runs("flat-below", [x - 1 for x in BEST], 3))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # scipy's "nearly identical" / division warnings stay inside
        a, twin, flat, below = compare_with_best(group_runs(results), METRIC)
    assert a.best and twin.best and a.tied and twin.tied and twin.test == "none"
    assert flat.test == "paired" and flat.tied  # differences vary a lot: not significant
    assert below.test == "paired" and below.p == 0.0 and not below.tied  # 1 lower on every seed


def test_one_seed_has_no_interval_and_no_test():
    results = (_runs("best", BEST, 0) + _runs("single", [49.0], 1)
               + _runs("failed", [0.0], 2, status="failed"))
    best, single, failed = compare_with_best(group_runs(results), METRIC)
    assert single.n == 1 and single.ci is None and single.std is None
    assert single.test == "none" and not single.tied and single.p is None
    assert failed.n == 0 and failed.mean is None and not failed.tied
    table = build_table(results)
    assert _line(table, "single").endswith(" 49 |")  # the value alone, unmarked
    assert "—" in _line(table, "failed")
    assert "No test where the method or the best has fewer than 2 seeds: left unmarked." in table
    row = _csv_rows(results)["single"]
    assert row[f"{METRIC} ci95_low"] == row[f"{METRIC} ci95_high"] == row[f"{METRIC} p"] == ""
    assert row[f"{METRIC} test"] == "none" and row[f"{METRIC} tied_with_best"] == "false"
    # a best of one seed: nothing can be tested against it; it is still the (marked) best
    results = _runs("lone", [95.0], 0) + _runs("many", BEST, 1)
    lone, many = compare_with_best(group_runs(results), METRIC)
    assert lone.best and lone.tied and lone.ci is None
    assert many.test == "none" and not many.tied and many.ci is not None
    table = build_table(results)
    assert "**95**†" in _line(table, "lone") and "No test" in table
    assert not _line(table, "many").rstrip(" |").endswith("†")


def test_latex_and_html_carry_marks_intervals_and_the_test():
    results = _runs("best", BEST, 0) + _runs("eh_x", CLOSE, 1, fingerprint="data-B") + _runs("far", FAR, 2)
    latex = build_table(results, fmt="latex")
    best = next(line for line in latex.splitlines() if line.startswith(" best "))
    # std 31.6: no decimals; 50 ± 2.776 · 31.62 / √5 = [10.7, 89.3]
    assert best.endswith(r"& \textbf{50 $\pm$ 32} [11, 89]$^\dagger$ \\")
    eh = next(line for line in latex.splitlines() if line.startswith(r" eh\_x "))
    assert eh.endswith(r" 49 $\pm$ 32 [10, 88]$^\dagger$ \\")  # Welch: tied
    far = next(line for line in latex.splitlines() if line.startswith(" far "))
    assert far.endswith(r" 1 $\pm$ 0 [1, 1] \\")
    notes = latex.split("\\end{tabular}\n")[1].splitlines()
    assert notes and all(line.startswith("% ") for line in notes)
    assert r"95 \% confidence interval" in notes[0] and r"$^\dagger$: not significantly worse" in notes[0]
    assert "Welch's t-test otherwise: eh\\_x." in notes[1]
    page = build_table(results, fmt="html")
    assert page.startswith("<table>\n<caption")
    caption = page.split("<caption", 1)[1].split("</caption>")[0]
    assert "†: not significantly worse" in caption and "Welch's t-test otherwise: eh_x." in caption
    assert "<b>50 ± 32</b> [11, 89]†</td>" in page
    rows = _csv_rows(results)
    assert {m: rows[m][f"{METRIC} test"] for m in rows} == {"best": "none", "eh_x": "welch", "far": "paired"}
    for row in rows.values():  # every number parses as one
        for part in ("mean", "std", "ci95_low", "ci95_high"):
            float(row[f"{METRIC} {part}"])


def test_several_benchmarks_each_have_their_own_best_and_footnote():
    first = _runs("best", BEST, 0) + _runs("close", CLOSE, 1)
    second = [r.model_copy(update={"benchmark": "c"}) for r in _runs("close", CLOSE, 1, seeds=range(5, 10))]
    table = build_table(first + second)
    b, c = table.split("### c\n\n")
    assert "Test: paired" in b and "Test:" not in c  # alone in its benchmark: the best, nothing to test
    assert "**49 ± 32** [10, 88]†" in c  # 49.0 ± 2.776 · 31.70 / √5 = [9.6, 88.4]
    rows = list(csv.DictReader(io.StringIO(build_table(first + second, fmt="csv"))))
    assert [(r["benchmark"], r["method"], r[f"{METRIC} tied_with_best"]) for r in rows] == [
        ("b", "best", "true"), ("b", "close", "false"), ("c", "close", "true")]


def test_the_run_summary_tests_seed_by_seed(tmp_path, toy_config):
    """Real result files: the runner's table pairs the seeds (same dataset fingerprint)."""
    config = copy.deepcopy(toy_config)
    config["seeds"] = [0, 1]
    config["defaults"]["train"]["epochs"] = 1
    config["methods"] = [{"name": "infonce", "loss": {"name": "infonce"}},
                         {"name": "cold", "loss": {"name": "infonce", "temperature": 1.0}}]
    outcome = run(config, tmp_path, progress=False)
    assert outcome.ok
    table = outcome.table
    assert (tmp_path / "toy" / "table.md").read_text().strip() == table
    assert "confidence interval of the mean" in table
    lines = [line for line in table.splitlines() if line.startswith(("| infonce ", "| cold "))]
    assert len(lines) == 2 and all(" [" in line for line in lines)  # two seeds: an interval each
    rows = group_runs(outcome.results)
    others = [c for m in config["report"]["metrics"] for c in compare_with_best(rows, m) if not c.best]
    assert others and all(c.test == "paired" for c in others)
    assert "Test: paired t-test, seed by seed (the same seeds and dataset as the best)." in table
