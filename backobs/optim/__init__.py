"""Optimizers that read ``backpack_core``'s quantities, and the registry of them by name.

- :mod:`backobs.optim.damped_newton`: :class:`DampedNewton` (the curvature family of the
  BackPACK paper) and :class:`NonFiniteUpdateError`;
- :mod:`backobs.optim.registry`: :data:`OPTIMIZERS`, :func:`resolve_optimizer`,
  :func:`make_optimizer`, :func:`check_hyperparameters` and :func:`required_extensions`;
- :mod:`backobs.optim.external`: a researcher's own optimizer class, by import path
  (``package.module:ClassName``) or entry point (group ``backobs.optimizers``).
"""

from backobs.optim.damped_newton import (
    CURVATURES,
    KFAC_APPROXIMATIONS,
    DampedNewton,
    NonFiniteUpdateError,
)
from backobs.optim.registry import (
    OPTIMIZERS,
    OptimizerSpec,
    check_hyperparameters,
    make_optimizer,
    required_extensions,
    resolve_optimizer,
)

__all__ = [
    "CURVATURES",
    "KFAC_APPROXIMATIONS",
    "DampedNewton",
    "NonFiniteUpdateError",
    "OPTIMIZERS",
    "OptimizerSpec",
    "check_hyperparameters",
    "make_optimizer",
    "required_extensions",
    "resolve_optimizer",
]
