"""Upsampling (``UpsamplingBilinear2d``, ``UpsamplingNearest2d``, ``Upsample``).

Interpolation is linear in the input and the same for every sample, so its transposed
Jacobian is a vector-Jacobian product of the interpolation at any point.
"""

import torch
import torch.nn.functional as F

from backpack_core.derivatives.base import Derivatives


class UpsampleDerivatives(Derivatives):
    """Transposed Jacobian of ``F.interpolate`` through one vector-Jacobian product."""

    sample_independent_jacobian = True
    channelwise = True
    reads_input = False
    reads_output = False

    def _interpolate(self, module, x):
        return F.interpolate(
            x,
            size=module.size,
            scale_factor=module.scale_factor,
            mode=module.mode,
            align_corners=module.align_corners,
            recompute_scale_factor=getattr(module, "recompute_scale_factor", None),
        )

    def jac_t_mat_prod(self, io, mat):
        columns, batch = mat.shape[:2]
        point = mat.new_zeros(columns * batch, *io.input_shape[1:])
        with torch.enable_grad():
            point.requires_grad_(True)
            out = self._interpolate(io.module, point)
            (result,) = torch.autograd.grad(
                out, point, mat.reshape(columns * batch, *mat.shape[2:])
            )
        return result.reshape(columns, batch, *io.input_shape[1:])
