"""Every optimizer of ``backobs.optim`` trains every supported problem from the command line.

The runs go through ``backobs.cli.main`` (the ``backobs run`` command, in this process: a
subprocess per run would cost an interpreter start each) on synthetic data with a few steps.
"""

import contextlib
import glob
import io
import json

import pytest

import backobs
from backobs import cli, optim

LARGE = {"cifar10_vgg16", "cifar10_vgg19", "cifar100_vgg16", "cifar100_vgg19", "cifar100_allcnnc"}
SUPPORTED = [cls.__name__ for cls in backobs.SUPPORTED]
KRONECKER = ("kfac", "kflr", "kfra")


def backobs_run(problem, optimizer, output_dir, *options):
    arguments = [
        "run", problem, "--optimizer", optimizer, "--synthetic-data", "-N", "1",
        "--eval-batches", "2", "--l2_reg", "0", "--log-interval", "0",
        "--output_dir", str(output_dir), *map(str, options),
    ]  # fmt: skip
    with contextlib.redirect_stdout(io.StringIO()) as stdout:
        code = cli.main(arguments)
    assert code == 0, stdout.getvalue()[-2000:]
    (path,) = glob.glob(str(output_dir / problem / optimizer / "*" / "*[0-9].json"))
    with open(path, encoding="utf-8") as file:
        return json.load(file)


@pytest.mark.parametrize(
    "problem",
    [pytest.param(name, marks=pytest.mark.slow) if name in LARGE else name for name in SUPPORTED],
)
def test_every_optimizer_trains_the_problem(problem, tmp_path):
    for optimizer in optim.OPTIMIZERS:
        options = ["--lr", 0.01, "--bs", 2, "--steps-per-epoch", 2]
        results = backobs_run(problem, optimizer, tmp_path / optimizer, *options)
        assert results["status"] == "finished", optimizer
        assert results["optimizer_name"] == optimizer
        assert len(results["train_losses"]) == 2 and len(results["epoch_seconds"]) == 1


# Settings under which each optimizer makes progress in a few steps on synthetic images.
# DiagGGNMC with one sample is too noisy for that (its small entries are underestimated
# now and then); 20 samples estimate the diagonal well enough.
SETTINGS = {
    "sgd": ["--lr", 0.01],
    "momentum": ["--lr", 0.01, "--momentum", 0.9],
    "adam": ["--lr", 0.001],
    "zero": ["--lr", 0.001, "--damping", 0.1],
    "diag_ggn_exact": ["--lr", 0.02, "--damping", 0.3],
    "diag_ggn_mc": ["--lr", 0.05, "--damping", 1.0, "--mc_samples", 20],
    "kfac": ["--lr", 0.1, "--damping", 1.0],
    "kflr": ["--lr", 0.1, "--damping", 1.0],
    "kfra": ["--lr", 0.1, "--damping", 1.0],
}


@pytest.mark.parametrize("optimizer", list(optim.OPTIMIZERS))
@pytest.mark.parametrize("problem", ["mnist_logreg", "fmnist_2c2d"])
def test_the_loss_falls(problem, optimizer, tmp_path):
    assert set(SETTINGS) == set(optim.OPTIMIZERS)
    # Kronecker steps on fmnist_2c2d cost seconds each (a 3136 x 3136 input factor).
    batch, steps = (16, 5) if problem == "fmnist_2c2d" and optimizer in KRONECKER else (32, 8)
    results = backobs_run(
        problem,
        optimizer,
        tmp_path,
        *SETTINGS[optimizer],
        "--bs",
        batch,
        "--steps-per-epoch",
        steps,
    )
    before, after = results["train_losses"]
    assert after < before, (optimizer, before, after)
