"""What every extension is, and the per-module context the engine hands to it."""

from typing import Any, Callable, Dict, Hashable, Optional, Tuple

from torch import Tensor

from backpack_core.buffers import reusable
from backpack_core.derivatives.base import Derivatives, ModuleIO
from backpack_core.quantities import BackpropagatedQuantity


class BackpropExtension:
    """An extension: a quantity computed for every parameter during ``backward()``.

    Subclasses set :attr:`savefield` (the attribute written on each parameter), list the
    backpropagated quantities they read in :meth:`quantities`, and compute their value for
    one parameter of one module in :meth:`compute`.
    """

    savefield: str = None
    per_sample: bool = False
    """Whether the value has one entry per sample along its first dimension (``[N, ...]``)."""
    stores_individual_gradients: bool = False
    """Whether the value stored is the individual gradients ``[N, *p.shape]`` themselves:
    the other first-order quantities of the pass are then derived from them, and the
    previous step's tensor in ``param.<savefield>`` may be reused (see
    :mod:`backpack_core.buffers`)."""

    def quantities(self) -> Tuple[BackpropagatedQuantity, ...]:
        """The quantities this extension needs backpropagated from the loss (none: first order)."""
        return ()

    def compute(self, ctx: "ModuleContext", name: str) -> Any:
        """The extension's value for parameter ``name`` of ``ctx.io.module``.

        Args:
            ctx: Everything known about this module call during the backward pass.
            name: The parameter's name in the module (``"weight"``, ``"bias"``).

        Returns:
            The value stored as ``param.<savefield>``.
        """
        raise NotImplementedError(
            f"{type(self).__name__} does not implement compute(ctx, name), which returns "
            f"the value stored as param.{self.savefield}"
        )

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class ModuleContext:
    """One module call during the backward pass, with memoised shared work.

    Extensions that need the same intermediate (individual gradients, a Kronecker factor)
    get it computed once per module call.

    Attributes:
        io: The module call (input, output, module).
        derivatives: The math of the module's class.
        grad_output: Gradient of the loss w.r.t. the module output, ``[N, *out]``.
        quantities: Backpropagated quantities at the module output, by key.
        individual_gradients_field: The attribute in which an active extension stores the
            individual gradients (then the other first-order quantities are derived from
            them instead of recomputed), or ``None``.
    """

    def __init__(
        self,
        io: ModuleIO,
        derivatives: Derivatives,
        grad_output: Tensor,
        quantities: Dict[Hashable, Any],
        individual_gradients_field: Optional[str],
    ):
        self.io = io
        self.derivatives = derivatives
        self.grad_output = grad_output
        self.quantities = quantities
        self.individual_gradients_field = individual_gradients_field
        self.individual_gradients_wanted = individual_gradients_field is not None
        self._memo: Dict[Hashable, Any] = {}

    @property
    def batch_size(self) -> int:
        """The number of samples ``N``."""
        return self.io.batch_size

    def memo(self, key: Hashable, compute: Callable[[], Any]) -> Any:
        """``compute()`` once per key and module call."""
        if key not in self._memo:
            self._memo[key] = compute()
        return self._memo[key]

    def _individual(self, name: str) -> Optional[Tensor]:
        """The individual gradients if BatchGrad computes them anyway, else ``None``."""
        if self.individual_gradients_wanted or ("batch_grad", name) in self._memo:
            return self.batch_grad(name)
        return None

    def batch_grad(self, name: str) -> Tensor:
        """Individual gradients ``[N, *p.shape]``.

        When they will be stored as ``grad_batch``, the previous step's tensor is reused if
        nothing else refers to it (see :mod:`backpack_core.buffers`).
        """

        def compute():
            out = None
            if self.individual_gradients_wanted:
                param = getattr(self.io.module, name)
                shape = (self.batch_size, *param.shape)
                field = self.individual_gradients_field
                out = reusable(param, field, shape, param.dtype, param.device)
            return self.derivatives.batch_grad(self.io, name, self.grad_output, out=out)

        return self.memo(("batch_grad", name), compute)

    def sum_grad(self, name: str) -> Tensor:
        """The gradient of the reduced loss w.r.t. the parameter, ``[*p.shape]``."""
        return self.memo(
            ("sum_grad", name),
            lambda: self.derivatives.sum_grad(
                self.io, name, self.grad_output, self._individual(name)
            ),
        )

    def sum_grad_squared(self, name: str) -> Tensor:
        """Sum of squared individual gradients ``[*p.shape]``."""
        return self.memo(
            ("sgs", name),
            lambda: self.derivatives.sum_grad_squared(
                self.io, name, self.grad_output, self._individual(name)
            ),
        )

    def batch_l2(self, name: str) -> Tensor:
        """Squared norms of the individual gradients ``[N]``."""
        return self.memo(
            ("batch_l2", name),
            lambda: self.derivatives.batch_l2(
                self.io, name, self.grad_output, self._individual(name)
            ),
        )

    def batch_dot(self, name: str) -> Tensor:
        """Pairwise dot products of the individual gradients ``[N, N]``."""
        return self.memo(
            ("batch_dot", name),
            lambda: self.derivatives.batch_dot(
                self.io, name, self.grad_output, self._individual(name)
            ),
        )
