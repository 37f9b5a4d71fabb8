"""Settings for every test, whichever way pytest was started."""

import os
import signal

import pytest


def pytest_configure(config):
    """Ctrl-C raises ``KeyboardInterrupt`` here and in the processes the tests start.

    A shell that starts pytest in the background (``pytest &``) leaves SIGINT ignored, and
    Python then keeps it ignored; the interrupt tests would see nothing. Installing Python's
    handler also resets the inherited disposition of child processes to the default.
    """
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


def pytest_sessionstart(session):
    """The processes the tests start import this checkout.

    Scripts, ``python -m backobs`` and Dask workers would otherwise import the checkout that is
    installed editable, which differs from this one in a git worktree.
    """
    root = str(session.config.rootpath)
    paths = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    if root not in paths:
        os.environ["PYTHONPATH"] = os.pathsep.join([root, *paths])


_OWN_OPTIMIZERS = '''"""A researcher's optimizers, written by BackOBS's tests."""

import torch

from backpack_core.extensions import DiagGGNExact


class SignDescent(torch.optim.Optimizer):
    """Sign descent: every parameter moves by lr times the sign of its gradient."""

    def __init__(self, params, lr: float, scale: float = 1.0, warmup: int = 0,
                 centered: bool = False, mode="plain"):
        if lr <= 0:
            raise ValueError(f"lr must be positive, got {lr}")
        super().__init__(params, dict(lr=lr, scale=scale))

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    p.add_(p.grad.sign(), alpha=-group["lr"] * group["scale"])


class DiagonalNewton(torch.optim.Optimizer):
    """A damped Newton step with the exact GGN diagonal, which it asks the backward pass for."""

    hyperparameters = {
        "lr": {"type": float, "range": [0, None]},
        "damping": {"type": float, "default": 1.0, "range": [0, None], "help": "added to C"},
    }

    def __init__(self, params, lr, damping=1.0):
        super().__init__(params, dict(lr=lr, damping=damping))
        self.steps_with_curvature = 0

    def extensions(self):
        return [DiagGGNExact()]

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            for p in group["params"]:
                curvature = p.diag_ggn_exact  # AttributeError if the backward pass lacked it
                p.add_(p.grad / (curvature + group["damping"]), alpha=-group["lr"])
        self.steps_with_curvature += 1


def helper(params):
    """Not an optimizer."""
'''

_OTHER_MODULE = '''"""A second class with a name of the first module's."""

import torch


class SignDescent(torch.optim.SGD):
    """Another SignDescent."""
'''


def _write_own_package(root):
    package = root / "own_optim_pkg"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text('"""A researcher\'s package."""\n')
    (package / "opt.py").write_text(_OWN_OPTIMIZERS)
    (package / "other.py").write_text(_OTHER_MODULE)
    return root


@pytest.fixture(scope="session")
def own_package_root(tmp_path_factory):
    """The folder of a researcher's package ``own_optim_pkg``, written by the test session.

    ``own_optim_pkg.opt`` defines ``SignDescent`` (a signature with float, int, bool and
    untyped parameters), ``DiagonalNewton`` (declared hyperparameters, asks for DiagGGNExact)
    and a function ``helper``; ``own_optim_pkg.other`` another class named ``SignDescent``.
    """
    return _write_own_package(tmp_path_factory.mktemp("own_package"))


@pytest.fixture
def own_package(own_package_root, monkeypatch):
    """``own_optim_pkg`` importable here and in the processes the test starts."""
    monkeypatch.syspath_prepend(str(own_package_root))
    paths = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([*paths, str(own_package_root)]))
    return own_package_root
