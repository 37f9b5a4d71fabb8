"""Derivatives of any parameter-free module, from ``torch.func``.

A module without registered derivatives and without parameters (``nn.ELU``, ``nn.GELU``, a
user's own elementwise or reshaping module) is differentiated per sample: its forward on
one sample (with a batch axis of one, through ``torch.func.functional_call``) is pulled back
with ``vjp``, and ``vmap`` maps that over the columns and the samples. Registered
derivatives exist for speed only; these are also the oracle of their tests.

Two things are checked on every call, because a wrong number is worse than an error: the
per-sample forward must reproduce the module's output on the batch (a module that mixes
samples, such as a normalisation over the batch, has no per-sample Jacobian), and the
second-derivative term must be diagonal (elementwise), which is the form the Hessian
factors take. The output is not kept (autograd need not keep it): the check compares a
few entries of each sample's output, copied at forward time.
"""

from math import prod
from typing import Callable, Optional

import torch
from torch import Tensor
from torch.func import functional_call, jvp, vjp, vmap

from backpack_core.derivatives.base import Derivatives, ModuleIO, UnsupportedOperation

_EVALUATING = [0]

# How many entries of each sample's output the forward-time copy for the check holds.
_CHECKED_ENTRIES = 64


class _OutputEntries:
    """What the fallback captures of a call: a few entries of each sample's output."""

    def __init__(self, entries: Tensor):
        self.entries = entries


def evaluating() -> bool:
    """Whether the fallback is running a module's forward (the engine then keeps no record)."""
    return _EVALUATING[0] > 0


class AutogradDerivatives(Derivatives):
    """Transposed Jacobians and the Hessian residual of a parameter-free module, by autograd.

    Reads the input (the module is run again on it); of the output only a few entries per
    sample, copied at forward time (:meth:`capture`).
    """

    reads_output = False

    @staticmethod
    def _entries(output: Tensor) -> Tensor:
        """Evenly spaced entries ``[N, <= 64]`` of each sample's output ``[N, *out]``."""
        flat = output.reshape(output.shape[0], -1)
        step = max(1, flat.shape[1] // _CHECKED_ENTRIES)
        return flat[:, ::step][:, :_CHECKED_ENTRIES]

    def capture(self, module, input, output):
        if output.dim() == 0:
            return None  # refused later: no batch axis
        return _OutputEntries(self._entries(output.detach()).clone())

    def _sample_function(self, io: ModuleIO) -> Callable[[Tensor], Tensor]:
        module = io.module
        buffers = dict(module.named_buffers())

        def forward(x: Tensor) -> Tensor:
            return functional_call(module, buffers, (x.unsqueeze(0),)).squeeze(0)

        return forward

    def _run(self, io: ModuleIO, transform: Callable[[], tuple]) -> tuple:
        """Run a ``torch.func`` computation on the module; its errors become refusals."""
        if len(io.output_shape) == 0 or io.output_shape[0] != io.batch_size:
            raise UnsupportedOperation(
                f"{type(io.module).__name__}: its output {tuple(io.output_shape)} has no batch "
                f"axis of size {io.batch_size}, so it has no per-sample Jacobian"
            )
        _EVALUATING[0] += 1
        try:
            with torch.enable_grad():
                return transform()
        except (RuntimeError, TypeError) as error:  # e.g. random ops, a second input
            raise UnsupportedOperation(
                f"{type(io.module).__name__} cannot be differentiated per sample by "
                f"torch.func ({error}); register its derivatives with "
                "backpack_core.register_derivatives(...)"
            ) from None
        finally:
            _EVALUATING[0] -= 1

    def _check_output(self, io: ModuleIO, outputs: Tensor) -> None:
        if "checked" in io.memo:
            return
        # What capture copied; a call built by hand (a test's oracle) gives the output.
        if isinstance(io.extra, _OutputEntries):
            expected = io.extra.entries
        else:
            expected = self._entries(io.output)
        scale = expected.abs().max().item() if expected.numel() else 0.0
        tolerance = 1e2 * torch.finfo(expected.dtype).eps * max(scale, 1.0)
        if outputs.shape != io.output_shape or (
            expected.numel() and (self._entries(outputs) - expected).abs().max() > tolerance
        ):
            raise UnsupportedOperation(
                f"{type(io.module).__name__} applied to each sample alone does not give its "
                "output on the batch (it mixes samples or is random), so it has no "
                "per-sample Jacobian; register its derivatives with "
                "backpack_core.register_derivatives(...) or remove it"
            )
        io.memo["checked"] = True

    def jac_t_mat_prod(self, io, mat):
        forward = self._sample_function(io)

        def per_sample(x, columns):  # x [*in], columns [V, *out]
            output, pullback = vjp(forward, x)
            return output, vmap(pullback)(columns)[0]

        outputs, result = self._run(
            io, lambda: vmap(per_sample, in_dims=(0, 1), out_dims=(0, 1))(io.input, mat)
        )
        self._check_output(io, outputs)
        return result

    def hessian_residual(self, io, grad_output):
        forward = self._sample_function(io)
        features = prod(io.input_shape[1:])
        # H_n 1 is the diagonal of H_n if H_n is diagonal; H_n v == diag * v for a fixed
        # irregular v checks that it is.
        ones = torch.ones_like(io.input[0])
        probe = torch.arange(features, dtype=io.input.dtype, device=io.input.device) * 0.618
        probe = (probe.frac() + 0.5).reshape(ones.shape)
        tangents = torch.stack([ones, probe])

        def per_sample(x, g):
            def gradient(x):
                output, pullback = vjp(forward, x)
                return pullback(g)[0], output

            def hessian_vector(tangent):
                _, product, output = jvp(gradient, (x,), (tangent,), has_aux=True)
                return product, output

            products, outputs = vmap(hessian_vector)(tangents)
            return products, outputs[0]

        products, outputs = self._run(io, lambda: vmap(per_sample)(io.input, grad_output))
        self._check_output(io, outputs)
        diagonal, probed = products[:, 0], products[:, 1]
        scale = diagonal.abs().max().item() if diagonal.numel() else 0.0
        tolerance = 1e3 * torch.finfo(diagonal.dtype).eps * max(scale, 1e-30)
        if (probed - diagonal * probe).abs().max() > tolerance:
            raise UnsupportedOperation(
                f"the second derivative of {type(io.module).__name__} couples different "
                "entries of its input (it is not elementwise); DiagHessian handles only "
                "elementwise second derivatives of modules without registered derivatives"
            )
        return diagonal if diagonal.any() else None


AUTOGRAD = AutogradDerivatives()


def fallback_for(module: torch.nn.Module) -> Optional[Derivatives]:
    """The autograd derivatives if ``module`` has no parameters, else ``None``."""
    if next(module.parameters(), None) is not None:
        return None
    return AUTOGRAD
