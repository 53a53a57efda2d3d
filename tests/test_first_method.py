"""The first method end to end on the embedded dataset: it must actually learn."""

import subprocess

from harness.runner import run

from conftest import ROOT, cli_env, harness_cmd


def test_smoke_benchmark_runs_from_the_cli_with_a_table(tmp_path):
    out = subprocess.run([*harness_cmd(), "run", "benchmarks/smoke.yaml", "--out", str(tmp_path)],
                         capture_output=True, text=True, env=cli_env(), cwd=ROOT, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "| infonce " in out.stdout and "retrieval/t2i_R@1" in out.stdout
    assert (tmp_path / "smoke" / "infonce" / "seed-0.json").exists()
    # the table and its footnote (after a blank line) are all the run prints on stdout
    assert (tmp_path / "smoke" / "table.md").read_text().strip() == out.stdout.strip()


def test_infonce_learns_on_shapes_far_above_chance(tmp_path):
    config = {
        "name": "learn",
        "dataset": {"name": "shapes", "train_size": 2000, "val_size": 10, "test_size": 200,
                    "image_size": 32},
        "defaults": {"encoders": {"image": {"name": "small-cnn"}, "text": {"name": "gru"}},
                     "embed_dim": 32,
                     "train": {"epochs": 10, "batch_size": 100, "lr": 3e-3, "device": "cpu"}},
        "methods": [{"name": "infonce", "loss": {"name": "infonce"}}],
    }
    result = run(config, tmp_path, progress=False).results[0]
    assert result.status == "ok", result.error
    chance_r10 = 100 * 10 / 200
    assert result.metrics["retrieval/t2i_R@10"] > 3 * chance_r10, result.metrics
    assert result.metrics["retrieval/i2t_R@10"] > 3 * chance_r10, result.metrics
    assert result.history[-1]["loss"] < result.history[0]["loss"] - 0.3
