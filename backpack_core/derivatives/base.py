"""The questions every module's derivatives answer, and generic answers built from them.

Shapes: ``N`` is the batch size, ``V`` the number of stacked columns of a backpropagated
matrix (e.g. ``C`` for the exact GGN factor of a ``C``-class loss), ``*in``/``*out`` the
per-sample shapes of a module's input/output. A backpropagated matrix has shape
``[V, N, *out]``: for each column ``v`` and sample ``n`` a tensor shaped like that sample's
output.
"""

from typing import Any, Optional

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

    A few primitive questions, none named after an extension: :meth:`jac_t_mat_prod` (to
    pass quantities on to the input), :meth:`param_jac_t_mat_prod` (for a layer with
    parameters), :meth:`hessian_residual` (for a curved elementwise module) and
    :meth:`view` (for a weight layer, see
    :mod:`~backpack_core.derivatives.parameter_layer`). The extensions compute everything
    else from these.
    """

    #: ``True`` if the Jacobian w.r.t. the input is the same for every sample (linear
    #: maps such as convolutions, padding, average pooling): KFRA's batch average then
    #: needs one sample.
    sample_independent_jacobian = False

    #: ``True`` for modules that only reshape (``Flatten``): KFRA passes a matrix at their
    #: flat output on by reshaping it, without columns.
    reshapes_only = False

    #: ``True`` if the sums over input positions of ``J_n^T v`` are the same for every
    #: sample (max pooling: every output entry is one input entry): KFRA's channel form
    #: then passes with one sample.
    sample_independent_position_sums = False

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
            ``[V, *p.shape]`` if ``sum_batch`` else ``[V, N, *p.shape]``, in a tensor of
            its own (no view of ``mat``): callers may overwrite it in place.
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

    def view(self, io: ModuleIO):
        """The call as a parameter layer (see :mod:`~backpack_core.derivatives.parameter_layer`).

        ``None`` for modules that are not a weight layer: extensions then use the
        parameter Jacobian products (:meth:`param_jac_t_mat_prod`) alone.
        """
        return None


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
