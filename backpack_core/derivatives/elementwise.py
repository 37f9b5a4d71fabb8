"""Elementwise modules ``y = f(x)``: activations and dropout.

Their Jacobian is diagonal, ``diag(f'(x_n))``; activations with a non-zero second
derivative contribute the residual ``f''(x) * grad_output`` to the Hessian.
"""

from typing import Optional

import torch
from torch import Tensor

from backpack_core._torch_private import saved_tensor
from backpack_core.derivatives.base import Derivatives, ModuleIO


class ElementwiseDerivatives(Derivatives):
    """Shared math; subclasses give ``f'`` and, where it does not vanish, ``f''``."""

    channelwise = True

    def first_derivative(self, io: ModuleIO) -> Tensor:
        """``f'(x)``, shaped like the input ``[N, *in]``."""
        raise NotImplementedError

    def second_derivative(self, io: ModuleIO) -> Optional[Tensor]:
        """``f''(x)`` ``[N, *in]``, or ``None`` if it vanishes (piecewise linear ``f``)."""
        return None

    def _first(self, io: ModuleIO) -> Tensor:
        if "df" not in io.memo:
            io.memo["df"] = self.first_derivative(io)
        return io.memo["df"]

    def jac_t_mat_prod(self, io, mat):
        return mat * self._first(io).unsqueeze(0)

    def hessian_residual(self, io, grad_output):
        second = self.second_derivative(io)
        return None if second is None else second * grad_output


class ReLUDerivatives(ElementwiseDerivatives):
    """``max(x, 0)``: piecewise linear, no residual.

    Reads the output, which autograd saves too (``y > 0`` exactly where ``x > 0``); the
    input, the pre-activation, is not kept.
    """

    reads_input = False

    def first_derivative(self, io):
        return (io.output > 0).to(io.output.dtype)


class LeakyReLUDerivatives(ElementwiseDerivatives):
    """``x`` or ``slope * x``: piecewise linear, no residual.

    Reads the input, as autograd does (a negative slope makes the output's sign ambiguous).
    """

    reads_output = False

    def first_derivative(self, io):
        slope = io.module.negative_slope
        ones = torch.ones_like(io.input)
        return torch.where(io.input > 0, ones, ones * slope)


class SigmoidDerivatives(ElementwiseDerivatives):
    """``1 / (1 + exp(-x))``, derivatives from the output (which autograd saves too)."""

    reads_input = False

    def first_derivative(self, io):
        y = io.output
        return y * (1 - y)

    def second_derivative(self, io):
        y = io.output
        return y * (1 - y) * (1 - 2 * y)


class TanhDerivatives(ElementwiseDerivatives):
    """``tanh(x)``, derivatives from the output (which autograd saves too)."""

    reads_input = False

    def first_derivative(self, io):
        return 1 - io.output.pow(2)

    def second_derivative(self, io):
        y = io.output
        return -2 * y * (1 - y.pow(2))


class DropoutDerivatives(ElementwiseDerivatives):
    """Dropout in training mode multiplies by a random mask scaled by ``1/(1-p)``.

    The mask is read at forward time from what autograd saved for the backward pass, so
    that the derivative is exact even where the input is zero. It is kept as autograd saved
    it (the same storage) and scaled when the backward pass needs it: neither input nor
    output is kept.
    """

    reads_input = False
    reads_output = False

    def capture(self, module, input, output):
        if not module.training or module.p == 0:
            return torch.ones((), dtype=output.dtype, device=output.device).expand(output.shape)
        node = output.grad_fn
        for attribute, scale in (("other", 1.0), ("result1", 1 / (1 - module.p))):
            saved = saved_tensor(node, attribute)
            if saved is not None and saved.shape == output.shape:
                return saved, scale, output.dtype
        raise RuntimeError(
            "backpack_core could not read the dropout mask of "
            f"{module} from autograd ({type(node).__name__}); please report this with "
            f"your torch version {torch.__version__}."
        )

    def first_derivative(self, io):
        if isinstance(io.extra, Tensor):
            return io.extra  # ones: the identity
        mask, scale, dtype = io.extra
        return mask.to(dtype) * scale
