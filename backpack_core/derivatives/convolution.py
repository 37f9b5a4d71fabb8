"""``torch.nn.Conv1d/2d/3d``, written once for any number of spatial dimensions.

Parameter derivatives use the unfolded input ("im2col"): ``U_n`` of shape
``[groups, C_in/groups * prod(kernel), T]`` with ``T`` output positions, so that the output
of group ``g`` is ``W_g U_n``. The input derivative is a transposed convolution.
"""

import time
from math import prod
from typing import Dict, List, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, einsum

from backpack_core.derivatives.base import (
    CHUNK_BYTES,
    Derivatives,
    ModuleIO,
    UnsupportedOperation,
    gram,
)

_CONV_INPUT = {1: torch.nn.grad.conv1d_input, 2: torch.nn.grad.conv2d_input}
_CONV_INPUT[3] = torch.nn.grad.conv3d_input


def _padding_pairs(module) -> List[Tuple[int, int]]:
    """(before, after) zero padding per spatial dim, resolving ``"same"``/``"valid"``."""
    if module.padding_mode != "zeros":
        raise UnsupportedOperation(
            f"{type(module).__name__} with padding_mode={module.padding_mode!r} "
            "(only 'zeros' is supported)"
        )
    kernel, dilation = module.kernel_size, module.dilation
    if module.padding == "valid":
        return [(0, 0)] * len(kernel)
    if module.padding == "same":
        totals = [d * (k - 1) for k, d in zip(kernel, dilation)]
        return [(total // 2, total - total // 2) for total in totals]
    return [(p, p) for p in module.padding]


def _pad(x: Tensor, pairs: List[Tuple[int, int]]) -> Tensor:
    if not any(before or after for before, after in pairs):
        return x
    flat = [amount for pair in reversed(pairs) for amount in pair]
    return F.pad(x, flat)


class ConvolutionDerivatives(Derivatives):
    """Derivatives of ``ConvNd`` layers (zero padding, any stride/dilation/groups)."""

    sample_independent_jacobian = True

    def __init__(self, spatial_dims: int):
        self.spatial_dims = spatial_dims

    def unfold(self, io: ModuleIO) -> Tensor:
        """The unfolded input ``[N, groups, C_in/groups * prod(kernel), T]`` (memoised)."""
        if "unfolded" not in io.memo:
            module = io.module
            x = _pad(io.input, _padding_pairs(module))
            dims = self.spatial_dims
            for axis, (k, s, d) in enumerate(
                zip(module.kernel_size, module.stride, module.dilation)
            ):
                x = x.unfold(2 + axis, d * (k - 1) + 1, s)
                if d > 1:
                    x = x[..., ::d]
            # [N, C, *out, *kernel] -> [N, C, *kernel, *out]
            order = [0, 1] + list(range(2 + dims, 2 + 2 * dims)) + list(range(2, 2 + dims))
            x = x.permute(order)
            n, groups = x.shape[0], module.groups
            io.memo["unfolded"] = x.reshape(n, groups, -1, prod(x.shape[2 + dims :]))
        return io.memo["unfolded"]

    def jac_t_mat_prod(self, io, mat):
        module = io.module
        columns, batch = mat.shape[:2]
        pairs = _padding_pairs(module)
        padded_shape = [s + a + b for s, (a, b) in zip(io.input.shape[2:], pairs)]
        result = _CONV_INPUT[self.spatial_dims](
            [columns * batch, io.input.shape[1], *padded_shape],
            module.weight,
            mat.reshape(columns * batch, *mat.shape[2:]),
            stride=module.stride,
            padding=0,
            dilation=module.dilation,
            groups=module.groups,
        )
        for axis, (before, after) in enumerate(pairs):
            result = result.narrow(2 + axis, before, result.shape[2 + axis] - before - after)
        return result.reshape(columns, batch, *io.input.shape[1:])

    def _grouped_columns(self, io: ModuleIO, mat: Tensor) -> Tensor:
        """Columns ``[V, N, groups, C_out/groups, T]``."""
        groups = io.module.groups
        return mat.reshape(*mat.shape[:2], groups, mat.shape[2] // groups, -1)

    def param_jac_t_mat_prod(self, io, name, mat, sum_batch=True):
        if name == "bias":
            summed = mat.flatten(3).sum(3)
            return summed.sum(1) if sum_batch else summed
        weight = io.module.weight
        cols = self._grouped_columns(io, mat)
        equation = "vngot,ngct->vgoc" if sum_batch else "vngot,ngct->vngoc"
        result = einsum(equation, cols, self.unfold(io))
        return result.reshape(*result.shape[: 1 if sum_batch else 2], *weight.shape)

    def batch_grad(self, io, name, grad_output, out=None):
        if name == "bias":
            return super().batch_grad(io, name, grad_output, out)
        method = self._batch_grad_method(io, grad_output)
        return method(io, grad_output, out)

    # Per-sample weight gradients have two forms whose speed depends on the layer's shape by
    # orders of magnitude (measured on CPU: unfolding wins 100x with one input channel, the
    # grouped convolution 2-3x on large feature maps). The first call with a given shape
    # times both once; later calls take the faster.
    _METHOD_CHOICES: Dict[tuple, str] = {}

    def _batch_grad_method(self, io, grad_output):
        module = io.module
        key = (
            tuple(io.input.shape),
            tuple(module.weight.shape),
            module.stride,
            module.dilation,
            module.groups,
            io.input.dtype,
            io.input.device.type,
        )
        methods = {"unfold": self._batch_grad_unfold, "grouped": self._batch_grad_grouped}
        if key not in self._METHOD_CHOICES:
            timings = {}
            for label, method in methods.items():
                if io.input.is_cuda:
                    torch.cuda.synchronize(io.input.device)
                start = time.perf_counter()
                method(io, grad_output, None)
                if io.input.is_cuda:
                    torch.cuda.synchronize(io.input.device)
                timings[label] = time.perf_counter() - start
            self._METHOD_CHOICES[key] = min(timings, key=timings.get)
        return methods[self._METHOD_CHOICES[key]]

    def _batch_grad_grouped(self, io, grad_output, out=None):
        """Per-sample weight gradients as one weight-gradient convolution, samples as groups."""
        module = io.module
        x = _pad(io.input, _padding_pairs(module))
        batch, groups = x.shape[0], module.groups
        weight_shape = (batch * module.weight.shape[0], *module.weight.shape[1:])
        # Only the weight's shape is read: a zero-strided placeholder costs no memory.
        placeholder = module.weight.new_zeros(1).as_strided(weight_shape, [0] * len(weight_shape))
        _, result, _ = torch.ops.aten.convolution_backward(
            grad_output.reshape(1, -1, *grad_output.shape[2:]),
            x.reshape(1, -1, *x.shape[2:]),
            placeholder,
            None,
            list(module.stride),
            [0] * self.spatial_dims,
            list(module.dilation),
            False,
            [0] * self.spatial_dims,
            batch * groups,
            [False, True, False],
        )
        result = result.view(batch, *module.weight.shape)
        return result if out is None else out.copy_(result)

    def _batch_grad_unfold(self, io, grad_output, out=None):
        """Per-sample weight gradients from the unfolded input, one product per sample."""
        g = self._grouped_columns(io, grad_output.unsqueeze(0))[0]  # [N, G, O/G, T]
        unfolded = self.unfold(io)  # [N, G, C/G * K, T]
        if out is None:
            # Allocated in the parameter's shape (not a reshaped view), so that the next
            # step can reuse it.
            out = g.new_empty(g.shape[0], *io.module.weight.shape)
        shape = (*g.shape[:3], unfolded.shape[2])
        torch.matmul(g, unfolded.transpose(2, 3), out=out.view(shape))
        return out

    def diag_ggn(self, io, name, mat, sum_batch=True):
        if name == "bias":
            squared = mat.flatten(3).sum(3).square_()  # [V, N, O]
            return squared.sum((0, 1)) if sum_batch else squared.sum(0)
        columns, batch, groups = mat.shape[0], mat.shape[1], io.module.groups
        unfolded = self.unfold(io).flatten(0, 1).transpose(1, 2)  # [N*G, T, C/G * K]
        per_column = batch * io.module.weight.numel() * mat.element_size()
        chunk = max(1, CHUNK_BYTES // max(per_column, 1))
        result = None
        for start in range(0, columns, chunk):
            part = self._grouped_columns(io, mat[start : start + chunk])  # [v, N, G, O/G, T]
            v = part.shape[0]
            # [N*G, v*O/G, T] @ [N*G, T, C/G*K]: one product per sample and group, written in
            # its natural layout and squared in place (fresh large tensors cost page faults).
            left = part.permute(1, 2, 0, 3, 4).reshape(batch * groups, -1, part.shape[-1])
            products = torch.bmm(left, unfolded).square_()
            products = products.view(batch, groups, v, -1, unfolded.shape[-1]).sum(2)
            result = products if result is None else result.add_(products)
        result = result.sum(0) if sum_batch else result
        return result.reshape(*result.shape[: 0 if sum_batch else 1], *io.module.weight.shape)

    def batch_l2(self, io, name, grad_output, batch_grad=None):
        if name == "bias" or batch_grad is not None:
            return super().batch_l2(io, name, grad_output, batch_grad)
        g = self._grouped_columns(io, grad_output.unsqueeze(0))[0]  # [N, G, O, T]
        unfolded = self.unfold(io)  # [N, G, C, T]
        out_ch, in_ch, steps = g.shape[2], unfolded.shape[2], g.shape[3]
        if steps * steps * (out_ch + in_ch) < out_ch * in_ch * steps:
            # Gram form: ||sum_t g_t u_t^T||^2 = sum_{t,s} (g_t . g_s)(u_t . u_s)
            gram_g = einsum("ngot,ngos->ngts", g, g)
            gram_u = einsum("ngct,ngcs->ngts", unfolded, unfolded)
            return (gram_g * gram_u).sum((1, 2, 3))
        return super().batch_l2(io, name, grad_output)

    def kronecker_input_factor(self, io, approx="backpack"):
        if io.module.groups != 1:
            raise UnsupportedOperation("Kronecker factors of grouped convolutions")
        unfolded = self.unfold(io)[:, 0]  # [N, C*K, T]
        positions = unfolded.shape[-1]
        if approx == "reduce":
            return gram(unfolded.mean(2)).div_(io.batch_size)
        scale = io.batch_size * (positions if approx == "expand" else 1)
        return einsum("nct,ndt->cd", unfolded, unfolded).div_(scale)

    def kronecker_output_factor(self, io, mat, approx="backpack"):
        if approx == "expand":
            columns = mat.flatten(3)  # [V, N, O, T]
            return einsum("vnot,vnpt->op", columns, columns)
        # BackPACK 1.7's convention and reduce: sum each column over the positions first.
        summed = mat.flatten(3).sum(3)  # [V, N, O]
        return gram(summed.flatten(0, 1))

    def kronecker_output_factor_from_matrix(self, io, mat):
        # ``mat`` is the channel form (``Derivatives.ea_channel_jac_t_mat_jac_prod``): the
        # curvature of the spatially summed output is T_out times it.
        return mat * io.output[0, 0].numel()

    def ea_channel_jac_t_mat_jac_prod(self, io, mat):
        if io.module.groups != 1:
            raise UnsupportedOperation("KFRA through grouped convolutions")
        # Every output position sees all kernel taps inside the (padded) input, so the
        # spatially summed input maps to the summed output through the tap-summed weight.
        summed_weight = io.module.weight.flatten(2).sum(2)  # [O, C]
        ratio = io.output[0, 0].numel() / io.input[0, 0].numel()
        return summed_weight.T @ mat @ summed_weight * ratio
