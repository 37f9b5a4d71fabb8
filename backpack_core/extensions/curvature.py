"""Curvature extensions: diagonals of the GGN and the Hessian, and Kronecker factors.

All of them read a quantity that the loss starts and every module passes on (see
:mod:`backpack_core.quantities`); they differ only in which one, and in what they make of
it at a parameter. For the weight of a layer seen as a grouped convolution over positions
(``ctx.view``: Linear and convolutions) they are products of the backpropagated columns
``S`` ``[V, N, G, O/G, T]`` and the unfolded input ``U`` ``[N, G, C/G*K, T]``, written here
once; any other parameter gets them from its module's parameter Jacobian products.
"""

import torch
from torch import Tensor

from backpack_core.derivatives.base import UnsupportedOperation
from backpack_core.extensions.base import BackpropExtension, ModuleContext
from backpack_core.quantities import (
    HessianFactors,
    SqrtGGNExact,
    SqrtGGNMonteCarlo,
)

# Above this many bytes an intermediate per-sample-per-column tensor is computed in chunks
# over the columns, so that the exact GGN of a wide net does not run out of memory.
CHUNK_BYTES = 256 * 2**20


def _check_mc_samples(mc_samples) -> int:
    if isinstance(mc_samples, bool) or not isinstance(mc_samples, int) or mc_samples < 1:
        raise ValueError(f"mc_samples must be a positive integer, got {mc_samples!r}")
    return mc_samples


class _MonteCarlo:
    """The sampled GGN factor: ``mc_samples`` columns per data point."""

    def __init__(self, mc_samples: int = 1):
        self.mc_samples = _check_mc_samples(mc_samples)

    def quantities(self):
        return (SqrtGGNMonteCarlo(self.mc_samples),)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(mc_samples={self.mc_samples})"


def diagonal_curvature(ctx: ModuleContext, name: str, factor: Tensor, sum_batch: bool) -> Tensor:
    """Diagonal of ``sum_v (J^T s_v)(J^T s_v)^T`` w.r.t. a parameter, ``J`` its Jacobian.

    Args:
        ctx: The module call.
        name: The parameter's name.
        factor: ``[V, N, *out]``, a symmetric factor of the curvature at the output.
        sum_batch: Sum over the samples.

    Returns:
        ``[*p.shape]`` if ``sum_batch`` else ``[N, *p.shape]``.
    """
    param = getattr(ctx.io.module, name)
    columns, batch = factor.shape[:2]
    per_column = batch * param.numel() * factor.element_size()
    chunk = max(1, CHUNK_BYTES // max(per_column, 1))
    view = ctx.view if name == "weight" else None
    if view is not None and view.positions == 1:
        # (s u^T)^2 summed over columns = (s^2)(u^2)^T: no [V, N, out, in] tensor
        s, u = view.one_position_columns(factor), view.one_position_unfolded()
        result = squared_outer_products(s.square().sum(0), u.square(), sum_batch)
        return result.reshape(*result.shape[: 0 if sum_batch else 1], *param.shape)
    result = None
    for start in range(0, columns, chunk):
        part = factor[start : start + chunk]
        if view is None:
            squared = ctx.derivatives.param_jac_t_mat_prod(ctx.io, name, part, False).square_()
            squared = squared.sum(0)
        else:
            squared = _squared_weight_products(view, part)
        result = squared if result is None else result.add_(squared)
    result = result.sum(0) if sum_batch else result
    return result.reshape(*result.shape[: 0 if sum_batch else 1], *param.shape)


def squared_outer_products(s2: Tensor, u2: Tensor, sum_batch: bool) -> Tensor:
    """``s2_n u2_n^T`` per sample and group, ``[N, G, O/G, C/G*K]``, or summed ``[G, ...]``.

    ``s2 [N, G, O/G]`` and ``u2 [N, G, C/G*K]`` (squares, for the one-position layers). The
    sum is one batched product over the groups (an einsum of the same costs about 15 us
    more per call, which counts on a 0.3 ms step).
    """
    if sum_batch:
        return torch.bmm(s2.permute(1, 2, 0), u2.transpose(0, 1))
    return s2.unsqueeze(3) * u2.unsqueeze(2)


def _squared_weight_products(view, factor: Tensor) -> Tensor:
    """``sum_v (sum_t s_vt u_t^T)^2`` per sample, ``[N, G, O/G, C/G*K]``."""
    s = view.columns(factor)  # [v, N, G, O/G, T]
    columns, batch, groups, positions = s.shape[0], s.shape[1], s.shape[2], s.shape[4]
    unfolded = view.unfolded().flatten(0, 1).transpose(1, 2)  # [N*G, T, C/G*K]
    # [N*G, v*O/G, T] @ [N*G, T, C/G*K]: one product per sample and group, squared in place
    # (fresh large tensors cost page faults)
    left = s.permute(1, 2, 0, 3, 4).reshape(batch * groups, -1, positions)
    products = torch.bmm(left, unfolded).square_()
    return products.view(batch, groups, columns, -1, unfolded.shape[-1]).sum(2)


class _DiagGGN(BackpropExtension):
    sum_batch = True

    def compute(self, ctx, name):
        factor = ctx.quantities[self.quantities()[0].key]
        return diagonal_curvature(ctx, name, factor, self.sum_batch)


class DiagGGNExact(_DiagGGN):
    """Diagonal of the generalised Gauss-Newton matrix: ``p.diag_ggn_exact``, shaped like ``p``.

    Backpropagates ``C`` columns per sample for a ``C``-dimensional network output (for
    CIFAR-100, 100): memory and time grow with ``C``; the Monte-Carlo variant needs
    ``mc_samples`` columns instead.
    """

    savefield = "diag_ggn_exact"

    def quantities(self):
        return (SqrtGGNExact(),)


class BatchDiagGGNExact(DiagGGNExact):
    """Per-sample summands of the GGN diagonal: ``p.diag_ggn_exact_batch``, ``[N, *p.shape]``."""

    savefield = "diag_ggn_exact_batch"
    per_sample = True
    sum_batch = False


class DiagGGNMC(_MonteCarlo, _DiagGGN):
    """Monte-Carlo estimate of the GGN diagonal: ``p.diag_ggn_mc``, shaped like ``p``.

    Args:
        mc_samples: Samples drawn from the model's predictive distribution per data point.
            Random numbers come from torch's generator (``torch.manual_seed`` reproduces).
    """

    savefield = "diag_ggn_mc"


class BatchDiagGGNMC(DiagGGNMC):
    """Per-sample summands of the MC GGN diagonal: ``p.diag_ggn_mc_batch``, ``[N, *p.shape]``."""

    savefield = "diag_ggn_mc_batch"
    per_sample = True
    sum_batch = False


class DiagHessian(BackpropExtension):
    """Diagonal of the Hessian: ``p.diag_h``, shaped like ``p``.

    Exact, also on residual nets: the GGN term plus the residual terms of modules with a
    non-zero second derivative (Sigmoid, Tanh, and through the autograd fallback any
    elementwise module such as ELU or GELU). Each such module adds as many columns per
    sample as it has features.
    """

    savefield = "diag_h"
    sum_batch = True

    def quantities(self):
        return (HessianFactors(),)

    def compute(self, ctx, name):
        result = None
        for factor, sign in ctx.quantities[HessianFactors.key].values():
            part = diagonal_curvature(ctx, name, factor, self.sum_batch)
            result = part * sign if result is None else result + part * sign
        return result


class BatchDiagHessian(DiagHessian):
    """Per-sample summands of the Hessian diagonal: ``p.diag_h_batch``, ``[N, *p.shape]``."""

    savefield = "diag_h_batch"
    per_sample = True
    sum_batch = False


#: The conventions for the Kronecker factors of layers with weight sharing (convolutions, and
#: Linear layers on inputs with extra dimensions), see :class:`KFAC`.
KFAC_APPROXIMATIONS = ("backpack", "expand", "reduce")


def _check_kfac_approx(kfac_approx) -> str:
    if not isinstance(kfac_approx, str) or kfac_approx not in KFAC_APPROXIMATIONS:
        choices = ", ".join(repr(choice) for choice in KFAC_APPROXIMATIONS)
        raise ValueError(f"kfac_approx must be one of {choices}, got {kfac_approx!r}")
    return kfac_approx


def kronecker_view(ctx: ModuleContext):
    """The weight-layer view of a call that has Kronecker factors, else a refusal.

    Raises:
        UnsupportedOperation: For a module that is not a weight layer, and for grouped
            convolutions.
    """
    view = ctx.view
    if view is None:
        raise UnsupportedOperation(
            f"{type(ctx.io.module).__name__} has no Kronecker factorisation (only Linear "
            "and convolution layers have one)"
        )
    if view.groups != 1:
        raise UnsupportedOperation("Kronecker factors of grouped convolutions")
    return view


def output_factor(ctx: ModuleContext, factor: Tensor, kfac_approx: str) -> Tensor:
    """``B`` ``[out, out]`` from the backpropagated columns ``[V, N, *out]`` (see :class:`KFAC`)."""
    view = kronecker_view(ctx)
    s = view.columns(factor)[:, :, 0]  # [V, N, O, T]
    out_features = s.shape[2]
    if kfac_approx == "expand" and view.positions > 1:
        rows = s.transpose(2, 3)  # [V, N, T, O]
        if rows.is_contiguous():  # e.g. Linear over positions: one product
            rows = rows.reshape(-1, out_features)
            return rows.T @ rows
        # one [O, T] x [T, O] product per column and sample, in the natural layout
        flat = s.flatten(0, 1)
        return torch.matmul(flat, flat.transpose(1, 2)).sum(0)
    summed = (s[..., 0] if view.positions == 1 else s.sum(3)).reshape(-1, out_features)
    return summed.T @ summed


def input_factor(ctx: ModuleContext, kfac_approx: str) -> Tensor:
    """``A`` ``[in, in]`` over the unfolded input (see :class:`KFAC`)."""
    view = kronecker_view(ctx)
    batch, positions = view.batch_size, view.positions
    if kfac_approx == "reduce" and positions > 1:
        mean = view.mean_inputs()
        return (mean.T @ mean).div_(batch)
    return view.input_gram().div_(batch * (positions if kfac_approx == "expand" else 1))


class KroneckerExtension(BackpropExtension):
    """``[B, A]`` for a weight (``B`` over outputs, ``A`` over inputs), ``[B]`` for a bias.

    ``B kron A`` approximates the weight's GGN block; see :class:`KFAC` for how the factors
    treat the positions of a layer with weight sharing.
    """

    kfac_approx = "backpack"

    def output_factor(self, ctx):
        factor = ctx.quantities[self.quantities()[0].key]
        return output_factor(ctx, factor, self.kfac_approx)

    def compute(self, ctx, name):
        b = ctx.memo(("kron_B", self.savefield, self.kfac_approx), lambda: self.output_factor(ctx))
        if name == "bias":
            return [b]
        a = ctx.memo(("kron_A", self.kfac_approx), lambda: input_factor(ctx, self.kfac_approx))
        return [b, a]


class KFLR(KroneckerExtension):
    """Kronecker factors of the exact GGN (Botev et al., 2017): ``p.kflr``.

    Args:
        kfac_approx: How positions of layers with weight sharing enter the factors:
            ``"backpack"`` (default), ``"expand"`` or ``"reduce"``, see :class:`KFAC`.
            With ``"expand"``/``"reduce"`` the factors equal curvlinops'
            ``KFACLinearOperator`` with ``fisher_type="type-2"``.

    Raises:
        ValueError: If ``kfac_approx`` is not one of these.
    """

    savefield = "kflr"

    def __init__(self, kfac_approx: str = "backpack"):
        self.kfac_approx = _check_kfac_approx(kfac_approx)

    def quantities(self):
        return (SqrtGGNExact(),)

    def __repr__(self) -> str:
        return f"KFLR(kfac_approx={self.kfac_approx!r})"


class KFAC(_MonteCarlo, KroneckerExtension):
    """Kronecker factors of the Monte-Carlo GGN (Martens & Grosse, 2015): ``p.kfac``.

    A weight gets ``[B, A]`` (``B``: ``[out, out]``; ``A``: ``[in, in]``, for a convolution
    over the unfolded input, ``C_in * prod(kernel)``), a bias ``[B]``. With ``x`` the layer's
    input (a convolution: its unfolded patches) and ``s`` the columns of the backpropagated
    GGN factor w.r.t. the layer's output (they carry the loss's reduction scale, ``1/N`` for
    a mean), for ``N`` samples and ``T`` positions that share the weight (a convolution's
    output positions; the extra dimensions of a Linear layer's ``[N, *, in]`` input):

    - ``"backpack"`` (default, BackPACK 1.7's convention): ``A = (1/N) sum_{n,t} x x^T``,
      ``B = sum_{v,n} (sum_t s_t)(sum_t s_t)^T``. This mixes the two below (``A`` of
      expand times ``T``, ``B`` of reduce), so ``B kron A`` overestimates a layer's GGN
      block by about ``T``: on one conv layer ``tr(B) tr(A)`` over the trace of the exact
      block measured 15.9 with 16 output positions and 258 with 256 (expand: 1.0-1.3,
      reduce: 0.7-0.8; ``benchmark/kfac_conventions.py``).
    - ``"expand"`` (KFC, Grosse & Martens, 2016): ``A = (1/(N T)) sum_{n,t} x x^T``,
      ``B = sum_{v,n,t} s_t s_t^T``. Exact when the output derivatives are uncorrelated
      across positions and alike at each.
    - ``"reduce"`` (Eschenhagen et al., 2023): ``A = (1/N) sum_n xbar xbar^T`` with
      ``xbar = (1/T) sum_t x_t``, ``B`` as for ``"backpack"``. Exact when the input is the
      same at every position; cheaper than expand (``A`` from ``N`` instead of ``N T``
      vectors).

    Without weight sharing (``T = 1``) the three coincide. ``"expand"`` and ``"reduce"``
    are curvlinops' ``KFACLinearOperator`` definitions (type-2 for :class:`KFLR`), the bias
    included (it gets the convention's ``B``).

    Args:
        mc_samples: Samples from the model's predictive distribution per data point.
        kfac_approx: ``"backpack"``, ``"expand"`` or ``"reduce"``.

    Raises:
        ValueError: If ``mc_samples`` is not a positive integer or ``kfac_approx`` is not
            one of the three.
    """

    savefield = "kfac"

    def __init__(self, mc_samples: int = 1, kfac_approx: str = "backpack"):
        super().__init__(mc_samples)
        self.kfac_approx = _check_kfac_approx(kfac_approx)

    def __repr__(self) -> str:
        return f"KFAC(mc_samples={self.mc_samples}, kfac_approx={self.kfac_approx!r})"
