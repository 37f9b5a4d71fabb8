"""``torch.nn.Linear``: ``y = x W^T + b`` on inputs ``[N, *, in]``."""

import torch
from torch import Tensor, einsum

from backpack_core.derivatives.base import Derivatives, ModuleIO, UnsupportedOperation, gram


class LinearDerivatives(Derivatives):
    """Derivatives of a linear layer; fast paths for plain ``[N, in]`` inputs."""

    sample_independent_jacobian = True

    def jac_t_mat_prod(self, io: ModuleIO, mat: Tensor) -> Tensor:
        return mat @ io.module.weight

    @staticmethod
    def _shared(io: ModuleIO, mat: Tensor):
        """Input ``[N, T, in]`` and columns ``[V, N, T, out]`` with the extra dims as ``T``."""
        x = io.input
        x = x.reshape(x.shape[0], -1, x.shape[-1])
        mat = mat.reshape(*mat.shape[:2], -1, mat.shape[-1])
        return x, mat

    def param_jac_t_mat_prod(self, io, name, mat, sum_batch=True):
        x, mat = self._shared(io, mat)
        if name == "bias":
            return mat.sum((1, 2)) if sum_batch else mat.sum(2)
        equation = "vnto,nti->voi" if sum_batch else "vnto,nti->vnoi"
        return einsum(equation, mat, x)

    def _plain(self, io: ModuleIO) -> bool:
        return io.input.dim() == 2

    def batch_grad(self, io, name, grad_output, out=None):
        if not self._plain(io):
            return super().batch_grad(io, name, grad_output, out)
        if name == "bias":
            return grad_output.clone() if out is None else out.copy_(grad_output)
        # An outer product per sample, written by a broadcast multiply (faster than einsum).
        return torch.mul(grad_output.unsqueeze(2), io.input.unsqueeze(1), out=out)

    # First-order fast paths: for plain inputs the individual gradient is an outer product
    # g_n x_n^T, so norms, squares and dot products factorise (no [N, out, in] tensor).
    def batch_l2(self, io, name, grad_output, batch_grad=None):
        if name == "bias":
            return super().batch_l2(io, name, grad_output, batch_grad)
        if self._plain(io):
            # ||g_n x_n^T||^2 = ||g_n||^2 ||x_n||^2: cheaper than reading the gradients.
            return grad_output.pow(2).sum(1) * io.input.pow(2).sum(1)
        if batch_grad is not None:
            return super().batch_l2(io, name, grad_output, batch_grad)
        x, g = self._shared(io, grad_output.unsqueeze(0))
        g = g[0]
        steps, d_in, d_out = x.shape[1], x.shape[2], g.shape[2]
        if steps * steps * (d_in + d_out) < d_in * d_out * steps:
            return (einsum("nto,nso->nts", g, g) * einsum("nti,nsi->nts", x, x)).sum((1, 2))
        return super().batch_l2(io, name, grad_output)

    def sum_grad(self, io, name, grad_output, batch_grad=None):
        if self._plain(io):  # one product g^T x instead of reading N x out x in numbers
            return super().sum_grad(io, name, grad_output)
        return super().sum_grad(io, name, grad_output, batch_grad)

    def sum_grad_squared(self, io, name, grad_output, batch_grad=None):
        if name == "weight" and self._plain(io):
            # One product of the squared factors beats reading N x out x in numbers.
            return einsum("no,ni->oi", grad_output.pow(2), io.input.pow(2))
        return super().sum_grad_squared(io, name, grad_output, batch_grad)

    def batch_dot(self, io, name, grad_output, batch_grad=None):
        if self._plain(io):
            gram = grad_output @ grad_output.T
            return gram if name == "bias" else gram * (io.input @ io.input.T)
        return super().batch_dot(io, name, grad_output, batch_grad)

    def diag_ggn(self, io, name, mat, sum_batch=True):
        if name == "bias" and self._plain(io):
            squared = mat.pow(2).sum(0)
            return squared.sum(0) if sum_batch else squared
        if self._plain(io):
            equation = "vno,ni->oi" if sum_batch else "vno,ni->noi"
            return einsum(equation, mat.pow(2), io.input.pow(2))
        return super().diag_ggn(io, name, mat, sum_batch)

    def kfra_congruence(self, io):
        return io.module.weight if self._plain(io) else None

    def ea_jac_t_mat_jac_prod(self, io, mat):
        if not self._plain(io):
            raise UnsupportedOperation(
                "KFRA through Linear layers with inputs of more than two dimensions "
                f"(got input shape {tuple(io.input.shape)})"
            )
        weight = io.module.weight
        return weight.T @ mat @ weight

    # The extra dimensions of an [N, *, in] input are positions that share the weight, as a
    # convolution's output positions are; a kernel-1 Conv1d gives the same factors.
    def kronecker_input_factor(self, io, approx="backpack"):
        x = io.input.reshape(io.batch_size, -1, io.input.shape[-1])  # [N, T, in]
        positions = x.shape[1]
        if approx == "reduce" and positions > 1:
            return gram(x.mean(1)).div_(io.batch_size)
        scale = io.batch_size * (positions if approx == "expand" else 1)
        return gram(x.reshape(-1, x.shape[-1])).div_(scale)

    def kronecker_output_factor(self, io, mat, approx="backpack"):
        columns = mat.reshape(*mat.shape[:2], -1, mat.shape[-1])  # [V, N, T, out]
        if approx != "expand":
            columns = columns.sum(2)
        return gram(columns.reshape(-1, columns.shape[-1]))

    def kronecker_output_factor_from_matrix(self, io, mat):
        if not self._plain(io):
            raise UnsupportedOperation(
                "KFRA for Linear layers with inputs of more than two dimensions"
            )
        return mat
