"""``torch.nn.Conv1d/2d/3d``, written once for any number of spatial dimensions.

Parameter derivatives use the unfolded input ("im2col"): ``U_n`` of shape
``[groups, C_in/groups * prod(kernel), T]`` with ``T`` output positions, so that the output
of group ``g`` is ``W_g U_n``. The input derivative is a transposed convolution.
"""

import itertools
from math import prod
from typing import List, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from backpack_core import config
from backpack_core.derivatives.base import UnsupportedOperation
from backpack_core.derivatives.io import ModuleIO
from backpack_core.derivatives.parameter_layer import ParameterLayerDerivatives
from backpack_core.reductions import row_gram

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


class ConvolutionDerivatives(ParameterLayerDerivatives):
    """Derivatives of ``ConvNd`` layers (zero padding, any stride/dilation/groups)."""

    def __init__(self, spatial_dims: int):
        self.spatial_dims = spatial_dims

    def groups(self, io):
        return io.module.groups

    def positions(self, io):
        return io.output_shape[2:].numel()

    def kernel_taps(self, io):
        return prod(io.module.kernel_size)

    def columns(self, io, mat):
        groups = io.module.groups
        return mat.reshape(*mat.shape[:2], groups, mat.shape[2] // groups, -1)

    def tap_counts(self, io):
        module, counts = io.module, None
        pairs = _padding_pairs(module)
        for axis, (k, s, d) in enumerate(zip(module.kernel_size, module.stride, module.dilation)):
            size, outputs = io.input_shape[2 + axis], io.output_shape[2 + axis]
            reads = _tap_reads(k, s, d, pairs[axis][0], outputs, io.input.device)
            here = ((reads >= 0) & (reads < size)).sum(1).to(io.input.dtype)  # [k]
            counts = here if counts is None else torch.outer(counts, here).flatten()
        return counts

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

    def individual_weight_gradients(self, io, grad_output, out=None):
        method = config.conv_individual_gradients()
        if method == "auto":
            method = _individual_gradients_method(io)
        if method == "grouped":
            return self._individual_gradients_grouped(io, grad_output, out)
        return super().individual_weight_gradients(io, grad_output, out)

    def _individual_gradients_grouped(self, io, grad_output, out=None):
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

    # ------------------------------------------------------------------ input Gram matrix
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
        per_sample = features * self.positions(io)
        budget = _PATCH_BUFFER_ELEMENTS * (16 if x.is_cuda else 1)
        chunk = max(1, min(batch, budget // max(per_sample, 1)))
        result, buffer = None, None
        for start in range(0, batch, chunk):
            part = x.narrow(1 + dims, start, min(chunk, batch - start))
            if buffer is None or buffer.shape != part.shape:
                buffer = torch.empty(part.shape, dtype=x.dtype, device=x.device)
            buffer.copy_(part)
            rows = buffer.view(features, -1)
            result = row_gram(rows, out=result)
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
        channels, outputs, padded = x.shape[1], io.output_shape[2:], x.shape[2:]
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

    def mean_inputs(self, io: ModuleIO) -> Tensor:
        """The unfolded input averaged over the output positions, ``[N, C_in * prod(kernel)]``.

        Without unfolding: along each spatial dimension, kernel tap ``k`` of output position
        ``t`` reads padded input index ``s t + d k``, so the sum over positions is one small
        matrix ``[K, I]`` per dimension (how often tap ``k`` reads input index ``i``) applied
        to the unpadded input (padding only adds zeros).
        """
        module, x = io.module, io.input
        pairs = _padding_pairs(module)
        positions = self.positions(io)
        for axis, (k, s, d) in enumerate(zip(module.kernel_size, module.stride, module.dilation)):
            size, before = x.shape[2], pairs[axis][0]
            reads = _tap_reads(k, s, d, before, io.output_shape[2 + axis], x.device)  # [K, O]
            counts = torch.zeros(k, size, dtype=x.dtype, device=x.device)
            inside = (reads >= 0) & (reads < size)
            rows = torch.arange(k, device=x.device).unsqueeze(1).expand_as(reads)
            counts.index_put_((rows[inside], reads[inside]), counts.new_ones(()), accumulate=True)
            # contract the first remaining spatial axis; its kernel axis goes last
            x = torch.tensordot(x, counts, dims=([2], [1]))
        return x.reshape(x.shape[0], -1).div_(positions)

    def input_gram(self, io: ModuleIO) -> Tensor:
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
        patch_cost = (channels * taps) ** 2 * batch * self.positions(io) / 2
        if module.groups != 1:
            return super().input_gram(io)
        if (
            all(s == 1 for s in module.stride)
            and channels >= 16
            and 1.5 * shift_cost < patch_cost
            and positions * channels**2 <= 8 * _PATCH_BUFFER_ELEMENTS
        ):
            return self._shift_gram(io)
        return self._patch_gram(io)


def _tap_reads(kernel: int, stride: int, dilation: int, before: int, outputs: int, device):
    """``[kernel, outputs]``: the unpadded input index each tap reads at each output position.

    Along one spatial dimension, tap ``k`` of output position ``t`` reads padded index
    ``stride * t + dilation * k``; indices outside ``[0, size)`` are padding.
    """
    taps = torch.arange(kernel, device=device).unsqueeze(1) * dilation - before
    return taps + torch.arange(outputs, device=device) * stride


def _individual_gradients_method(io: ModuleIO) -> str:
    """The kernel for per-sample weight gradients by a fixed rule of the layer's shape.

    The grouped convolution wins only on large feature maps with many input features per
    patch; the unfolded products everywhere else. Measured on CPU with one thread on a quiet
    machine, the unfolded time over the grouped one: 1.68 on allcnnc's 96-channel 32x32
    layer (T = 1024 output positions, C K = 864 features per patch), 1.00-1.06 with
    (T, C K) = (256, 864) and (196, 800) (allcnnc's strided layer, mnist_2c2d's second),
    0.42-0.91 on every other DeepOBS conv layer (T <= 121, or C K <= 75). On a machine
    loaded by other jobs the grouped form did better (up to 1.85 against 1.43 at
    (784, 75)), so the rule leans to the unfolded form only where it clearly wins or ties.
    Override with :func:`backpack_core.set_conv_individual_gradients`.
    """
    module = io.module
    patch = module.weight[0].numel()  # C_in / groups * prod(kernel)
    positions = io.output_shape[2:].numel()
    return "grouped" if positions >= 512 and patch >= 256 else "unfold"
