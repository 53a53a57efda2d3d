"""plots.png: the figure's structure (panels, sweep lines, chance, failed runs, curves), not its pixels."""

import subprocess
from datetime import datetime, timezone

import numpy as np
import pytest
from conftest import cli_env, harness_cmd

from harness.cli import main
from harness.plots import build_figure, plot_results
from harness.results import RunResult, SweepPoint, provenance, result_path, write_result

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
METRICS = ["r/t2i_R@1", "r/i2t_R@1", "r/t2i_R@10", "r/i2t_R@10", "r/rsum", "r/medr"]


def _config(name, temperature=0.07, epochs=3):
    return {"name": name, "loss": {"name": "infonce", "temperature": temperature},
            "encoders": {"image": {"name": "small-cnn"}, "text": {"name": "gru"}},
            "train": {"epochs": epochs}}


def _history(losses, val=None):
    """Per-epoch logs; ``val`` maps epoch index -> {val metric: value}."""
    return [{"epoch": i, "loss": loss, "lr": 1e-3, "seconds": 0.1, **(val or {}).get(i, {})}
            for i, loss in enumerate(losses)]


def _result(method, seed, metrics, status="ok", index=0, benchmark="b", sweep=None, history=None,
            chance=None, config=None, report=METRICS):
    now = datetime.now(timezone.utc)
    ok = status == "ok"
    return RunResult(
        benchmark=benchmark, method=method, method_index=index, seed=seed, status=status,
        metrics=metrics if ok else {}, higher_is_better={"r/medr": False} if ok else {},
        units={m: "%" for m in metrics if "R@" in m or "rsum" in m} if ok else {},
        chance=(chance or {}) if ok else {}, report_metrics=list(report),
        config=config or _config(method), sweep=sweep, history=history or [],
        provenance=provenance(now, now, 0.0, "cpu"))


def _all(value):
    return {m: value for m in METRICS}


def _sweep(base, temperatures, seeds=(0, 1), chance=None, index=0):
    """A method swept over loss.temperature: one variant per value, ``seeds`` each; the metric of
    variant t, seed s is 10·t + s."""
    out = []
    for t in temperatures:
        name = f"{base}@temperature={t}"
        for s in seeds:
            out.append(_result(name, s, _all(10 * t + s), index=index, chance=chance,
                                sweep=SweepPoint(base=base, values={"loss.temperature": t}),
                                config=_config(name, temperature=t),
                                history=_history([3.0 - s, 2.0, 1.5])))
    return out


def _texts(ax):
    return [t.get_text() for t in ax.texts] + [t.get_text() for t in ax.get_yticklabels()]


def test_one_panel_per_report_metric_all_of_them():
    results = [_result("alpha", s, _all(10.0 + s), history=_history([2.0, 1.0, 0.5])) for s in (0, 1)]
    results += [_result("beta", 0, _all(5.0), index=1, history=_history([4.0, 3.0, 2.0]))]
    plot = build_figure(results)
    assert list(plot.metric_axes) == METRICS  # six, not the first four
    for metric in METRICS:
        (ax,) = plot.metric_axes[metric]  # no sweep: one axis of bars
        assert [t.get_text() for t in ax.get_yticklabels()] == ["alpha", "beta"]
        widths = sorted(p.get_width() for p in ax.patches if p.get_width() > 0)
        assert widths == [5.0, 10.5]  # the means over ok seeds
    assert set(plot.loss_axes) == {"alpha", "beta"}
    assert plot.val_axes == {}  # no val metrics in the histories: no val panels
    assert "%" in plot.metric_axes["r/rsum"][0].get_xlabel()  # units in the axis label


def test_metric_selection_draws_only_those():
    results = [_result("alpha", 0, _all(1.0))]
    plot = build_figure(results, ["r/rsum", "r/medr"])
    assert list(plot.metric_axes) == ["r/rsum", "r/medr"]


def test_sweep_is_a_line_of_metric_against_swept_value():
    # variants written out of order: the line runs in order of the swept value
    results = _sweep("nce", [0.2, 0.05, 0.1]) + [_result("plain", 0, _all(1.0), index=1)]
    plot = build_figure(results)
    sweep_ax, bar_ax = plot.metric_axes["r/rsum"]
    (line,) = [l for l in sweep_ax.get_lines() if l.get_gid() == "sweep:nce"]
    assert list(line.get_xdata()) == [0.05, 0.1, 0.2]
    np.testing.assert_allclose(line.get_ydata(), [1.0, 1.5, 2.5])  # mean of seeds 10t+0, 10t+1
    assert sweep_ax.get_xlabel() == "loss.temperature"
    assert sweep_ax.get_xscale() == "linear"  # 0.05..0.2 spans less than 10x
    assert [t.get_text() for t in bar_ax.get_yticklabels()] == ["plain"]  # the rest stay bars
    # the swept method's variants share one loss panel
    assert set(plot.loss_axes) == {"nce", "plain"}
    assert len([l for l in plot.loss_axes["nce"].get_lines() if l.get_label()[:1] != "_"]) == 3


def test_wide_sweep_gets_a_log_axis_and_a_grid_sweep_falls_back_to_bars():
    results = _sweep("nce", [0.01, 0.1, 1.0])
    results += [_result(f"grid@{i}", 0, _all(float(i)), index=1,
                        sweep=SweepPoint(base="grid", values={"loss.temperature": t, "train.lr": lr}),
                        config=_config(f"grid@{i}", temperature=t))
                for i, (t, lr) in enumerate([(0.1, 1e-3), (0.2, 1e-2)])]
    plot = build_figure(results)
    sweep_ax, bar_ax = plot.metric_axes["r/t2i_R@1"]
    assert sweep_ax.get_xscale() == "log"
    assert [t.get_text() for t in bar_ax.get_yticklabels()] == ["grid@0", "grid@1"]


def test_chance_level_is_a_dashed_line_at_its_value():
    plain = [_result("alpha", 0, _all(10.0), chance={"r/t2i_R@1": 1.0})]
    (bar_ax,) = build_figure(plain).metric_axes["r/t2i_R@1"]
    (chance,) = [l for l in bar_ax.get_lines() if l.get_gid() == "chance"]
    assert list(chance.get_xdata()) == [1.0, 1.0] and chance.get_linestyle() == "--"
    assert not [l for l in build_figure(plain).metric_axes["r/rsum"][0].get_lines()
                if l.get_gid() == "chance"]  # no chance level known for this metric: no line

    swept = _sweep("nce", [0.1, 0.2], chance={"r/t2i_R@1": 0.5})
    (sweep_ax,) = build_figure(swept).metric_axes["r/t2i_R@1"]
    (chance,) = [l for l in sweep_ax.get_lines() if l.get_gid() == "chance"]
    assert list(chance.get_ydata()) == [0.5, 0.5]


def test_loss_panels_have_integer_epoch_ticks_and_their_own_scale():
    results = [_result("alpha", s, _all(1.0), history=_history([2.0 + s, 1.0, 0.5])) for s in (0, 1)]
    results += [_result("beta", 0, _all(1.0), index=1, history=_history([400.0, 300.0, 200.0]))]
    plot = build_figure(results)
    plot.figure.canvas.draw()
    alpha, beta = plot.loss_axes["alpha"], plot.loss_axes["beta"]
    for ax in (alpha, beta):
        lo, hi = ax.get_xlim()
        ticks = [t for t in ax.get_xticks() if lo <= t <= hi]
        assert ticks and all(float(t).is_integer() for t in ticks)
    (mean,) = [l for l in alpha.get_lines() if l.get_label()[:1] != "_"]
    assert list(mean.get_xdata()) == [1, 2, 3]  # epochs counted from 1
    np.testing.assert_allclose(mean.get_ydata(), [2.5, 1.0, 0.5])
    assert alpha.get_ylim()[1] < 10 < beta.get_ylim()[0]  # each on its own y scale


def test_seeds_of_unequal_length_are_drawn_each_not_truncated():
    results = [_result("alpha", 0, _all(1.0), history=_history([3.0, 2.0, 1.0])),
               _result("alpha", 1, _all(1.0), history=_history([3.0, 2.0, 1.0, 0.5, 0.25]))]
    ax = build_figure(results).loss_axes["alpha"]
    assert sorted(len(l.get_xdata()) for l in ax.get_lines()) == [3, 5]


def test_failed_and_diverged_runs_are_marked_not_absent():
    results = [_result("alpha", s, _all(10.0)) for s in (0, 1)]
    results += [_result("beta", 0, _all(5.0), index=1), _result("beta", 1, {}, "diverged", index=1)]
    results += [_result("gamma", 0, {}, "failed", index=2)]
    plot = build_figure(results)
    (ax,) = plot.metric_axes["r/rsum"]
    labels = [t.get_text() for t in ax.get_yticklabels()]
    assert labels == ["alpha", "beta  (1 diverged)", "gamma  (1 failed)"]
    assert any("failed" in t.get_text() for t in ax.texts)  # the empty slot says why
    assert "gamma" in plot.loss_axes and "failed" in plot.loss_axes["gamma"].get_title()

    # a sweep point without any ok seed: an × at its swept value, named
    swept = _sweep("nce", [0.1, 0.2])
    swept += [_result("nce@temperature=0.4", 0, {}, "failed",
                      sweep=SweepPoint(base="nce", values={"loss.temperature": 0.4}),
                      config=_config("nce@temperature=0.4", temperature=0.4))]
    (sweep_ax,) = build_figure(swept).metric_axes["r/rsum"]
    (line,) = [l for l in sweep_ax.get_lines() if l.get_gid() == "sweep:nce"]
    assert list(line.get_xdata()) == [0.1, 0.2, 0.4] and np.isnan(line.get_ydata()[-1])
    assert any(l.get_marker() == "x" and list(l.get_xdata()) == [0.4] for l in sweep_ax.get_lines())
    assert "1 failed" in _texts(sweep_ax)


def test_validation_curves_when_histories_have_them():
    val = {0: {"val/r/rsum": 10.0}, 2: {"val/r/rsum": 30.0}, 3: {"val/r/rsum": 35.0}}
    report = [*METRICS, "val/r/rsum"]
    results = [_result("alpha", s, {**_all(1.0), "val/r/rsum": 35.0}, report=report,
                       chance={"val/r/rsum": 2.0}, history=_history([4.0, 3.0, 2.0, 1.0], val))
               for s in (0, 1)]
    plot = build_figure(results)
    assert list(plot.val_axes) == ["val/r/rsum"]  # the report's val metric only
    ax = plot.val_axes["val/r/rsum"]
    (curve,) = [l for l in ax.get_lines() if l.get_gid() is None]
    assert list(curve.get_xdata()) == [1, 3, 4]
    np.testing.assert_allclose(curve.get_ydata(), [10.0, 30.0, 35.0])
    assert [list(l.get_ydata()) for l in ax.get_lines() if l.get_gid() == "chance"] == [[2.0, 2.0]]

    # no val metric in the report: the val counterparts of its metrics, where recorded
    plain = [_result("alpha", 0, _all(1.0), history=_history([2.0, 1.0], {1: {"val/r/rsum": 5.0}}))]
    assert list(build_figure(plain).val_axes) == ["val/r/rsum"]


def test_configurations_are_never_averaged():
    results = [_result("m", 0, _all(10.0), config=_config("m", epochs=3)),
               _result("m", 1, _all(20.0), config=_config("m", epochs=5))]
    (ax,) = build_figure(results).metric_axes["r/rsum"]
    labels = [t.get_text() for t in ax.get_yticklabels()]
    assert len(labels) == 2 and all(label.startswith("m [") for label in labels)
    assert sorted(p.get_width() for p in ax.patches if p.get_width() > 0) == [10.0, 20.0]


def test_plot_results_writes_png_and_nothing_without_results(tmp_path):
    path = plot_results(_sweep("nce", [0.1, 0.2]), tmp_path / "plots.png")
    assert path == tmp_path / "plots.png" and path.read_bytes()[:8] == PNG_MAGIC
    assert plot_results([], tmp_path / "none.png") is None and not (tmp_path / "none.png").exists()


def _write(root, results):
    for r in results:
        write_result(result_path(root, r.benchmark, r.method, r.seed), r)


def test_cli_plot_benchmark_folder_and_folder_of_benchmarks(tmp_path, capsys):
    _write(tmp_path, _sweep("nce", [0.1, 0.2]) + [_result("gamma", 0, {}, "failed", index=1)])
    _write(tmp_path, [_result("alpha", 0, _all(1.0), benchmark="other")])
    assert main(["plot", str(tmp_path / "b")]) == 0
    assert (tmp_path / "b" / "plots.png").read_bytes()[:8] == PNG_MAGIC
    assert capsys.readouterr().out.split() == [str(tmp_path / "b" / "plots.png"),
                                               str(tmp_path / "b" / "metrics-ci.png")]
    assert (tmp_path / "b" / "metrics-ci.png").read_bytes()[:8] == PNG_MAGIC

    (tmp_path / "b" / "plots.png").unlink()
    assert main(["plot", str(tmp_path), "--metrics", "r/rsum"]) == 0
    out = capsys.readouterr().out.split()
    assert out == [str(tmp_path / d / f) for d in ("b", "other") for f in ("plots.png", "metrics-ci.png")]
    assert all((tmp_path / d / "plots.png").read_bytes()[:8] == PNG_MAGIC for d in ("b", "other"))

    target = tmp_path / "custom.svg"
    assert main(["plot", str(tmp_path / "b"), "-o", str(target)]) == 0
    assert target.read_text().lstrip().startswith("<?xml")


@pytest.mark.parametrize("args, message", [
    (["missing"], "not a folder"),
    (["empty"], "no result files"),
    (["b", "--metrics", "r/rsm"], "did you mean 'r/rsum'"),
    ([".", "-o", "one.png"], "holds 2 benchmark folders"),
    (["b", "-o", "plots.docx"], "cannot write"),
])
def test_cli_plot_errors_are_one_line_and_exit_2(tmp_path, capsys, monkeypatch, args, message):
    _write(tmp_path, _sweep("nce", [0.1, 0.2]))
    _write(tmp_path, [_result("alpha", 0, _all(1.0), benchmark="other")])
    (tmp_path / "empty").mkdir()
    monkeypatch.chdir(tmp_path)
    assert main(["plot", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("harness: error:") and message in err and "\n" not in err


def test_cli_plot_as_a_command(tmp_path):
    _write(tmp_path, _sweep("nce", [0.1, 0.2]))
    out = subprocess.run([*harness_cmd(), "plot", str(tmp_path / "b")], capture_output=True, text=True,
                         check=False, env=cli_env(), timeout=120)
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "b" / "plots.png").read_bytes()[:8] == PNG_MAGIC
    missing = subprocess.run([*harness_cmd(), "plot", str(tmp_path / "nope")], capture_output=True,
                             text=True, check=False, env=cli_env(), timeout=120)
    assert missing.returncode == 2 and "not a folder" in missing.stderr
