"""First-order extensions: quantities of the individual gradients.

``g_n`` denotes the ``n``-th summand of the reduced loss's gradient (``1/N``-scaled for a
mean), so that ``sum_n g_n`` is ``p.grad``. Each quantity is read off the individual
gradients when the pass computes them anyway (``BatchGrad`` active); otherwise, for the
weight of a layer seen as a grouped convolution over positions (``ctx.view``: Linear and
convolutions), by a factorised route that never forms them when that is cheaper. The
individual weight gradient of sample ``n`` and group ``g`` is ``sum_t s_t u_t^T`` with
``s`` the output gradient and ``u`` the unfolded input at position ``t``.

The building blocks are functions of the :class:`~backpack_core.extensions.base.ModuleContext`
(:func:`batch_l2`, :func:`sum_grad_squared`, :func:`batch_dot`, and the context's own
``individual_gradients`` and ``gradient``), memoised per module call, so that a new
extension built on them shares the work with the extensions that run beside it.
"""

import torch
from torch import Tensor, einsum

from backpack_core.extensions.base import BackpropExtension, ModuleContext
from backpack_core.extensions.curvature import squared_outer_products
from backpack_core.reductions import row_gram, squared_norms


class BatchGrad(BackpropExtension):
    """Individual gradients: ``p.grad_batch`` of shape ``[N, *p.shape]``.

    Args:
        reuse_buffer: Write each step's result into the tensor that the previous step left
            in ``p.grad_batch`` (same shape, dtype and device) instead of allocating a new
            one: a large tensor allocated afresh every step costs page faults (on
            mnist_mlp at batch 128, 0.67 GB per step). Any reference kept to an earlier
            ``p.grad_batch`` then changes with it; copy what you keep.
    """

    savefield = "grad_batch"
    per_sample = True
    stores_individual_gradients = True

    def __init__(self, reuse_buffer: bool = False):
        if not isinstance(reuse_buffer, bool):
            raise ValueError(f"reuse_buffer must be True or False, got {reuse_buffer!r}")
        self.reuse_buffer = reuse_buffer

    def compute(self, ctx, name):
        return ctx.individual_gradients(name)

    def __repr__(self) -> str:
        return "BatchGrad(reuse_buffer=True)" if self.reuse_buffer else "BatchGrad()"


def _factors(ctx: ModuleContext, name: str):
    """``(s, u)`` of a view's weight, else ``None``.

    ``s [N, G, O/G, T]`` and ``u [N, G, C/G*K, T]``; with one position (``T = 1``) without
    the position axis, ``[N, G, O/G]`` and ``[N, G, C/G*K]``.
    """
    if name != "weight" or ctx.view is None:
        return None
    view, columns = ctx.view, ctx.grad_output.unsqueeze(0)
    if view.positions == 1:
        return view.one_position_columns(columns)[0], view.one_position_unfolded()
    return view.columns(columns)[0], view.unfolded()


def _gram_form_is_cheaper(s: Tensor, u: Tensor) -> bool:
    """``sum_{t,t'} (s_t . s_t')(u_t . u_t')`` against forming ``sum_t s_t u_t^T``."""
    out_features, in_features = s.shape[2], u.shape[2]
    positions = s.shape[3] if s.dim() == 4 else 1
    return positions * (out_features + in_features) < out_features * in_features


def _one_position_column_norms(ctx: ModuleContext) -> Tensor:
    """``||s_n||^2`` per sample and group, ``[N, G]``, of a one-position layer (memoised)."""
    return ctx.memo("one_position_column_norms", lambda: squared_norms(_factors(ctx, "weight")[0]))


def batch_l2(ctx: ModuleContext, name: str) -> Tensor:
    """Squared norms ``[N]`` of the individual gradients (memoised per module call)."""

    def compute():
        individual = ctx.individual_gradients_at_hand(name)
        one_position = ctx.view is not None and ctx.view.positions == 1
        if individual is None and name == "bias" and one_position:
            # the individual bias gradients of a one-position layer are its columns
            return _one_position_column_norms(ctx).sum(1)
        factors = _factors(ctx, name) if individual is None else None
        if factors is not None and _gram_form_is_cheaper(*factors):
            s, u = factors
            if s.dim() == 3:  # one position: ||s u^T||^2 = ||s||^2 ||u||^2
                return (_one_position_column_norms(ctx) * squared_norms(u)).sum(1)
            s_gram = einsum("ngot,ngos->ngts", s, s)
            u_gram = einsum("ngct,ngcs->ngts", u, u)
            return (s_gram * u_gram).sum((1, 2, 3))
        if individual is None:
            individual = ctx.individual_gradients(name)
        return squared_norms(individual.flatten(1))

    return ctx.memo(("batch_l2", name), compute)


class BatchL2Grad(BackpropExtension):
    """Squared norms of the individual gradients: ``p.batch_l2`` of shape ``[N]``."""

    savefield = "batch_l2"
    per_sample = True

    def compute(self, ctx, name):
        return batch_l2(ctx, name)


def sum_grad_squared(ctx: ModuleContext, name: str) -> Tensor:
    """``sum_n g_n^2`` ``[*p.shape]`` (memoised per module call)."""

    def compute():
        individual = ctx.individual_gradients_at_hand(name)
        factors = _factors(ctx, name) if individual is None else None
        if factors is not None and factors[0].dim() == 3:
            # one position: sum_n (s_n u_n^T)^2 = (s^2)^T (u^2), no [N, out, in] tensor
            s, u = factors
            result = squared_outer_products(s.square(), u.square(), sum_batch=True)
            return result.reshape(ctx.io.module.weight.shape)
        if individual is None:
            return ctx.individual_gradients_to_overwrite(name).square_().sum(0)
        # a reduction without a temporary as large as the individual gradients
        return torch.linalg.vector_norm(individual, dim=0).square()

    return ctx.memo(("sum_grad_squared", name), compute)


class SumGradSquared(BackpropExtension):
    """Sum of the squared individual gradients: ``p.sum_grad_squared``, shaped like ``p``."""

    savefield = "sum_grad_squared"

    def compute(self, ctx, name):
        return sum_grad_squared(ctx, name)


class Variance(BackpropExtension):
    """Variance of the individual gradients: ``p.variance = mean_n g_n^2 - (mean_n g_n)^2``.

    Computed by this formula (BackPACK's definition), which cancels: where the individual
    gradients nearly agree, its round-off (a few units of the dtype's epsilon times
    ``mean_n g_n^2``) can exceed the variance itself. Use float64 when such entries matter.
    """

    savefield = "variance"

    def compute(self, ctx, name):
        batch = ctx.batch_size
        return sum_grad_squared(ctx, name) / batch - (ctx.gradient(name) / batch).pow(2)


def batch_dot(ctx: ModuleContext, name: str) -> Tensor:
    """Pairwise dot products ``[N, N]`` of the individual gradients (memoised per call)."""

    def compute():
        individual = ctx.individual_gradients_at_hand(name)
        factors = _factors(ctx, name) if individual is None else None
        if factors is not None and factors[0].dim() == 3:
            # one position: (s_i u_i^T) . (s_j u_j^T) = (s_i . s_j)(u_i . u_j), per group
            s = factors[0].transpose(0, 1)  # [G, N, O/G]
            u = factors[1].transpose(0, 1)  # [G, N, C/G*K]
            return (torch.bmm(s, s.transpose(1, 2)) * torch.bmm(u, u.transpose(1, 2))).sum(0)
        if individual is None:
            individual = ctx.individual_gradients(name)
        return row_gram(individual.flatten(1))

    return ctx.memo(("batch_dot", name), compute)


class BatchDotGrad(BackpropExtension):
    """Pairwise dot products of individual gradients: ``p.batch_dot``, ``[N, N]``.

    ``p.batch_dot[i, j] = g_i . g_j``.
    """

    savefield = "batch_dot"

    def compute(self, ctx, name):
        return batch_dot(ctx, name)
