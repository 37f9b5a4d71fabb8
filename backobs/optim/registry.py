"""The optimizers ``backobs run --optimizer NAME`` and sweep files know, by name.

:data:`OPTIMIZERS` holds the six :class:`~backobs.optim.damped_newton.DampedNewton`
curvatures and the first-order baselines ``"sgd"``, ``"momentum"`` and ``"adam"``
(``torch.optim`` with DeepOBS's hyperparameter names), each with its hyperparameters in
DeepOBS's format. :func:`resolve_optimizer` also knows a researcher's own classes, by import
path (``package.module:ClassName``) or by entry point (:mod:`backobs.optim.external`).
"""

from dataclasses import dataclass
from typing import Callable, Optional

import torch

from backobs.optim import external
from backobs.optim.damped_newton import _MONTE_CARLO, DampedNewton
from backobs.optim.hyperparameters import check_value

__all__ = [
    "OPTIMIZERS",
    "OptimizerSpec",
    "resolve_optimizer",
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
        folder (str, optional): The results folder's name (default: ``name``); a class's
            ``__name__`` for a researcher's optimizer.
        optimizer_class (type, optional): The class of a researcher's optimizer (``None`` for
            BackOBS's own): its values are checked by building it once on a dummy
            parameter, and BackOBS's ranges by name (``lr >= 0``, ...) do not apply.
    """

    name: str
    hyperparameters: dict
    build: Callable
    description: str
    folder: Optional[str] = None
    optimizer_class: Optional[type] = None

    @property
    def folder_name(self):
        """str: Where DeepOBS's layout puts the optimizer's results."""
        return self.folder or self.name


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


_RESOLVED = {}


def resolve_optimizer(name):
    """The optimizer a name refers to: BackOBS's own, an import path, or an entry point.

    Args:
        name (str): A key of :data:`OPTIMIZERS`, ``package.module:ClassName`` (a
            ``torch.optim.Optimizer`` subclass), or an entry point's name of the group
            ``backobs.optimizers``.

    Returns:
        OptimizerSpec: Its hyperparameters, how to build it, its results folder.

    Raises:
        ValueError: An unknown name (listing what is known), a module that does not import,
            a class that does not exist or is not an optimizer, unknowable hyperparameters.
    """
    if name in OPTIMIZERS:
        return OPTIMIZERS[name]
    if name not in _RESOLVED:
        try:
            cls = external.load_class(name)
        except KeyError:
            installed = ", ".join(sorted(external.entry_points())) or "none installed"
            raise ValueError(
                f"unknown optimizer {name!r}; choose one of {', '.join(OPTIMIZERS)}, an "
                f"entry point of the group {external.ENTRY_POINT_GROUP} ({installed}), or "
                "your own class as package.module:ClassName"
            ) from None
        doc = (cls.__doc__ or "").strip().splitlines()
        _RESOLVED[name] = OptimizerSpec(
            name=name,
            hyperparameters=external.hyperparameters_of(cls),
            build=cls,
            description=doc[0].strip() if doc else f"{cls.__module__}.{cls.__qualname__}",
            folder=cls.__name__,
            optimizer_class=cls,
        )
    return _RESOLVED[name]


def _spec(name):
    return resolve_optimizer(name)


def check_hyperparameters(name, hyperparams):
    """Validate an optimizer's hyperparameters and fill in the defaults.

    A researcher's optimizer is also built once on a dummy parameter with the values, so
    that a constructor that rejects them does so here, before any run.

    Args:
        name (str): An optimizer's name, as :func:`resolve_optimizer` takes it.
        hyperparams (dict): Hyperparameter values by name.

    Returns:
        dict: Every hyperparameter of the optimizer, given or default, converted to its type.

    Raises:
        ValueError: For an unknown optimizer, an unknown or missing hyperparameter, a
            value of the wrong type, out of range or not finite, or a constructor that
            raises on the values; the message names it and what it accepts.
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
        if spec.optimizer_class is None:
            checked[hyperparameter] = check_value(hyperparameter, value, entry["type"])
            continue
        if value is None and entry.get("default", 0) is None:
            checked[hyperparameter] = None  # the signature's "not given"
            continue
        value = check_value(hyperparameter, value, entry["type"], ranges=False)
        external.check_range(hyperparameter, value, entry)
        checked[hyperparameter] = value
    if spec.optimizer_class is not None:
        _try_build(spec, checked)
    return checked


def _try_build(spec, hyperparams):
    dummy = torch.nn.Parameter(torch.zeros(1))
    try:
        spec.build([dummy], **hyperparams)
    except Exception as error:
        values = ", ".join(f"{key}={value!r}" for key, value in hyperparams.items())
        message = " ".join(str(error).split()) or type(error).__name__
        raise ValueError(
            f"optimizer {spec.name!r} rejects the hyperparameters {values}: "
            f"{type(error).__name__}: {message}"
        ) from None


def make_optimizer(name, params, **hyperparams):
    """Build the optimizer ``name`` (see :func:`resolve_optimizer`) on ``params``.

    Args:
        name (str): E.g. ``"kfac"``, ``"sgd"`` or ``"mypkg.opt:MyOpt"``.
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
