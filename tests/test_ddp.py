"""``torchrun --nproc_per_node=2 -m harness run FILE`` on CPU (gloo): each job trains with DDP on the
single-process global batch split across the ranks, and its per-epoch losses equal the single-process
run's (encoders without batch norm); evaluation is sharded and gathered; only rank 0 writes."""

import json
import subprocess
import sys

import pytest

from harness.results import read_result
from harness.runner import run

from conftest import cli_env


@pytest.fixture
def no_batch_norm(toy_config):
    toy_config["seeds"] = [0, 1]
    toy_config["defaults"]["encoders"]["image"] = {"name": "mlp", "hidden": [32]}
    toy_config["defaults"]["train"].update(epochs=3, threads=1)
    toy_config["methods"] = [
        {"name": "infonce", "loss": {"name": "infonce"}},
        # a queue of gathered keys, a learnable temperature, transforms drawn for the global batch
        {"name": "moco", "loss": {"name": "infonce", "learnable_temperature": True},
         "sampler": {"name": "moco", "size": 32, "momentum": 0.9},
         "train": {"transforms": [{"name": "hflip", "p": 0.5}, {"name": "counting", "noise": 0.05}]}}]
    toy_config["evaluators"] = [{"name": "retrieval"}, {"name": "embedding-norm"}]
    return toy_config


def torchrun(config_path, out, ranks=2):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={ranks}",
           "-m", "harness", "run", str(config_path), "--out", str(out), "--no-progress"]
    return subprocess.run(cmd, env=cli_env(), capture_output=True, text=True, timeout=600)


def test_two_gloo_ranks_train_like_one_process(tmp_path, no_batch_norm):
    single = run(no_batch_norm, tmp_path / "single", progress=False)
    assert single.ok
    path = tmp_path / "toy.yaml"
    path.write_text(json.dumps(no_batch_norm))
    out = tmp_path / "ddp"
    done = torchrun(path, out)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("| infonce") == 1  # only rank 0 prints the table
    for reference in single.results:
        result = read_result(out / "toy" / reference.method / f"seed-{reference.seed}.json")
        assert result.status == "ok"
        assert (result.provenance.world_size, result.provenance.backend) == (2, "gloo")
        assert reference.provenance.world_size == 1 and reference.provenance.backend is None
        losses = [h["loss"] for h in result.history]
        assert losses == pytest.approx([h["loss"] for h in reference.history], rel=1e-4)
        assert result.metrics["embedding-norm/norm"] == pytest.approx(
            reference.metrics["embedding-norm/norm"], rel=1e-4)
        assert set(result.metrics) == set(reference.metrics)
    assert not list(out.glob("**/.*.tmp"))
    # resume/skip works across the two: a plain run finds the DDP results done
    again = []
    run(no_batch_norm, out, progress=False, echo=again.append)
    assert sum("already done" in m for m in again) == 4


def test_torchrun_refuses_launchers_that_start_processes(tmp_path, toy_config):
    toy_config["launcher"] = {"name": "processes", "jobs": 2}
    path = tmp_path / "toy.yaml"
    path.write_text(json.dumps(toy_config))
    done = torchrun(path, tmp_path / "out")
    assert done.returncode != 0  # torchrun reports its failed children with a traceback of its own
    assert "harness: error:" in done.stderr and "use the inline launcher" in done.stderr


def test_losses_that_are_not_exact_across_ranks_are_refused_under_torchrun(tmp_path, toy_config, monkeypatch):
    """Under torchrun (WORLD_SIZE > 1) a loss that does not gather the global batch (batch statistics, negatives
    from the rank's shard) is a config error naming the method's loss; gathering losses are accepted, and a
    plain run accepts every loss."""
    from harness.errors import ConfigError
    from harness.registry import Registry
    from harness.training import check_distributed_loss
    from harness.validation import prepare

    registry = Registry()
    exact = {name for name in registry.available("loss")["loss"]
             if getattr(registry.get("loss", name).factory, "gathers_across_ranks", False)}
    assert {"infonce", "nt-xent", "nt-logistic", "triplet", "npair", "contrastive", "matchmap"} <= exact
    assert not {"devise", "dcca", "dccae", "matching", "multimodal-ae", "relation"} & exact
    toy_config["methods"] = [{"name": "infonce", "loss": {"name": "infonce"}},
                             {"name": "dcca", "loss": {"name": "dcca", "k": 2}}]
    prepare(toy_config)  # one process: both fine
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ConfigError, match="each rank's shard.*different objective") as info:
        prepare(toy_config)
    assert info.value.field == "methods[dcca].loss"
    with pytest.raises(ConfigError, match="each rank's shard") as info:
        prepare(toy_config, data=False)  # also when only the configuration is checked
    assert info.value.field == "methods[dcca].loss"
    toy_config["methods"] = toy_config["methods"][:1]
    prepare(toy_config)
    with pytest.raises(ValueError, match="DCCALoss"):
        check_distributed_loss(registry.create("loss", "dcca", k=2), 2)
    check_distributed_loss(registry.create("loss", "dcca", k=2), 1)


def test_an_explicit_gpu_index_under_torchrun_is_refused(monkeypatch):
    """Under torchrun every rank takes its own GPU (LOCAL_RANK): ``cuda:1`` would put them all on one."""
    from harness.errors import HarnessError
    from harness.jobs import resolve_device

    assert resolve_device("cpu").type == "cpu"
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(HarnessError, match="each rank uses its own GPU"):
        resolve_device("cuda:1")
