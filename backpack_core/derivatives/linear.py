"""``torch.nn.Linear``: ``y = x W^T + b`` on inputs ``[N, *, in]``.

In the parameter-layer view (:mod:`backpack_core.derivatives.parameter_layer`) it is a
convolution with one tap and one group whose positions are the extra dimensions ``*``.
"""

import torch
from torch import Tensor

from backpack_core.derivatives.parameter_layer import ParameterLayerDerivatives


class LinearDerivatives(ParameterLayerDerivatives):
    """Derivatives of a linear layer."""

    def jac_t_mat_prod(self, io, mat):
        return mat @ io.module.weight

    def param_jac_t_mat_prod(self, io, name, mat, sum_batch=True):
        if name == "bias" and mat.dim() == 3:
            # [V, N, out] on [N, in] inputs: the bias's Jacobian is the identity (a fresh
            # tensor, as callers may overwrite the result)
            return mat.sum(1) if sum_batch else mat.clone()
        return super().param_jac_t_mat_prod(io, name, mat, sum_batch)

    def positions(self, io):
        return io.input_shape[1:-1].numel()

    def unfold(self, io):
        # [N, *, in] -> [N, 1, in, T]: a view, no copy
        x = io.input
        return x.reshape(x.shape[0], -1, x.shape[-1]).transpose(1, 2).unsqueeze(1)

    def columns(self, io, mat):
        # [V, N, *, out] -> [V, N, 1, out, T]: a view, no copy
        return mat.reshape(*mat.shape[:2], -1, mat.shape[-1]).transpose(2, 3).unsqueeze(2)

    def one_position_columns(self, io, mat):
        return mat.reshape(*mat.shape[:2], 1, mat.shape[-1])

    def one_position_unfold(self, io):
        return io.input.reshape(io.input.shape[0], 1, io.input.shape[-1])

    def tap_counts(self, io):
        return io.input.new_full((1,), float(self.positions(io)))

    def individual_weight_gradients(self, io, grad_output, out=None):
        if io.input.dim() != 2:
            return super().individual_weight_gradients(io, grad_output, out)
        # One outer product per sample, as a broadcast multiply (faster than a product
        # with an inner dimension of one).
        return torch.mul(grad_output.unsqueeze(2), io.input.unsqueeze(1), out=out)

    def input_gram(self, io) -> Tensor:
        rows = io.input.reshape(-1, io.input.shape[-1])
        return rows.T @ rows

    def mean_inputs(self, io) -> Tensor:
        x = io.input
        return x.reshape(x.shape[0], -1, x.shape[-1]).mean(1)
