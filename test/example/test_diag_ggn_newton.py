"""The second-order example: damped diagonal GGN Newton steps lower the loss."""

import random
import sys

import numpy as np
import pytest
import torch
from example_loader import load_example

import backobs
from backobs import extend_problem
from backobs.adapter import data
from backobs.adapter.deepobs import testproblems
from backpack_core import backpack
from backpack_core.extensions import DiagGGNMC

newton = load_example("diag_ggn_newton")


@pytest.fixture(autouse=True)
def synthetic_data(monkeypatch):
    """Synthetic data, switched on by the call (the variable alone acts at import time)."""
    monkeypatch.setenv("BACKOBS_SYNTHETIC_DATA", "1")
    backobs.use_synthetic_data(True, seed=0)
    yield
    data._reset_synthetic_switch()


def test_runner_trains_mnist_logreg(monkeypatch):
    arguments = ["mnist_logreg", "--bs", "32", "-N", "1", "--steps_per_epoch", "10"]
    arguments += ["--eval_batches", "4", "--no_logs", "--log_interval", "0"]
    monkeypatch.setattr(sys, "argv", ["diag_ggn_newton.py", *arguments])
    output = newton.make_runner().run()
    assert output["optimizer_name"] == "DiagGGNNewton"
    assert output["optimizer_hyperparams"] == {"lr": 0.02, "damping": 0.3}
    initial, final = output["train_losses"]
    assert final < 0.9 * initial, output["train_losses"]


def test_steps_lower_the_loss_of_fmnist_2c2d_on_a_batch():
    # DeepOBS draws the conv net's truncated-normal weights from NumPy's global generator and
    # splits the training set with Python's: seed all three, so no earlier test changes the net.
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
    tproblem = testproblems.fmnist_2c2d(batch_size=8)
    tproblem.set_up()
    extend_problem(tproblem)
    tproblem.train_init_op()
    inputs, labels = tproblem._get_next_batch()
    loss_function = tproblem.loss_function()
    optimizer = newton.DiagGGNNewton(tproblem.net.parameters())
    losses = []
    for _ in range(4):
        optimizer.zero_grad()
        loss = loss_function(tproblem.net(inputs), labels)
        with backpack(DiagGGNMC()):
            loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.9 * losses[0], losses


def test_step_needs_the_curvature():
    parameter = torch.nn.Parameter(torch.ones(3))
    parameter.grad = torch.ones(3)
    optimizer = newton.DiagGGNNewton([parameter], lr=1.0, damping=1.0)
    with pytest.raises(RuntimeError, match="diag_ggn_mc"):
        optimizer.step()
    parameter.diag_ggn_mc = torch.full((3,), 3.0)
    optimizer.step()
    assert torch.allclose(parameter, torch.full((3,), 0.75))
