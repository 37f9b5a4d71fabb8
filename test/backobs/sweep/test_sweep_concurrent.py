"""Several ``backobs sweep`` commands on one results folder: each run computed once.

The claims are tested as files (taken, refused, released, stale by a dead process or an old
heartbeat, taken over); then two sweep commands run as subprocesses at the same time on one
folder, each with a local cluster of its own, and one is killed with SIGKILL mid-sweep and a
third command finishes what it left.
"""

import glob
import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest
import yaml
from dask_processes import _child_environment
from sweep_files import read_manifest

from backobs.sweep import claims
from backobs.sweep.execute import MANIFEST_NAME

pytest.importorskip("distributed")


def test_a_claim_is_exclusive_and_released(tmp_path):
    path = str(tmp_path / "settings" / ".random_seed__42.claim")
    held, owner = claims.claim(path, "sweep-a")
    assert owner is None and os.path.exists(path)
    assert held.owner["pid"] == os.getpid() and held.owner["host"] == socket.gethostname()
    again, current = claims.claim(path, "sweep-b")
    assert again is None and current["sweep"] == "sweep-a"
    held.release()
    assert not os.path.exists(path)
    taken, _ = claims.claim(path, "sweep-b")
    assert claims.owner_of(path)["sweep"] == "sweep-b"
    taken.release()


def test_the_heartbeat_touches_the_claim(tmp_path):
    path = str(tmp_path / ".random_seed__42.claim")
    held, _ = claims.claim(path, "sweep-a", heartbeat_seconds=0.05)
    os.utime(path, (time.time() - 100, time.time() - 100))
    with held:
        time.sleep(0.3)
        assert time.time() - os.stat(path).st_mtime < 5
    assert not os.path.exists(path)


def _write_claim(path, **owner):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as file:
        json.dump({"host": socket.gethostname(), "sweep": "old", "token": "t", **owner}, file)


def test_a_claim_of_a_dead_process_is_taken_over(tmp_path):
    path = str(tmp_path / ".random_seed__42.claim")
    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                              capture_output=True, text=True, check=True)  # fmt: skip
    _write_claim(path, pid=int(finished.stdout))
    assert claims.is_stale(path, claims.owner_of(path))
    held, owner = claims.claim(path, "new")
    assert owner is None and claims.owner_of(path)["sweep"] == "new"
    held.release()
    assert not glob.glob(path + "*")  # the stale file is gone too


def test_a_claim_of_a_killed_unreaped_process_is_taken_over(tmp_path):
    # a worker killed with SIGKILL whose parent has not reaped it yet is a zombie: not alive
    path = str(tmp_path / ".random_seed__42.claim")
    process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        _write_claim(path, pid=process.pid)
        assert not claims.is_stale(path, claims.owner_of(path))
        os.kill(process.pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while not claims.is_stale(path, claims.owner_of(path)) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert claims.is_stale(path, claims.owner_of(path))
    finally:
        process.kill()
        process.wait()


def test_a_claim_without_heartbeat_is_taken_over_and_a_live_one_is_not(tmp_path):
    path = str(tmp_path / ".random_seed__42.claim")
    _write_claim(path, pid=os.getpid(), host="another-host")
    assert not claims.is_stale(path, claims.owner_of(path))  # fresh, on another host
    assert claims.claim(path, "new")[0] is None
    old = time.time() - claims.STALE_SECONDS - 1
    os.utime(path, (old, old))
    assert claims.is_stale(path, claims.owner_of(path))
    held, _ = claims.claim(path, "new")
    assert held is not None and claims.owner_of(path)["sweep"] == "new"
    held.release()


def _spec(tmp_path, output_dir, learning_rates, steps):
    path = tmp_path / "sweep.yaml"
    content = {
        "problems": ["mnist_logreg"],
        "optimizers": {"sgd": {"lr": learning_rates}},
        "seeds": [42],
        "batch_size": 16,
        "num_epochs": 1,
        "steps_per_epoch": steps,
        "eval_batches": 2,
        "synthetic_data": True,
        "output_dir": str(output_dir),
    }
    path.write_text(yaml.safe_dump(content, sort_keys=False))
    return str(path)


def _start(spec):
    return subprocess.Popen(
        [sys.executable, "-m", "backobs", "sweep", spec, "--workers", "1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_child_environment(),
        start_new_session=True,  # its local cluster in its process group
    )


def _check_folder(output_dir, count):
    """Exactly one complete results file per run, no claim left, every manifest line JSON."""
    files = sorted(glob.glob(str(output_dir / "*" / "*" / "*" / "random_seed__*.json")))
    assert len(files) == count
    for path in files:
        with open(path) as file:
            results = json.load(file)
        assert results["status"] == "finished" and len(results["test_losses"]) == 2
    assert not glob.glob(str(output_dir / "**" / ".*.claim*"), recursive=True)
    assert not glob.glob(str(output_dir / "**" / "*.part"), recursive=True)
    records = read_manifest(output_dir)  # raises if a line is not one JSON object
    assert not [r for r in records if r["status"] == "failed"]
    return records


def test_two_commands_on_one_folder_compute_each_run_once(tmp_path):
    output_dir = tmp_path / "results"
    rates = [0.01, 0.02, 0.05, 0.1, 0.2, 0.5]
    spec = _spec(tmp_path, output_dir, rates, steps=20)
    first, second = _start(spec), _start(spec)
    outputs = [process.communicate(timeout=600) for process in (first, second)]
    for process, (_stdout, stderr) in zip((first, second), outputs):
        assert process.returncode == 0, stderr
        assert "Traceback" not in stderr
    records = _check_folder(output_dir, len(rates))
    computed = [r for r in records if r["status"] == "finished" and not r.get("reused")]
    assert sorted(r["run"]["hyperparams"]["lr"] for r in computed) == rates  # each once
    assert len({r["sweep"] for r in records}) == 2


def test_a_sigkilled_command_blocks_nothing(tmp_path):
    output_dir = tmp_path / "results"
    rates = [0.01, 0.02, 0.05, 0.1, 0.2]
    spec = _spec(tmp_path, output_dir, rates, steps=60)
    killed = _start(spec)
    manifest = output_dir / MANIFEST_NAME
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and killed.poll() is None:
        if manifest.exists() and manifest.read_text().count("\n") >= 1:
            break
        time.sleep(0.05)
    assert killed.poll() is None, killed.communicate()[1]
    os.killpg(killed.pid, signal.SIGKILL)  # the command and its cluster, mid-sweep
    killed.communicate(timeout=60)
    done_before = len(read_manifest(output_dir))
    assert 1 <= done_before < len(rates)

    resumed = subprocess.run(
        [sys.executable, "-m", "backobs", "sweep", spec, "--workers", "1"],
        capture_output=True,
        text=True,
        env=_child_environment(),
        timeout=600,
    )
    assert resumed.returncode == 0, resumed.stderr
    _check_folder(output_dir, len(rates))
