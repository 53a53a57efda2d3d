"""Launchers: the same result files and metrics whichever runs the jobs; a dead worker is a failed run,
not a lost benchmark; bad launcher settings are config errors."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from harness.errors import ConfigError
from harness.results import read_result
from harness.runner import run

from conftest import cli_env, harness_cmd


@pytest.fixture
def three_seeds(toy_config):
    toy_config["seeds"] = [0, 1, 2]
    toy_config["defaults"]["train"]["threads"] = 1  # equal thread counts: identical arithmetic
    return toy_config


def test_processes_launcher_gives_the_inline_results(tmp_path, three_seeds):
    inline = run(three_seeds, tmp_path / "inline", progress=False)
    messages = []
    parallel = run(three_seeds, tmp_path / "processes", progress=False, launcher="processes",
                   launcher_options={"jobs": 2}, echo=messages.append)
    assert parallel.ok and len(parallel.results) == 3
    assert [r.seed for r in parallel.results] == [0, 1, 2]  # in job order, whatever finished first
    for a, b in zip(inline.results, parallel.results):
        assert a.metrics == b.metrics and [h["loss"] for h in a.history] == [h["loss"] for h in b.history]
    assert parallel.table == inline.table
    assert sum(": ok (" in m for m in messages) == 3
    # skip/resume works across launchers: a rerun inline finds the processes' files done
    again = []
    run(three_seeds, tmp_path / "processes", progress=False, echo=again.append)
    assert sum("already done" in m for m in again) == 3


def test_a_worker_that_dies_fails_its_run_and_the_others_finish(tmp_path, toy_config):
    toy_config["methods"] += [{"name": "crash", "loss": {"name": "hard-exit"}}]
    toy_config["seeds"] = [0]
    outcome = run(toy_config, tmp_path, progress=False, launcher="processes",
                  launcher_options={"jobs": 2})
    status = {r.method: r for r in outcome.results}
    assert status["infonce"].status == "ok"
    assert status["crash"].status == "failed" and "worker process failed" in status["crash"].error
    assert read_result(tmp_path / "toy" / "crash" / "seed-0.json").status == "failed"


def test_launcher_from_the_benchmark_file_and_bad_launcher_settings(tmp_path, toy_config):
    toy_config["launcher"] = {"name": "processes", "jobs": 0}
    with pytest.raises(ConfigError, match="jobs must be at least 1"):
        run(toy_config, tmp_path, progress=False)
    with pytest.raises(ConfigError, match="did you mean 'processes'"):
        run(toy_config, tmp_path, progress=False, launcher="procesess")
    toy_config["launcher"] = {"name": "processes", "jobs": 1}
    assert run(toy_config, tmp_path, progress=False).ok


def test_cli_launcher_options(tmp_path, toy_config):
    path = tmp_path / "toy.yaml"
    path.write_text(json.dumps(toy_config))
    out = subprocess.run([*harness_cmd(), "run", str(path), "--out", str(tmp_path / "o"), "--launcher",
                          "processes", "--launcher-opt", "jobs=1"], capture_output=True, text=True,
                         env=cli_env(), timeout=300)
    assert out.returncode == 0, out.stderr
    assert read_result(tmp_path / "o" / "toy" / "infonce" / "seed-0.json").status == "ok"
    bad = subprocess.run([*harness_cmd(), "run", str(path), "--launcher-opt", "jobs"], capture_output=True,
                         text=True, env=cli_env(), timeout=300)
    assert bad.returncode == 2 and "KEY=VALUE" in bad.stderr and "Traceback" not in bad.stderr


@pytest.fixture
def jobs_find_test_plugins(monkeypatch):
    """submitit's local jobs are new Python processes: they import the test plugins from PYTHONPATH."""
    monkeypatch.setenv("PYTHONPATH", cli_env()["PYTHONPATH"])


def test_submitit_local_gives_the_inline_results(tmp_path, three_seeds, jobs_find_test_plugins):
    three_seeds["seeds"] = [0, 1]
    inline = run(three_seeds, tmp_path / "inline", progress=False)
    messages = []
    cluster = run(three_seeds, tmp_path / "cluster", progress=False, launcher="submitit",
                  launcher_options={"cluster": "local"}, echo=messages.append)
    assert cluster.ok and [r.seed for r in cluster.results] == [0, 1]
    for a, b in zip(inline.results, cluster.results):
        assert a.metrics == b.metrics and [h["loss"] for h in a.history] == [h["loss"] for h in b.history]
    assert cluster.table == inline.table
    assert list((tmp_path / "cluster" / "toy" / ".submitit").iterdir())  # submitit's job folders
    again = []
    run(three_seeds, tmp_path / "cluster", progress=False, echo=again.append)  # inline skips them
    assert sum("already done" in m for m in again) == 2


def test_a_preempted_submitit_job_is_requeued_and_resumes_from_its_checkpoint(tmp_path, toy_config,
                                                                               jobs_find_test_plugins):
    from harness.jobs import plan
    from harness.launchers import Task
    from harness.results import result_path
    from harness.validation import prepare
    from harness_plugins.launchers.cluster import Submitit

    toy_config["defaults"]["train"].update(epochs=4, checkpoint_every=1, threads=1)
    reference = run(toy_config, tmp_path / "inline", progress=False).results[0]
    toy_config["defaults"]["train"]["transforms"] = [{"name": "counting", "delay": 0.15}]
    spec, registry, _ = prepare(toy_config, forward_check=False)
    path = result_path(tmp_path / "cluster", "toy", "infonce", 0)
    launcher = Submitit(cluster="local")
    [(task, job)] = launcher.submit([Task(index=0, job=plan(spec, registry)[0], path=path, plugins=[])])
    checkpoint = path.with_suffix(".resume.pt")
    deadline = time.time() + 180
    while not checkpoint.exists() and time.time() < deadline and not job.done():
        time.sleep(0.05)
    assert checkpoint.exists() and not job.done()
    # what Slurm does before preempting a job: USR2 to its processes (here the one task process that
    # submitit's local controller started)
    controller = job._process.pid
    for child in Path(f"/proc/{controller}/task/{controller}/children").read_text().split():
        os.kill(int(child), signal.SIGUSR2)
    [(_, result)] = list(launcher.collect([(task, job)]))
    assert result.status == "ok", result.error
    assert "resuming from seed-0.resume.pt" in job.stderr() and "Requeued job" in job.stdout()
    assert result.metrics == pytest.approx(reference.metrics, rel=1e-6)
    assert [h["loss"] for h in result.history] == pytest.approx([h["loss"] for h in reference.history],
                                                                rel=1e-6)
    assert read_result(path).status == "ok" and not checkpoint.exists()


def test_bad_submitit_options_are_config_errors(tmp_path, toy_config):
    with pytest.raises(ConfigError, match="unknown option.*partiton"):
        run(toy_config, tmp_path, progress=False, launcher="submitit",
            launcher_options={"cluster": "local", "partiton": "gpu"})
    with pytest.raises(ConfigError, match="timeout_min must be a positive integer"):
        run(toy_config, tmp_path, progress=False, launcher="submitit", launcher_options={"timeout_min": 0})
    # an option only submitit itself can judge (refused when the jobs are submitted): still a config
    # error naming the launcher, and nothing ran
    with pytest.raises(ConfigError, match="submitit refused the launcher options.*slurm_foo") as info:
        run(toy_config, tmp_path, progress=False, launcher="submitit",
            launcher_options={"cluster": "local", "slurm_foo": "1"})
    assert info.value.field == "launcher" and not list(tmp_path.rglob("seed-*.json"))
    path = tmp_path / "toy.yaml"  # from a file: the message names it
    path.write_text(json.dumps(toy_config))
    with pytest.raises(ConfigError, match="submitit refused") as info:
        run(path, tmp_path / "f", progress=False, launcher="submitit",
            launcher_options={"cluster": "local", "slurm_foo": "1"})
    assert info.value.file == str(path) and str(path) in str(info.value)


def test_workers_see_the_environment_of_the_run_that_launched_them(tmp_path, toy_config, monkeypatch):
    toy_config["evaluators"] = [{"name": "env-probe"}]
    toy_config["report"] = {"metrics": ["env-probe/probe"]}
    for probe in (1, 2):  # the second run reuses the fork server started with the first one's environment
        monkeypatch.setenv("HARNESS_TEST_PROBE", str(probe))
        outcome = run(toy_config, tmp_path / str(probe), progress=False, launcher="processes")
        assert outcome.results[0].metrics["env-probe/probe"] == probe


def test_a_launcher_from_a_third_party_plugin_runs_the_jobs_with_the_same_results(tmp_path, three_seeds):
    """A launcher registered by a plugin module (``register_launchers``) is chosen by name like the bundled
    ones; the result files and metrics are those of ``inline``; its options are checked like any component's."""
    import harness_test_plugin

    inline = run(three_seeds, tmp_path / "inline", progress=False)
    harness_test_plugin.LastFirst.log.clear()
    mine = run(three_seeds, tmp_path / "mine", progress=False, launcher="last-first",
               launcher_options={"note": "x"})
    assert mine.ok and harness_test_plugin.LastFirst.log == [2, 1, 0]  # ran its way: last first
    assert [r.seed for r in mine.results] == [0, 1, 2]  # reported in the benchmark's order
    for a, b in zip(inline.results, mine.results):
        assert a.metrics == b.metrics
    assert sorted(p.name for p in (tmp_path / "mine" / "toy" / "infonce").glob("seed-*.json")) == \
        ["seed-0.json", "seed-1.json", "seed-2.json"]
    with pytest.raises(ConfigError, match="has no parameter 'nte'"):
        run(three_seeds, tmp_path / "bad", progress=False, launcher="last-first", launcher_options={"nte": "x"})


def test_the_fork_server_starts_only_for_the_processes_launcher(tmp_path, monkeypatch, toy_config):
    import yaml

    import harness.forkserver as forkserver
    started = []
    monkeypatch.setattr(forkserver, "start_fork_server", lambda: started.append(True) or True)
    inline = tmp_path / "inline.yaml"
    inline.write_text(yaml.safe_dump(toy_config))
    processes = tmp_path / "processes.yaml"
    processes.write_text(yaml.safe_dump({**toy_config, "launcher": {"name": "processes", "jobs": 2}}))
    broken = tmp_path / "broken.yaml"
    broken.write_text("name: [unclosed\n")
    forkserver.start_if_processes(inline, [], None)
    forkserver.start_if_processes(broken, [], None)  # validation reports it later; nothing starts
    forkserver.start_if_processes(processes, [], "inline")  # the command line wins
    assert started == []
    forkserver.start_if_processes(processes, [], None)
    forkserver.start_if_processes(inline, [], "processes")
    forkserver.start_if_processes(inline, ["launcher.name=processes"], None)
    assert started == [True, True, True]


def test_starting_the_fork_server_does_not_import_torch():
    # `harness run` starts it before importing torch itself, so that the server's imports overlap its own
    code = ("import sys, harness.forkserver; print('torch' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=cli_env())
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"
