"""One view of a layer with a weight: a grouped convolution over positions.

A convolution's output at position ``t`` is ``W_g u_t`` for each group ``g``, with ``u_t``
the input patch (``C_in/groups * prod(kernel)`` numbers) that the kernel sees there. A
``Linear`` layer on ``[N, *, in]`` is the same map with a kernel of one tap, one group and
the extra dimensions ``*`` as positions. Everything an extension computes for the weight
(individual gradients and their norms, the GGN and Hessian diagonals, Kronecker factors)
is a product of two arrays of this view, which the extensions write once:

- the *unfolded input* ``U``, ``[N, G, C_in/G * K, T]``,
- the *columns* ``S`` backpropagated to the output, ``[V, N, G, C_out/G, T]``.

A layer family gives its layout (:meth:`ParameterLayerDerivatives.unfold`,
:meth:`~ParameterLayerDerivatives.columns`, :meth:`~ParameterLayerDerivatives.tap_counts`);
where a product has a faster route than the generic one over ``U`` (a convolution's input
Gram matrix without unfolding, a per-sample outer product), the family overrides the one
method that computes it.
"""

from typing import Optional

import torch
from torch import Tensor, einsum

from backpack_core.derivatives.base import Derivatives
from backpack_core.derivatives.io import ModuleIO


class ParameterLayerDerivatives(Derivatives):
    """Derivatives of a layer ``y_t = W u_t (+ b)`` with weight sharing over positions ``t``.

    The parameter derivatives are written here once; subclasses give the layout and the
    transposed Jacobian w.r.t. the input.
    """

    sample_independent_jacobian = True
    reads_output = False

    # ------------------------------------------------------------------ layout
    def groups(self, io: ModuleIO) -> int:
        """The number of groups ``G``."""
        return 1

    def positions(self, io: ModuleIO) -> int:
        """The number ``T`` of output positions that share the weight."""
        raise NotImplementedError

    def kernel_taps(self, io: ModuleIO) -> int:
        """The number ``K`` of kernel taps (1 for ``Linear``)."""
        return 1

    def unfold(self, io: ModuleIO) -> Tensor:
        """The unfolded input ``[N, G, C_in/G * K, T]`` (memoised per call)."""
        raise NotImplementedError

    def columns(self, io: ModuleIO, mat: Tensor) -> Tensor:
        """Backpropagated columns ``[V, N, *out]`` as ``[V, N, G, C_out/G, T]`` (a view)."""
        raise NotImplementedError

    def one_position_columns(self, io: ModuleIO, mat: Tensor) -> Tensor:
        """:meth:`columns` of a layer with one position, without it: ``[V, N, G, C_out/G]``."""
        return self.columns(io, mat)[..., 0]

    def one_position_unfold(self, io: ModuleIO) -> Tensor:
        """:meth:`unfold` of a layer with one position, without it: ``[N, G, C_in/G * K]``."""
        return self.unfold(io)[..., 0]

    def tap_counts(self, io: ModuleIO) -> Tensor:
        """For each kernel tap, at how many output positions it reads a real input entry.

        ``[K]``; a tap that reads the zero padding at some positions counts fewer.
        """
        raise NotImplementedError

    # ------------------------------------------------------------------ primitives
    def param_jac_t_mat_prod(self, io, name, mat, sum_batch=True):
        cols = self.columns(io, mat)  # [V, N, G, O/G, T]
        param = getattr(io.module, name)
        if name == "bias":
            summed = cols.sum(4).flatten(2)  # [V, N, O]
            return summed.sum(1) if sum_batch else summed
        equation = "vngot,ngct->vgoc" if sum_batch else "vngot,ngct->vngoc"
        result = einsum(equation, cols, self.unfold(io))
        return result.reshape(*result.shape[: 1 if sum_batch else 2], *param.shape)

    # ------------------------------------------------------------------ faster routes
    # Each has a generic answer over the unfolded input; a family overrides it where its
    # layout allows something cheaper.
    def individual_weight_gradients(
        self, io: ModuleIO, grad_output: Tensor, out: Optional[Tensor] = None
    ) -> Tensor:
        """``[N, *weight.shape]``: ``sum_t g_t u_t^T`` per sample and group.

        Args:
            io: The module call.
            grad_output: ``[N, *out]``.
            out: Optional contiguous tensor of the result's shape to write into.
        """
        g = self.columns(io, grad_output.unsqueeze(0))[0]  # [N, G, O/G, T]
        unfolded = self.unfold(io)  # [N, G, C/G * K, T]
        if out is None:
            # allocated in the parameter's shape, so that a later step may write into it
            out = g.new_empty(g.shape[0], *io.module.weight.shape)
        shape = (*g.shape[:3], unfolded.shape[2])
        torch.matmul(g, unfolded.transpose(2, 3), out=out.view(shape))
        return out

    def input_gram(self, io: ModuleIO) -> Tensor:
        """``sum_{n,t} u_{n,t} u_{n,t}^T`` ``[C_in * K, C_in * K]`` (one group)."""
        unfolded = self.unfold(io)[:, 0]  # [N, C*K, T]
        rows = unfolded.transpose(1, 2).reshape(-1, unfolded.shape[1])
        return rows.T @ rows

    def mean_inputs(self, io: ModuleIO) -> Tensor:
        """The unfolded input averaged over positions, ``[N, C_in * K]`` (one group)."""
        return self.unfold(io)[:, 0].mean(2)

    def view(self, io: ModuleIO) -> "LayerView":
        """This call seen as a grouped convolution over positions."""
        return LayerView(self, io)


class LayerView:
    """One call of a layer with a weight, as the extensions see it (see the module docstring).

    Attributes:
        io: The module call.
        derivatives: The layer family's derivatives.
        groups: ``G``.
        positions: ``T``, the output positions that share the weight.
        kernel_taps: ``K``.
    """

    def __init__(self, derivatives: ParameterLayerDerivatives, io: ModuleIO):
        self.io = io
        self.derivatives = derivatives
        self.groups = derivatives.groups(io)
        self.positions = derivatives.positions(io)
        self.kernel_taps = derivatives.kernel_taps(io)

    @property
    def weight(self) -> Tensor:
        """The weight as ``[G, C_out/G, C_in/G * K]``."""
        weight = self.io.module.weight
        return weight.reshape(self.groups, weight.shape[0] // self.groups, -1)

    @property
    def batch_size(self) -> int:
        """``N``."""
        return self.io.batch_size

    def unfolded(self) -> Tensor:
        """``U`` ``[N, G, C_in/G * K, T]``."""
        return self.derivatives.unfold(self.io)

    def columns(self, mat: Tensor) -> Tensor:
        """``S`` ``[V, N, G, C_out/G, T]`` from ``[V, N, *out]``."""
        return self.derivatives.columns(self.io, mat)

    def one_position_columns(self, mat: Tensor) -> Tensor:
        """``S`` without its position axis ``[V, N, G, C_out/G]`` (``T = 1`` only)."""
        return self.derivatives.one_position_columns(self.io, mat)

    def one_position_unfolded(self) -> Tensor:
        """``U`` without its position axis ``[N, G, C_in/G * K]`` (``T = 1`` only)."""
        return self.derivatives.one_position_unfold(self.io)

    def tap_counts(self) -> Tensor:
        """``[K]``, see :meth:`ParameterLayerDerivatives.tap_counts`."""
        return self.derivatives.tap_counts(self.io)

    def individual_weight_gradients(self, grad_output: Tensor, out=None) -> Tensor:
        """``[N, *weight.shape]``."""
        return self.derivatives.individual_weight_gradients(self.io, grad_output, out)

    def input_gram(self) -> Tensor:
        """``sum_{n,t} u u^T``."""
        return self.derivatives.input_gram(self.io)

    def mean_inputs(self) -> Tensor:
        """``[N, C_in * K]``, the patches averaged over positions."""
        return self.derivatives.mean_inputs(self.io)
