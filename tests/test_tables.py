import csv
import io
import json
import subprocess
from datetime import datetime, timezone

import pytest

from harness.cli import main
from harness.results import RunResult, load_results, provenance, result_path, write_result
from harness.tables import build_table

from conftest import ROOT, cli_env, harness_cmd


def _result(method, seed, metrics, status="ok", index=0, benchmark="b"):
    now = datetime.now(timezone.utc)
    return RunResult(benchmark=benchmark, method=method, method_index=index, seed=seed, status=status,
                     metrics=metrics if status == "ok" else {},
                     higher_is_better={"r/R@1": True, "r/medr": False} if status == "ok" else {},
                     report_metrics=["r/R@1", "r/medr"], config={"name": method},
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
    assert "15.00 ± 7.07" in alpha and "| 2 " in alpha and "**4.00 ± 1.41**" in alpha  # lower medr best
    beta = next(l for l in lines if "beta" in l)
    assert "**30.00**" in beta and "1 ok, 1 diverged" in beta
    gamma = next(l for l in lines if "gamma" in l)
    assert "1 failed" in gamma and "—" in gamma


def test_html_is_escaped(results):
    table = build_table(results, fmt="html")
    assert "<script>" not in table and "&lt;script&gt;beta&lt;/script&gt;" in table
    assert "<b>30.00</b>" in table


def test_latex_is_escaped_and_bolded(results):
    table = build_table(results, fmt="latex")
    assert r"gamma\_x" in table and r"\textbf{30.00}" in table and r"$\pm$" in table


def test_csv_is_numeric(results):
    rows = list(csv.DictReader(io.StringIO(build_table(results, fmt="csv"))))
    alpha = rows[0]
    assert float(alpha["r/R@1"]) == 15.0 and float(alpha["r/R@1 std"]) == pytest.approx(7.0711, 1e-4)
    assert alpha["best"] == "r/medr" and rows[1]["best"] == "r/R@1"


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
    assert first.startswith("### a<&>\n\n") and "**90.00**" in first and "beta" not in first
    assert second == build_table(results)  # alpha's 10/20 not pooled with the other benchmark's 90
    assert "% a<&>\n" in build_table(mixed, fmt="latex")
    page = build_table(mixed, fmt="html")
    assert "<h3>a&lt;&amp;&gt;</h3>" in page and "<h3>b</h3>" in page
    rows = list(csv.DictReader(io.StringIO(build_table(mixed, fmt="csv"))))
    assert [(r["benchmark"], r["method"]) for r in rows] == [
        ("a<&>", "alpha"), ("b", "alpha"), ("b", "<script>beta</script>"), ("b", "gamma_x")]
    assert float(rows[0]["r/R@1"]) == 90.0 and float(rows[1]["r/R@1"]) == 15.0
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


def test_cli_table_unwritable_output_exits_2_naming_path(tmp_path, results, capsys):
    _write(tmp_path, results)
    target = tmp_path / "missing" / "x.md"
    assert main(["table", str(tmp_path / "b"), "-o", str(target)]) == 2
    err = capsys.readouterr().err
    assert err == f"harness: error: cannot write {target}: No such file or directory\n"
    assert main(["table", str(tmp_path / "b"), "-o", str(tmp_path)]) == 2  # a folder: IsADirectoryError
    assert str(tmp_path) in capsys.readouterr().err
