"""Modules that only move entries around: ``Flatten``, ``ZeroPad2d``, ``Identity``."""

import torch.nn.functional as F

from backpack_core.derivatives.base import Derivatives


class FlattenDerivatives(Derivatives):
    """A reshape; also serves any module whose output is a reshaped input (shapes only)."""

    sample_independent_jacobian = True
    reshapes_only = True
    reads_input = False
    reads_output = False

    def jac_t_mat_prod(self, io, mat):
        return mat.reshape(*mat.shape[:2], *io.input_shape[1:])


class ZeroPadDerivatives(Derivatives):
    """Zero padding; its transposed Jacobian crops (a negative pad). Shapes only."""

    sample_independent_jacobian = True
    channelwise = True
    reads_input = False
    reads_output = False

    def capture(self, module, input, output):
        # DeepOBS's tf-"same" padding sets ``module.padding`` in a forward pre-hook, so the
        # padding of *this* call is kept rather than read again at backward time.
        return tuple(module.padding)

    def jac_t_mat_prod(self, io, mat):
        left, right, top, bottom = io.extra
        if min(io.extra) >= 0:
            # Cropping the padding off is a view: no copy of the V x N columns.
            height, width = mat.shape[-2], mat.shape[-1]
            return mat[..., top : height - bottom, left : width - right]
        columns, batch = mat.shape[:2]
        crop = [-amount for amount in io.extra]
        flat = F.pad(mat.reshape(columns * batch, *mat.shape[2:]), crop)
        return flat.reshape(columns, batch, *io.input_shape[1:])


class IdentityDerivatives(FlattenDerivatives):
    """The identity (usually never reached: the engine skips modules that return their input)."""

    reshapes_only = False
    channelwise = True
