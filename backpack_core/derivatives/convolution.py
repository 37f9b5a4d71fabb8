"""``torch.nn.Conv1d/2d/3d``, written once for any number of spatial dimensions.

Parameter derivatives use the unfolded input ("im2col"): ``U_n`` of shape
``[groups, C_in/groups * prod(kernel), T]`` with ``T`` output positions, so that the output
of group ``g`` is ``W_g U_n``. The input derivative is a transposed convolution.
"""

import itertools
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

# Elements of the buffer that holds the unfolded patches of a few samples for the Kronecker
# input factor (8 MB in float32; 16 times that on CUDA).
_PATCH_BUFFER_ELEMENTS = 2**21


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

    # ------------------------------------------------------------------ Kronecker factors
    def _patch_gram(self, io: ModuleIO) -> Tensor:
        """``sum_{n,t} u_{n,t} u_{n,t}^T`` over the unfolded input, ``[C*K, C*K]``.

        The patches of a few samples at a time are copied into one reused buffer laid out
        ``[C_in * prod(kernel), n * T]`` for the Gram product: a buffer as large as the
        whole unfolded input costs more in page faults and cache misses than the products
        (measured 1.3-1.5x slower on mnist_2c2d's second layer).
        """
        module, dims = io.module, self.spatial_dims
        x = _pad(io.input, _padding_pairs(module))
        for axis, (k, s, d) in enumerate(zip(module.kernel_size, module.stride, module.dilation)):
            x = x.unfold(2 + axis, d * (k - 1) + 1, s)
            if d > 1:
                x = x[..., ::d]
        # [N, C, *out, *kernel] -> [C, *kernel, N, *out]
        order = [1] + list(range(2 + dims, 2 + 2 * dims)) + [0] + list(range(2, 2 + dims))
        x = x.permute(order)
        features, batch = module.weight[0].numel(), x.shape[1 + dims]
        per_sample = features * io.output[0, 0].numel()
        budget = _PATCH_BUFFER_ELEMENTS * (16 if x.is_cuda else 1)
        chunk = max(1, min(batch, budget // max(per_sample, 1)))
        result, buffer = None, None
        for start in range(0, batch, chunk):
            part = x.narrow(1 + dims, start, min(chunk, batch - start))
            if buffer is None or buffer.shape != part.shape:
                buffer = torch.empty(part.shape, dtype=x.dtype, device=x.device)
            buffer.copy_(part)
            rows = buffer.view(features, -1)
            result = rows @ rows.T if result is None else result.addmm_(rows, rows.T)
        return result

    def _shift_gram(self, io: ModuleIO) -> Tensor:
        """``sum_{n,t} u_{n,t} u_{n,t}^T`` of a stride-1 convolution, without unfolding.

        Taps ``k`` and ``k'`` read padded input positions ``p`` and ``p + d (k' - k)``,
        ``p`` in a window of the output's size that starts at ``d k``. So the block
        ``(k, k')`` is the window sum of ``Y[p] = sum_n x_n[:, p] x_n[:, p + shift]^T``.
        Each ``[C, C]`` product is formed once per position and shift (``prod(2 k - 1) / 2``
        shifts) instead of once per window that contains it (``prod(k)^2 / 2`` tap pairs);
        the window sums of all tap pairs of a shift are one product with a 0/1 matrix.
        Positions are flattened, so that one batched product covers a shift (the few
        positions in between rows get weight zero).
        """
        module, dims = io.module, self.spatial_dims
        kernel, dilation = module.kernel_size, module.dilation
        x = _pad(io.input, _padding_pairs(module))
        channels, outputs, padded = x.shape[1], io.output.shape[2:], x.shape[2:]
        flat = x.flatten(2).permute(2, 1, 0).contiguous()  # [prod(L), C, N]
        steps = [prod(padded[axis + 1 :]) for axis in range(dims)]  # flat index per axis
        device = x.device
        taps = prod(kernel)
        tap_index = torch.arange(taps, device=device).reshape(kernel)
        windows, first_taps, second_taps = [], [], []
        for delta in itertools.product(*(range(1 - k, k) for k in kernel)):
            if delta < (0,) * dims:  # the transposed blocks of -delta
                continue
            low = [max(0, -step) for step in delta]
            high = [k - max(0, step) for k, step in zip(kernel, delta)]
            first = torch.meshgrid(
                *(torch.arange(lo, hi, device=device) for lo, hi in zip(low, high)),
                indexing="ij",
            )
            first = [k.flatten() for k in first]  # first taps of the pairs, per axis
            begin = sum(d * lo * st for d, lo, st in zip(dilation, low, steps))
            end = sum(
                (d * (hi - 1) + o - 1) * st for d, hi, o, st in zip(dilation, high, outputs, steps)
            )
            shift = sum(d * step * st for d, step, st in zip(dilation, delta, steps))
            left, right = flat[begin : end + 1], flat[begin + shift : end + 1 + shift]
            products = torch.bmm(left, right.transpose(1, 2))  # [P, C, C]
            # which positions each pair's window covers: [pairs, P]
            where = torch.arange(begin, end + 1, device=device)
            inside = None
            for axis in range(dims):
                coordinate = (where // steps[axis]) % padded[axis]
                start = (first[axis] * dilation[axis]).unsqueeze(1)
                here = (coordinate >= start) & (coordinate < start + outputs[axis])
                inside = here if inside is None else inside & here
            window = inside.to(x.dtype) @ products.view(products.shape[0], -1)
            windows.append(window.view(-1, channels, channels))
            first_taps.append(tap_index[tuple(first)])
            second_taps.append(tap_index[tuple(k + step for k, step in zip(first, delta))])
        # one write of all blocks and one of their transposes (delta = 0 writes itself twice)
        windows, first_taps, second_taps = (
            torch.cat(windows),
            torch.cat(first_taps),
            torch.cat(second_taps),
        )
        blocks = x.new_empty(taps, taps, channels, channels)
        blocks[second_taps, first_taps] = windows.transpose(1, 2)
        blocks[first_taps, second_taps] = windows
        return blocks.permute(2, 0, 3, 1).reshape(channels * taps, channels * taps)

    def _averaged_patches(self, io: ModuleIO) -> Tensor:
        """The unfolded input averaged over the output positions, ``[N, C_in * prod(kernel)]``.

        Without unfolding: along each spatial dimension, kernel tap ``k`` of output position
        ``t`` reads padded input index ``s t + d k``, so the sum over positions is one small
        matrix ``[K, I]`` per dimension (how often tap ``k`` reads input index ``i``) applied
        to the unpadded input (padding only adds zeros).
        """
        module, x = io.module, io.input
        pairs = _padding_pairs(module)
        positions = io.output[0, 0].numel()
        for axis, (k, s, d) in enumerate(zip(module.kernel_size, module.stride, module.dilation)):
            size, before = x.shape[2], pairs[axis][0]
            outputs = io.output.shape[2 + axis]
            taps = torch.arange(k, device=x.device).unsqueeze(1) * d - before  # [K, 1]
            reads = taps + torch.arange(outputs, device=x.device) * s  # [K, O] input index
            counts = torch.zeros(k, size, dtype=x.dtype, device=x.device)
            inside = (reads >= 0) & (reads < size)
            rows = torch.arange(k, device=x.device).unsqueeze(1).expand_as(reads)
            counts.index_put_((rows[inside], reads[inside]), counts.new_ones(()), accumulate=True)
            # contract the first remaining spatial axis; its kernel axis goes last
            x = torch.tensordot(x, counts, dims=([2], [1]))
        return x.reshape(x.shape[0], -1).div_(positions)

    def _input_gram(self, io: ModuleIO) -> Tensor:
        """``sum_{n,t} u_{n,t} u_{n,t}^T`` by the cheaper of two forms.

        The shifted products (:meth:`_shift_gram`, stride 1 only) need far fewer
        multiply-adds with large kernels but many small products; measured on CPU they win
        from 16 channels on (3.7x on mnist_2c2d's second layer, 1.2-1.7x on cifar10_3c3d's
        3x3 layers) and lose with 3 (cifar10_3c3d's first layer: 2.4x slower).
        """
        module, x = io.module, io.input
        channels, batch, taps = x.shape[1], x.shape[0], prod(module.kernel_size)
        padded = [s + a + b for s, (a, b) in zip(x.shape[2:], _padding_pairs(module))]
        positions = prod(padded)
        shifts = (prod(2 * k - 1 for k in module.kernel_size) + 1) / 2
        shift_cost = shifts * positions * channels**2 * batch
        patch_cost = (channels * taps) ** 2 * batch * io.output[0, 0].numel() / 2
        if (
            all(s == 1 for s in module.stride)
            and channels >= 16
            and 1.5 * shift_cost < patch_cost
            and positions * channels**2 <= 8 * _PATCH_BUFFER_ELEMENTS
        ):
            return self._shift_gram(io)
        return self._patch_gram(io)

    def kronecker_input_factor(self, io, approx="backpack"):
        if io.module.groups != 1:
            raise UnsupportedOperation("Kronecker factors of grouped convolutions")
        if approx == "reduce":
            return gram(self._averaged_patches(io)).div_(io.batch_size)
        scale = io.batch_size * (io.output[0, 0].numel() if approx == "expand" else 1)
        return self._input_gram(io).div_(scale)

    def kronecker_output_factor(self, io, mat, approx="backpack"):
        if approx == "expand":
            # one [O, T] x [T, O] product per column and sample, in the natural layout
            columns = mat.flatten(3).flatten(0, 1)  # [V * N, O, T]
            return torch.matmul(columns, columns.transpose(1, 2)).sum(0)
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
