"""``BatchCosineGrad``: pairwise cosine similarities of individual gradients.

The example extension that the developer manual's walkthrough ("Writing your own
extension") builds. With ``g_i`` the ``i``-th individual gradient of a parameter (the
``i``-th summand of the reduced loss's gradient, as ``BatchGrad`` stores it),

    p.batch_cosine[i, j] = g_i . g_j / (|g_i| |g_j|),

an ``[N, N]`` matrix with ones on the diagonal (zero rows for samples whose gradient
vanishes). The ``1/N`` scale of a mean reduction cancels, so the value is the same for
``reduction="mean"`` and ``"sum"``.

The file keeps the walkthrough's stages as separate classes, so that each step of the
manual can be run as it is described there.
"""

import torch

from backpack_core.extensions import BackpropExtension
from backpack_core.extensions.firstorder import batch_dot


class BatchCosineGradScaffold(BackpropExtension):
    """Stage 1 of the walkthrough: a name and an attribute, no computation yet."""

    savefield = "batch_cosine"


class BatchCosineGradDummy(BackpropExtension):
    """Stage 2: the module rule is wired, but returns a placeholder."""

    savefield = "batch_cosine"

    def compute(self, ctx, name):
        """Print that the rule ran and return a placeholder."""
        print(f"Executing BatchCosineGradDummy for {name} of {type(ctx.io.module).__name__}")
        return 42


class BatchCosineGrad(BackpropExtension):
    """Pairwise cosine similarities of the individual gradients: ``p.batch_cosine``, ``[N, N]``.

    Computed from the Gram matrix ``K = [g_i . g_j]`` that ``BatchDotGrad`` stores, through
    the same memoised building block; for a layer without weight sharing (a Linear layer
    on ``[N, in]``) it is formed without the individual gradients ``[N, *p.shape]``.
    """

    savefield = "batch_cosine"

    def compute(self, ctx, name):
        """Normalise the Gram matrix of the individual gradients of parameter ``name``.

        Args:
            ctx: The module call (see ``backpack_core.extensions.base.ModuleContext``).
            name: The parameter's name in the module (``"weight"``, ``"bias"``).

        Returns:
            ``[N, N]`` cosine similarities.
        """
        gram = batch_dot(ctx, name)  # [N, N]
        norms = gram.diagonal().clamp(min=0).sqrt()  # [N]
        tiny = torch.finfo(gram.dtype).tiny
        return gram / torch.outer(norms, norms).clamp(min=tiny)
