"""Plots researchers look at, made from a tiny real run: the embedding map and the retrieval examples
from a checkpoint, the report metrics with confidence intervals, `harness plot RUN_OR_DIR`, and their
place on the leaderboard."""

import subprocess

import numpy as np
import pytest
from matplotlib.offsetbox import AnnotationBbox

from harness.leaderboard import collect, submissions_from
from harness.metric_chart import metric_chart
from harness.model_plots import (ModelPlotError, _truth, draw_model_plots, load_trained,
                                 write_model_plots_in)
from harness.results import load_results
from harness.runner import run
from harness.site import write_site
from harness.tables import compare_with_best, group_runs

from conftest import ROOT, cli_env, harness_cmd

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

TINY = {
    "name": "tiny",
    "dataset": {"name": "shapes", "train_size": 64, "val_size": 16, "test_size": 24},
    "seeds": [0, 1],
    "defaults": {
        "encoders": {"image": {"name": "small-cnn", "channels": [4, 4]},
                     "text": {"name": "gru", "word_dim": 8, "hidden_dim": 8}},
        "embed_dim": 8,
        "train": {"epochs": 2, "batch_size": 16, "device": "cpu", "checkpoint": True},
    },
    "methods": [
        {"name": "infonce", "loss": {"name": "infonce"}},
        # token features scored by the match-map: the plots must use the method's own pair score
        {"name": "matchmap", "encoders": {"image": {"name": "small-cnn", "channels": [4, 4], "pool": "none"},
                                          "text": {"name": "gru", "word_dim": 8, "hidden_dim": 8,
                                                   "pool": "none"}},
         "loss": {"name": "matchmap", "temperature": 0.1}},
        {"name": "no-checkpoint", "loss": {"name": "infonce"}, "train": {"checkpoint": False}},
    ],
    "evaluators": [{"name": "retrieval", "ks": [1, 5]}],
    "report": {"metrics": ["retrieval/t2i_R@1", "retrieval/i2t_R@1", "retrieval/t2i_medr"]},
}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    outcome = run(TINY, out, progress=False, echo=lambda m: None)
    assert outcome.ok, [r.error for r in outcome.results]
    return out / "tiny"


def test_the_trained_model_is_rebuilt_from_its_result_and_checkpoint(tiny):
    trained = load_trained(tiny / "infonce" / "seed-0.json")
    result = trained.result
    split = trained.dataset.split("test")
    from harness.metrics import retrieval_metrics_from_scores
    scores = trained.model.score(trained.model.embed_images(split.images), trained.model.embed_texts(split.texts))
    again = retrieval_metrics_from_scores(scores, split.text_to_image, ks=(1, 5))
    assert again["t2i_R@1"] == pytest.approx(result.metrics["retrieval/t2i_R@1"])
    matchmap = load_trained(tiny / "matchmap" / "seed-0.json")
    assert matchmap.model.scorer is not None  # the match-map score, not a cosine


def test_embedding_map_places_every_content_word_and_the_images(tiny):
    figures = draw_model_plots(tiny / "infonce" / "seed-1.json")
    ax = figures["embedding-map"].axes[0]
    words = {t.get_text() for t in ax.texts}
    info = load_trained(tiny / "infonce" / "seed-1.json").dataset.info
    content = {w for w, c in info.word_categories.items() if c in ("color", "shape", "size", "relation")}
    assert words == content and {"red", "circle", "small", "left"} <= words
    thumbnails = [a for a in ax.artists if isinstance(a, AnnotationBbox)]
    assert 4 <= len(thumbnails) <= 24
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert legend == ["color words", "shape words", "size words", "relation words"]
    assert ax.get_xlabel().startswith("PC1 (") and "seed 1" in ax.get_title()


@pytest.mark.parametrize("method", ["infonce", "matchmap"])
def test_retrieval_examples_list_the_models_top_5_and_mark_the_true_ones(tiny, method):
    path = tiny / method / "seed-0.json"
    trained = load_trained(path)
    split = trained.dataset.split("test")
    scores = trained.model.score(trained.model.embed_images(split.images),
                                 trained.model.embed_texts(split.texts)).numpy()
    truth = _truth(trained, split)
    figure = draw_model_plots(path)["retrieval"]
    top, bottom = figure.subfigs
    for row in top.subfigs:  # image → captions
        texts = [t.get_text() for t in row.axes[1].texts]
        image = int(texts[0].split()[1].rstrip(":"))
        order = np.argsort(-scores[image], kind="stable")[:5]
        for line, j in zip(texts[1:], order):
            mark = "✓" if truth[j, image] else "✗"
            assert line.startswith(f"{list(order).index(j) + 1}. {mark} ") and f"({scores[image, j]:.2f})" in line
    for row in bottom.subfigs:  # caption → images: a green frame exactly on the true ones
        caption = row._suptitle.get_text()
        j = next(k for k, text in enumerate(split.texts) if f"“{text}”" in caption)
        order = np.argsort(-scores[:, j], kind="stable")[:5]
        framed = [ax.spines["top"].get_linewidth() == 3 for ax in row.axes]
        assert framed == [bool(truth[j, i]) for i in order]


def test_metric_chart_shows_the_tables_intervals_and_marks(tiny):
    assert (tiny / "metrics-ci.png").read_bytes()[:8] == PNG_MAGIC  # harness run wrote it beside the table
    results = load_results(tiny)
    figure = metric_chart(results)
    rows = group_runs(results)
    panels = [ax for ax in figure.axes if ax.get_visible()]
    assert [ax.get_title() for ax in panels] == ["retrieval/t2i_R@1 ↑", "retrieval/i2t_R@1 ↑",
                                                 "retrieval/t2i_medr ↓"]
    cells = compare_with_best(rows, "retrieval/t2i_medr", higher_is_better=False)
    ax = panels[2]
    labels = [t.get_text() for t in ax.get_yticklabels()]
    assert labels == [row.label + (" †" if cell.tied else "") for row, cell in zip(rows, cells)]
    bars = [p for p in ax.patches]
    assert [b.get_width() for b in bars] == pytest.approx([c.mean for c in cells])
    assert [b.get_linewidth() > 0 for b in bars] == [c.best for c in cells]
    # the error bars span the 95 % confidence interval
    segments = [seg for coll in ax.collections for seg in coll.get_segments()]
    spans = sorted((round(s[0][0], 6), round(s[1][0], 6)) for s in segments)
    assert spans == sorted((round(c.ci[0], 6), round(c.ci[1], 6)) for c in cells)


def test_harness_plot_a_run_writes_its_model_plots_beside_it(tiny, tmp_path):
    out = subprocess.run([*harness_cmd(), "plot", str(tiny / "infonce" / "seed-0.json")],
                         capture_output=True, text=True, env=cli_env(), timeout=600, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    written = out.stdout.split()
    assert written == [str(tiny / "infonce" / "seed-0.embedding-map.png"),
                       str(tiny / "infonce" / "seed-0.retrieval.png")]
    assert all(open(p, "rb").read(8) == PNG_MAGIC for p in written)
    missing = subprocess.run([*harness_cmd(), "plot", str(tiny / "no-checkpoint" / "seed-0.json")],
                             capture_output=True, text=True, env=cli_env(), timeout=600, cwd=ROOT)
    assert missing.returncode == 2
    assert missing.stderr.splitlines() == [
        f"harness: error: {tiny / 'no-checkpoint' / 'seed-0.json'}: no checkpoint seed-0.pt beside it "
        f"(rerun with --set defaults.train.checkpoint=true to keep the trained weights)"]


def test_harness_plot_a_folder_draws_every_run_with_a_checkpoint_with_a_progress_bar(tiny, capsys):
    written = write_model_plots_in(tiny, progress=True)
    assert sorted(p.name for p in written if p.parent.name == "matchmap") == [
        "seed-0.embedding-map.png", "seed-0.retrieval.png", "seed-1.embedding-map.png",
        "seed-1.retrieval.png"]
    assert not any(p.parent.name == "no-checkpoint" for p in written)
    assert "model plots: 100%" in capsys.readouterr().err


def test_a_run_that_did_not_finish_has_no_model_to_draw(tiny, tmp_path):
    from harness.results import read_result, write_result
    failed = read_result(tiny / "infonce" / "seed-0.json").model_copy(update={"status": "failed"})
    write_result(tmp_path / "seed-0.json", failed)
    with pytest.raises(ModelPlotError, match="the run failed"):
        load_trained(tmp_path / "seed-0.json")


def test_the_leaderboard_shows_the_model_plots_and_the_metric_chart(tiny, tmp_path):
    write_site(collect(submissions_from([str(tiny.parent)])), tmp_path / "site")
    page = (tmp_path / "site" / "tiny.html").read_text()
    assert page.count('alt="Embedding map') == 2 and page.count('alt="Retrieval examples') == 2
    assert 'alt="Report metrics with 95 % confidence intervals."' in page
    assert 'alt="Training loss per method' in page


def test_a_checkpoint_that_cannot_be_drawn_is_a_warning_on_the_leaderboard(tiny, tmp_path):
    import shutil
    copy = tmp_path / "runs" / "tiny"
    shutil.copytree(tiny, copy)
    for png in copy.rglob("*.png"):
        png.unlink()
    for seed in (0, 1):
        (copy / "infonce" / f"seed-{seed}.pt").write_bytes(b"not a checkpoint")
    out = subprocess.run([*harness_cmd(), "leaderboard", str(tmp_path / "runs"), "-o", str(tmp_path / "site")],
                         capture_output=True, text=True, env=cli_env(), timeout=600, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    warnings = [line for line in out.stderr.splitlines() if line.startswith("warning: no model plots")]
    assert len(warnings) == 2 and all("cannot rebuild the model" in w for w in warnings)
    page = (tmp_path / "site" / "tiny.html").read_text()
    assert page.count('alt="Embedding map') == 1  # matchmap's; infonce's checkpoints are broken
