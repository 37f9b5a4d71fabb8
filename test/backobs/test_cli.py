"""The command lines as a user runs them: ``example/run.py`` and ``backobs run`` in subprocesses.

Bad input ends with one line on stderr and exit code 2 before any work; Ctrl-C ends with
exit code 130 and the completed epochs written; a diverged run leaves strict JSON. The
table of refusals runs in-process through the same ``main`` functions (a subprocess costs
about 7 s of imports each); a few of its cases also run as subprocesses.
"""

import glob
import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
RUN_SCRIPT = str(ROOT / "example" / "run.py")
PLOT_SCRIPT = str(ROOT / "example" / "plot.py")


def environment():
    env = {k: v for k, v in os.environ.items() if k != "BACKOBS_SYNTHETIC_DATA"}
    env.update(PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    return env


def command(script, *arguments):
    if script == "backobs":
        return [sys.executable, "-m", "backobs", *map(str, arguments)]
    return [sys.executable, script, *map(str, arguments)]


def run(script, *arguments, cwd):
    return subprocess.run(
        command(script, *arguments),
        capture_output=True,
        text=True,
        cwd=cwd,
        env=environment(),
        timeout=600,
    )


def refuse_constant(name):
    raise ValueError(f"not strict JSON: {name}")


def assert_one_line_error(result, prog, *fragments):
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"{prog}: error: "), lines[0]
    for fragment in fragments:
        assert fragment in lines[0]
    # Nothing was started: no evaluation printed, no results folder made.
    assert "Evaluating" not in result.stdout


BAD_RUN_OPTIONS = [
    (["--output_dir", "/proc/backobs"], ["--output_dir", "not writable"]),
    (["--num_epochs", "-1"], ["--num_epochs must be a positive integer"]),
    (["--steps-per-epoch", "-2"], ["--steps-per-epoch must be a non-negative integer"]),
    (["--eval-batches", "-1"], ["--eval-batches must be a non-negative integer"]),
    (["--log-interval", "-1"], ["--log-interval must be a non-negative integer"]),
    (["--batch_size", "0"], ["--batch_size must be a positive integer"]),
    (["--random_seed", "-3"], ["--random_seed"]),
    (["--lr", "nan"], ["--lr must be a finite number"]),
    (["--lr", "inf"], ["--lr must be a finite number"]),
    (["--momentum", "nan"], ["--momentum must be a finite number"]),
    (["--lr", "fast"], ["--lr", "invalid float value"]),
    (["--device", "gpu7"], ["--device"]),
    (["--extensions", "Nope"], ["--extensions", "invalid choice"]),
    (["--step-log-interval", "0"], ["--step-log-interval must be a positive integer"]),
    (["--data-loader", "pil"], ["--data-loader", "invalid choice: 'pil'", "'tensor', 'deepobs'"]),
]


@pytest.mark.parametrize("options, fragments", [BAD_RUN_OPTIONS[1], BAD_RUN_OPTIONS[10]])
def test_run_script_refuses_bad_options_with_one_line(tmp_path, options, fragments):
    """The script, in a subprocess: a check of ours and one of argparse's."""
    arguments = ["mnist_logreg", "--lr", "0.1", "--synthetic-data", *options]
    result = run(RUN_SCRIPT, *arguments, cwd=tmp_path)
    assert_one_line_error(result, "run.py", *fragments)
    assert not (tmp_path / "results").exists()


@pytest.mark.parametrize("options, fragments", BAD_RUN_OPTIONS)
def test_run_script_refusals_in_process(tmp_path, options, fragments, monkeypatch, capsys):
    """Every refusal through the script's ``main``, without a Python start each."""
    spec = importlib.util.spec_from_file_location("run_script", RUN_SCRIPT)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(
        sys, "argv", ["run.py", "mnist_logreg", "--lr", "0.1", "--synthetic-data", *options]
    )
    with pytest.raises(SystemExit) as exit:
        script.main()
    captured = capsys.readouterr()
    result = subprocess.CompletedProcess(sys.argv, exit.value.code, captured.out, captured.err)
    assert_one_line_error(result, "run.py", *fragments)
    assert not (tmp_path / "results").exists()


def test_output_dir_under_a_file_is_refused(tmp_path):
    (tmp_path / "file").write_text("x")
    result = run(
        RUN_SCRIPT, "mnist_logreg", "--lr", 0.1, "--output_dir", tmp_path / "file" / "out",
        cwd=tmp_path,
    )  # fmt: skip
    assert_one_line_error(result, "run.py", "--output_dir", "is a file")


def test_missing_data_names_the_option_and_leaves_no_folder(tmp_path):
    data_dir = tmp_path / "data"
    result = run(RUN_SCRIPT, "mnist_logreg", "--lr", 0.1, "--data_dir", data_dir, cwd=tmp_path)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert lines[-1].startswith("run.py: error: The MNIST data set is not in the data directory")
    assert "--data_dir" in lines[-1] and "--synthetic-data" in lines[-1]
    assert not (data_dir / "MNIST").exists()


def test_help_is_true(tmp_path):
    result = run(RUN_SCRIPT, "--help", cwd=tmp_path)
    assert result.returncode == 0
    text = " ".join(result.stdout.split())
    assert "deacy" not in text and "tensorflow" not in text and " -wd" not in text
    assert "Stop each epoch after this many steps; 0: the whole epoch (default: 3; with " in text
    assert "--full: the whole epoch)" in text
    assert "(default: 10; with --full: all)" in text


BAD_BACKOBS_RUNS = [
    (["mnist_logreg", "--optimizer", "newton", "--lr", "1"], ["--optimizer", "newton"]),
    (["mnist_logreg", "--optimizer", "kfac", "--lr", "-1"], ["lr must be >= 0"]),
    (["mnist_logreg", "--optimizer", "kfac", "--lr", "1", "--damping", "nan"], ["damping"]),
    (["mnist_logreg", "--optimizer", "sgd"], ["--lr"]),
    (["mnist_vae", "--optimizer", "sgd", "--lr", "1"], ["mnist_vae is not supported"]),
    (["cifar10_3c3d", "--optimizer", "sgd", "--lr", "1"], ["l2", "--l2_reg 0.0"]),
]


def test_backobs_run_refuses_bad_input_with_one_line(tmp_path):
    """The console command, in a subprocess: one case (the others run in-process below)."""
    arguments, fragments = BAD_BACKOBS_RUNS[0]
    result = run("backobs", "run", *arguments, "--synthetic-data", cwd=tmp_path)
    assert_one_line_error(result, "backobs run", *fragments)


@pytest.mark.parametrize("arguments, fragments", BAD_BACKOBS_RUNS + [(None, [])])
def test_backobs_refusals_in_process(arguments, fragments, tmp_path, monkeypatch, capsys):
    """``backobs.cli.main``, which the console script calls, without a Python start each."""
    from backobs import cli

    monkeypatch.chdir(tmp_path)
    argv = ["sweep"] if arguments is None else ["run", *arguments, "--synthetic-data"]
    try:
        code = cli.main(argv)
    except SystemExit as exit:  # argparse's own errors
        code = exit.code
    captured = capsys.readouterr()
    result = subprocess.CompletedProcess(argv, code, captured.out, captured.err)
    prog = "backobs sweep" if arguments is None else "backobs run"
    assert_one_line_error(result, prog, *fragments)
    assert not (tmp_path / "results").exists()


def test_backobs_run_trains_with_the_optimizers_extensions(tmp_path):
    result = run(
        "backobs", "run", "mnist_logreg", "--optimizer", "kflr", "--lr", 1.0, "--damping", 0.1,
        "--synthetic-data", "--bs", 16, "-N", 1, "--steps-per-epoch", 3, "--eval-batches", 1,
        "--extensions", "BatchL2Grad", cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    (results_file,) = glob.glob(
        str(tmp_path / "results" / "mnist_logreg" / "kflr" / "*" / "*.json")
    )
    with open(results_file, encoding="utf-8") as file:
        results = json.load(file, parse_constant=refuse_constant)
    assert results["optimizer_name"] == "kflr" and results["status"] == "finished"
    assert results["optimizer_hyperparams"]["damping"] == 0.1
    with open(results_file[: -len(".json")] + ".steps.jsonl", encoding="utf-8") as file:
        first = json.loads(file.readline())
    assert set(first["extensions"]) == {"KFLR", "BatchL2Grad"}
    assert first["extensions"]["KFLR"]["parameters"]["dense.weight"]["shape"] == [
        [10, 10],
        [784, 784],
    ]
    # A short run prints the shapes every step (as the demo), a long one would not.
    assert result.stdout.count("[backobs] Extension: KFLR") == 3


def test_diverged_run_keeps_strict_json_and_says_where(tmp_path):
    result = run(
        RUN_SCRIPT, "mnist_mlp", "--lr", 1e6, "--extensions", "BatchGrad", "DiagGGNMC", "KFAC",
        "--synthetic-data", "--bs", 8, "--steps-per-epoch", 6, "--log-interval", 0, cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "[backobs] Diverged at step " in result.stdout
    (results_file,) = glob.glob(str(tmp_path / "results" / "mnist_mlp" / "SGD" / "*" / "*.json"))
    with open(results_file, encoding="utf-8") as file:
        results = json.load(file, parse_constant=refuse_constant)
    assert results["status"] == "diverged"
    step = results["diverged_at_step"]
    assert f"[backobs] Diverged at step {step} " in result.stdout
    with open(results_file[: -len(".json")] + ".steps.jsonl", encoding="utf-8") as file:
        entries = [json.loads(line, parse_constant=refuse_constant) for line in file]
    assert entries[-1]["global_step"] == step and entries[-1]["loss"] is None


def test_ctrl_c_writes_the_completed_epochs_and_exits_130(tmp_path):
    process = subprocess.Popen(
        command(
            RUN_SCRIPT,
            "mnist_logreg",
            "--lr",
            0.01,
            "--synthetic-data",
            "--bs",
            16,
            "-N",
            50,
            "--steps-per-epoch",
            100,
            "--log-interval",
            0,
        ),  # fmt: skip
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=tmp_path,
        env=environment(),
    )
    lines = []
    deadline = time.monotonic() + 300
    try:
        for line in process.stdout:
            lines.append(line)
            if line.startswith("Evaluating after 1 of 50 epochs"):
                break
            assert time.monotonic() < deadline, "the run did not finish an epoch in time"
        time.sleep(0.5)  # inside the second epoch's training
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=120)
    finally:
        process.kill()
    out = "".join(lines) + out
    assert process.returncode == 130, err
    assert "Traceback" not in err and err.strip() == "run.py: interrupted"
    assert "[backobs] Interrupted: the results hold the " in out
    results_line = next(line for line in out.splitlines() if line.startswith("[backobs] Results: "))
    results_path = results_line.split(": ", 1)[1]
    step_log_line = next(line for line in out.splitlines() if "[backobs] Step log: " in line)
    assert step_log_line.split(": ", 1)[1] == results_path[: -len(".json")] + ".steps.jsonl"
    results_file = tmp_path / results_path
    assert (tmp_path / step_log_line.split(": ", 1)[1]).stat().st_size > 0
    with open(results_file, encoding="utf-8") as file:
        results = json.load(file, parse_constant=refuse_constant)
    assert results["status"] == "interrupted"
    completed = len(results["epoch_seconds"])
    assert completed >= 1 and len(results["test_losses"]) == completed + 1
    assert glob.glob(str(tmp_path / "results" / "*" / "*" / "*" / "*.part")) == []

    plotted = run(PLOT_SCRIPT, results_file, "-o", tmp_path / "partial.png", cwd=tmp_path)
    assert plotted.returncode == 0, plotted.stderr
    assert (tmp_path / "partial.png").stat().st_size > 0
