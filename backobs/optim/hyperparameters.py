"""The checks of an optimizer's hyperparameter values: types and ranges, by name.

Shared by :class:`~backobs.optim.damped_newton.DampedNewton` (which checks its arguments)
and the registry (which checks a command line's or a sweep file's values).
"""

import math

__all__ = ["KFAC_APPROXIMATIONS", "HYPERPARAMETER_TYPES", "check_value"]

KFAC_APPROXIMATIONS = ("backpack", "expand", "reduce")
"""Conventions of KFAC and KFLR for layers with weight sharing (convolutions)."""


def _nonnegative(value):
    return value >= 0, "must be >= 0"


def _positive(value):
    return value > 0, "must be > 0"


def _unit_interval(value):
    return 0 <= value < 1, "must be in [0, 1)"


def _one_of(choices):
    def check(value):
        return value in choices, f"must be one of {', '.join(choices)}"

    return check


_RANGES = {
    "lr": _nonnegative,
    "damping": _positive,
    "momentum": _unit_interval,
    "beta1": _unit_interval,
    "beta2": _unit_interval,
    "epsilon": _nonnegative,
    "ema_decay": _unit_interval,
    "inverse_interval": _positive,
    "mc_samples": _positive,
    "kfac_approx": _one_of(KFAC_APPROXIMATIONS),
}

HYPERPARAMETER_TYPES = {
    "lr": float,
    "damping": float,
    "ema_decay": float,
    "inverse_interval": int,
    "kfac_approx": str,
    "mc_samples": int,
}


def check_value(name, value, kind, ranges=True):
    """``value`` converted to ``kind`` and checked against the range of ``name``.

    Args:
        name (str): The hyperparameter.
        value: Its value.
        kind (type): ``float``, ``int``, ``bool`` or ``str``.
        ranges (bool): Check the range BackOBS's optimizers give ``name`` (``lr >= 0``,
            ``damping > 0``, ...); off for a researcher's optimizer, whose names mean what
            it says.

    Returns:
        The value, converted (an integer given for a float becomes a float).

    Raises:
        ValueError: Naming the hyperparameter and what it accepts.
    """
    if kind is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"hyperparameter {name} must be a number, got {value!r}")
        value = float(value)
        if not math.isfinite(value):
            raise ValueError(f"hyperparameter {name} must be finite, got {value!r}")
    elif kind is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"hyperparameter {name} must be an integer, got {value!r}")
    elif kind is bool:
        if not isinstance(value, bool):
            raise ValueError(f"hyperparameter {name} must be True or False, got {value!r}")
    elif not isinstance(value, kind):
        raise ValueError(f"hyperparameter {name} must be a {kind.__name__}, got {value!r}")
    if ranges and name in _RANGES:
        valid, requirement = _RANGES[name](value)
        if not valid:
            raise ValueError(f"hyperparameter {name} {requirement}, got {value!r}")
    return value
