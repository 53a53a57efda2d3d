import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

import harness
from harness.config import TrainSpec
from harness.errors import HarnessError
from harness.results import read_result
from harness.runner import run
from harness.training import lr_factor

import harness_test_plugin as toy
from conftest import cli_env, harness_cmd


def _quiet(**kw):
    return dict(progress=False, **kw)


def test_run_writes_one_typed_result_file_per_method_and_seed(tmp_path, toy_config):
    toy_config["seeds"] = [0, 1]
    outcome = harness.run(toy_config, tmp_path, progress=False)
    assert outcome.ok
    for seed in (0, 1):
        path = tmp_path / "toy" / "infonce" / f"seed-{seed}.json"
        result = read_result(path)
        raw = json.loads(path.read_text())
        assert raw["schema_version"] == 1 and result.status == "ok" and result.seed == seed
        assert 0 <= result.metrics["retrieval/t2i_R@1"] <= 100
        assert result.higher_is_better["retrieval/t2i_medr"] is False
        assert result.config["loss"] == {"name": "infonce"} and result.config["train"]["epochs"] == 2
        assert result.dataset.name == "toy" and len(result.dataset.fingerprint) == 32
        assert [h["epoch"] for h in result.history] == [0, 1]
        prov = result.provenance
        assert prov.torch == torch.__version__ and prov.device == "cpu"
        assert prov.python.startswith(f"{sys.version_info.major}.") and prov.duration_s > 0
        assert prov.finished_at >= prov.started_at
        # the rest of the job, so that the file alone says how to run it again
        assert result.evaluators == [{"name": "retrieval"}] and result.eval_splits == ["test"]
        assert result.plugins == ["harness_test_plugin"]
        assert prov.git_dirty in (True, False, None)
        assert path.stat().st_mode & 0o777 == 0o644  # readable by others sharing the results
    assert (tmp_path / "toy" / "table.md").read_text().strip() == outcome.table
    assert (tmp_path / "toy" / "plots.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_same_seed_twice_gives_identical_metrics(tmp_path, toy_config):
    first = run(toy_config, tmp_path / "a", **_quiet()).results[0]
    second = run(toy_config, tmp_path / "b", **_quiet()).results[0]
    assert first.metrics == second.metrics
    assert [h["loss"] for h in first.history] == [h["loss"] for h in second.history]
    toy_config["seeds"] = [1]
    other = run(toy_config, tmp_path / "c", **_quiet()).results[0]
    assert [h["loss"] for h in other.history] != [h["loss"] for h in first.history]


def test_rerun_skips_finished_runs_unless_overwrite(tmp_path, toy_config):
    run(toy_config, tmp_path, **_quiet())
    path = tmp_path / "toy" / "infonce" / "seed-0.json"
    stamp = read_result(path).provenance.started_at
    messages = []
    run(toy_config, tmp_path, echo=messages.append, **_quiet())
    assert read_result(path).provenance.started_at == stamp
    assert any("already done" in m for m in messages)
    run(toy_config, tmp_path, overwrite=True, **_quiet())
    assert read_result(path).provenance.started_at > stamp


def test_a_result_of_a_different_configuration_stops_the_run_before_training(tmp_path, toy_config):
    run(toy_config, tmp_path, **_quiet())
    path = tmp_path / "toy" / "infonce" / "seed-0.json"
    stamp = read_result(path).provenance.started_at
    for change in ({"methods.infonce.loss.temperature": 0.5}, {"dataset.size": 32},
                   {"evaluators.0.ks": [1, 2]}):
        key, value = next(iter(change.items()))
        with pytest.raises(HarnessError) as info:
            run(toy_config, tmp_path, overrides=[f"{key}={json.dumps(value)}"], **_quiet())
        assert str(path) in str(info.value) and "--overwrite" in str(info.value)
        assert read_result(path).provenance.started_at == stamp  # nothing replaced, nothing trained
    assert "temperature" in str(pytest.raises(HarnessError, run, toy_config, tmp_path,
                                              overrides=["methods.infonce.loss.temperature=0.5"],
                                              **_quiet()).value)
    # settings that only change how a run executes still count as the same run
    messages = []
    run(toy_config, tmp_path, overrides=["defaults.train.threads=1", "defaults.train.eval_batch_size=7"],
        echo=messages.append, **_quiet())
    assert any("already done" in m for m in messages)
    run(toy_config, tmp_path, overrides=["methods.infonce.loss.temperature=0.5"], overwrite=True, **_quiet())
    assert read_result(path).config["loss"]["temperature"] == 0.5


def test_results_folder_that_cannot_be_created_fails_before_training(tmp_path, toy_config):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(HarnessError, match="cannot create the results folder"):
        run(toy_config, blocker, **_quiet())


def test_eval_splits_score_val_with_a_prefix_and_test_under_plain_names(tmp_path, toy_config):
    toy_config["eval_splits"] = ["val", "test"]
    toy_config["report"]["metrics"] = ["val/retrieval/rsum", "retrieval/rsum"]
    result = run(toy_config, tmp_path, **_quiet()).results[0]
    assert result.status == "ok", result.error
    assert {"val/retrieval/rsum", "retrieval/rsum", "val/retrieval/t2i_R@1"} <= set(result.metrics)
    assert result.higher_is_better["val/retrieval/t2i_medr"] is False
    # the toy dataset's val and test splits differ, so the numbers are computed on each
    assert result.metrics["val/retrieval/t2i_meanr"] != result.metrics["retrieval/t2i_meanr"]


def test_lbfgs_trains_on_the_whole_split_with_fixed_captions_per_step(tmp_path, toy_config):
    toy_config["methods"] = [{"name": "lbfgs", "loss": {"name": "recorder"},
                              "train": {"optimizer": "lbfgs", "epochs": 3, "lbfgs_max_iter": 4}}]
    toy.EVENTS.clear()
    result = run(toy_config, tmp_path, **_quiet()).results[0]
    assert result.status == "ok", result.error
    steps, current = [], []  # one step per epoch: the loss calls between two epoch ends
    for event in toy.EVENTS:
        if event[0] == "loss_call":
            current.append(event[1:])
        elif event[0] == "epoch_end":
            steps.append(current)
            current = []
    assert len(steps) == 3 and all(len(calls) > 1 for calls in steps)  # the closure ran repeatedly
    assert {size for calls in steps for _, size, _ in calls} == {64}  # the whole toy train split
    assert all(len({captions for _, _, captions in calls}) == 1 for calls in steps)  # fixed per step
    assert len({calls[0][2] for calls in steps}) > 1  # but drawn afresh each step (2 captions/image)


def test_failed_and_diverged_runs_are_recorded_and_retried(tmp_path, toy_config):
    toy_config["methods"] += [{"name": "nan", "loss": {"name": "nan-loss", "after": 2}},
                              {"name": "boom", "loss": {"name": "exploding"}}]
    outcome = run(toy_config, tmp_path, **_quiet())
    status = {r.method: r for r in outcome.results}
    assert status["infonce"].status == "ok"
    assert status["nan"].status == "diverged" and "non-finite" in status["nan"].error
    assert status["boom"].status == "failed" and "boom from ExplodingLoss" in status["boom"].error
    assert "RuntimeError" in status["boom"].traceback
    assert not outcome.ok
    assert "1 diverged" in outcome.table and "1 failed" in outcome.table
    messages = []
    run(toy_config, tmp_path, echo=messages.append, **_quiet())
    assert sum("already done" in m for m in messages) == 1  # only the ok run is skipped


def test_closed_form_methods_fit_the_runner(tmp_path, toy_config):
    toy_config["methods"] = [{"name": "lstsq", "estimator": {"name": "lstsq", "ridge": 0.1},
                              "encoders": {"image": {"name": "pixels", "size": 2},
                                           "text": {"name": "bag-of-words"}}}]
    result = run(toy_config, tmp_path, **_quiet()).results[0]
    assert result.status == "ok", result.error
    assert result.history == []
    # 8 classes with distinct colours and words: a linear map retrieves far above chance (1/16)
    assert result.metrics["retrieval/t2i_R@5"] > 60


def test_loss_extras_come_from_the_split_and_class_names(tmp_path, toy_config):
    toy.LabelledLoss.seen.clear()
    toy_config["methods"] = [{"name": "labelled", "loss": {"name": "labelled"}}]
    assert run(toy_config, tmp_path, **_quiet()).ok
    assert toy.LabelledLoss.seen[0] == (torch.Size([16]), torch.Size([8, 8]),
                                        torch.Size([16, 3, 8, 8]), 16)


@pytest.mark.parametrize("train", [{"precision": "bf16"}, {"optimizer": "lbfgs", "epochs": 2},
                                   {"optimizer": "sgd", "schedule": "step", "step_size": 1,
                                    "grad_clip": 1.0, "warmup_epochs": 0.5}])
def test_training_options_run(tmp_path, toy_config, train):
    toy_config["defaults"]["train"].update(train)
    result = run(toy_config, tmp_path, **_quiet()).results[0]
    assert result.status == "ok", result.error
    assert all(np.isfinite(h["loss"]) for h in result.history)


def _loss_calls() -> list[tuple]:
    return [event[1:] for event in toy.EVENTS if event[0] == "loss_call"]


def test_threads_option_sets_torch_threads_for_that_run_only(tmp_path, toy_config):
    before = torch.get_num_threads()
    wanted = before + 1  # differs from the default on any machine
    toy_config["methods"] = [{"name": "threads", "loss": {"name": "recorder"},
                              "train": {"threads": wanted}}]
    toy.EVENTS.clear()
    assert run(toy_config, tmp_path, **_quiet()).results[0].status == "ok"
    assert {threads for threads, _, _ in _loss_calls()} == {wanted}
    assert torch.get_num_threads() == before  # restored for the next run


def test_cuda_device_without_cuda_fails_the_run_clearly(tmp_path, toy_config):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    toy_config["defaults"]["train"]["device"] = "cuda"
    result = run(toy_config, tmp_path, **_quiet()).results[0]
    assert result.status == "failed" and "CUDA is not available" in result.error


def test_lr_schedules():
    cosine = TrainSpec(epochs=2, schedule="cosine")
    assert lr_factor(0, 10, cosine) == 1.0
    assert lr_factor(10, 10, cosine) == pytest.approx(0.5)
    assert lr_factor(20, 10, cosine) == pytest.approx(0.0)
    step = TrainSpec(epochs=4, schedule="step", step_size=2, gamma=0.5)
    assert [lr_factor(s, 10, step) for s in (0, 19, 20, 39)] == [1.0, 1.0, 0.5, 0.5]
    warm = TrainSpec(epochs=2, schedule="constant", warmup_epochs=1)
    assert lr_factor(0, 10, warm) == pytest.approx(0.1) and lr_factor(15, 10, warm) == 1.0


def test_kill_9_leaves_no_partial_file_and_rerun_finishes_only_the_rest(tmp_path, toy_config):
    toy_config["seeds"] = [0, 1, 2]
    toy_config["methods"] = [{"name": "slow", "loss": {"name": "slow-mse", "delay": 0.02}}]
    toy_config["defaults"]["train"]["epochs"] = 3
    config = tmp_path / "slow.yaml"
    config.write_text(json.dumps(toy_config))  # JSON is valid YAML
    out = tmp_path / "out"
    cmd = [*harness_cmd(), "run", str(config), "--out", str(out), "--no-progress"]
    proc = subprocess.Popen(cmd, env=cli_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    first = out / "toy" / "slow" / "seed-0.json"
    deadline = time.time() + 120
    while not first.exists() and time.time() < deadline:
        time.sleep(0.05)
    assert first.exists(), "the first run never finished"
    os.kill(proc.pid, signal.SIGKILL)  # now somewhere inside seed 1
    proc.wait()
    files = sorted(p.name for p in (out / "toy" / "slow").iterdir() if not p.name.startswith("."))
    assert "seed-2.json" not in files
    for name in files:
        assert read_result(out / "toy" / "slow" / name).status == "ok"  # complete and valid
    done = subprocess.run(cmd, env=cli_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "seed=0: already done" in done.stderr
    assert {p.name for p in (out / "toy" / "slow").glob("seed-*.json")} == {
        "seed-0.json", "seed-1.json", "seed-2.json"}


def test_checkpoint_holds_weights_and_sampler_state_and_loads_without_pickle(tmp_path, toy_config):
    from harness.training import load_checkpoint
    toy_config["defaults"]["train"]["checkpoint"] = True
    toy_config["methods"] = [{"name": "moco", "loss": {"name": "infonce", "learnable_temperature": True},
                              "sampler": {"name": "moco", "size": 32, "momentum": 0.9}}]
    assert run(toy_config, tmp_path, **_quiet()).ok
    state = load_checkpoint(tmp_path / "toy" / "moco" / "seed-0.pt")
    assert any(k.startswith("image_encoder.") for k in state["model"])
    assert "logit_scale" in state["loss"]
    assert state["sampler"]  # the queue and momentum encoders
    assert [h["epoch"] for h in state["history"]] == [0, 1]
    assert not list((tmp_path / "toy" / "moco").glob(".*.tmp"))


def test_learnable_temperature_gets_no_weight_decay():
    from harness.training import make_optimizer
    weight, scale = torch.nn.Parameter(torch.ones(2)), torch.nn.Parameter(torch.ones(()))
    optimizer = make_optimizer([weight], [scale], TrainSpec(weight_decay=0.5))
    assert [g["weight_decay"] for g in optimizer.param_groups] == [0.5, 0.0]


def test_an_eval_context_embeds_each_split_once_for_all_its_evaluators():
    import numpy as np
    import torch

    from harness.components import EvalContext
    from harness.data import DatasetInfo, Split

    calls = []

    class Model:
        cosine_scores = True

        def embed_images(self, images):
            calls.append("images")
            return torch.as_tensor(np.asarray(images), dtype=torch.float32)

        def embed_texts(self, texts):
            calls.append("texts")
            return torch.ones(len(texts), 2)

    split = Split(name="test", images=np.eye(3, 2), texts=["a", "b", "c"], text_to_image=[0, 1, 2])
    other = Split(name="train", images=np.eye(4, 2), texts=["d"] * 4, text_to_image=[0, 1, 2, 3])
    context = EvalContext(model=Model(), split=split, train_split=other, dataset_info=DatasetInfo(name="x"))
    first = context.embed()
    assert context.embed()[0] is first[0] and context.embed_images() is first[0]
    assert len(context.embed_images(other)) == 4 and context.embed_images(other) is context.embed_images(other)
    assert calls == ["images", "texts", "images"]
