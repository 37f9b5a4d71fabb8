"""Quantities that travel backward through the network, from the loss to the input.

Each is started once by the loss and passed on by every module, however many extensions
read it: DiagGGNExact, BatchDiagGGNExact and KFLR share one exact factor, KFAC and DiagGGNMC
with the same ``mc_samples`` share one sampled factor. KFRA's batch-averaged matrices live
with their extension (:mod:`backpack_core.extensions.kfra`).
"""

from math import prod, sqrt
from typing import Dict, Hashable, Tuple

import torch
from torch import Tensor

from backpack_core.config import format_bytes, memory_limit
from backpack_core.derivatives.base import Derivatives, LossDerivatives, ModuleIO


class BackpropagatedQuantity:
    """How a quantity starts at the loss and passes through a module."""

    key: Hashable = None

    #: Whether the quantity w.r.t. a tensor that feeds several modules is the sum of the
    #: quantities arriving from each (true for anything linear in the backpropagated
    #: columns); if not, :attr:`branching_refusal` says why.
    supports_branching = True
    branching_refusal = ""

    @property
    def name(self) -> str:
        """The quantity's class name, for messages."""
        return type(self).__name__

    def add(self, first, second):
        """The quantity at a tensor from the parts arriving from two of its consumers."""
        return first + second

    def scale(self, value, coefficient: float):
        """The quantity at ``a`` from the one at ``coefficient * a`` (an operand of a sum)."""
        return value * coefficient

    def start(self, derivatives: LossDerivatives, io: ModuleIO, scale: float):
        """The quantity w.r.t. the loss input, for a loss whose output is scaled by ``scale``."""
        raise NotImplementedError

    def backpropagate(self, derivatives: Derivatives, io: ModuleIO, value, grad_output: Tensor):
        """The quantity w.r.t. the module's input from the one w.r.t. its output."""
        raise NotImplementedError


def _check_columns(io: ModuleIO, columns: int, like: Tensor, what: str) -> None:
    """Refuse to form ``[columns, N, *in]`` above the engine's memory limit."""
    needed = columns * prod(io.input_shape) * like.element_size()
    limit = memory_limit(like.device)
    if needed > limit:
        raise MemoryError(
            f"{what}: passing {columns} columns per sample through {io.module} needs a "
            f"{format_bytes(needed)} tensor (limit {format_bytes(limit)}). Use a "
            "Monte-Carlo variant (DiagGGNMC, KFAC: mc_samples columns), a smaller batch "
            "(the results are sums over samples: accumulate them over micro-batches), or "
            "raise the limit with backpack_core.set_memory_limit(...)."
        )


class SqrtGGNExact(BackpropagatedQuantity):
    """Exact symmetric factor ``[C, N, *shape]`` of the GGN w.r.t. a module's output."""

    key = "sqrt_ggn_exact"

    def start(self, derivatives, io, scale):
        return derivatives.sqrt_hessian(io) * sqrt(scale)

    def backpropagate(self, derivatives, io, value, grad_output):
        _check_columns(io, value.shape[0], value, "the GGN factor")
        return derivatives.jac_t_mat_prod(io, value)


class SqrtGGNMonteCarlo(SqrtGGNExact):
    """Sampled factor ``[mc_samples, N, *shape]`` of the GGN (expectation: the exact GGN)."""

    def __init__(self, mc_samples: int):
        self.mc_samples = mc_samples
        self.key = ("sqrt_ggn_mc", mc_samples)

    def start(self, derivatives, io, scale):
        return derivatives.sqrt_hessian_sampled(io, self.mc_samples) * sqrt(scale)


class HessianFactors(BackpropagatedQuantity):
    """Signed symmetric factors ``{origin: (factor, sign)}`` of the Hessian at a module output.

    Their signed outer products sum to the Hessian w.r.t. the module's output.

    The loss contributes its exact Hessian factor; every module with a non-zero second
    derivative adds the diagonal residual ``f''(x) * grad_output``, split into its positive
    and negative parts. Each factor is keyed by where it started, so that where a tensor
    feeds several modules the parts of the same factor are summed (the chain rule's second
    derivatives on a graph: every residual enters once, through the sum of the paths'
    Jacobians), and a factor that started in one branch only is carried as it is.
    """

    key = "hessian_factors"

    def add(self, first, second):
        result = dict(first)
        for origin, (factor, sign) in second.items():
            if origin in result:
                factor = result[origin][0] + factor
            result[origin] = (factor, sign)
        return result

    def scale(self, value, coefficient):
        return {origin: (factor * coefficient, sign) for origin, (factor, sign) in value.items()}

    def start(self, derivatives, io, scale):
        return {"loss": (derivatives.sqrt_hessian(io) * sqrt(scale), 1.0)}

    def backpropagate(self, derivatives, io, value, grad_output):
        columns = sum(factor.shape[0] for factor, _ in value.values())
        residual = derivatives.hessian_residual(io, grad_output)
        if residual is not None:
            columns += 2 * residual[0].numel()
        like = next(iter(value.values()))[0]
        _check_columns(io, columns, like, "the Hessian factors")
        factors: Dict[Hashable, Tuple[Tensor, float]] = {
            origin: (derivatives.jac_t_mat_prod(io, factor), sign)
            for origin, (factor, sign) in value.items()
        }
        if residual is not None:
            for sign, part in ((1.0, residual.clamp(min=0)), (-1.0, (-residual).clamp(min=0))):
                if part.any():
                    factors[(id(io), sign)] = (_diagonal_factor(part.sqrt()), sign)
        return factors


def _diagonal_factor(diagonal: Tensor) -> Tensor:
    """The factor ``[D, N, *shape]`` of per-sample diagonal matrices ``diag(d_n)^2``."""
    batch, shape = diagonal.shape[0], diagonal.shape[1:]
    flat = torch.diag_embed(diagonal.reshape(batch, -1))  # [N, D, D]
    return flat.transpose(0, 1).reshape(-1, batch, *shape)
