"""The math of each module family, and the registry that maps module classes to it.

Adding a layer type: write its :class:`~backpack_core.derivatives.base.Derivatives` in a
file here and add one line to ``_DEFAULTS`` (or call :func:`register_derivatives` from
outside). Every extension then works for it.
"""

from typing import Dict, Optional, Type

from torch import nn

from backpack_core.derivatives.base import Derivatives, LossDerivatives, ModuleIO
from backpack_core.derivatives.convolution import ConvolutionDerivatives
from backpack_core.derivatives.elementwise import (
    DropoutDerivatives,
    LeakyReLUDerivatives,
    ReLUDerivatives,
    SigmoidDerivatives,
    TanhDerivatives,
)
from backpack_core.derivatives.linear import LinearDerivatives
from backpack_core.derivatives.loss import CrossEntropyDerivatives, MSELossDerivatives
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
    """The derivatives of ``module``'s exact class, or ``None`` if it is unknown."""
    return _REGISTRY.get(type(module))


def supported_modules():
    """The names of the module classes the engine knows, sorted."""
    return sorted(cls.__name__ for cls in _REGISTRY)
