import csv
import io
import json
import subprocess
from datetime import datetime, timezone

import pytest

from harness.results import RunResult, load_results, provenance, result_path, write_result
from harness.tables import build_table

from conftest import cli_env, harness_cmd


def _result(method, seed, metrics, status="ok", index=0):
    now = datetime.now(timezone.utc)
    return RunResult(benchmark="b", method=method, method_index=index, seed=seed, status=status,
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
