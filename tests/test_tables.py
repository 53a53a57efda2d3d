import csv
import io
import json
import subprocess
from datetime import datetime, timezone

import pytest

from harness.cli import main
from harness.results import RunResult, load_results, provenance, result_path, write_result
from harness.tables import build_table, column_decimals, group_runs

from conftest import ROOT, cli_env, harness_cmd


def _result(method, seed, metrics, status="ok", index=0, benchmark="b", config=None, units=None,
            report=("r/R@1", "r/medr")):
    now = datetime.now(timezone.utc)
    return RunResult(benchmark=benchmark, method=method, method_index=index, seed=seed, status=status,
                     metrics=metrics if status == "ok" else {},
                     higher_is_better={"r/R@1": True, "r/medr": False} if status == "ok" else {},
                     units=units or {}, report_metrics=list(report), config=config or {"name": method},
                     provenance=provenance(now, now, 0.0, "cpu"))


@pytest.fixture
def results():
    return [
        _result("alpha", 0, {"r/R@1": 10.0, "r/medr": 5.0}),
        _result("alpha", 1, {"r/R@1": 20.0, "r/medr": 3.0}),
        _result("<script>beta</script>", 0, {"r/R@1": 30.0, "r/medr": 4.5}, index=1),
        _result("<script>beta</script>", 1, {}, status="diverged", index=1),
        _result("gamma_x", 0, {}, status="failed", index=2),
    ]


def test_github_table_mean_std_seeds_status_and_best(results):
    table = build_table(results)
    lines = table.splitlines()
    assert "r/R@1 ↑" in lines[0] and "r/medr ↓" in lines[0]
    alpha = next(l for l in lines if "alpha" in l)
    assert "15.0 ± 7.1" in alpha and " 2 |" in alpha and "**4.0 ± 1.4**" in alpha  # lower medr best
    beta = next(l for l in lines if "beta" in l)
    assert "**30.0**" in beta and " 4.5 |" in beta and "1 ok, 1 diverged" in beta
    gamma = next(l for l in lines if "gamma" in l)
    assert "1 failed" in gamma and "—" in gamma


def test_html_is_escaped(results):
    table = build_table(results, fmt="html")
    assert "<script>" not in table and "&lt;script&gt;beta&lt;/script&gt;" in table
    assert "<b>30.0</b>" in table and 'style="text-align: right;"' in table


def test_latex_is_escaped_and_bolded(results):
    table = build_table(results, fmt="latex")
    assert r"gamma\_x" in table and r"\textbf{30.0}" in table and r"$\pm$" in table


def test_latex_is_booktabs_with_right_aligned_numeric_columns(results):
    lines = build_table(results, fmt="latex").splitlines()
    # method and status left, seeds and every metric right
    assert lines[:2] == [r"\begin{tabular}{lrlrr}", r"\toprule"]
    assert lines[3] == r"\midrule" and lines[7:9] == [r"\bottomrule", r"\end{tabular}"]
    assert not any(r"\hline" in line for line in lines)
    assert r"r/R@1 $\uparrow$" in lines[2] and r"r/medr $\downarrow$" in lines[2]
    assert len(lines) == 4 + 3 + 2 + 2 and all(line.endswith(r"\\") for line in lines[4:7])
    assert all(line.startswith("% ") for line in lines[9:])  # the footnote, as LaTeX comments


def test_csv_is_numeric(results):
    text = build_table(results, fmt="csv")
    rows = list(csv.DictReader(io.StringIO(text)))
    parts = ["mean", "std", "n", "ci95_low", "ci95_high", "p", "test", "tied_with_best"]
    assert list(rows[0]) == ["method", "seeds", "status", *[f"r/R@1 {p}" for p in parts],
                             *[f"r/medr {p}" for p in parts], "best"]
    alpha, beta, gamma = rows
    assert float(alpha["r/R@1 mean"]) == 15.0 and float(alpha["r/R@1 std"]) == pytest.approx(7.0711, 1e-4)
    assert alpha["r/R@1 n"] == "2" and alpha["best"] == "r/medr" and beta["best"] == "r/R@1"
    assert float(beta["r/R@1 mean"]) == 30.0 and beta["r/R@1 std"] == "" and beta["r/R@1 n"] == "1"
    assert gamma["r/R@1 mean"] == gamma["r/R@1 std"] == "" and gamma["r/R@1 n"] == "0"
    for row in rows:  # every filled numeric cell parses as a float
        for key, value in row.items():
            if key.endswith((" mean", " std")) and value:
                float(value)


def test_csv_numbers_have_no_float_noise():
    # fmean([0.04, 0.24]) == 0.13999999999999999 and fmean([0.1, 0.2]) == 0.15000000000000002
    runs = [_result("a", 0, {"r/R@1": 0.04, "r/medr": 0.1}), _result("a", 1, {"r/R@1": 0.24, "r/medr": 0.2})]
    text = build_table(runs, fmt="csv")
    assert "9999999" not in text and "0000000" not in text
    row = next(csv.DictReader(io.StringIO(text)))
    assert row["r/R@1 mean"] == "0.14" and row["r/medr mean"] == "0.15" and row["r/R@1 n"] == "2"
    assert float(row["r/R@1 std"]) == pytest.approx(0.141421356, 1e-8)


def test_column_decimals_come_from_the_spread():
    def runs(method, index, seeds):
        return [_result(method, seed, dict(zip(("x/mid", "x/big", "x/small"), values)), index=index,
                        report=("x/mid", "x/big", "x/small")) for seed, values in enumerate(seeds)]
    results = (runs("a", 0, [(9.0, 177.0, 0.462), (10.6, 200.0, 0.512), (12.2, 223.0, 0.562)])
               + runs("b", 1, [(5.0, 100.0, 0.3)] * 3)       # seeds agree: no spread, same decimals
               + runs("c", 2, [(7.0, 150.0, 0.25)]))         # one seed: the value alone, same decimals
    lines = build_table(results).splitlines()
    a, b, c = (next(l for l in lines if l.startswith(f"| {name} ")) for name in "abc")
    assert "**10.6 ± 1.6**" in a and "**200 ± 23**" in a and "**0.512 ± 0.050**" in a
    assert "5.0 ± 0.0" in b and "100 ± 0" in b and "0.300 ± 0.000" in b
    assert " 7.0 |" in c and " 150 |" in c and " 0.250 |" in c
    # the representative spread is the median std of the rows that have one
    rows = group_runs([*runs("p", 0, [(1.0,), (1.02,)]), *runs("q", 1, [(1.0,), (1.2,)]),
                       *runs("r", 2, [(1.0,), (15.0,)])])
    assert column_decimals(rows, "x/mid") == 2  # stds 0.014, 0.14, 9.9: the median, 0.14, shown as 0.14


def test_column_decimals_without_spread_follow_the_magnitude():
    def column(*values):
        return column_decimals(group_runs([_result(f"m{i}", 0, {"x": v}, index=i)
                                           for i, v in enumerate(values)]), "x")
    assert column(53.77, 60.1) == 1 and column(0.1234) == 3 and column(516.3, 480.0) == 0
    assert column(0.0) == 2  # nothing but zeros
    table = build_table([_result("m", 0, {"r/R@1": 53.77, "r/medr": 0.1234})])
    assert "**53.8**" in table and "**0.123**" in table


def test_units_in_headers(results):
    with_units = [r.model_copy(update={"units": {"r/R@1": "%"} if r.status == "ok" else {}})
                  for r in results]
    header = build_table(with_units).splitlines()[0]
    assert "r/R@1 (%) ↑" in header and "r/medr ↓" in header and "r/medr (" not in header
    assert r"r/R@1 (\%) $\uparrow$" in build_table(with_units, fmt="latex")
    assert "r/R@1 (%) ↑" in build_table(with_units, fmt="html")
    assert "r/R@1 (%)" not in build_table(results)  # older files declare no units


def test_metric_selection_and_unknown_format(results):
    table = build_table(results, metrics=["r/medr"])
    assert "R@1" not in table
    with pytest.raises(ValueError, match="github"):
        build_table(results, fmt="docx")


def test_cli_table_from_files_matches_and_skips_corrupt_files(tmp_path, results):
    for r in results:
        write_result(result_path(tmp_path, "b", r.method.replace("<", "").replace(">", "").replace("/", ""),
                                 r.seed), r)
    (tmp_path / "b" / "alpha" / "seed-9.json").write_text('{"schema_version": 1, "trunc')
    (tmp_path / "b" / "alpha" / ".seed-7.json.abc.tmp").write_text("partial")
    out = subprocess.run([*harness_cmd(), "table", str(tmp_path / "b")], capture_output=True,
                         text=True, env=cli_env(), timeout=120)
    assert out.returncode == 0, out.stderr
    assert "skipping unreadable result file" in out.stderr and "seed-9.json" in out.stderr
    assert out.stdout.strip() == build_table(results)
    for fmt in ("latex", "html", "csv"):
        again = subprocess.run([*harness_cmd(), "table", str(tmp_path / "b"), "--format", fmt,
                                "--metrics", "r/R@1"], capture_output=True, text=True,
                               env=cli_env(), timeout=120)
        assert again.returncode == 0 and again.stdout.strip() == build_table(results, ["r/R@1"], fmt).strip()


def test_cli_table_errors_exit_2(tmp_path):
    for args in (["table", str(tmp_path / "missing")], ["table", str(tmp_path)],
                 ["table", str(tmp_path), "--format", "docx"]):
        out = subprocess.run([*harness_cmd(), *args], capture_output=True, text=True, env=cli_env(),
                             timeout=120)
        assert out.returncode == 2, args
        assert "Traceback" not in out.stderr


def test_write_result_is_atomic_and_leaves_no_temp_files(tmp_path, results):
    path = result_path(tmp_path, "b", "alpha", 0)
    write_result(path, results[0])
    write_result(path, results[1])
    assert [p.name for p in path.parent.iterdir()] == ["seed-0.json"]
    assert json.loads(path.read_text())["seed"] == 1
    assert len(load_results(tmp_path / "b")) == 1


def _write(directory, results):
    for r in results:
        write_result(result_path(directory, r.benchmark, r.method.replace("<", "").replace(">", "")
                                 .replace("/", ""), r.seed), r)


def test_several_benchmarks_give_one_table_each_never_pooled(results):
    other = [_result("alpha", 0, {"r/R@1": 90.0, "r/medr": 1.0}, benchmark="a<&>")]
    mixed = results + other
    table = build_table(mixed)
    first, second = table.split("### b\n\n")  # sorted by benchmark name: "a<&>" before "b"
    assert first.startswith("### a<&>\n\n") and "**90.0**" in first and "beta" not in first
    assert second == build_table(results)  # alpha's 10/20 not pooled with the other benchmark's 90
    assert "% a<&>\n" in build_table(mixed, fmt="latex")
    page = build_table(mixed, fmt="html")
    assert "<h3>a&lt;&amp;&gt;</h3>" in page and "<h3>b</h3>" in page
    rows = list(csv.DictReader(io.StringIO(build_table(mixed, fmt="csv"))))
    assert [(r["benchmark"], r["method"]) for r in rows] == [
        ("a<&>", "alpha"), ("b", "alpha"), ("b", "<script>beta</script>"), ("b", "gamma_x")]
    assert float(rows[0]["r/R@1 mean"]) == 90.0 and float(rows[1]["r/R@1 mean"]) == 15.0
    assert rows[0]["best"] == "r/R@1;r/medr" and rows[2]["best"] == "r/R@1"  # best within a benchmark


def test_single_benchmark_csv_has_no_benchmark_column(results):
    assert "benchmark" not in build_table(results, fmt="csv").splitlines()[0]


@pytest.mark.parametrize("table", sorted((ROOT / "results").glob("*/table.md")), ids=lambda p: p.parent.name)
def test_committed_tables_are_rebuilt_byte_for_byte(table):
    assert build_table(load_results(table.parent)) + "\n" == table.read_text()


def test_cli_table_of_a_folder_of_benchmarks(tmp_path, results, capsys):
    _write(tmp_path, results + [_result("alpha", 0, {"r/R@1": 90.0, "r/medr": 1.0}, benchmark="a")])
    assert main(["table", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "### a\n" in out and "### b\n" in out and out.count("alpha") == 2


def test_cli_table_unknown_metric_exits_2_with_suggestion(tmp_path, results, capsys):
    _write(tmp_path, results)
    assert main(["table", str(tmp_path / "b"), "--metrics", "r/R@1", "r/R@l"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "'r/R@l'" in err and "did you mean 'r/R@1'" in err
    assert "available: r/R@1, r/medr" in err
    # a metric the failed runs lack is still known: "—" for them, not an error
    assert main(["table", str(tmp_path / "b"), "--metrics", "r/medr"]) == 0


def test_cli_format_markdown_is_github(tmp_path, results, capsys):
    _write(tmp_path, results)
    assert main(["table", str(tmp_path / "b"), "--format", "markdown"]) == 0
    markdown = capsys.readouterr().out
    assert main(["table", str(tmp_path / "b"), "--format", "github"]) == 0
    assert markdown == capsys.readouterr().out == build_table(results) + "\n"
    assert build_table(results, fmt="markdown") == build_table(results)


def _method(epochs):
    return {"name": "m", "loss": {"name": "infonce"}, "encoders": {"image": {"name": "small-cnn"},
            "text": {"name": "gru"}}, "train": {"epochs": epochs}}


def test_one_method_with_two_configurations_gives_two_rows_never_averaged(tmp_path, capsys):
    runs = {4: [_result("m", 0, {"r/R@1": 10.0, "r/medr": 5.0}, config=_method(4)),
                _result("m", 1, {"r/R@1": 20.0, "r/medr": 3.0}, config=_method(4))],
            5: [_result("m", 0, {"r/R@1": 50.0, "r/medr": 2.0}, config=_method(5)),
                _result("m", 1, {"r/R@1": 70.0, "r/medr": 2.0}, config=_method(5))]}
    for epochs, group in runs.items():  # same benchmark, method and seeds: two runs folders
        _write(tmp_path / f"epochs{epochs}", group)
    assert main(["table", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    lines = [line for line in out.splitlines() if line.startswith("|")]
    assert len(lines) == 4  # header, rule, one row per configuration
    four = next(l for l in lines if "m [train.epochs=4]" in l)
    five = next(l for l in lines if "m [train.epochs=5]" in l)
    assert "15 ± 7" in four and "**60 ± 14**" in five and "37" not in out
    assert main(["table", str(tmp_path), "--format", "csv"]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert [(r["method"], float(r["r/R@1 mean"]), r["r/R@1 n"]) for r in rows] == [
        ("m [train.epochs=4]", 15.0, "2"), ("m [train.epochs=5]", 60.0, "2")]


def test_cli_table_metrics_only_in_report_metrics_are_unknown(tmp_path, capsys):
    # "r/R@5" is listed in the files' report_metrics, but no run measured it: a typo, not a column
    report = ("r/R@1", "r/R@5")
    _write(tmp_path, [_result("a", 0, {"r/R@1": 1.0}, report=report),
                      _result("a", 1, {}, status="failed", report=report)])
    assert main(["table", str(tmp_path / "b"), "--metrics", "r/R@5"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "'r/R@5' (did you mean 'r/R@1'?)" in err and "available: r/R@1\n" in err
    assert main(["table", str(tmp_path / "b"), "--metrics", "r/R@1"]) == 0


def test_cli_table_unwritable_output_exits_2_naming_path(tmp_path, results, capsys):
    _write(tmp_path, results)
    target = tmp_path / "missing" / "x.md"
    assert main(["table", str(tmp_path / "b"), "-o", str(target)]) == 2
    err = capsys.readouterr().err
    assert err == f"harness: error: cannot write {target}: No such file or directory\n"
    assert main(["table", str(tmp_path / "b"), "-o", str(tmp_path)]) == 2  # a folder: IsADirectoryError
    assert str(tmp_path) in capsys.readouterr().err
