"""Pooling: ``MaxPoolNd`` (a per-sample selection) and ``AvgPoolNd`` (a fixed linear map)."""

from math import prod

import torch
import torch.nn.functional as F

from backpack_core._torch_private import saved_tensor
from backpack_core.derivatives.base import Derivatives


class MaxPoolDerivatives(Derivatives):
    """Max pooling routes each output to the input position that won.

    Reads only the argmax indices, captured at forward time: autograd keeps them (and the
    input) for its own backward, so the engine keeps neither input nor output.
    """

    channelwise = True
    reads_input = False
    reads_output = False
    # Every output entry is one input entry, so the sum over input positions of
    # ``J_n^T v`` is the sum of ``v`` over output positions, whatever the sample (KFRA).
    sample_independent_position_sums = True

    def __init__(self, spatial_dims: int):
        self.spatial_dims = spatial_dims

    def capture(self, module, input, output):
        # Autograd keeps the argmax indices for its own backward; reuse them. MaxPool1d runs
        # as a 2d pooling over [N, C, 1, L] followed by a squeeze: its indices sit one node up.
        node = output.grad_fn
        saved = saved_tensor(node, "result1")
        if saved is None and type(node).__name__.startswith("Squeeze"):
            saved = saved_tensor(node.next_functions[0][0], "result1")
        if saved is not None and saved.dtype == torch.int64 and saved.numel() == output.numel():
            return saved.reshape(output.shape)
        # Not readable from autograd (another torch version): compute them once, now.
        pool = getattr(F, f"max_pool{self.spatial_dims}d")
        with torch.no_grad():
            _, indices = pool(
                input,
                module.kernel_size,
                module.stride,
                module.padding,
                module.dilation,
                ceil_mode=module.ceil_mode,
                return_indices=True,
            )
        return indices

    def _indices(self, io):
        if "indices" not in io.memo:
            io.memo["indices"] = io.extra.flatten(2)  # [N, C, T_out] into flat input positions
        return io.memo["indices"]

    def jac_t_mat_prod(self, io, mat):
        columns, batch, channels = mat.shape[:3]
        indices = self._indices(io)
        if indices.shape[0] != batch:
            indices = indices[:batch]
        spatial = prod(io.input_shape[2:])
        result = mat.new_zeros(columns, batch, channels, spatial)
        index = indices.unsqueeze(0).expand(columns, -1, -1, -1)
        result.scatter_add_(3, index, mat.flatten(3))
        return result.reshape(columns, batch, *io.input_shape[1:])


class AvgPoolDerivatives(Derivatives):
    """Average pooling is the same linear map for every sample."""

    sample_independent_jacobian = True
    channelwise = True
    reads_input = False
    reads_output = False

    def __init__(self, spatial_dims: int):
        if spatial_dims not in (2, 3):
            raise ValueError("AvgPool derivatives exist for 2d and 3d pooling")
        self.spatial_dims = spatial_dims

    def jac_t_mat_prod(self, io, mat):
        module = io.module
        columns, batch = mat.shape[:2]
        flat = mat.reshape(columns * batch, *mat.shape[2:])
        # The backward kernel only reads the input's shape (and dtype, device, layout): one
        # sample's worth of zeros, broadcast over the columns and samples.
        shape_only = mat.new_zeros(1, *io.input_shape[1:]).expand(
            columns * batch, *io.input_shape[1:]
        )
        dims = self.spatial_dims

        def expand(value):
            return [value] * dims if isinstance(value, int) else list(value)

        backward = getattr(torch.ops.aten, f"avg_pool{dims}d_backward")
        stride = module.stride if module.stride is not None else module.kernel_size
        result = backward(
            flat.contiguous(),
            shape_only,
            expand(module.kernel_size),
            expand(stride),
            expand(module.padding),
            module.ceil_mode,
            module.count_include_pad,
            module.divisor_override,
        )
        return result.reshape(columns, batch, *io.input_shape[1:])
