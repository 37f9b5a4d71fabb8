"""``backobs sweep`` on a real Dask cluster: scheduler and workers as subprocesses, no mocks.

The fixture starts ``dask scheduler`` and two ``dask worker --nthreads 1 --no-nanny`` on
127.0.0.1 (free ports, a scheduler file) and stops them by their process ids. The sweep is
small (two problems, two optimizers, two settings each, synthetic data, two steps).
"""

import argparse
import glob
import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest
import yaml
from dask_processes import _child_environment, _cluster

from backobs import runs
from backobs.sweep import command as sweep_command
from backobs.sweep.execute import MANIFEST_NAME
from backobs.sweep.protocol import SUMMARY_NAME
from backobs.sweep.spec import load_sweep

distributed = pytest.importorskip("distributed")

METRICS = (
    "train_losses",
    "valid_losses",
    "test_losses",
    "train_accuracies",
    "valid_accuracies",
    "test_accuracies",
    "minibatch_train_losses",
)


@pytest.fixture(scope="module")
def dask_cluster(tmp_path_factory):
    """A cluster shared by the tests that leave it as they found it."""
    with _cluster(tmp_path_factory.mktemp("cluster")) as cluster:
        yield cluster


@pytest.fixture
def own_dask_cluster(tmp_path):
    """A cluster for one test (which kills a worker)."""
    with _cluster(tmp_path) as cluster:
        yield cluster


def _write_spec(tmp_path, name, output_dir, **overrides):
    content = {
        "problems": ["mnist_logreg", "quadratic_deep"],
        "optimizers": {"sgd": {"lr": [0.01, 0.1]}, "diag_ggn_mc": {"lr": [0.01, 0.1]}},
        "seeds": [42],
        "batch_size": 4,
        "num_epochs": 1,
        "steps_per_epoch": 2,
        "eval_batches": 2,
        "synthetic_data": True,
        "output_dir": str(output_dir),
    }
    content.update(overrides)
    path = tmp_path / name
    path.write_text(yaml.safe_dump(content, sort_keys=False))
    return str(path)


def _args(*argv):
    parser = argparse.ArgumentParser()
    sweep_command.add_arguments(parser)
    return parser.parse_args(list(argv))


def _manifest(output_dir):
    with open(os.path.join(output_dir, MANIFEST_NAME)) as stream:
        return [json.loads(line) for line in stream]


def _results_files(output_dir):
    pattern = os.path.join(str(output_dir), "*", "*", "*", "random_seed__*.json")
    return sorted(glob.glob(pattern))


def _key(run_dict):
    return json.dumps(run_dict, sort_keys=True)


def _metrics(path):
    with open(path) as stream:
        results = json.load(stream)
    return {key: results.get(key) for key in METRICS}


def test_cluster_sweep_runs_each_once_equals_local_and_resumes(dask_cluster, tmp_path, capsys):
    remote_dir, local_dir = tmp_path / "remote", tmp_path / "local"
    remote_spec = _write_spec(tmp_path, "remote.yaml", remote_dir)
    grid = load_sweep(remote_spec).runs()
    assert len(grid) == 8

    assert sweep_command.command(_args(remote_spec, "--scheduler", dask_cluster.address)) == 0
    records = _manifest(remote_dir)
    assert len(records) == 8 and {r["status"] for r in records} == {"finished"}
    assert sorted(_key(r["run"]) for r in records) == sorted(_key(run.to_dict()) for run in grid)
    assert {r["worker"] for r in records} <= set(dask_cluster.worker_pids)
    assert sorted(r["path"] for r in records) == _results_files(remote_dir)  # each once
    # A worker decodes a data set once: its later runs of mnist_logreg find it decoded.
    seen = set()
    for record in records:
        if record["run"]["problem"] == "mnist_logreg":
            with open(record["path"]) as stream:
                results = json.load(stream)
            assert results["data_loader"] == "tensor"
            assert results["data_cached"] is (record["worker"] in seen), record
            seen.add(record["worker"])

    # The same sweep on a local cluster gives the same numbers, whichever worker ran what
    # (and what it ran before: quadratic_deep's Hessian once depended on that).
    local_spec = _write_spec(tmp_path, "local.yaml", local_dir)
    assert sweep_command.command(_args(local_spec, "--workers", "2")) == 0
    for remote_run, local_run in zip(grid, load_sweep(local_spec).runs()):
        remote_metrics = _metrics(runs.existing_result(remote_run))
        local_metrics = _metrics(runs.existing_result(local_run))
        assert remote_metrics["train_losses"], remote_run
        assert remote_metrics == local_metrics, remote_run

    # Re-running the finished sweep runs nothing.
    capsys.readouterr()
    assert sweep_command.command(_args(remote_spec, "--scheduler", dask_cluster.address)) == 0
    again = _manifest(remote_dir)[8:]
    assert len(again) == 8 and {r["status"] for r in again} == {"skipped"}
    assert (
        "0 runs finished, 0 of them diverged, 8 were done before, 0 failed"
        in capsys.readouterr().out
    )
    assert len(_results_files(remote_dir)) == 8


def test_failed_run_is_recorded_and_the_sweep_goes_on(dask_cluster, tmp_path):
    output_dir = tmp_path / "results"
    spec = _write_spec(tmp_path, "sweep.yaml", output_dir, problems=["mnist_logreg"])
    grid = load_sweep(spec).runs()
    # a file where the run's results folder belongs: that run raises, the others go on
    victim = grid[1]
    directory = runs.settings_directory(victim)
    os.makedirs(os.path.dirname(directory), exist_ok=True)
    with open(directory, "w") as stream:
        stream.write("a file where the run's folder belongs\n")
    assert sweep_command.command(_args(spec, "--scheduler", dask_cluster.address)) == 1
    records = {_key(r["run"]): r for r in _manifest(output_dir)}
    assert len(records) == 4
    failed = records.pop(_key(victim.to_dict()))
    assert failed["status"] == "failed" and failed["error"]
    assert {r["status"] for r in records.values()} == {"finished"}


@pytest.mark.slow
def test_worker_killed_mid_run_loses_nothing(own_dask_cluster, tmp_path):
    dask_cluster = own_dask_cluster
    output_dir = tmp_path / "results"
    # runs of a few seconds each, so that the kill lands while a worker trains
    spec = _write_spec(
        tmp_path,
        "sweep.yaml",
        output_dir,
        problems=["mnist_logreg"],
        optimizers={"sgd": {"lr": [0.01, 0.02, 0.05, 0.1]}},
        batch_size=64,
        steps_per_epoch=150,
        eval_batches=20,
    )
    outcome = {}
    thread = threading.Thread(
        target=lambda: outcome.update(
            code=sweep_command.command(_args(spec, "--scheduler", dask_cluster.address))
        )
    )
    thread.start()
    client = dask_cluster.client
    victim, held, since = None, (), 0.0
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        processing = client.processing()
        if victim is not None and tuple(processing.get(victim, ())) == held:
            if time.monotonic() - since > 1.0:  # a second into a run of several seconds
                break
        else:
            victim, held, since = None, (), 0.0
            for worker, keys in processing.items():
                ours = tuple(key for key in keys if str(key).startswith("backobs-run-"))
                if ours:
                    victim, held, since = worker, ours, time.monotonic()
                    break
        time.sleep(0.05)
    assert victim is not None, "no worker held a run"
    os.kill(dask_cluster.worker_pids[victim], signal.SIGKILL)
    thread.join(timeout=180)
    assert not thread.is_alive()
    assert outcome["code"] == 0
    records = _manifest(output_dir)
    assert len(records) == 4 and {r["status"] for r in records} == {"finished"}
    assert len({_key(r["run"]) for r in records}) == 4
    rerun = [r for r in records if r["task"] in held]  # the one it trained, any queued behind
    assert len(rerun) == len(held) and all(r["worker"] != victim for r in rerun)
    assert {r["worker"] for r in records if r["task"] not in held} <= set(dask_cluster.worker_pids)
    assert sorted(r["path"] for r in records) == _results_files(output_dir)


def test_ctrl_c_stops_cleanly_and_the_same_command_resumes(tmp_path):
    output_dir = tmp_path / "results"
    spec = _write_spec(
        tmp_path,
        "sweep.yaml",
        output_dir,
        problems=["mnist_logreg"],
        optimizers={"sgd": {"lr": [0.01, 0.02, 0.05, 0.1, 0.2, 0.5]}},
    )
    command = [sys.executable, "-m", "backobs", "sweep", spec, "--workers", "1"]
    # A new session, so that SIGINT can go to the whole process group, as Ctrl-C in a
    # terminal does (the local cluster's worker processes get it too).
    process = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_child_environment(),
        start_new_session=True,
    )
    manifest = output_dir / MANIFEST_NAME
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        if manifest.exists() and manifest.read_text().count("\n") >= 1:
            break
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGINT)
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr
    assert "Traceback" not in stderr and "Traceback" not in stdout
    finished = [r for r in _manifest(output_dir) if r["status"] == "finished"]
    assert 1 <= len(finished) < 6
    last = stderr.strip().splitlines()[-1]
    assert last.startswith(f"backobs sweep: interrupted: {len(finished)} runs finished")
    assert f"run the same command again to resume (backobs sweep {spec} --workers 1)" in last
    # the local cluster's processes are gone (init reaps the last zombies within a moment)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        try:
            os.killpg(process.pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.2)
    else:
        pytest.fail("processes of the interrupted sweep are still running")

    result = subprocess.run(command, capture_output=True, text=True, env=_child_environment())
    assert result.returncode == 0, result.stderr
    records = _manifest(output_dir)[len(finished) :]
    skipped = {_key(r["run"]) for r in records if r["status"] == "skipped"}
    # what finished before is skipped (and a run that ended while Ctrl-C was handled)
    assert {_key(r["run"]) for r in finished} <= skipped
    assert len(records) == 6 and {r["status"] for r in records} <= {"skipped", "finished"}
    assert len({_key(r["run"]) for r in records}) == 6
    assert len(_results_files(output_dir)) == 6


def test_command_line_errors_are_one_line(tmp_path):
    spec = _write_spec(tmp_path, "sweep.yaml", tmp_path / "results", problems=["mnist_vae"])
    result = subprocess.run(
        [sys.executable, "-m", "backobs", "sweep", spec, "--dry-run"],
        capture_output=True,
        text=True,
        env=_child_environment(),
    )
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        f"backobs sweep: error: {spec}: problems: mnist_vae is not supported by BackOBS: "
        "variational autoencoder (its loss is not a module of the net output)"
    ]


def test_final_seeds_rerun_the_best_setting(dask_cluster, tmp_path, capsys):
    output_dir = tmp_path / "results"
    spec = _write_spec(
        tmp_path,
        "sweep.yaml",
        output_dir,
        problems=["quadratic_deep"],
        optimizers={"sgd": {"lr": [0.001, 0.01]}},
    )
    arguments = _args(spec, "--scheduler", dask_cluster.address, "--final-seeds", "2")
    assert sweep_command.command(arguments) == 0
    grid = load_sweep(spec).runs()
    # by hand: the lowest final validation loss (quadratic_deep has no accuracy)
    final_losses = [_metrics(runs.existing_result(run))["valid_losses"][-1] for run in grid]
    best = grid[final_losses.index(min(final_losses))]
    with open(output_dir / SUMMARY_NAME) as stream:
        choice = json.load(stream)["choices"]["quadratic_deep"]["sgd"]
    assert choice["hyperparams"] == best.hyperparams
    assert choice["score"] == min(final_losses)
    assert [entry["seed"] for entry in choice["final_runs"]] == [42, 43]
    assert all(os.path.exists(entry["path"]) for entry in choice["final_runs"])
    records = _manifest(output_dir)
    assert [r["status"] for r in records] == ["finished", "finished", "skipped", "finished"]
    assert records[3]["run"] == dict(best.to_dict(), seed=43)
    assert (
        "3 runs finished, 0 of them diverged, 0 were done before, 0 failed"
        in capsys.readouterr().out
    )


def test_a_diverged_run_says_why_in_the_manifest_and_is_counted(dask_cluster, tmp_path, capsys):
    output_dir = tmp_path / "results"
    spec = _write_spec(
        tmp_path,
        "sweep.yaml",
        output_dir,
        problems=["mnist_logreg"],
        optimizers={"sgd": {"lr": [0.1, 1e38]}},
        steps_per_epoch=5,
    )
    assert sweep_command.command(_args(spec, "--scheduler", dask_cluster.address)) == 0
    records = {r["run"]["hyperparams"]["lr"]: r for r in _manifest(output_dir)}
    assert records[0.1]["status"] == "finished" and records[0.1]["error"] is None
    diverged = records[1e38]
    assert diverged["status"] == "diverged" and diverged["diverged_quantity"] == "loss"
    with open(diverged["path"]) as stream:
        results = json.load(stream)
    step = results["diverged_at_step"]
    assert diverged["diverged_at_step"] == step and 1 <= step <= 4
    assert results["diverged_quantity"] == "loss"
    assert diverged["error"] == (
        f"diverged at step {step}: loss not finite: {results['diverged_reason']}"
    )
    assert results["diverged_reason"] in (
        "the mini-batch loss is nan",
        "the mini-batch loss is inf",
    )
    out = capsys.readouterr().out
    assert "diverged mnist_logreg sgd lr=1e+38 seed 42 (" in out
    assert "[sweep] done: 2 runs finished, 1 of them diverged, 0 were done before, 0 failed" in out
