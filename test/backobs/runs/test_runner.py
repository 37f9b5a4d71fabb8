"""BackpackRunner end to end on mnist_logreg with capped epochs and synthetic data."""

import glob
import json
import math
import os
import sys

import pytest
import torch
from torch.optim import SGD

from backobs.runs.options import OptionError
from backobs.runs.runner import BackpackRunner
from backobs.runs.steplog import summarize_quantity

SGD_HYPERPARAMETERS = {"lr": {"type": float}, "momentum": {"type": float, "default": 0.0}}
DEEPOBS_KEYS = {
    "testproblem",
    "batch_size",
    "num_epochs",
    "random_seed",
    "weight_decay",
    "optimizer_name",
    "optimizer_hyperparams",
    "training_params",
    "train_losses",
    "valid_losses",
    "test_losses",
    "minibatch_train_losses",
    "train_accuracies",
    "valid_accuracies",
    "test_accuracies",
}
BACKOBS_KEYS = {
    "status",
    "diverged_at_step",
    "diverged_quantity",
    "diverged_reason",
    "epoch_seconds",
    "synthetic_data",
    "step_log",
    "step_log_error",
    "data_loader",
    "data_loader_fallback",
    "data_cached",
}


@pytest.fixture(autouse=True)
def synthetic_data(monkeypatch):
    # The environment variable instead of --synthetic-data: the flag switches synthetic data
    # on for the whole process, which would leak into other tests (the CLI tests use it).
    monkeypatch.setenv("BACKOBS_SYNTHETIC_DATA", "1")


def run_cli(monkeypatch, *arguments, runner=None):
    """``runner.run()`` with ``arguments`` as its command line."""
    monkeypatch.setattr(sys, "argv", ["runner", *map(str, arguments)])
    runner = runner or BackpackRunner(SGD, SGD_HYPERPARAMETERS)
    return runner.run()


def results_files(output_dir):
    return glob.glob(os.path.join(output_dir, "*", "*", "*", "random_seed__*.json"))


def refuse_constant(name):
    raise ValueError(f"not strict JSON: {name}")


def read_step_log(results_file):
    with open(results_file.replace(".json", ".steps.jsonl"), encoding="utf-8") as file:
        return [json.loads(line, parse_constant=refuse_constant) for line in file]


def test_run_writes_deepobs_results_and_step_log(monkeypatch, tmp_path, capsys):
    output = run_cli(
        monkeypatch,
        "mnist_logreg",
        "--lr", 0.1,
        "--batch_size", 4,
        "--num_epochs", 2,
        "--steps_per_epoch", 3,
        "--eval_batches", 2,
        "--log_interval", 2,
        "--extensions", "BatchGrad", "BatchL2Grad",
        "--output_dir", tmp_path,
    )  # fmt: skip
    stdout = capsys.readouterr().out

    assert set(output) == DEEPOBS_KEYS | BACKOBS_KEYS
    assert output["status"] == "finished" and output["diverged_at_step"] is None
    assert len(output["epoch_seconds"]) == 2 and all(t > 0 for t in output["epoch_seconds"])
    assert len(output["train_losses"]) == len(output["test_accuracies"]) == 3
    assert output["training_params"]["extensions"] == ["BatchGrad", "BatchL2Grad"]

    (results_file,) = results_files(tmp_path)
    settings = os.path.basename(os.path.dirname(results_file))
    assert results_file.startswith(os.path.join(str(tmp_path), "mnist_logreg", "SGD", ""))
    assert "steps_per_epoch__3" in settings and "eval_batches__2" in settings
    assert "log_interval" not in settings and "extensions" not in settings
    with open(results_file, encoding="utf-8") as file:
        assert json.load(file)["train_losses"] == output["train_losses"]
    assert glob.glob(os.path.join(os.path.dirname(results_file), "*.part")) == []
    assert output["step_log"] == os.path.basename(results_file).replace(".json", ".steps.jsonl")
    assert output["step_log_error"] is None

    # The log keeps every step, the terminal every second one.
    steps = read_step_log(results_file)
    assert [(s["epoch"], s["step"], s["global_step"]) for s in steps] == [
        (0, 0, 0), (0, 1, 1), (0, 2, 2), (1, 0, 3), (1, 1, 4), (1, 2, 5),
    ]  # fmt: skip
    assert all(math.isfinite(s["loss"]) for s in steps)
    batch_grad = steps[0]["extensions"]["BatchGrad"]
    assert batch_grad["savefield"] == "grad_batch"
    weight = batch_grad["parameters"]["dense.weight"]
    assert weight["shape"] == [4, 10, 784]
    assert set(weight["sample_norms"]) == {"mean", "std", "min", "max"}
    bias_l2 = steps[0]["extensions"]["BatchL2Grad"]["parameters"]["dense.bias"]
    assert bias_l2["shape"] == [4] and bias_l2["sample_values"]["min"] >= 0

    assert stdout.count("[backobs] Extension: BatchGrad\n") == 3
    assert "  Parameter 0: Shape (4, 10, 784)\n  Parameter 1: Shape (4, 10)\n" in stdout
    assert "  Parameter 1: Shape (4,)\n" in stdout
    assert "Evaluating after 2 of 2 epochs..." in stdout
    assert "TRAIN: loss" in stdout and "VALID: loss" in stdout and "TEST: loss" in stdout
    assert "first 2 mini-batches" in stdout


def test_make_extensions_reaches_optimizer_step(monkeypatch, tmp_path):
    from backpack_core.extensions import SumGradSquared

    seen = []

    class RecordingSGD(SGD):
        def step(self, closure=None):
            seen.append(
                [p.sum_grad_squared.shape == p.shape for p in self.param_groups[0]["params"]]
            )
            return super().step(closure)

    runner = BackpackRunner(
        RecordingSGD, SGD_HYPERPARAMETERS, make_extensions=lambda: [SumGradSquared()]
    )
    output = run_cli(
        monkeypatch, "mnist_logreg", "--lr", 0.1, "--bs", 2, "-N", 1,
        "--steps-per-epoch", 2, "--eval-batches", 1, "--no_logs", runner=runner,
    )  # fmt: skip
    assert seen == [[True, True], [True, True]]
    assert output["training_params"]["extensions"] is None
    assert results_files(tmp_path) == []


def test_non_finite_loss_aborts_as_deepobs(monkeypatch, tmp_path, capsys):
    with pytest.warns(RuntimeWarning, match="Loss is Nan or Inf"):
        output = run_cli(
            monkeypatch, "mnist_logreg", "--lr", 1e38, "--batch_size", 4, "--num_epochs", 3,
            "--steps_per_epoch", 5, "--eval_batches", 1, "--output_dir", tmp_path,
        )  # fmt: skip
    # DeepOBS fills the remaining epochs with the initial evaluation.
    assert output["train_losses"] == [output["train_losses"][0]] * 4
    assert output["status"] == "diverged"
    (results_file,) = results_files(tmp_path)
    steps = read_step_log(results_file)  # strict JSON: the non-finite loss is null
    assert 2 <= len(steps) <= 5
    assert all(math.isfinite(s["loss"]) for s in steps[:-1]) and steps[-1]["loss"] is None
    assert output["diverged_at_step"] == steps[-1]["global_step"]
    with open(results_file, encoding="utf-8") as file:
        recorded = json.load(file, parse_constant=refuse_constant)
    assert recorded["status"] == "diverged"
    assert recorded["diverged_at_step"] == output["diverged_at_step"]
    assert recorded["diverged_quantity"] == "loss"
    assert recorded["diverged_reason"] in (
        "the mini-batch loss is nan",
        "the mini-batch loss is inf",
    )
    stdout = capsys.readouterr().out
    assert f"[backobs] Diverged at step {output['diverged_at_step']} " in stdout


def test_a_refused_update_records_the_parameter_by_its_name(monkeypatch, tmp_path):
    from backobs.optim import DampedNewton
    from backpack_core.extensions import DiagGGNExact

    class PoisonedNewton(DampedNewton):
        """A damped Newton step whose bias curvature turns NaN in the third step."""

        def __init__(self, params, lr):
            super().__init__(params, "diag_ggn_exact", lr=lr, damping=1.0)
            self.steps = 0

        def step(self, closure=None):
            self.steps += 1
            if self.steps == 3:
                self.param_groups[0]["params"][1].diag_ggn_exact.fill_(math.nan)
            return super().step(closure)

    runner = BackpackRunner(PoisonedNewton, {"lr": {"type": float}}, lambda: [DiagGGNExact()])
    with pytest.warns(RuntimeWarning, match="Loss is Nan or Inf"):  # DeepOBS's abort
        output = run_cli(
            monkeypatch, "mnist_logreg", "--lr", 0.1, "--batch_size", 4, "--num_epochs", 2,
            "--steps_per_epoch", 2, "--eval_batches", 1, "--output_dir", tmp_path,
            runner=runner,
        )  # fmt: skip
    # Steps 0 and 1 (epoch 0) are taken, step 2 (the first of epoch 1) is refused.
    assert output["status"] == "diverged" and output["diverged_at_step"] == 2
    # The optimizer has no names (the runner passes net.parameters()): the loop finds it.
    assert output["diverged_quantity"] == "curvature .diag_ggn_exact of parameter dense.bias"
    assert output["diverged_reason"] == (
        "the curvature .diag_ggn_exact of parameter 1 of parameter group 0 (shape (10,)) is "
        "not finite; no parameter was changed."
    )
    (results_file,) = results_files(tmp_path)
    with open(results_file, encoding="utf-8") as file:
        recorded = json.load(file)
    assert recorded["diverged_quantity"] == output["diverged_quantity"]
    assert recorded["diverged_reason"] == output["diverged_reason"]


def test_l2_reg_is_weight_decay(monkeypatch, tmp_path):
    output = run_cli(
        monkeypatch, "cifar10_3c3d", "--lr", 0.1, "--l2_reg", 0.0, "--batch_size", 2,
        "--num_epochs", 1, "--steps_per_epoch", 1, "--eval_batches", 1, "--log_interval", 0,
        "--output_dir", tmp_path,
    )  # fmt: skip
    assert output["weight_decay"] == 0.0
    (results_file,) = results_files(tmp_path)
    assert "weight_decay__0.e+00" in results_file


def test_cli_defaults_apply_unless_full_or_overridden(monkeypatch, tmp_path):
    defaults = {"batch_size": 2, "num_epochs": 1, "steps_per_epoch": 1, "eval_batches": 1}
    runner = BackpackRunner(SGD, SGD_HYPERPARAMETERS, cli_defaults=defaults)
    output = run_cli(
        monkeypatch, "mnist_logreg", "--lr", 0.1, "--bs", 3, "--no_logs", runner=runner
    )
    assert (output["batch_size"], output["num_epochs"]) == (3, 1)
    assert output["training_params"]["steps_per_epoch"] == 1

    args = runner.parse_command_line(["mnist_logreg", "--lr", "0.1", "--full"])
    assert args["batch_size"] is None and args["num_epochs"] is None
    assert args["steps_per_epoch"] is None and args["eval_batches"] is None
    args = runner.parse_command_line(["mnist_logreg", "--lr", "0.1", "--full", "--bs", "5"])
    assert args["batch_size"] == 5 and args["num_epochs"] is None


def test_unknown_problem_is_an_option_error(monkeypatch):
    with pytest.raises(OptionError, match="unknown problem 'mnist_nope'"):
        run_cli(monkeypatch, "mnist_nope", "--lr", 0.1, "--bs", 2, "-N", 1)


def test_run_from_python_does_not_read_the_command_line(monkeypatch, tmp_path):
    monkeypatch.setattr(sys, "argv", ["pytest", "--no-such-option", "-x"])
    output = BackpackRunner(SGD, SGD_HYPERPARAMETERS).run(
        testproblem="mnist_logreg", hyperparams={"lr": 0.1}, batch_size=2, num_epochs=1,
        steps_per_epoch=1, eval_batches=1, output_dir=str(tmp_path),
    )  # fmt: skip
    assert output["optimizer_hyperparams"] == {"lr": 0.1, "momentum": 0.0}
    assert output["optimizer_name"] == "SGD"


@pytest.mark.parametrize(
    "settings, fragment",
    [
        ({"num_epochs": -1}, "--num_epochs must be a positive integer"),
        ({"steps_per_epoch": -2}, "--steps-per-epoch must be a non-negative integer"),
        ({"eval_batches": -1}, "--eval-batches must be a non-negative integer"),
        ({"log_interval": -1}, "--log-interval must be a non-negative integer"),
        ({"step_log_interval": 0}, "--step-log-interval must be a positive integer"),
        ({"hyperparams": {"lr": float("nan")}}, "--lr must be a finite number"),
        ({"hyperparams": {"lr": 0.1, "momentum": float("inf")}}, "--momentum must be a finite"),
        ({"output_dir": "/proc/backobs"}, "--output_dir '/proc/backobs'"),
        ({"device": "cuda:0" if not torch.cuda.is_available() else "tpu"}, "--device"),
        ({"hyperparams": {}}, "--lr is required"),
        ({"hyperparams": {"lr": 0.1, "beta": 1.0}}, "unknown hyperparameter(s) beta"),
        ({"data_loader": "pil"}, "--data-loader 'pil' is not a data loader; choose one of"),
    ],
)
def test_bad_settings_raise_before_any_work(monkeypatch, settings, fragment):
    def no_work(*args, **kwargs):
        raise AssertionError("the problem was set up before the settings were checked")

    runner = BackpackRunner(SGD, SGD_HYPERPARAMETERS)
    monkeypatch.setattr(runner, "create_testproblem", no_work)
    arguments = dict(
        testproblem="mnist_logreg", hyperparams={"lr": 0.1}, batch_size=2, num_epochs=1
    )
    arguments.update(settings)
    with pytest.raises(OptionError) as error:
        runner.run(**arguments)
    assert fragment in str(error.value)


def test_steps_without_extensions_keep_no_records_and_give_the_same_numbers(monkeypatch, tmp_path):
    """The speed path of plain steps (no records in the forward pass) changes no number."""
    import contextlib

    from backobs.runs import training

    def run(output_dir):
        torch.manual_seed(0)
        return BackpackRunner(SGD, SGD_HYPERPARAMETERS, make_extensions=list).run(
            testproblem="mnist_logreg", hyperparams={"lr": 0.1}, batch_size=4, num_epochs=2,
            steps_per_epoch=5, eval_batches=2, output_dir=str(output_dir),
        )  # fmt: skip

    calls = []
    real_no_records = training.no_records

    def counting(records_off):
        def no_records():
            calls.append(records_off)
            return real_no_records() if records_off else contextlib.nullcontext()

        return no_records

    monkeypatch.setattr(training, "no_records", counting(True))
    fast = run(tmp_path / "fast")
    monkeypatch.setattr(training, "no_records", counting(False))
    with_records = run(tmp_path / "with_records")
    assert calls.count(True) == calls.count(False) == 10  # every training step
    for key in ("train_losses", "valid_losses", "test_losses", "minibatch_train_losses"):
        assert fast[key] == with_records[key], key


def test_interrupt_writes_completed_epochs_and_reraises(monkeypatch, tmp_path, capsys):
    calls = []

    class InterruptedSGD(SGD):
        def step(self, closure=None):
            calls.append(1)
            if len(calls) == 3:  # the first step of the second epoch
                raise KeyboardInterrupt
            return super().step(closure)

    runner = BackpackRunner(InterruptedSGD, SGD_HYPERPARAMETERS)
    with pytest.raises(KeyboardInterrupt):
        runner.run(
            testproblem="mnist_logreg", hyperparams={"lr": 0.1}, batch_size=2, num_epochs=3,
            steps_per_epoch=2, eval_batches=1, output_dir=str(tmp_path),
        )  # fmt: skip
    (results_file,) = results_files(tmp_path)
    with open(results_file, encoding="utf-8") as file:
        recorded = json.load(file, parse_constant=refuse_constant)
    assert recorded["status"] == "interrupted"
    assert len(recorded["train_losses"]) == len(recorded["test_losses"]) == 2
    assert len(recorded["epoch_seconds"]) == 1
    assert len(read_step_log(results_file)) == 3
    stdout = capsys.readouterr().out
    assert "Interrupted: the results hold the 1 of 3 epochs completed" in stdout
    assert f"[backobs] Results: {results_file}" in stdout


def test_synthetic_data_does_not_leak_into_the_next_run(monkeypatch, tmp_path):
    from backobs.adapter import data

    monkeypatch.delenv("BACKOBS_SYNTHETIC_DATA")
    data._reset_synthetic_switch()
    BackpackRunner(SGD, SGD_HYPERPARAMETERS).run(
        testproblem="mnist_logreg", hyperparams={"lr": 0.1}, batch_size=2, num_epochs=1,
        steps_per_epoch=1, eval_batches=1, synthetic_data=True, no_logs=True,
    )  # fmt: skip
    assert not data.synthetic_data_enabled()


def test_summarize_quantity():
    grad_batch = torch.tensor([[3.0, 4.0], [0.0, 0.0]])
    summary = summarize_quantity(grad_batch, per_sample=True)
    assert summary["shape"] == [2, 2] and summary["norm"] == pytest.approx(5.0)
    assert summary["sample_norms"] == pytest.approx(
        {"mean": 2.5, "std": 2.5, "min": 0.0, "max": 5.0}
    )
    factors = summarize_quantity([torch.eye(3), 2 * torch.eye(2)])
    assert factors["shape"] == [[3, 3], [2, 2]]
    assert factors["norm"] == pytest.approx([3**0.5, 8**0.5])
    assert "sample_norms" not in summarize_quantity(torch.ones(2, 2))
    values = summarize_quantity(torch.tensor([1.0, 3.0]), per_sample=True)["sample_values"]
    assert values == pytest.approx({"mean": 2.0, "std": 1.0, "min": 1.0, "max": 3.0})


@pytest.mark.parametrize(
    "problem, fragments",
    [
        ("mnist_vae", ["mnist_vae is not supported"]),
        ("cifar10_3c3d", ["cifar10_3c3d adds l2 regularization", "--l2_reg 0.0"]),
        ("mnist_nope", ["unknown problem 'mnist_nope'"]),
    ],
)
def test_main_ends_configuration_errors_with_one_line(monkeypatch, capsys, problem, fragments):
    monkeypatch.setattr(sys, "argv", ["run.py", problem, "--lr", "0.1", "--bs", "2", "-N", "1"])
    with pytest.raises(SystemExit) as exit_info:
        BackpackRunner(SGD, SGD_HYPERPARAMETERS).main()
    assert exit_info.value.code == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith("run.py: error: ")
    for fragment in fragments:
        assert fragment in line


def test_device_and_data_dir_are_restored_after_a_run(tmp_path):
    from backobs.adapter import deepobs as _deepobs

    device, data_dir = _deepobs.pytorch.config.get_default_device(), _deepobs.config.get_data_dir()
    BackpackRunner(SGD, SGD_HYPERPARAMETERS).run(
        testproblem="mnist_logreg", hyperparams={"lr": 0.1}, batch_size=2, num_epochs=1,
        steps_per_epoch=1, eval_batches=1, no_logs=True, device="cpu",
        data_dir=str(tmp_path / "data"),
    )  # fmt: skip
    assert _deepobs.config.get_data_dir() == data_dir
    assert _deepobs.pytorch.config.get_default_device() == device
