"""What every extension is, and the per-module context the engine hands to it."""

from typing import Any, Callable, Dict, Hashable, Optional, Tuple

from torch import Tensor

from backpack_core.buffers import previous_result
from backpack_core.derivatives.base import Derivatives, ModuleIO
from backpack_core.quantities import BackpropagatedQuantity


class BackpropExtension:
    """An extension: a quantity computed for every parameter during ``backward()``.

    Subclasses set :attr:`savefield` (the attribute written on each parameter), list the
    backpropagated quantities they read in :meth:`quantities`, and compute their value for
    one parameter of one module in :meth:`compute`, from what the :class:`ModuleContext`
    provides.
    """

    savefield: str = None
    per_sample: bool = False
    """Whether the value has one entry per sample along its first dimension (``[N, ...]``)."""
    stores_individual_gradients: bool = False
    """Whether the value stored is the individual gradients ``[N, *p.shape]`` themselves:
    the other first-order quantities of the pass are then derived from them."""
    reuse_buffer: bool = False
    """Whether the value may be written into the previous step's ``param.<savefield>``
    (see :mod:`backpack_core.buffers`)."""

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
    """One module call during the backward pass: what extensions read, computed once.

    Attributes:
        io: The module call (input, output, module).
        derivatives: The math of the module's class.
        grad_output: Gradient of the loss w.r.t. the module output, ``[N, *out]``.
        quantities: Backpropagated quantities at the module output, by key.
    """

    def __init__(
        self,
        io: ModuleIO,
        derivatives: Derivatives,
        grad_output: Tensor,
        quantities: Dict[Hashable, Any],
        storing: Optional[BackpropExtension],
    ):
        self.io = io
        self.derivatives = derivatives
        self.grad_output = grad_output
        self.quantities = quantities
        # the active extension that stores the individual gradients, if any
        self._storing = storing
        self._memo: Dict[Hashable, Any] = {}

    @property
    def view(self):
        """The call as a weight layer (built on first use), or ``None``."""
        if "view" not in self._memo:
            derivatives = self.derivatives
            self._memo["view"] = derivatives.view(self.io) if derivatives is not None else None
        return self._memo["view"]

    @property
    def batch_size(self) -> int:
        """The number of samples ``N``."""
        return self.io.batch_size

    def memo(self, key: Hashable, compute: Callable[[], Any]) -> Any:
        """``compute()`` once per key and module call."""
        if key not in self._memo:
            self._memo[key] = compute()
        return self._memo[key]

    def individual_gradients_at_hand(self, name: str) -> Optional[Tensor]:
        """The individual gradients if this pass computes them anyway, else ``None``.

        First-order quantities are then read off them instead of computed by a
        factorised route.
        """
        if self._storing is not None or ("individual_gradients", name) in self._memo:
            return self.individual_gradients(name)
        return None

    def individual_gradients(self, name: str) -> Tensor:
        """``[N, *p.shape]``: the per-sample summands of the parameter's gradient."""
        return self.memo(("individual_gradients", name), lambda: self._individual(name))

    def individual_gradients_to_overwrite(self, name: str) -> Tensor:
        """Individual gradients in a fresh tensor that the caller may overwrite in place.

        Computed anew (not memoised): for a quantity that reduces them right away, e.g. by
        squaring in place, without a second tensor of their size.
        """
        if ("individual_gradients", name) in self._memo:
            return self._memo[("individual_gradients", name)].clone()
        return self._individual(name)

    def _individual(self, name: str) -> Tensor:
        param = getattr(self.io.module, name)
        out = None
        storing = self._storing
        if storing is not None and storing.reuse_buffer:
            shape = (self.batch_size, *param.shape)
            out = previous_result(param, storing.savefield, shape, param.dtype, param.device)
        elif storing is not None:
            # Drop the previous step's result before allocating the new one: if nothing
            # else refers to it, its memory is free to be handed out again (fewer fresh
            # pages to fault in); if something does, nothing changes for it.
            param.__dict__.pop(storing.savefield, None)
        if self.view is not None and name == "weight":
            return self.view.individual_weight_gradients(self.grad_output, out)
        columns = self.grad_output.unsqueeze(0)
        result = self.derivatives.param_jac_t_mat_prod(self.io, name, columns, False)[0]
        return result if out is None else out.copy_(result)

    def gradient(self, name: str) -> Tensor:
        """The gradient of the reduced loss w.r.t. the parameter, ``[*p.shape]``."""

        def compute():
            individual = self.individual_gradients_at_hand(name)
            if individual is not None:
                return individual.sum(0)
            columns = self.grad_output.unsqueeze(0)
            return self.derivatives.param_jac_t_mat_prod(self.io, name, columns, True)[0]

        return self.memo(("gradient", name), compute)
