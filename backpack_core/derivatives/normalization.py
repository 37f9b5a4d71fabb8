"""Batch normalisation: refused in training mode, where samples are not independent."""

from backpack_core.derivatives.base import Derivatives, UnsupportedOperation


class BatchNormDerivatives(Derivatives):
    """``BatchNorm1d/2d/3d``: a registry entry that says why the engine refuses them.

    In training mode one sample's output depends on the whole batch (the batch's mean and
    variance), so per-sample and curvature quantities are undefined. In evaluation mode it
    is an affine map per channel, for which the engine has no derivatives yet.
    """

    reads_input = False
    reads_output = False

    def check(self, io):
        if io.module.training:
            raise UnsupportedOperation(
                f"{type(io.module).__name__} in training mode: there, one sample's output "
                "depends on the whole batch, so per-sample and curvature quantities are "
                "undefined. Call .eval() on it or remove it."
            )
