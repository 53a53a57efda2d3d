"""Mid-run resume (``train.checkpoint_every``): a run killed between epochs continues from its last
checkpoint on the next ``harness run`` and ends exactly where an uninterrupted run ends."""

import json
import os
import signal
import subprocess
import time

import pytest
import torch

from harness.results import read_result
from harness.runner import run
from harness.checkpoints import load_checkpoint

import harness_test_plugin as toy
from conftest import cli_env, harness_cmd


@pytest.fixture
def stateful(toy_config):
    """Every stream a resume must restore: MoCo queue and momentum keys, a learnable temperature,
    random captions (two per image), random transforms, AdamW moments, a cosine schedule."""
    toy_config["defaults"]["train"].update(epochs=4, checkpoint_every=1, threads=1)
    toy_config["methods"] = [{
        "name": "moco", "loss": {"name": "infonce", "learnable_temperature": True},
        "sampler": {"name": "moco", "size": 32, "momentum": 0.9},
        "train": {"transforms": [{"name": "hflip", "p": 0.5}, {"name": "counting", "noise": 0.05}]}}]
    return toy_config


def _same_run(a, b):
    assert a.status == b.status == "ok"
    assert a.metrics == b.metrics
    assert [h["loss"] for h in a.history] == [h["loss"] for h in b.history]
    assert [h["epoch"] for h in a.history] == list(range(len(b.history)))


def test_a_killed_run_continues_from_its_checkpoint_and_ends_as_an_uninterrupted_run(tmp_path, stateful):
    reference = run(stateful, tmp_path / "reference", progress=False).results[0]
    stateful["methods"][0]["train"]["transforms"][1]["delay"] = 0.15  # ~0.6 s an epoch: time to kill
    config = tmp_path / "moco.yaml"
    config.write_text(json.dumps(stateful))
    out = tmp_path / "out"
    cmd = [*harness_cmd(), "run", str(config), "--out", str(out), "--no-progress"]
    proc = subprocess.Popen(cmd, env=cli_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    checkpoint = out / "toy" / "moco" / "seed-0.resume.pt"
    deadline = time.time() + 120
    while not checkpoint.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.02)
    assert checkpoint.exists(), "no checkpoint was written"
    os.kill(proc.pid, signal.SIGKILL)  # between epochs 1 and 4: training is not finished
    proc.wait()
    assert not (out / "toy" / "moco" / "seed-0.json").exists()
    done_epochs = len(load_checkpoint(checkpoint)["history"])
    assert 1 <= done_epochs < 4
    again = subprocess.run(cmd, env=cli_env(), capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    assert "resuming from seed-0.resume.pt after epoch" in again.stderr
    _same_run(read_result(out / "toy" / "moco" / "seed-0.json"), reference)
    assert not checkpoint.exists()  # spent once the result is written


def test_resume_inside_a_later_stage_restores_the_finished_stages(tmp_path, toy_config, monkeypatch):
    toy_config["defaults"]["train"].update(epochs=2, checkpoint_every=1, checkpoint=True, threads=1)
    toy_config["methods"] = [{"name": "staged", "stages": [
        {"name": "pretrain", "loss": {"name": "infonce", "learnable_temperature": True}},
        {"name": "finetune", "loss": {"name": "triplet"}, "freeze": ["image_encoder"],
         "train": {"lr": 5.0e-4}}]}]
    reference = run(toy_config, tmp_path / "reference", progress=False).results[0]
    monkeypatch.setattr(toy, "INTERRUPT_AFTER", ("staged", 2))  # epoch 2 = the first of stage 2
    with pytest.raises(KeyboardInterrupt):
        run(toy_config, tmp_path / "out", progress=False)
    saved = load_checkpoint(tmp_path / "out" / "toy" / "staged" / "seed-0.resume.pt")
    assert (saved["stage"], saved["stage_epoch"], len(saved["history"])) == (0, 2, 2)  # end of pretrain
    monkeypatch.setattr(toy, "INTERRUPT_AFTER", None)
    resumed = run(toy_config, tmp_path / "out", progress=False).results[0]
    _same_run(resumed, reference)
    final = load_checkpoint(tmp_path / "out" / "toy" / "staged" / "seed-0.pt")
    expected = load_checkpoint(tmp_path / "reference" / "toy" / "staged" / "seed-0.pt")
    assert set(final["stages"]) == {"pretrain", "finetune"}
    for key, value in expected["model"].items():
        assert torch.equal(final["model"][key], value), key
    assert torch.equal(final["stages"]["pretrain"]["loss"]["logit_scale"],
                       expected["stages"]["pretrain"]["loss"]["logit_scale"])


def test_a_checkpoint_of_another_configuration_is_not_resumed(tmp_path, toy_config, monkeypatch, capsys):
    toy_config["defaults"]["train"].update(epochs=3, checkpoint_every=1, threads=1)
    monkeypatch.setattr(toy, "INTERRUPT_AFTER", ("infonce", 1))
    with pytest.raises(KeyboardInterrupt):
        run(toy_config, tmp_path, progress=False)
    assert (tmp_path / "toy" / "infonce" / "seed-0.resume.pt").exists()
    monkeypatch.setattr(toy, "INTERRUPT_AFTER", None)
    toy_config["defaults"]["train"]["lr"] = 5.0e-4  # another experiment: its checkpoint does not apply
    capsys.readouterr()
    changed = run(toy_config, tmp_path, progress=False).results[0]
    assert "resuming" not in capsys.readouterr().err
    fresh = run(toy_config, tmp_path / "fresh", progress=False).results[0]
    _same_run(changed, fresh)
    # checkpoint_every is an execution setting: changing it keeps finished results valid
    toy_config["defaults"]["train"]["checkpoint_every"] = 2
    assert run(toy_config, tmp_path, progress=False).ok
