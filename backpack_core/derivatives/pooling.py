"""Pooling: ``MaxPoolNd`` (a per-sample selection) and ``AvgPoolNd`` (a fixed linear map)."""

import torch
import torch.nn.functional as F

from backpack_core._torch_private import saved_tensor
from backpack_core.derivatives.base import Derivatives


class MaxPoolDerivatives(Derivatives):
    """Max pooling routes each output to the input position that won."""

    channelwise = True

    def __init__(self, spatial_dims: int):
        self.spatial_dims = spatial_dims

    def capture(self, module, input, output):
        # Autograd keeps the argmax indices for its own backward; reuse them.
        saved = saved_tensor(output.grad_fn, "result1")
        if saved is not None and saved.shape == output.shape:
            return saved
        return None

    def _indices(self, io):
        if "indices" not in io.memo and io.extra is not None:
            io.memo["indices"] = io.extra.flatten(2)
        if "indices" not in io.memo:
            module = io.module
            pool = getattr(F, f"max_pool{self.spatial_dims}d")
            _, indices = pool(
                io.input,
                module.kernel_size,
                module.stride,
                module.padding,
                module.dilation,
                ceil_mode=module.ceil_mode,
                return_indices=True,
            )
            io.memo["indices"] = indices.flatten(2)  # [N, C, T_out] into flat input positions
        return io.memo["indices"]

    def jac_t_mat_prod(self, io, mat):
        columns, batch, channels = mat.shape[:3]
        indices = self._indices(io)
        if indices.shape[0] != batch:
            indices = indices[:batch]
        spatial = io.input[0, 0].numel()
        result = mat.new_zeros(columns, batch, channels, spatial)
        index = indices.unsqueeze(0).expand(columns, -1, -1, -1)
        result.scatter_add_(3, index, mat.flatten(3))
        return result.reshape(columns, batch, *io.input.shape[1:])

    def ea_channel_jac_t_mat_jac_prod(self, io, mat):
        # Each output position takes one input entry per channel: the spatial sum passes.
        return mat * io.output[0, 0].numel() / io.input[0, 0].numel()


class AvgPoolDerivatives(Derivatives):
    """Average pooling is the same linear map for every sample."""

    sample_independent_jacobian = True
    channelwise = True

    def __init__(self, spatial_dims: int):
        if spatial_dims not in (2, 3):
            raise ValueError("AvgPool derivatives exist for 2d and 3d pooling")
        self.spatial_dims = spatial_dims

    def jac_t_mat_prod(self, io, mat):
        module = io.module
        columns, batch = mat.shape[:2]
        flat = mat.reshape(columns * batch, *mat.shape[2:])
        # The backward kernel only reads the input's shape: a broadcast view avoids memory.
        shape_only = io.input[:1].expand(columns * batch, *io.input.shape[1:])
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
        return result.reshape(columns, batch, *io.input.shape[1:])

    def ea_channel_jac_t_mat_jac_prod(self, io, mat):
        # Each output position averages entries of its window: the spatial sum passes
        # (up to windows cut by padding).
        return mat * io.output[0, 0].numel() / io.input[0, 0].numel()
