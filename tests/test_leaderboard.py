"""`harness leaderboard`: merging result folders of several machines and submitters, validation of
every file, conflicts, labels, escaping, the static site and the Markdown tables."""

import html
import json
import re
import shutil
import subprocess

import pytest

from harness.leaderboard import Conflict, collect, submissions_from
from harness.results import write_result
from harness.tables import build_table

from conftest import ROOT, cli_env, harness_cmd
from leaderboard_helpers import make_result, scores, write


def _cli(*args, cwd=ROOT):
    return subprocess.run([*harness_cmd(), "leaderboard", *map(str, args)], capture_output=True,
                          text=True, env=cli_env(), timeout=300, cwd=cwd)


def _rows(markdown: str) -> dict[str, list[str]]:
    """The body rows of Markdown tables: label -> the other cells, stripped."""
    rows = {}
    for line in markdown.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("|") and cells[0] not in ("method", "") and not set(cells[0]) <= set("-:"):
            rows[cells[0]] = cells[1:]
    return rows


def _three_seeds(folder, method="infonce", temperature=0.07, base=10.0, machine=None):
    for seed in range(3):
        write(folder, make_result(method, seed, temperature=temperature,
                                  metrics=scores(base + seed, 20 - seed)), machine)


def test_identical_duplicates_are_merged(tmp_path):
    _three_seeds(tmp_path / "alice")
    shutil.copytree(tmp_path / "alice", tmp_path / "mirror")  # the same files, copied elsewhere
    board = collect(submissions_from([str(tmp_path / "alice"), str(tmp_path / "mirror")]))
    assert len(board.entries) == 3 and not board.invalid
    assert all(len(e.duplicates) == 1 and "mirror" in str(e.duplicates[0]) for e in board.entries)
    out = _cli(tmp_path / "alice", tmp_path / "mirror", "--format", "md")
    assert out.returncode == 0, out.stderr
    assert _rows(out.stdout)["infonce"][:2] == ["3", "ok"]  # three seeds, not six


def test_seeds_of_one_configuration_merge_across_machines(tmp_path):
    write(tmp_path / "a", make_result(seed=0, metrics=scores(10, 20)))
    write(tmp_path / "b", make_result(seed=1, metrics=scores(12, 18)))
    board = collect(submissions_from([str(tmp_path / "a"), str(tmp_path / "b")]))
    assert [e.result.method for e in board.entries] == ["infonce", "infonce"]
    assert _rows(build_table(board.results))["infonce"][:2] == ["2", "ok"]


def test_a_conflict_within_one_submission_names_both_files_and_the_field(tmp_path):
    first = write(tmp_path / "alice", make_result(metrics=scores(10, 20)), machine="gpu-1")
    second = write(tmp_path / "alice", make_result(metrics=scores(10, 20), temperature=0.1),
                   machine="gpu-2")
    with pytest.raises(Conflict) as info:
        collect(submissions_from([str(tmp_path / "alice")]))
    assert info.value.field == "method.loss.temperature"
    out = _cli(tmp_path / "alice", "-o", tmp_path / "site")
    assert out.returncode == 2
    [line] = out.stderr.splitlines()
    assert line == (f"harness: error: conflicting results for benchmark 'bench', method 'infonce', seed 0: "
                    f"{first} and {second} differ in method.loss.temperature (0.07 vs 0.1); remove one "
                    f"of them or give them different method names")
    assert not (tmp_path / "site").exists()


@pytest.mark.parametrize("change, field", [
    ({"fingerprint": "0" * 32}, "dataset.fingerprint"),  # the same benchmark name on other data
    ({"metrics": scores(99, 1)}, "metrics.retrieval/t2i_R@1"),  # one run, two outcomes
    ({"status": "failed", "error": "boom"}, "metrics.retrieval/t2i_R@1"),
])
def test_conflicts_across_submitters(tmp_path, change, field):
    first = write(tmp_path / "alice", make_result(metrics=scores(10, 20)))
    second = write(tmp_path / "bob", make_result(**{"metrics": scores(10, 20), **change}))
    out = _cli(tmp_path / "alice", tmp_path / "bob", "--format", "md")
    assert out.returncode == 2
    assert str(first) in out.stderr and str(second) in out.stderr and f"differ in {field} " in out.stderr


def test_two_submitters_methods_of_one_name_are_distinct_rows(tmp_path):
    _three_seeds(tmp_path / "alice", temperature=0.07, base=10)
    _three_seeds(tmp_path / "bob", temperature=0.2, base=30)
    out = _cli(tmp_path / "alice", "bob=" + str(tmp_path / "bob"), "--format", "md")
    assert out.returncode == 0, out.stderr
    rows = _rows(out.stdout)
    assert list(rows) == [f"infonce ({tmp_path / 'alice'})", "infonce (bob)"]
    assert rows["infonce (bob)"][2] == "**31.0 ± 1.0** [28.5, 33.5]†"  # the mean of 30, 31, 32: best
    assert rows[f"infonce ({tmp_path / 'alice'})"][2] == "11.0 ± 1.0 [8.5, 13.5]"


def test_two_configurations_of_one_submitter_are_labelled_by_their_difference(tmp_path):
    write(tmp_path / "alice", make_result(seed=0, metrics=scores(10, 20)), machine="a")
    write(tmp_path / "alice", make_result(seed=1, temperature=0.2, metrics=scores(12, 18)), machine="b")
    out = _cli(tmp_path / "alice", "--format", "md")
    assert out.returncode == 0, out.stderr
    assert list(_rows(out.stdout)) == ["infonce [loss.temperature=0.07]", "infonce [loss.temperature=0.2]"]


def test_invalid_files_are_listed_by_path_and_field_and_left_out(tmp_path):
    _three_seeds(tmp_path / "alice")
    bench = tmp_path / "alice" / "bench"
    (bench / "broken").mkdir()
    (bench / "broken" / "seed-0.json").write_text("{not json")
    bad_value = make_result("typo", metrics=scores(1, 2)).model_dump(mode="json")
    bad_value["metrics"]["retrieval/t2i_R@1"] = "high"
    (bench / "typo").mkdir()
    (bench / "typo" / "seed-0.json").write_text(json.dumps(bad_value))
    missing = make_result("old", metrics=scores(1, 2)).model_dump(mode="json")
    del missing["provenance"]
    (bench / "old").mkdir()
    (bench / "old" / "seed-0.json").write_text(json.dumps(missing))
    (bench / "binary").mkdir()
    (bench / "binary" / "seed-0.json").write_bytes(b"\xff\xfe\x00garbage")
    out = _cli(tmp_path / "alice", "-o", tmp_path / "site")
    assert out.returncode == 1
    lines = out.stderr.splitlines()
    assert f"left out: {bench / 'broken' / 'seed-0.json'}: not valid JSON: key must be a string at line 1 column 2" in lines
    assert f"left out: {bench / 'typo' / 'seed-0.json'}: metrics.retrieval/t2i_R@1: Input should be a valid number, unable to parse string as a number" in lines
    assert f"left out: {bench / 'old' / 'seed-0.json'}: provenance: required field is missing" in lines
    assert f"left out: {bench / 'binary' / 'seed-0.json'}: not UTF-8 text (byte offset 0)" in lines
    assert lines[-1] == "harness: 4 file(s) left out: not valid result files (listed above)"
    # the valid runs still make the site, which lists what was left out
    index = (tmp_path / "site" / "index.html").read_text()
    assert "Left out: not valid result files (4)" in index
    assert html.escape(str(bench / "typo" / "seed-0.json")) in index
    page = (tmp_path / "site" / "bench.html").read_text()
    assert 'data-method="infonce"' in page and 'data-method="typo"' not in page


def test_no_valid_file_at_all_is_exit_1_and_writes_nothing(tmp_path):
    (tmp_path / "x" / "b" / "m").mkdir(parents=True)
    (tmp_path / "x" / "b" / "m" / "seed-0.json").write_text("[]")
    out = _cli(tmp_path / "x", "-o", tmp_path / "site")
    assert out.returncode == 1 and not (tmp_path / "site").exists()
    assert "left out:" in out.stderr


@pytest.mark.parametrize("args, words", [
    (["NOPE", "-o", "SITE"], "nope: not a folder"),
    (["EMPTY", "-o", "SITE"], "no result files"),
    (["RESULTS"], "--output SITE is needed"),
    (["RESULTS", "--format", "md", "--metrics", "retrieval/t2i_R@5"], "unknown metric 'retrieval/t2i_R@5'"),
    (["RESULTS", "-o", "NOTSITE"], "a non-empty folder that holds no leaderboard"),
])
def test_bad_use_is_one_line_and_exit_2(tmp_path, args, words):
    _three_seeds(tmp_path / "results")
    (tmp_path / "empty").mkdir()
    (tmp_path / "notsite").mkdir()
    (tmp_path / "notsite" / "thesis.tex").write_text("keep me")
    names = {"NOPE": tmp_path / "nope", "EMPTY": tmp_path / "empty", "RESULTS": tmp_path / "results",
             "NOTSITE": tmp_path / "notsite", "SITE": tmp_path / "site"}
    out = _cli(*[names.get(a, a) for a in args])
    assert out.returncode == 2
    assert len(out.stderr.splitlines()) == 1 and words in out.stderr and "Traceback" not in out.stderr
    assert (tmp_path / "notsite" / "thesis.tex").read_text() == "keep me"


def test_the_site_is_self_contained_and_links_copies_of_the_result_files(tmp_path):
    _three_seeds(tmp_path / "alice")
    write(tmp_path / "alice", make_result("broken", 0, status="failed", error="RuntimeError: boom",
                                          index=1))
    out = _cli(tmp_path / "alice", "-o", tmp_path / "site")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == str(tmp_path / "site" / "index.html")
    page = (tmp_path / "site" / "bench.html").read_text()
    # nothing is fetched: no external URL, every image inline, and the page says so to the browser
    assert not re.search(r"(src|href)=\"(https?:)?//", page)
    assert all(src.startswith("data:image/png;base64,") for src in re.findall(r'<img src="([^"]+)"', page))
    assert "Content-Security-Policy" in page and "default-src 'none'" in page
    links = re.findall(r'<a href="(files/[^"]+)"', page)
    assert len(links) == 4
    for link in links:
        copy = tmp_path / "site" / link.replace("%40", "@")
        original = tmp_path / "alice" / link.split("/", 2)[2]
        assert copy.read_bytes() == original.read_bytes()
    # statuses visible: the failed run's row, its status and its error
    assert 'class="method problem" data-method="broken"' in page
    assert "1 failed" in page and "RuntimeError: boom" in page
    # provenance in the panel
    assert "abc123def4 (uncommitted changes)" in page and "12.5 s" in page and "2.4.0 / no CUDA" in page


def test_best_and_not_significantly_worse_are_marked_with_the_tables_statistics(tmp_path):
    _three_seeds(tmp_path / "alice", "good", base=30)
    for seed, value in enumerate([31.5, 29.0, 30.8]):  # a little worse, not consistently
        write(tmp_path / "alice", make_result("close", seed, metrics=scores(value, 20)))
    _three_seeds(tmp_path / "alice", "bad", base=1)
    _cli(tmp_path / "alice", "-o", tmp_path / "site")
    page = (tmp_path / "site" / "bench.html").read_text()
    # the first metric's cell of each method (after its status cell)
    cells = dict(re.findall(r'data-method="(\w+)">.*?<td class="status"[^>]*>[^<]*</td>\s*'
                            r'<td class="num([^"]*)"', page, re.S))
    assert cells == {"good": " best tied", "close": " tied", "bad": ""}
    assert "31.0 ± 1.0" in page and "[28.5, 33.5]" in page  # mean ± std, 95 % interval (t, n = 3)


def test_every_text_from_a_result_file_is_escaped(tmp_path):
    evil = "<script>alert(1)</script>"
    result = make_result(evil, metrics=scores(10, 20), status="failed", error=f"{evil} & <b>bold</b>")
    result = result.model_copy(update={"benchmark": "<img src=x onerror=alert(2)>",
                                       "config": {**result.config, "name": evil}})
    write_result(tmp_path / "r" / "b" / "evil" / "seed-0.json", result)
    out = _cli(tmp_path / "r", "-o", tmp_path / "site")
    assert out.returncode == 0, out.stderr
    pages = {p.name: p.read_text() for p in (tmp_path / "site").glob("*.html")}
    assert set(pages) == {"index.html", "img-src-x-onerror-alert-2.html"}  # a safe file name
    for text in pages.values():
        assert "<script>alert" not in text and "<img src=x" not in text and "<b>bold" not in text
    page = pages["img-src-x-onerror-alert-2.html"]
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "&lt;img src=x onerror=alert(2)&gt;" in page


def test_markdown_is_the_merged_tables(tmp_path):
    _three_seeds(tmp_path / "alice")
    write(tmp_path / "bob", make_result("other", 0, metrics=scores(5, 30), index=1))
    target = tmp_path / "LEADERBOARD.md"
    out = _cli(tmp_path / "alice", tmp_path / "bob", "--format", "md", "-o", target)
    assert out.returncode == 0, out.stderr
    text = target.read_text()
    board = collect(submissions_from([str(tmp_path / "alice"), str(tmp_path / "bob")]))
    assert text.startswith(f"Merged from `{tmp_path / 'alice'}`, `{tmp_path / 'bob'}`: 4 run(s) of 1 "
                           "benchmark(s).")
    assert f"### bench\n\n{build_table(board.results)}" in text


def test_a_previous_site_is_replaced(tmp_path):
    _three_seeds(tmp_path / "alice")
    write(tmp_path / "old", make_result(benchmark="gone", metrics=scores(1, 1)))
    assert _cli(tmp_path / "alice", tmp_path / "old", "-o", tmp_path / "site").returncode == 0
    assert (tmp_path / "site" / "gone.html").exists()
    assert _cli(tmp_path / "alice", "-o", tmp_path / "site").returncode == 0
    assert not (tmp_path / "site" / "gone.html").exists()
    assert sorted(p.name for p in (tmp_path / "site" / "files").iterdir()) == ["1-" + "-".join(
        (tmp_path / "alice").as_posix().strip("/").split("/"))]


def test_the_committed_results_make_a_leaderboard(tmp_path):
    out = _cli("results", "-o", tmp_path / "site", "--format", "html")
    assert out.returncode == 0, out.stderr
    names = {p.name for p in (tmp_path / "site").glob("*.html")}
    assert {"index.html", "shapes.html", "podguzova.html", "noisy-digits.html"} <= names
