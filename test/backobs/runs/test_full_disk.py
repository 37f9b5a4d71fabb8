"""What a run writes survives a full disk: the step log is dropped, the results file is written.

On a real small file system (a 64 KiB tmpfs, where the test may mount one) a run whose step
log fills the disk is warned of before training, trains to the end and writes its results; a
run whose log fits (every 100th step: ``--step-log-interval``) is not warned of and keeps its
log. A write error of the step log is simulated for the unit test, and an unwritable results
file ends the command with one line and exit code 1.
"""

import errno
import glob
import json
import os
import shutil
import subprocess
import sys

import pytest
import torch

import backobs
from backobs import cli
from backobs.runs import runner as runner_module
from backobs.runs.steplog import StepLog, results_file_bytes
from backpack_core.config import format_bytes
from backpack_core.extensions import BatchGrad


class _FullDisk:
    def write(self, text):
        raise OSError(errno.ENOSPC, "No space left on device")

    def flush(self):
        pass

    def close(self):
        pass


def test_a_write_error_drops_the_step_log_not_the_run(tmp_path, capsys):
    net = torch.nn.Linear(2, 1)
    path = str(tmp_path / "run.steps.jsonl")
    log = StepLog(path, net)
    log.write({"step": 0, "loss": 1.0})
    (temporary,) = glob.glob(path + ".*.part")
    assert temporary.startswith(f"{path}.{os.getpid()}-")
    log._file.close()
    log._file = _FullDisk()
    log.write({"step": 1, "loss": 0.5})
    assert log.error == "OSError: [Errno 28] No space left on device"
    assert not os.path.exists(temporary)
    log.write({"step": 2, "loss": 0.25})  # ignored
    log.close()
    assert not os.listdir(tmp_path) and not log.written and log.steps == 1
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1
    assert lines[0].startswith(
        "backobs run: warning: step log dropped after 1 logged steps (OSError: [Errno 28] No "
        f"space left on device; {path}); each logged step took "
    )


def test_an_unwritable_results_file_is_one_line_and_exit_1(tmp_path, capsys, monkeypatch):
    def full(path, value, indent=4):
        raise OSError(errno.ENOSPC, "No space left on device", path)

    monkeypatch.setattr(runner_module, "write_json_atomically", full)
    argv = ["run", "mnist_logreg", "--optimizer", "sgd", "--lr", "0.1", "--synthetic-data"]
    argv += ["--batch_size", "8", "-N", "1", "--steps-per-epoch", "2", "--eval-batches", "1"]
    assert cli.main([*argv, "--output_dir", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("backobs")]
    assert len(lines) == 1 and "Traceback" not in err
    assert lines[0].startswith("backobs run: error: cannot write the results file ")
    assert lines[0].endswith(".json: No space left on device")


@pytest.fixture
def small_file_system(tmp_path):
    """A 64 KiB tmpfs at a fresh folder (skipped where this process may not mount one)."""
    mount_point = tmp_path / "small"
    mount_point.mkdir()
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount_point)],
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {result.stderr.strip() or result.returncode}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", str(mount_point)], check=True)


def run_400_steps(output_dir, *options):
    """``backobs run`` of mnist_logreg, BatchGrad, 400 steps of 8 samples, in a subprocess."""
    command = [sys.executable, "-m", "backobs", "run", "mnist_logreg", "--optimizer", "sgd"]
    command += ["--lr", "0.1", "--synthetic-data", "--log-interval", "1"]
    command += ["--extensions", "BatchGrad", "--batch_size", "8", "-N", "1"]
    command += ["--steps-per-epoch", "400", "--eval-batches", "2", *options]
    result = subprocess.run(
        [*command, "--output_dir", str(output_dir)],
        capture_output=True,
        text=True,
        timeout=600,
        env=dict(os.environ, OMP_NUM_THREADS="1"),
    )
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    return result


def bytes_per_logged_step():
    """One logged step of mnist_logreg with BatchGrad and 8 samples, as StepLog estimates it."""
    problem = backobs.get_problem_class("mnist_logreg")(batch_size=8)
    problem.set_up()
    return StepLog("run.steps.jsonl", problem.net).bytes_per_step([BatchGrad()], batch_size=8)


def test_a_step_log_that_fills_the_disk(small_file_system):
    assert shutil.disk_usage(small_file_system).free == 64 * 1024
    result = run_400_steps(small_file_system)
    warnings = [line for line in result.stderr.splitlines() if "warning" in line]
    assert len(warnings) == 2, result.stderr
    # before training: the estimate, the free space and the ways out
    per_step = bytes_per_logged_step()
    assert per_step == 598  # 400 steps: 233.6 KiB, against 64 KiB
    (settings,) = glob.glob(str(small_file_system / "mnist_logreg" / "sgd" / "*"))
    assert warnings[0] == (
        f"backobs run: warning: the step log needs about {format_bytes(400 * per_step)} (400 "
        f"logged steps of 598 B) and the results file about {format_bytes(3776)}, but "
        f"{settings} has 64.0 KiB free: training goes on and a full disk drops the step log, "
        "not the run; for a smaller step log use a larger --step-log-interval, fewer "
        "--extensions, or another --output_dir"
    )
    assert results_file_bytes(1, 400, 10) == 3776
    # in training: the disk fills, the log is dropped
    assert "step log dropped after" in warnings[1]
    assert "No space left on device" in warnings[1]
    (path,) = glob.glob(str(small_file_system / "**" / "random_seed__42__*.json"), recursive=True)
    with open(path) as file:
        results = json.load(file)
    assert results["status"] == "finished" and len(results["test_losses"]) == 2
    assert results["step_log"] is None
    assert "No space left on device" in results["step_log_error"]
    assert not glob.glob(str(small_file_system / "**" / "*.part"), recursive=True)
    assert not glob.glob(str(small_file_system / "**" / "*.steps.jsonl"), recursive=True)


def test_every_100th_step_fits_on_the_same_disk(small_file_system):
    """The way out that the warning names: 4 logged steps, no warning, the log kept."""
    result = run_400_steps(small_file_system, "--step-log-interval", "100")
    assert "warning" not in result.stderr, result.stderr
    (path,) = glob.glob(str(small_file_system / "**" / "*.steps.jsonl"), recursive=True)
    with open(path) as file:
        lines = file.readlines()
    assert [json.loads(line)["global_step"] for line in lines] == [0, 100, 200, 300]
    assert 0.95 < 4 * 598 / os.path.getsize(path) < 1.05  # the estimate
    with open(path.replace(".steps.jsonl", ".json")) as file:
        results = json.load(file)
    assert results["step_log"] == os.path.basename(path) and results["step_log_error"] is None
