"""The questions every module's derivatives answer, and generic answers built from them.

Shapes: ``N`` is the batch size, ``V`` the number of stacked columns of a backpropagated
matrix (e.g. ``C`` for the exact GGN factor of a ``C``-class loss), ``*in``/``*out`` the
per-sample shapes of a module's input/output. A backpropagated matrix has shape
``[V, N, *out]``: for each column ``v`` and sample ``n`` a tensor shaped like that sample's
output.
"""

from math import prod
from typing import Any, Optional

import torch
from torch import Tensor
from torch.nn import Module

from backpack_core.derivatives.io import ModuleIO

# Above this many bytes an intermediate per-sample-per-column tensor is computed in chunks
# over the columns, so that the exact GGN of a wide net does not run out of memory.
CHUNK_BYTES = 256 * 2**20


class UnsupportedOperation(NotImplementedError):
    """A module's derivatives cannot answer a question an extension asks."""


class Derivatives:
    """The math of one module family.

    A new layer implements at least :meth:`jac_t_mat_prod` (to pass quantities on to its
    input) and, if it has parameters, :meth:`param_jac_t_mat_prod`. Everything else has a
    generic answer in terms of those two, which a layer may override with a faster one.
    """

    #: ``True`` if the Jacobian w.r.t. the input is the same for every sample (linear
    #: maps such as convolutions, padding, average pooling), which makes
    #: :meth:`ea_jac_t_mat_jac_prod` cheap.
    sample_independent_jacobian = False

    #: ``True`` for modules that only reshape (``Flatten``), which lets KFRA project a lazy
    #: ``J^T M J`` straight to a feature map's channel form.
    reshapes_only = False

    #: ``True`` if output channel ``c`` depends on input channel ``c`` only (elementwise
    #: modules, pooling, padding, upsampling): KFRA's channel form then passes through
    #: with one column instead of one per channel.
    channelwise = False

    #: What of a call the methods read: the engine keeps the input (output) of a call until
    #: its backward only if this is ``True``, so that an extended model holds no tensor that
    #: autograd would have freed. Shapes (``io.input_shape``, ``io.output_shape``) are
    #: always there.
    reads_input = True
    reads_output = True

    def check(self, io: ModuleIO) -> None:
        """Raise :class:`UnsupportedOperation` if this call cannot be handled at all.

        Args:
            io: The module call, checked before any extension runs on it.
        """

    def capture(self, module: Module, input: Tensor, output: Tensor) -> Any:
        """Keep what the backward pass will need beyond input and output (forward time).

        Args:
            module: The module being called.
            input: Its input ``[N, *in]``.
            output: Its output ``[N, *out]``, still attached to the graph.

        Returns:
            Anything; it reaches the other methods as ``io.extra``.
        """
        return None

    def jac_t_mat_prod(self, io: ModuleIO, mat: Tensor) -> Tensor:
        """Multiply the transposed Jacobian w.r.t. the input onto stacked columns.

        Args:
            io: The module call.
            mat: ``[V, N, *out]``.

        Returns:
            ``[V, N, *in]``: for each column and sample, ``J_n^T mat[v, n]``.
        """
        raise UnsupportedOperation(f"{type(io.module).__name__} cannot pass quantities on")

    def param_jac_t_mat_prod(
        self, io: ModuleIO, name: str, mat: Tensor, sum_batch: bool = True
    ) -> Tensor:
        """Multiply the transposed Jacobian w.r.t. a parameter onto stacked columns.

        Args:
            io: The module call.
            name: The parameter's name in the module (``"weight"``, ``"bias"``).
            mat: ``[V, N, *out]``.
            sum_batch: Sum over the samples.

        Returns:
            ``[V, *p.shape]`` if ``sum_batch`` else ``[V, N, *p.shape]``.
        """
        raise UnsupportedOperation(f"{type(io.module).__name__} has no parameter derivatives")

    def hessian_residual(self, io: ModuleIO, grad_output: Tensor) -> Optional[Tensor]:
        """The diagonal second-derivative term of an elementwise module.

        Args:
            io: The module call.
            grad_output: ``[N, *out]``, the gradient w.r.t. the module's output.

        Returns:
            ``[N, *in]`` with ``f''(x) * grad_output``, or ``None`` where the module's
            second derivative w.r.t. its input vanishes.
        """
        return None

    # ------------------------------------------------------------------ first order
    def batch_grad(
        self, io: ModuleIO, name: str, grad_output: Tensor, out: Optional[Tensor] = None
    ) -> Tensor:
        """Individual gradients ``[N, *p.shape]`` from the output gradient ``[N, *out]``.

        Args:
            io: The module call.
            name: The parameter's name.
            grad_output: ``[N, *out]``.
            out: Optional contiguous ``[N, *p.shape]`` tensor to write the result into.

        Returns:
            The individual gradients (``out`` if given).
        """
        result = self.param_jac_t_mat_prod(io, name, grad_output.unsqueeze(0), sum_batch=False)[0]
        return result if out is None else out.copy_(result)

    def sum_grad(
        self, io: ModuleIO, name: str, grad_output: Tensor, batch_grad: Optional[Tensor] = None
    ) -> Tensor:
        """The gradient ``[*p.shape]`` (sum of the individual gradients)."""
        if batch_grad is not None:
            return batch_grad.sum(0)
        return self.param_jac_t_mat_prod(io, name, grad_output.unsqueeze(0), sum_batch=True)[0]

    # The next three take the individual gradients ``[N, *p.shape]`` when they are at hand
    # anyway (BatchGrad active); a layer with a cheaper factorised form may ignore them.
    def batch_l2(
        self, io: ModuleIO, name: str, grad_output: Tensor, batch_grad: Optional[Tensor] = None
    ) -> Tensor:
        """Squared norms ``[N]`` of the individual gradients."""
        if batch_grad is None:
            batch_grad = self.batch_grad(io, name, grad_output)
        return torch.linalg.vector_norm(batch_grad.flatten(1), dim=1).square()

    def sum_grad_squared(
        self, io: ModuleIO, name: str, grad_output: Tensor, batch_grad: Optional[Tensor] = None
    ) -> Tensor:
        """Sum ``[*p.shape]`` of the squared individual gradients."""
        if batch_grad is None:
            return self.batch_grad(io, name, grad_output).square_().sum(0)
        # A reduction without a temporary as large as the individual gradients.
        return torch.linalg.vector_norm(batch_grad, dim=0).square()

    def batch_dot(
        self, io: ModuleIO, name: str, grad_output: Tensor, batch_grad: Optional[Tensor] = None
    ) -> Tensor:
        """Pairwise dot products ``[N, N]`` of the individual gradients."""
        if batch_grad is None:
            batch_grad = self.batch_grad(io, name, grad_output)
        flat = batch_grad.flatten(1)
        return flat @ flat.T

    # ------------------------------------------------------------------ curvature
    def diag_ggn(self, io: ModuleIO, name: str, mat: Tensor, sum_batch: bool = True) -> Tensor:
        """Diagonal of ``sum_v (J^T mat_v)(J^T mat_v)^T`` w.r.t. a parameter.

        Args:
            io: The module call.
            name: The parameter's name.
            mat: ``[V, N, *out]``, a symmetric factor of the curvature at the output.
            sum_batch: Sum over the samples.

        Returns:
            ``[*p.shape]`` if ``sum_batch`` else ``[N, *p.shape]``.
        """
        param = getattr(io.module, name)
        columns, batch = mat.shape[:2]
        per_column = batch * param.numel() * mat.element_size()
        chunk = max(1, CHUNK_BYTES // max(per_column, 1))
        result = None
        for start in range(0, columns, chunk):
            jac_t = self.param_jac_t_mat_prod(io, name, mat[start : start + chunk], False)
            part = jac_t.square_().sum(0)
            result = part if result is None else result + part
        return result.sum(0) if sum_batch else result

    def ea_jac_t_mat_jac_prod(self, io: ModuleIO, mat: Tensor) -> Tensor:
        """Batch average of ``J_n^T mat J_n`` (the KFRA recursion).

        Args:
            io: The module call.
            mat: ``[D_out, D_out]`` with ``D_out = prod(out)``.

        Returns:
            ``[D_in, D_in]``.
        """
        in_shape, out_shape = io.input.shape[1:], io.output.shape[1:]
        d_in, d_out = prod(in_shape), prod(out_shape)
        batch = 1 if self.sample_independent_jacobian else io.batch_size
        columns = mat.reshape(d_out, 1, *out_shape).expand(d_out, batch, *out_shape)
        left = self.jac_t_mat_prod(self._first_samples(io, batch), columns)  # [Do, B, *in]
        left = left.reshape(d_out, batch, d_in).permute(2, 1, 0)  # [Di, B, Do]
        both = self.jac_t_mat_prod(
            self._first_samples(io, batch), left.reshape(d_in, batch, *out_shape)
        )
        return both.reshape(d_in, batch, d_in).mean(1)

    def kfra_congruence(self, io: ModuleIO) -> Optional[Tensor]:
        """The Jacobian ``[D_out, D_in]`` if it is one fixed matrix for all samples, else None.

        KFRA then keeps ``J^T M J`` lazily as ``(J, M)``; a following reshape to a feature
        map reduces it without forming the ``[D_in, D_in]`` matrix.
        """
        return None

    def ea_channel_jac_t_mat_jac_prod(self, io: ModuleIO, mat: Tensor) -> Tensor:
        """The KFRA recursion on feature maps, in channel form.

        On a feature map ``[C, *spatial]`` with ``T`` positions, KFRA keeps the channel
        matrix ``K = (1/T) sum_{t,t'} M[(., t), (., t')]``: the curvature w.r.t. the
        spatially summed features, per position (the same reduction over positions that
        BackPACK's KFAC/KFLR apply to a convolution's output factor). Linear maps
        (convolutions on their input, pooling) pass it on exactly; elementwise modules
        assume their derivative independent of the curvature across positions.

        Args:
            io: The module call (input ``[N, C_in, *spatial_in]``).
            mat: ``[C_out, C_out]``.

        Returns:
            ``[C_in, C_in]``.
        """
        raise UnsupportedOperation(f"KFRA through {type(io.module).__name__} on feature maps")

    @staticmethod
    def _first_samples(io: ModuleIO, batch: int) -> ModuleIO:
        if batch == io.batch_size:
            return io
        return ModuleIO(io.module, io.input[:batch], io.output[:batch], extra=io.extra)

    # ------------------------------------------------------------------ Kronecker factors
    # ``approx`` is the convention for the ``T`` positions that share the weight (see
    # ``backpack_core.extensions.KFAC``): "backpack", "expand" or "reduce".
    def kronecker_input_factor(self, io: ModuleIO, approx: str = "backpack") -> Tensor:
        """The input-based Kronecker factor ``A`` ``[in, in]`` of the weight.

        Args:
            io: The module call.
            approx: ``"backpack"``: ``(1/N) sum_{n,t} x x^T``; ``"expand"``: that over
                ``T``; ``"reduce"``: ``(1/N) sum_n xbar xbar^T``, ``xbar`` the mean over
                positions.
        """
        raise UnsupportedOperation(f"{type(io.module).__name__} has no Kronecker factorisation")

    def kronecker_output_factor(
        self, io: ModuleIO, mat: Tensor, approx: str = "backpack"
    ) -> Tensor:
        """The output-based factor ``B`` ``[out, out]`` from a factor ``[V, N, *out]``.

        Args:
            io: The module call.
            mat: The backpropagated columns ``s``.
            approx: ``"backpack"``/``"reduce"``: ``sum_{v,n} (sum_t s_t)(sum_t s_t)^T``;
                ``"expand"``: ``sum_{v,n,t} s_t s_t^T``.
        """
        raise UnsupportedOperation(f"{type(io.module).__name__} has no Kronecker factorisation")

    def kronecker_output_factor_from_matrix(self, io: ModuleIO, mat: Tensor) -> Tensor:
        """The output-based factor ``B`` from the KFRA matrix at the output.

        The matrix is dense ``[D_out, D_out]`` for flat outputs and the shared channel
        matrix ``[C_out, C_out]`` for feature maps.
        """
        raise UnsupportedOperation(f"{type(io.module).__name__} has no Kronecker factorisation")


class LossDerivatives(Derivatives):
    """The math of a loss ``L = sum_n c * l(f_n, y_n)``, ``c`` the reduction's scale.

    Factors carry the reduction's scale, so that their outer products sum to the Hessian of
    the reduced loss w.r.t. the network output.
    """

    def sqrt_hessian(self, io: ModuleIO) -> Tensor:
        """Exact symmetric factor ``[V, N, *in]`` of the per-sample loss Hessians."""
        raise NotImplementedError

    def sqrt_hessian_sampled(self, io: ModuleIO, mc_samples: int) -> Tensor:
        """Monte-Carlo factor ``[mc_samples, N, *in]`` with the Hessian as expectation.

        Samples come from the model's predictive distribution.
        """
        raise NotImplementedError

    def sum_hessian(self, io: ModuleIO) -> Tensor:
        """Sum over samples of the per-sample loss Hessians, ``[D_in, D_in]``."""
        raise NotImplementedError


def gram(rows: Tensor) -> Tensor:
    """``rows^T rows`` ``[D, D]`` of a matrix ``[K, D]`` (may be a transposed view)."""
    return rows.T @ rows
