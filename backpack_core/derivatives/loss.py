"""Losses start the backward pass: factors of their Hessian w.r.t. the network output.

For a reduced loss ``L = c * sum_n l(f_n, y_n)`` (``c = 1`` for ``reduction="sum"``, the
mean's normaliser otherwise) every factor carries ``sqrt(c)``.
"""

from math import prod, sqrt

import torch
from torch import Tensor

from backpack_core._torch_private import saved_tensor
from backpack_core.derivatives.base import LossDerivatives, ModuleIO, UnsupportedOperation


def _check_reduction(io: ModuleIO) -> None:
    reduction = io.module.reduction
    if reduction not in ("mean", "sum"):
        raise UnsupportedOperation(
            f"{io.module} with reduction={reduction!r}: extensions need a reduced loss "
            "('mean' or 'sum')"
        )


class CrossEntropyDerivatives(LossDerivatives):
    """``l(f, y) = -log softmax(f)_y`` with Hessian ``diag(p) - p p^T``, ``p = softmax(f)``.

    Reads the log-probabilities that autograd saves for its own backward (captured at
    forward time, the same storage) and the target; neither the logits nor the loss value
    are kept.
    """

    reads_input = False
    reads_output = False

    def capture(self, module, input, output):
        node = output.grad_fn  # NllLossBackward0 (NllLoss2dBackward0): saved log_softmax(input)
        saved = saved_tensor(node, "self") if type(node).__name__.startswith("NllLoss") else None
        if saved is not None and saved.shape == input.shape:
            return saved
        # Not the graph of class-index targets (or another torch version): compute them.
        with torch.no_grad():
            return torch.log_softmax(input.detach(), dim=1) if input.dim() > 1 else None

    def check(self, io):
        _check_reduction(io)
        module = io.module
        if len(io.input_shape) != 2:
            raise UnsupportedOperation(
                f"{module} on inputs of shape {tuple(io.input_shape)}: only [N, C] logits"
            )
        if module.weight is not None or getattr(module, "label_smoothing", 0.0) != 0.0:
            raise UnsupportedOperation(f"{module} with class weights or label smoothing")
        if io.target.dtype.is_floating_point:
            raise UnsupportedOperation(f"{module} with probability targets (use class indices)")
        if (io.target == module.ignore_index).any():
            raise UnsupportedOperation(
                f"{module}: targets contain ignore_index={module.ignore_index}"
            )

    def _scale(self, io: ModuleIO) -> float:
        return 1.0 / io.batch_size if io.module.reduction == "mean" else 1.0

    def _probabilities(self, io: ModuleIO) -> Tensor:
        if "probs" not in io.memo:
            io.memo["probs"] = io.extra.exp()
        return io.memo["probs"]

    def sqrt_hessian(self, io):
        # Column c of sample n: sqrt(p_c) (e_c - p), whose outer products sum to diag(p) - pp^T.
        p = self._probabilities(io)
        sqrt_p = p.sqrt()
        factor = torch.diag_embed(sqrt_p) - sqrt_p.unsqueeze(2) * p.unsqueeze(1)  # [N, V, C]
        return factor.transpose(0, 1) * sqrt(self._scale(io))

    def sqrt_hessian_sampled(self, io, mc_samples):
        p = self._probabilities(io)
        labels = torch.multinomial(p, mc_samples, replacement=True)  # [N, M]
        onehot = torch.nn.functional.one_hot(labels, p.shape[1]).to(p.dtype)  # [N, M, C]
        factor = (p.unsqueeze(1) - onehot).transpose(0, 1)  # [M, N, C]
        return factor * sqrt(self._scale(io) / mc_samples)

    def sum_hessian(self, io):
        p = self._probabilities(io)
        return (torch.diag(p.sum(0)) - p.T @ p) * self._scale(io)


class MSELossDerivatives(LossDerivatives):
    """``l(f, y) = ||f - y||^2`` with Hessian ``2 I``."""

    reads_output = False  # the loss value; the input's dtype and device and the target

    def check(self, io):
        _check_reduction(io)
        if io.target.shape != io.input_shape:
            raise UnsupportedOperation(
                f"{io.module}: target shape {tuple(io.target.shape)} differs from input "
                f"shape {tuple(io.input_shape)} (broadcasting is not supported)"
            )

    def _scale(self, io: ModuleIO) -> float:
        return 1.0 / io.input_shape.numel() if io.module.reduction == "mean" else 1.0

    def sqrt_hessian(self, io):
        batch, features = io.batch_size, prod(io.input_shape[1:])
        eye = torch.eye(features, dtype=io.input.dtype, device=io.input.device)
        factor = eye.unsqueeze(1).expand(features, batch, features)
        factor = factor.reshape(features, batch, *io.input_shape[1:])
        return factor * sqrt(2 * self._scale(io))

    def sqrt_hessian_sampled(self, io, mc_samples):
        noise = torch.randn(
            mc_samples, *io.input_shape, dtype=io.input.dtype, device=io.input.device
        )
        return noise * sqrt(2 * self._scale(io) / mc_samples)

    def sum_hessian(self, io):
        features = prod(io.input_shape[1:])
        eye = torch.eye(features, dtype=io.input.dtype, device=io.input.device)
        return eye * (2 * self._scale(io) * io.batch_size)
