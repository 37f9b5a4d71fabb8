"""KFRA: Kronecker factors from recursively batch-averaged GGN blocks (Botev et al., 2017).

The recursion passes one matrix per tensor from the loss to the input, the batch average
of the GGN w.r.t. that tensor, and reads a layer's output factor ``B`` off the matrix at its
output. Written densely:

- at the loss input ``M = c sum_n H_n``, the summed per-sample loss Hessians times the
  reduction's scale ``c`` (1 for ``"sum"``, ``1/N`` for a mean cross-entropy);
- through a module with per-sample Jacobians ``J_n``: ``M_in = (1/N) sum_n J_n^T M J_n``;
- on a feature map ``[C, *spatial]`` with ``T`` positions the matrix is replaced by the
  homogeneous one with the same *channel form* ``K = (1/T) sum_{t,t'} M[(., t), (., t')]``,
  namely ``K kron (1 1^T) / T``, and only ``K`` ``[C, C]`` is kept (a dense matrix would
  need ``(C T)^2`` entries, 17 GB at CIFAR's first layer). This is the spatial-homogeneity
  assumption of Kronecker-factored convolutions; on flat features (``T = 1``) nothing is
  replaced and ``K`` is the dense matrix.
- ``B`` of a layer is ``T_out K`` at its output (the dense matrix for a Linear layer, the
  curvature of the position-summed output for a convolution, as in KFLR's ``"backpack"``
  convention); ``A`` is KFLR's (``(1/N) sum_{n,t} u u^T`` over the input patches ``u``).

``test/backpack_core/test_kfra_reference.py`` computes exactly this with ``torch.func``
and compares every layer's factors.

The quantity is kept in one of two forms, each a class that knows how it passes through a
module (:meth:`~KFRAForm.through`) and what ``B`` it gives (:meth:`~KFRAForm.output_factor`):

- :class:`Channel`: the channel form ``K`` of a tensor with ``T`` positions (``T = 1``: the
  dense matrix of flat features). Through a module, ``K kron 11^T/T_out`` is the sum of
  the outer products of the columns ``L[:, c] kron 1 / sqrt(T_out)`` (``K = L L^T``), so
  with ``s_n[c] = sum over input positions of J_n^T (e_c kron 1)`` (``[C_in, C_out]``)
  ``K_in = (1 / (N T_in T_out)) sum_n s_n K s_n^T``: ``C_out`` columns through
  :meth:`~backpack_core.derivatives.base.Derivatives.jac_t_mat_prod`, one column of ones
  for modules that mix no channels (``s_n`` is diagonal), and no column at all for a
  weight layer, whose ``s_n = A^T`` with the tap-summed weight
  ``A[o, c] = sum_k W[o, c, k] n_k``, ``n_k`` the output positions at which tap ``k`` reads
  a real input entry, not padding (``K_in = A^T K A / (T_in T_out)``). With ``T = 1`` on
  both sides this is the dense rule ``(1/N) sum_n J_n^T M J_n``, so one class serves
  feature maps and flat features.
- :class:`Congruence`: ``left^T M left`` kept unevaluated through modules with a fixed
  Jacobian (a Linear layer's weight), so that a reshape to a feature map reduces it with
  the position-summed ``left`` instead of forming the ``[C T, C T]`` matrix.
"""

from math import prod
from typing import Optional, Tuple

import torch
from torch import Tensor

from backpack_core.config import format_bytes, memory_limit
from backpack_core.derivatives.base import Derivatives, LossDerivatives, UnsupportedOperation
from backpack_core.derivatives.io import ModuleIO
from backpack_core.extensions.curvature import KroneckerExtension, kronecker_view
from backpack_core.quantities import BackpropagatedQuantity

#: Take the shortcuts (lazy congruences, one column for channelwise modules, the
#: tap-summed weight of a layer); ``False`` passes every form by the generic rule, which
#: the tests compare them with.
SHORTCUTS = True

# Above this many bytes the columns of the generic rule are passed in chunks of samples.
CHUNK_BYTES = 256 * 2**20


class KFRAStep:
    """One module call as the recursion sees it.

    Attributes:
        quantity: The backpropagated quantity (for its memory limit).
        derivatives: The module's derivatives.
        io: The call.
        in_channels, in_positions: ``C`` and ``T`` of the input (``D`` and 1 if flat).
        out_channels, out_positions: The same of the output.
    """

    def __init__(self, quantity: "KFRAQuantity", derivatives: Derivatives, io: ModuleIO):
        self.quantity, self.derivatives, self.io = quantity, derivatives, io
        self.in_channels, self.in_positions = channels_and_positions(io.input_shape)
        self.out_channels, self.out_positions = channels_and_positions(io.output_shape)

    @property
    def input_is_map(self) -> bool:
        """Whether the input is a feature map (more than one axis per sample)."""
        return len(self.io.input_shape) > 2

    def check(self) -> None:
        """Refuse a Linear layer on inputs with extra dimensions.

        Its channels are the last axis, KFRA's channel form reads the second.
        """
        weight = getattr(self.io.module, "weight", None)
        view = self.derivatives.view(self.io)
        if view is not None and weight.dim() == 2 and len(self.io.input_shape) > 2:
            raise UnsupportedOperation(
                "KFRA through Linear layers with inputs of more than two dimensions "
                f"(got input shape {tuple(self.io.input_shape)})"
            )

    def layer_weight(self) -> Optional[Tensor]:
        """``[C_out, C_in, K]`` of a weight layer (block-diagonal over groups), else ``None``."""
        view = self.derivatives.view(self.io)
        if view is None:
            return None
        groups, taps = view.groups, view.kernel_taps
        weight = view.weight  # [G, O/G, C/G * K]
        weight = weight.reshape(groups, weight.shape[1], -1, taps)
        if groups == 1:
            return weight[0]
        return torch.block_diag(*(w.flatten(1) for w in weight)).reshape(
            weight.shape[0] * weight.shape[1], -1, taps
        )

    def samples(self, summed: bool = False) -> Tuple[ModuleIO, int]:
        """The call to pass columns through and its batch (1 for fixed Jacobians).

        Args:
            summed: Only the sums of ``J_n^T v`` over the input positions are needed:
                one sample also suffices for a module that declares them the same for
                every sample (``sample_independent_position_sums``, e.g. max pooling,
                whose every output entry is one input entry).
        """
        derivatives = self.derivatives
        if derivatives.sample_independent_jacobian or (
            summed and derivatives.sample_independent_position_sums
        ):
            return _samples(self.io, 0, 1), 1
        return self.io, self.io.batch_size

    def check_dense(self, features: int, like: Tensor) -> None:
        """Refuse to form a ``[features, features]`` matrix above the limit."""
        self.quantity.check_dense(features, like, self.io)


def channels_and_positions(shape) -> Tuple[int, int]:
    """``(C, T)`` of a tensor ``[N, C, *spatial]``; ``(D, 1)`` of flat features ``[N, D]``."""
    return shape[1], prod(shape[2:])


class KFRAForm:
    """The batch-averaged GGN w.r.t. one tensor, in one of KFRA's forms."""

    def through(self, step: KFRAStep) -> "KFRAForm":
        """The form w.r.t. the module's input from this one w.r.t. its output."""
        raise NotImplementedError

    def matrix(self, step: KFRAStep) -> Tensor:
        """The channel form ``K`` ``[C, C]`` this stands for (formed if lazy)."""
        raise NotImplementedError

    def output_factor(self, step: KFRAStep) -> Tensor:
        """``B`` of the layer whose output this is: ``T_out K`` (``K`` if flat)."""
        matrix = self.matrix(step)
        return matrix * step.out_positions if step.out_positions > 1 else matrix


class Channel(KFRAForm):
    """The channel form ``K`` ``[C, C]`` of a tensor with ``positions`` (``T``) positions.

    It stands for the matrix ``K kron 11^T / T``; with ``T = 1`` (flat features) for ``K``.
    """

    def __init__(self, matrix: Tensor, positions: int):
        self.content, self.positions = matrix, positions

    def matrix(self, step):
        return self.content

    def through(self, step):
        K = self.content
        if SHORTCUTS:
            weight = step.layer_weight()
            if weight is not None:
                return self._through_layer(step, weight)
            if step.derivatives.channelwise and step.in_channels == step.out_channels:
                return self._through_channelwise(step)
            if step.derivatives.reshapes_only and self.positions == 1:
                # flat output: the dense matrix of the input, reshaped
                return Congruence(None, self.content).arrive(step)
        return self._through_columns(step, K)

    def _through_layer(self, step: KFRAStep, weight: Tensor) -> KFRAForm:
        """A weight layer: ``A^T K A / (T_in T_out)`` with the tap-summed weight ``A``."""
        if not step.input_is_map and step.out_positions == 1:
            # a Linear layer on flat features: A = W, kept as W^T K W lazily
            return Congruence(weight[..., 0], self.content).arrive(step)
        counts = step.derivatives.view(step.io).tap_counts().to(weight.dtype)
        summed = weight @ counts  # [C_out, C_in]
        scale = 1.0 / (step.in_positions * step.out_positions)
        return Channel(summed.T @ self.content @ summed * scale, step.in_positions)

    def _through_channelwise(self, step: KFRAStep) -> KFRAForm:
        """No channel mixing: ``s_n`` is diagonal, one column of ones gives it."""
        io, batch = step.samples(summed=True)
        ones = self.content.new_ones(()).expand(1, batch, *step.io.output_shape[1:])
        summed = step.derivatives.jac_t_mat_prod(io, ones)[0].reshape(batch, step.in_channels, -1)
        summed = summed.sum(2)  # [N, C]
        scale = 1.0 / (batch * step.in_positions * step.out_positions)
        return Channel(self.content * (summed.T @ summed) * scale, step.in_positions)

    def _through_columns(self, step: KFRAStep, K: Tensor) -> KFRAForm:
        """Any module: ``C_out`` columns ``e_c kron 1`` through its transposed Jacobian."""
        io, batch = step.samples(summed=step.input_is_map)
        out_shape = step.io.output_shape[1:]
        channels, features = step.out_channels, prod(step.io.input_shape[1:])
        reduced = step.in_channels if step.input_is_map else features
        step.check_dense(reduced, K)
        per_sample = channels * features * K.element_size()
        limit = memory_limit(K.device)
        if per_sample > limit:
            raise MemoryError(
                f"KFRA would pass {channels} columns of {features} features through "
                f"{step.io.module} ({format_bytes(per_sample)} per sample); the limit is "
                f"{format_bytes(limit)}. Raise it with backpack_core.set_memory_limit(...) "
                "or use KFLR/KFAC for this network."
            )
        chunk = max(1, min(batch, CHUNK_BYTES // max(per_sample, 1)))
        eye = torch.eye(channels, dtype=K.dtype, device=K.device)
        eye = eye.reshape(channels, 1, channels, *([1] * (len(out_shape) - 1)))
        result = None
        for start in range(0, batch, chunk):
            size = min(chunk, batch - start)
            part = io if size == batch else _samples(io, start, size)
            columns = eye.expand(channels, size, *out_shape)
            s = step.derivatives.jac_t_mat_prod(part, columns).reshape(channels, size, reduced, -1)
            s = s.sum(3)  # [C_out, n, C_in or D_in], summed over the input positions
            term = torch.einsum("cna,cd,dnb->ab", s, K, s)
            result = term if result is None else result.add_(term)
        result = result / (batch * step.in_positions * step.out_positions)
        return Channel(result, step.in_positions)


class Congruence(KFRAForm):
    """``left^T matrix left`` on flat features, not formed until needed.

    Args:
        left: ``[R, D]``.
        matrix: ``[R, R]``.
    """

    def __init__(self, left: Tensor, matrix: Tensor):
        self.left, self.content = left, matrix
        self._formed: Optional[Tensor] = None

    def matrix(self, step):
        if self._formed is None:
            step.check_dense(self.left.shape[1], self.content)
            self._formed = self.left.T @ self.content @ self.left
        return self._formed

    def arrive(self, step: KFRAStep) -> KFRAForm:
        """The form at the input of ``step``'s module, for which ``left`` is the Jacobian.

        ``left=None`` stands for the identity (a reshape).
        """
        channels, positions = step.in_channels, step.in_positions
        if step.input_is_map:
            # only the channel form of left^T M left is kept: sum left over the positions
            if self.left is None:
                blocks = self.content.reshape(channels, positions, channels, positions)
                return Channel(blocks.sum((1, 3)) / positions, positions)
            summed = self.left.reshape(self.left.shape[0], channels, positions).sum(2)
            return Channel(summed.T @ self.content @ summed / positions, positions)
        if self.left is None:
            return Channel(self.content, 1)
        if self.left.shape[0] > self.left.shape[1]:
            return Channel(self.matrix(step), 1)  # smaller formed than lazy
        return self

    def through(self, step):
        if self._formed is not None or not SHORTCUTS:
            return Channel(self.matrix(step), 1).through(step)
        if step.derivatives.sample_independent_jacobian:
            weight = step.layer_weight()
            if weight is not None and weight.shape[2] == 1 and not step.input_is_map:
                left = self.left @ weight[..., 0]
            else:
                io, _ = step.samples()
                rows = self.left.reshape(-1, 1, *step.io.output_shape[1:])
                left = step.derivatives.jac_t_mat_prod(io, rows).flatten(1)
            return Congruence(left, self.content).arrive(step)
        return Channel(self.matrix(step), 1).through(step)


def _samples(io: ModuleIO, start: int, size: int) -> ModuleIO:
    """The call restricted to samples ``start, ..., start + size - 1``."""
    if start == 0 and size == io.batch_size:
        return io
    kept = {}
    for which in ("input", "output"):
        try:
            kept[which] = getattr(io, which).narrow(0, start, size)
        except RuntimeError:  # TensorNotKept
            kept[which] = None
    extra = io.extra
    if isinstance(extra, Tensor) and extra.dim() > 0 and extra.shape[0] == io.batch_size:
        extra = extra.narrow(0, start, size)
    return ModuleIO(
        io.module,
        kept["input"],
        kept["output"],
        extra=extra,
        input_shape=(size, *io.input_shape[1:]),
        output_shape=(size, *io.output_shape[1:]),
    )


class KFRAQuantity(BackpropagatedQuantity):
    """KFRA's batch-averaged GGN w.r.t. each tensor, as a :class:`KFRAForm`.

    Args:
        max_bytes: Refuse to form a dense matrix larger than this, with an error that says
            which module would need how much; ``None``: the engine's limit
            (:func:`backpack_core.set_memory_limit`).
    """

    key = "kfra"
    supports_branching = False
    branching_refusal = (
        "KFRA's recursion passes one batch-averaged matrix per layer, and the average of "
        "J^T M J over a sum of paths J = J_1 + J_2 has cross terms E[J_1^T M J_2] that the "
        "per-path averages do not keep."
    )

    def __init__(self, max_bytes=None):
        self.max_bytes = max_bytes

    @property
    def name(self) -> str:
        """``"KFRA"``: the extension this quantity belongs to."""
        return "KFRA"

    def start(self, derivatives: LossDerivatives, io: ModuleIO, scale: float) -> KFRAForm:
        matrix = derivatives.sum_hessian(io) * scale
        channels, positions = channels_and_positions(io.input_shape)
        if positions > 1:
            blocks = matrix.reshape(channels, positions, channels, positions)
            matrix = blocks.sum((1, 3)) / positions
        return Channel(matrix, positions)

    def backpropagate(self, derivatives, io, value: KFRAForm, grad_output) -> KFRAForm:
        step = KFRAStep(self, derivatives, io)
        step.check()
        return value.through(step)

    def check_dense(self, features: int, like: Tensor, io: ModuleIO) -> None:
        """Refuse to form a ``[features, features]`` matrix above the limit."""
        needed = features * features * like.element_size()
        limit = memory_limit(like.device) if self.max_bytes is None else self.max_bytes
        if needed > limit:
            raise MemoryError(
                f"KFRA would form a dense {features} x {features} matrix "
                f"({format_bytes(needed)}) near {io.module}; the limit is "
                f"{format_bytes(limit)}. Raise it with KFRA(max_bytes=...) if the "
                "memory is there, or use KFLR/KFAC for this network."
            )


class KFRA(KroneckerExtension):
    """Kronecker factors from recursively batch-averaged GGN blocks (Botev et al., 2017).

    ``p.kfra`` is ``[B, A]`` for a weight, ``[B]`` for a bias. ``A`` is that of
    ``KFLR(kfac_approx="backpack")``. ``B`` comes from the recursion of the module
    docstring (:mod:`backpack_core.extensions.kfra`): at the loss the summed loss Hessians
    times the reduction's scale, through each module the batch average of
    ``J_n^T M J_n``, on convolutional feature maps under the spatial-homogeneity
    assumption (only the ``[C, C]`` channel form ``K`` is kept, so that KFRA runs on conv
    nets in the memory of an ordinary machine). ``B`` is the matrix at a Linear layer's
    output and ``T_out K`` at a convolution's (the curvature of the position-summed
    output, the scale of KFLR's ``"backpack"`` ``B``). On a single layer KFRA equals that
    KFLR; with sample-independent Jacobians (a deep linear network) on every layer.

    KFRA refuses a network where a tensor feeds several modules or a sum (a residual
    connection): batch-averaged matrices of the branches cannot be combined exactly. It
    refuses Linear layers on inputs with extra dimensions and grouped convolutions.

    Args:
        max_bytes: Largest dense matrix KFRA may form (default: the engine's limit, see
            :func:`backpack_core.set_memory_limit`); beyond it a clear ``MemoryError`` names
            the layer instead of exhausting memory.
    """

    savefield = "kfra"

    def __init__(self, max_bytes=None):
        self.max_bytes = max_bytes

    def quantities(self):
        return (KFRAQuantity(self.max_bytes),)

    def output_factor(self, ctx):
        kronecker_view(ctx)  # refuses layers without a view and grouped convolutions
        step = KFRAStep(self.quantities()[0], ctx.derivatives, ctx.io)
        step.check()
        return ctx.quantities[KFRAQuantity.key].output_factor(step)

    def __repr__(self) -> str:
        return f"KFRA(max_bytes={self.max_bytes!r})"
