"""The math of each module family, and the registry that maps module classes to it.

A module without parameters needs nothing: without registered derivatives it gets them
from autograd (:mod:`backpack_core.derivatives.autograd`). Registered derivatives are for
speed, and for layers with parameters: write its
:class:`~backpack_core.derivatives.base.Derivatives` in a file here and add one line to
``_DEFAULTS`` (or call :func:`register_derivatives` from outside). Every extension then
works for it.
"""

from typing import Dict, Optional, Type

from torch import nn

from backpack_core.derivatives.autograd import fallback_for
from backpack_core.derivatives.base import Derivatives, LossDerivatives, ModuleIO
from backpack_core.derivatives.convolution import ConvolutionDerivatives
from backpack_core.derivatives.elementwise import (
    DropoutDerivatives,
    LeakyReLUDerivatives,
    ReLUDerivatives,
    SigmoidDerivatives,
    TanhDerivatives,
)
from backpack_core.derivatives.io import TensorNotKept
from backpack_core.derivatives.linear import LinearDerivatives
from backpack_core.derivatives.loss import CrossEntropyDerivatives, MSELossDerivatives
from backpack_core.derivatives.normalization import BatchNormDerivatives
from backpack_core.derivatives.pooling import AvgPoolDerivatives, MaxPoolDerivatives
from backpack_core.derivatives.reshape import (
    FlattenDerivatives,
    IdentityDerivatives,
    ZeroPadDerivatives,
)
from backpack_core.derivatives.upsampling import UpsampleDerivatives

__all__ = [
    "Derivatives",
    "LossDerivatives",
    "ModuleIO",
    "TensorNotKept",
    "derivatives_for",
    "register_derivatives",
    "supported_modules",
]

_DEFAULTS = {
    nn.Linear: LinearDerivatives(),
    nn.Conv1d: ConvolutionDerivatives(1),
    nn.Conv2d: ConvolutionDerivatives(2),
    nn.Conv3d: ConvolutionDerivatives(3),
    nn.MaxPool1d: MaxPoolDerivatives(1),
    nn.MaxPool2d: MaxPoolDerivatives(2),
    nn.MaxPool3d: MaxPoolDerivatives(3),
    nn.AvgPool2d: AvgPoolDerivatives(2),
    nn.AvgPool3d: AvgPoolDerivatives(3),
    nn.ZeroPad2d: ZeroPadDerivatives(),
    nn.ReLU: ReLUDerivatives(),
    nn.LeakyReLU: LeakyReLUDerivatives(),
    nn.Sigmoid: SigmoidDerivatives(),
    nn.Tanh: TanhDerivatives(),
    nn.Dropout: DropoutDerivatives(),
    nn.Flatten: FlattenDerivatives(),
    nn.Identity: IdentityDerivatives(),
    nn.Upsample: UpsampleDerivatives(),
    nn.UpsamplingBilinear2d: UpsampleDerivatives(),
    nn.UpsamplingNearest2d: UpsampleDerivatives(),
    nn.CrossEntropyLoss: CrossEntropyDerivatives(),
    nn.MSELoss: MSELossDerivatives(),
}

_REGISTRY: Dict[Type[nn.Module], Derivatives] = dict(_DEFAULTS)

# Modules the engine knows and refuses (their ``check`` says why); not listed as supported.
_REFUSED: Dict[Type[nn.Module], Derivatives] = {
    nn.BatchNorm1d: BatchNormDerivatives(),
    nn.BatchNorm2d: BatchNormDerivatives(),
    nn.BatchNorm3d: BatchNormDerivatives(),
}


def register_derivatives(module_class: Type[nn.Module], derivatives: Derivatives) -> None:
    """Teach the engine a module class (exact class match, subclasses are not inferred).

    Args:
        module_class: The ``torch.nn.Module`` subclass.
        derivatives: An instance of a :class:`Derivatives` subclass with its math.

    Raises:
        TypeError: If ``derivatives`` is not a :class:`Derivatives` instance.
    """
    if not isinstance(derivatives, Derivatives):
        raise TypeError(f"register_derivatives expects a Derivatives instance, got {derivatives!r}")
    _REGISTRY[module_class] = derivatives


def derivatives_for(module: nn.Module) -> Optional[Derivatives]:
    """The derivatives of ``module``'s exact class.

    Falls back to autograd's (:class:`~backpack_core.derivatives.autograd.AutogradDerivatives`)
    for an unregistered module without parameters.

    Returns:
        The derivatives, or ``None`` for an unregistered module with parameters.
    """
    registered = _REGISTRY.get(type(module)) or _REFUSED.get(type(module))
    return registered if registered is not None else fallback_for(module)


def supported_modules():
    """The names of the module classes the engine knows, sorted."""
    return sorted(cls.__name__ for cls in _REGISTRY)
