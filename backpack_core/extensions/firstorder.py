"""First-order extensions: quantities of the individual gradients.

``g_n`` denotes the ``n``-th summand of the reduced loss's gradient (``1/N``-scaled for a
mean), so that ``sum_n g_n`` is ``p.grad``.
"""

from backpack_core.extensions.base import BackpropExtension


class BatchGrad(BackpropExtension):
    """Individual gradients: ``p.grad_batch`` of shape ``[N, *p.shape]``."""

    savefield = "grad_batch"
    per_sample = True
    stores_individual_gradients = True

    def compute(self, ctx, name):
        return ctx.batch_grad(name)


class BatchL2Grad(BackpropExtension):
    """Squared norms of the individual gradients: ``p.batch_l2`` of shape ``[N]``."""

    savefield = "batch_l2"
    per_sample = True

    def compute(self, ctx, name):
        return ctx.batch_l2(name)


class SumGradSquared(BackpropExtension):
    """Sum of the squared individual gradients: ``p.sum_grad_squared``, shaped like ``p``."""

    savefield = "sum_grad_squared"

    def compute(self, ctx, name):
        return ctx.sum_grad_squared(name)


class Variance(BackpropExtension):
    """Variance of the individual gradients: ``p.variance = mean_n g_n^2 - (mean_n g_n)^2``."""

    savefield = "variance"

    def compute(self, ctx, name):
        batch = ctx.batch_size
        return ctx.sum_grad_squared(name) / batch - (ctx.sum_grad(name) / batch).pow(2)


class BatchDotGrad(BackpropExtension):
    """Pairwise dot products of individual gradients: ``p.batch_dot``, ``[N, N]``.

    ``p.batch_dot[i, j] = g_i . g_j``.
    """

    savefield = "batch_dot"

    def compute(self, ctx, name):
        return ctx.batch_dot(name)
