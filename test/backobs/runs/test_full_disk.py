"""What a run writes survives a full disk: the step log is dropped, the results file is written.

On a real small file system (a 64 KiB tmpfs, where the test may mount one) a run whose step
log fills the disk trains to the end and writes its results; a write error of the step log
is simulated for the unit test, and an unwritable results file ends the command with one line
and exit code 1.
"""

import errno
import glob
import json
import os
import subprocess
import sys

import pytest
import torch

from backobs import cli
from backobs.runs import runner as runner_module
from backobs.runs.steplog import StepLog


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


def test_a_step_log_that_fills_the_disk(small_file_system):
    command = [sys.executable, "-m", "backobs", "run", "mnist_logreg", "--optimizer", "sgd"]
    command += ["--lr", "0.1", "--synthetic-data", "--log-interval", "1"]
    command += ["--extensions", "BatchGrad", "--batch_size", "8", "-N", "1"]
    command += ["--steps-per-epoch", "400", "--eval-batches", "2"]
    result = subprocess.run(
        [*command, "--output_dir", str(small_file_system)],
        capture_output=True,
        text=True,
        timeout=600,
        env=dict(os.environ, OMP_NUM_THREADS="1"),
    )
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    warnings = [line for line in result.stderr.splitlines() if "warning" in line]
    assert len(warnings) == 1 and "step log dropped after" in warnings[0]
    assert "No space left on device" in warnings[0]
    (path,) = glob.glob(str(small_file_system / "**" / "random_seed__42__*.json"), recursive=True)
    with open(path) as file:
        results = json.load(file)
    assert results["status"] == "finished" and len(results["test_losses"]) == 2
    assert results["step_log"] is None
    assert "No space left on device" in results["step_log_error"]
    assert not glob.glob(str(small_file_system / "**" / "*.part"), recursive=True)
    assert not glob.glob(str(small_file_system / "**" / "*.steps.jsonl"), recursive=True)
