"""Quantities that travel backward through the network, from the loss to the input.

Each is started once by the loss and passed on by every module, however many extensions
read it: DiagGGNExact, BatchDiagGGNExact and KFLR share one exact factor, KFAC and DiagGGNMC
with the same ``mc_samples`` share one sampled factor.
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


class KFRAMatrix(BackpropagatedQuantity):
    """The batch-averaged GGN w.r.t. a module's output (KFRA), as ``(form, matrix)``.

    On flat features ``[N, D]`` the form is ``"dense"``: the exact ``[D, D]`` recursion of
    Botev et al. (2017). On feature maps ``[N, C, *spatial]`` with ``T`` positions the form
    is ``"channel"``: the ``[C, C]`` curvature of the spatially summed features divided by
    ``T`` (see ``Derivatives.ea_channel_jac_t_mat_jac_prod``), the reduction over positions
    that BackPACK's KFAC/KFLR use for a convolution's output factor. A dense matrix over a
    feature map would need ``(C * H * W)^2`` entries (17 GB at CIFAR's first layer). For a
    network with a single Linear or Conv layer, KFRA equals ``KFLR(kfac_approx="backpack")``.

    Args:
        max_bytes: Refuse to form a dense matrix larger than this, with an error that says
            which module would need how much, instead of exhausting the machine's memory;
            ``None``: the engine's limit (:func:`backpack_core.set_memory_limit`).
    """

    key = "kfra"
    supports_branching = False
    branching_refusal = (
        "KFRA's recursion passes one batch-averaged matrix per layer, and the average of "
        "J^T M J over a sum of paths J = J_1 + J_2 has cross terms E[J_1^T M J_2] that the "
        "per-path averages do not keep."
    )

    @property
    def name(self) -> str:
        """``"KFRA"``: the extension this quantity belongs to."""
        return "KFRA"

    def __init__(self, max_bytes=None):
        self.max_bytes = max_bytes

    def start(self, derivatives, io, scale):
        matrix = derivatives.sum_hessian(io) * scale
        if io.input.dim() > 2:
            return ("channel", _channel_form(matrix, io.input.shape[1:]))
        return ("dense", matrix)

    def backpropagate(self, derivatives, io, value, grad_output):
        form, content = value
        if form == "channel":
            return ("channel", derivatives.ea_channel_jac_t_mat_jac_prod(io, content))
        if form == "congruence" and derivatives.reshapes_only and io.input.dim() > 2:
            # The reshape to a feature map only needs the channel form of L^T M L, which the
            # position-summed L gives without forming the [C*T, C*T] matrix.
            left, matrix = content
            channels, positions = io.input.shape[1], prod(io.input.shape[2:])
            summed = left.reshape(left.shape[0], channels, positions).sum(2)
            return ("channel", summed.T @ matrix @ summed / positions)
        jacobian = derivatives.kfra_congruence(io)
        if jacobian is not None:
            # A fixed linear map: keep J^T M J as (J, M) until someone needs it dense.
            if form == "congruence":
                return ("congruence", (content[0] @ jacobian, content[1]))
            return ("congruence", (jacobian, content))
        dense = self.materialize(value, io)
        result = derivatives.ea_jac_t_mat_jac_prod(io, dense)
        self._check_dense(result.shape[0], result, io)
        if io.input.dim() > 2:
            return ("channel", _channel_form(result, io.input.shape[1:]))
        return ("dense", result)

    def materialize(self, value, io: ModuleIO) -> Tensor:
        """The matrix a value stands for (dense or channel form), formed if it is lazy."""
        form, content = value
        if form != "congruence":
            return content
        left, matrix = content
        self._check_dense(left.shape[1], matrix, io)
        return left.T @ matrix @ left

    def _check_dense(self, features: int, like: Tensor, io: ModuleIO) -> None:
        needed = features * features * like.element_size()
        limit = memory_limit(like.device) if self.max_bytes is None else self.max_bytes
        if needed > limit:
            raise MemoryError(
                f"KFRA would form a dense {features} x {features} matrix "
                f"({format_bytes(needed)}) near {io.module}; the limit is "
                f"{format_bytes(limit)}. Raise it with KFRA(max_bytes=...) if the "
                "memory is there, or use KFLR/KFAC for this network."
            )


def _channel_form(matrix: Tensor, shape: torch.Size) -> Tensor:
    """The channel form ``(1/T) sum_{t,t'} blocks`` of a dense ``[C*T, C*T]`` matrix."""
    channels, positions = shape[0], prod(shape[1:])
    blocks = matrix.reshape(channels, positions, channels, positions)
    return blocks.sum((1, 3)) / positions
