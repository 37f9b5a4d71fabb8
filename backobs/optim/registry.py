"""The optimizers ``backobs run --optimizer NAME`` and sweep files know, by name.

:data:`OPTIMIZERS` holds the six :class:`~backobs.optim.damped_newton.DampedNewton`
curvatures and the first-order baselines ``"sgd"``, ``"momentum"`` and ``"adam"``
(``torch.optim`` with DeepOBS's hyperparameter names), each with its hyperparameters in
DeepOBS's format.
"""

from dataclasses import dataclass
from typing import Callable

import torch

from backobs.optim.damped_newton import _MONTE_CARLO, DampedNewton
from backobs.optim.hyperparameters import check_value

__all__ = [
    "OPTIMIZERS",
    "OptimizerSpec",
    "check_hyperparameters",
    "make_optimizer",
    "required_extensions",
]


@dataclass(frozen=True)
class OptimizerSpec:
    """An optimizer as ``backobs run`` knows it.

    Attributes:
        name (str): The name given to ``--optimizer`` (also the results folder's name).
        hyperparameters (dict): DeepOBS's format, e.g. ``{"lr": {"type": float},
            "damping": {"type": float, "default": 1e-3}}``; an entry without ``"default"``
            is required.
        build (Callable): ``build(params, **hyperparameters)`` returns the
            ``torch.optim.Optimizer``.
        description (str): One line for help texts.
    """

    name: str
    hyperparameters: dict
    build: Callable
    description: str


def _sgd(params, lr):
    return torch.optim.SGD(params, lr=lr)


def _momentum(params, lr, momentum, nesterov):
    return torch.optim.SGD(params, lr=lr, momentum=momentum, nesterov=nesterov)


def _adam(params, lr, beta1, beta2, epsilon):
    return torch.optim.Adam(params, lr=lr, betas=(beta1, beta2), eps=epsilon)


def _damped_newton(curvature):
    def build(params, **hyperparameters):
        return DampedNewton(params, curvature, **hyperparameters)

    return build


def _curvature_spec(curvature, description):
    hyperparameters = {"lr": {"type": float}, "damping": {"type": float, "default": 1e-3}}
    if curvature != "zero":
        hyperparameters["ema_decay"] = {"type": float, "default": 0.0}
        hyperparameters["inverse_interval"] = {"type": int, "default": 1}
    if curvature in _MONTE_CARLO:
        hyperparameters["mc_samples"] = {"type": int, "default": 1}
    if curvature in ("kfac", "kflr"):
        hyperparameters["kfac_approx"] = {"type": str, "default": "expand"}
    return OptimizerSpec(curvature, hyperparameters, _damped_newton(curvature), description)


OPTIMIZERS = {
    "sgd": OptimizerSpec("sgd", {"lr": {"type": float}}, _sgd, "torch.optim.SGD without momentum"),
    "momentum": OptimizerSpec(
        "momentum",
        {
            "lr": {"type": float},
            "momentum": {"type": float, "default": 0.99},
            "nesterov": {"type": bool, "default": False},
        },
        _momentum,
        "torch.optim.SGD with (heavy-ball or Nesterov) momentum",
    ),
    "adam": OptimizerSpec(
        "adam",
        {
            "lr": {"type": float},
            "beta1": {"type": float, "default": 0.9},
            "beta2": {"type": float, "default": 0.999},
            "epsilon": {"type": float, "default": 1e-8},
        },
        _adam,
        "torch.optim.Adam (betas=(beta1, beta2), eps=epsilon)",
    ),
    "diag_ggn_exact": _curvature_spec(
        "diag_ggn_exact", "damped Newton with the exact GGN diagonal (DiagGGNExact)"
    ),
    "diag_ggn_mc": _curvature_spec(
        "diag_ggn_mc", "damped Newton with the Monte-Carlo GGN diagonal (DiagGGNMC)"
    ),
    "kfac": _curvature_spec("kfac", "damped Newton with KFAC's Kronecker factors"),
    "kflr": _curvature_spec("kflr", "damped Newton with KFLR's Kronecker factors"),
    "kfra": _curvature_spec("kfra", "damped Newton with KFRA's Kronecker factors"),
    "zero": _curvature_spec("zero", "C = 0: SGD with the step lr / damping (a control)"),
}
"""Every optimizer ``backobs run --optimizer NAME`` accepts, by name."""


def _spec(name):
    if name not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {name!r}; choose one of {', '.join(OPTIMIZERS)}")
    return OPTIMIZERS[name]


def check_hyperparameters(name, hyperparams):
    """Validate an optimizer's hyperparameters and fill in the defaults.

    Args:
        name (str): A key of :data:`OPTIMIZERS`.
        hyperparams (dict): Hyperparameter values by name.

    Returns:
        dict: Every hyperparameter of the optimizer, given or default, converted to its type.

    Raises:
        ValueError: For an unknown optimizer, an unknown or missing hyperparameter, or a
            value of the wrong type, out of range or not finite; the message names it and
            what it accepts.
    """
    spec = _spec(name)
    unknown = sorted(set(hyperparams) - set(spec.hyperparameters))
    if unknown:
        raise ValueError(
            f"optimizer {name!r} has no hyperparameter {unknown[0]!r}; its hyperparameters "
            f"are {', '.join(spec.hyperparameters)}"
        )
    checked = {}
    for hyperparameter, entry in spec.hyperparameters.items():
        if hyperparameter in hyperparams:
            value = hyperparams[hyperparameter]
        elif "default" in entry:
            value = entry["default"]
        else:
            raise ValueError(f"optimizer {name!r} needs the hyperparameter {hyperparameter}")
        checked[hyperparameter] = check_value(hyperparameter, value, entry["type"])
    return checked


def make_optimizer(name, params, **hyperparams):
    """Build the optimizer ``name`` of :data:`OPTIMIZERS` on ``params``.

    Args:
        name (str): E.g. ``"kfac"`` or ``"sgd"``.
        params: Parameters or parameter groups.
        **hyperparams: Its hyperparameters (defaults fill the missing ones).

    Returns:
        torch.optim.Optimizer: The optimizer.

    Raises:
        ValueError: See :func:`check_hyperparameters`.
    """
    return _spec(name).build(params, **check_hyperparameters(name, hyperparams))


def required_extensions(optimizer):
    """The extensions the optimizer's next step needs: ``optimizer.extensions()``, or ``[]``.

    Args:
        optimizer: Any ``torch.optim.Optimizer``.

    Returns:
        list: Fresh extension instances.
    """
    extensions = getattr(optimizer, "extensions", None)
    return list(extensions()) if callable(extensions) else []
