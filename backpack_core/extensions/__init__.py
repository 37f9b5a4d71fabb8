"""The extensions: what to compute during ``backward()``, one file per family."""

from backpack_core.extensions.base import BackpropExtension
from backpack_core.extensions.curvature import (
    KFAC,
    KFLR,
    BatchDiagGGNExact,
    BatchDiagGGNMC,
    BatchDiagHessian,
    DiagGGNExact,
    DiagGGNMC,
    DiagHessian,
)
from backpack_core.extensions.firstorder import (
    BatchDotGrad,
    BatchGrad,
    BatchL2Grad,
    SumGradSquared,
    Variance,
)
from backpack_core.extensions.kfra import KFRA

#: Every extension class of the engine, first order first.
ALL = (
    BatchGrad,
    BatchL2Grad,
    SumGradSquared,
    Variance,
    BatchDotGrad,
    DiagGGNExact,
    DiagGGNMC,
    BatchDiagGGNExact,
    BatchDiagGGNMC,
    DiagHessian,
    BatchDiagHessian,
    KFAC,
    KFLR,
    KFRA,
)

__all__ = [
    "ALL",
    "BackpropExtension",
    "BatchGrad",
    "BatchL2Grad",
    "SumGradSquared",
    "Variance",
    "BatchDotGrad",
    "DiagGGNExact",
    "DiagGGNMC",
    "BatchDiagGGNExact",
    "BatchDiagGGNMC",
    "DiagHessian",
    "BatchDiagHessian",
    "KFAC",
    "KFLR",
    "KFRA",
]
