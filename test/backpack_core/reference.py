"""Reference quantities computed with ``torch.func`` and ``torch.autograd`` only.

Nothing here imports ``backpack_core``: these functions are the independent ground truth the
engine's extensions are compared against.

Conventions. The reduced loss is ``L = sum_i l_i`` where each summand ``l_i`` already carries
the reduction's scale: 1 for ``reduction="sum"``, ``1/N`` for ``CrossEntropyLoss`` with
``reduction="mean"`` and ``1/(N*D)`` for ``MSELoss`` with ``reduction="mean"`` (it averages
over all ``D`` output elements of each of the ``N`` samples). All per-parameter results are
dictionaries keyed by the names of ``model.named_parameters()``, restricted to the parameters
with ``requires_grad=True``.

The model must be free of randomness (call ``model.eval()`` if it contains Dropout) and must
treat samples independently (no BatchNorm in train mode).
"""

from typing import Callable, Dict, List, Tuple

import torch
from torch import Tensor, nn
from torch.func import functional_call, grad, hessian, jacrev, vmap
from torch.nn import functional as F

ParamDict = Dict[str, Tensor]


# --------------------------------------------------------------------------------------------
# the loss as a sum of scaled per-sample summands
# --------------------------------------------------------------------------------------------
def loss_scale(lossfunc: nn.Module, output: Tensor) -> float:
    """Scale that turns a per-sample summed loss into a summand of the reduced loss.

    Args:
        lossfunc: ``nn.CrossEntropyLoss`` or ``nn.MSELoss`` with reduction "mean" or "sum".
        output: The network output of the whole batch, ``[N, ...]``.

    Returns:
        1 for sum reduction; ``1/N`` (times one over the number of extra positions) for a mean
        cross-entropy; ``1/output.numel()`` for a mean squared error.

    Raises:
        NotImplementedError: For other losses or reductions.
    """
    if lossfunc.reduction == "sum":
        return 1.0
    if lossfunc.reduction != "mean":
        raise NotImplementedError(f"reduction {lossfunc.reduction!r} has no reference")
    if isinstance(lossfunc, nn.CrossEntropyLoss):
        return 1.0 / (output.numel() // output.shape[1])
    if isinstance(lossfunc, nn.MSELoss):
        return 1.0 / output.numel()
    raise NotImplementedError(f"{lossfunc.__class__.__name__} has no reference")


def _summed_loss(lossfunc: nn.Module) -> Callable[[Tensor, Tensor], Tensor]:
    """The loss of ``lossfunc``'s kind with sum reduction, as a pure function."""
    if isinstance(lossfunc, nn.CrossEntropyLoss):
        return lambda output, target: F.cross_entropy(output, target, reduction="sum")
    if isinstance(lossfunc, nn.MSELoss):
        return lambda output, target: F.mse_loss(output, target, reduction="sum")
    raise NotImplementedError(f"{lossfunc.__class__.__name__} has no reference")


class _Problem:
    """A model, a loss and a batch, seen as functions of the trainable parameters.

    Args:
        model: The network, deterministic and sample-independent.
        lossfunc: Its loss module.
        X: Inputs ``[N, ...]``.
        y: Targets ``[N, ...]``.
    """

    def __init__(self, model: nn.Module, lossfunc: nn.Module, X: Tensor, y: Tensor):
        self.model, self.lossfunc, self.X, self.y = model, lossfunc, X, y
        self.params = {name: p.detach() for name, p in model.named_parameters() if p.requires_grad}
        with torch.no_grad():
            self.scale = loss_scale(lossfunc, model(X))
        self.summed_loss = _summed_loss(lossfunc)

    def sample_output(self, params: ParamDict, x: Tensor) -> Tensor:
        """Network output ``[1, ...]`` of one sample ``x`` (without batch axis)."""
        return functional_call(self.model, params, (x.unsqueeze(0),))

    def sample_loss_of_output(self, output: Tensor, y: Tensor) -> Tensor:
        """Scaled loss summand of one sample from its output ``[1, ...]``."""
        return self.scale * self.summed_loss(output, y.unsqueeze(0))

    def sample_loss(self, params: ParamDict, x: Tensor, y: Tensor) -> Tensor:
        """Scaled loss summand ``l_i`` of one sample."""
        return self.sample_loss_of_output(self.sample_output(params, x), y)

    def batch_loss(self, params: ParamDict) -> Tensor:
        """The reduced loss of the whole batch, evaluated with the loss module itself."""
        return self.lossfunc(functional_call(self.model, params, (self.X,)), self.y)


# --------------------------------------------------------------------------------------------
# first order
# --------------------------------------------------------------------------------------------
def individual_gradients(model: nn.Module, lossfunc: nn.Module, X: Tensor, y: Tensor) -> ParamDict:
    """Individual gradients ``g_i`` of the reduced loss, ``sum_i g_i == p.grad``.

    Returns:
        ``{name: [N, *p.shape]}``.
    """
    problem = _Problem(model, lossfunc, X, y)
    per_sample = vmap(grad(problem.sample_loss), in_dims=(None, 0, 0))
    return per_sample(problem.params, X, y)


def first_order(
    model: nn.Module, lossfunc: nn.Module, X: Tensor, y: Tensor
) -> Dict[str, ParamDict]:
    """All first-order quantities, derived from the individual gradients.

    Returns:
        ``{quantity: {name: tensor}}`` with the quantities ``grad`` (``p.grad``),
        ``grad_batch`` ``[N, *p.shape]``, ``batch_l2`` ``[N]``, ``sum_grad_squared``,
        ``variance`` (``mean_i g_i**2 - (mean_i g_i)**2``) and ``batch_dot`` ``[N, N]``.
    """
    g = individual_gradients(model, lossfunc, X, y)
    out = {key: {} for key in ("grad", "grad_batch", "batch_l2", "sum_grad_squared")}
    out.update({"variance": {}, "batch_dot": {}})
    for name, g_batch in g.items():
        flat = g_batch.flatten(start_dim=1)
        out["grad"][name] = g_batch.sum(0)
        out["grad_batch"][name] = g_batch
        out["batch_l2"][name] = (flat**2).sum(1)
        out["sum_grad_squared"][name] = (g_batch**2).sum(0)
        out["variance"][name] = (g_batch**2).mean(0) - g_batch.mean(0) ** 2
        out["batch_dot"][name] = flat @ flat.T
    return out


# --------------------------------------------------------------------------------------------
# generalised Gauss-Newton
# --------------------------------------------------------------------------------------------
def _per_sample_jacobians_and_loss_hessians(
    problem: _Problem,
) -> Tuple[Dict[str, Tensor], Tensor]:
    """Jacobians ``[N, O, P]`` of each sample's output and loss Hessians ``[N, O, O]``."""

    def one_sample(x: Tensor, y: Tensor) -> Tuple[ParamDict, Tensor]:
        output = problem.sample_output(problem.params, x)
        jac = jacrev(problem.sample_output)(problem.params, x)
        hess = hessian(problem.sample_loss_of_output)(output, y)
        num_out = output.numel()
        jac = {name: j.reshape(num_out, -1) for name, j in jac.items()}
        return jac, hess.reshape(num_out, num_out)

    return vmap(one_sample)(problem.X, problem.y)


def batch_ggn_diagonal(model: nn.Module, lossfunc: nn.Module, X: Tensor, y: Tensor) -> ParamDict:
    """Per-sample GGN diagonals ``diag(J_i^T H_i J_i)``.

    ``J_i`` is the Jacobian of sample ``i``'s network output w.r.t. the parameter, ``H_i`` the
    Hessian of its scaled loss summand w.r.t. that output.

    Returns:
        ``{name: [N, *p.shape]}``; summed over the batch it is the GGN diagonal.
    """
    problem = _Problem(model, lossfunc, X, y)
    jac, hess = _per_sample_jacobians_and_loss_hessians(problem)
    return {
        name: torch.einsum("nop,noq,nqp->np", j, hess, j).reshape(X.shape[0], *p.shape)
        for (name, j), p in zip(jac.items(), problem.params.values())
    }


def ggn_diagonal(model: nn.Module, lossfunc: nn.Module, X: Tensor, y: Tensor) -> ParamDict:
    """Diagonal of the GGN ``G = sum_i J_i^T H_i J_i`` of the reduced loss.

    Returns:
        ``{name: tensor shaped like the parameter}``.
    """
    return {name: d.sum(0) for name, d in batch_ggn_diagonal(model, lossfunc, X, y).items()}


def ggn_block(model: nn.Module, lossfunc: nn.Module, X: Tensor, y: Tensor, name: str) -> Tensor:
    """The full GGN block ``sum_i J_i^T H_i J_i`` of one parameter.

    Args:
        model: The network.
        lossfunc: Its loss module.
        X: Inputs ``[N, ...]``.
        y: Targets.
        name: The parameter's name in ``model.named_parameters()``.

    Returns:
        ``[P, P]`` with ``P = p.numel()``, the parameter flattened row-major.
    """
    problem = _Problem(model, lossfunc, X, y)
    jac, hess = _per_sample_jacobians_and_loss_hessians(problem)
    return torch.einsum("nop,noq,nqr->pr", jac[name], hess, jac[name])


def output_ggns(
    model: nn.Module, lossfunc: nn.Module, X: Tensor, y: Tensor, module: nn.Module
) -> Tensor:
    """Per-sample GGNs w.r.t. the output ``z_i`` of one module of the network.

    ``G_i = (dy_i/dz_i)^T H_i (dy_i/dz_i)``, with ``y_i`` the network output. The derivative is
    taken by adding a zero perturbation to the module's output through a forward hook.

    Returns:
        ``[N, *z.shape, *z.shape]`` (``z.shape`` without the batch axis).
    """
    problem = _Problem(model, lossfunc, X, y)
    perturbation = {}
    handle = module.register_forward_hook(lambda mod, inp, out: out + perturbation["delta"])
    try:
        results = []
        for x_i, y_i in zip(X, y):
            with torch.no_grad():
                perturbation["delta"] = torch.zeros((), dtype=X.dtype, device=X.device)
                z_shape = _module_io(model, module, x_i.unsqueeze(0))[1].shape[1:]

            def output_of(delta, x_i=x_i):
                perturbation["delta"] = delta
                return problem.sample_output(problem.params, x_i)

            delta = torch.zeros(z_shape, dtype=X.dtype, device=X.device)
            output = output_of(delta).detach()
            jac = jacrev(output_of)(delta).reshape(output.numel(), -1)
            hess = hessian(problem.sample_loss_of_output)(output, y_i)
            hess = hess.reshape(output.numel(), output.numel())
            results.append((jac.T @ hess @ jac).reshape(*z_shape, *z_shape))
    finally:
        handle.remove()
    return torch.stack(results)


def _module_io(model: nn.Module, module: nn.Module, X: Tensor) -> Tuple[Tensor, Tensor]:
    """Input and output of ``module`` in a forward pass of ``model`` on ``X``."""
    seen = {}

    def keep(mod, inp, out):
        seen["io"] = (inp[0].detach(), out.detach())

    handle = module.register_forward_hook(keep)
    try:
        model(X)
    finally:
        handle.remove()
    return seen["io"]


# --------------------------------------------------------------------------------------------
# Hessian
# --------------------------------------------------------------------------------------------
def hessian_diagonal(model: nn.Module, lossfunc: nn.Module, X: Tensor, y: Tensor) -> ParamDict:
    """Diagonal of the Hessian of the reduced loss (the loss module on the whole batch).

    Returns:
        ``{name: tensor shaped like the parameter}``.
    """
    problem = _Problem(model, lossfunc, X, y)
    result = {}
    for name, p in problem.params.items():

        def loss_of(value, name=name):
            return problem.batch_loss({**problem.params, name: value})

        result[name] = hessian(loss_of)(p).reshape(p.numel(), p.numel()).diagonal().view_as(p)
    return result


def batch_hessian_diagonal(
    model: nn.Module, lossfunc: nn.Module, X: Tensor, y: Tensor
) -> ParamDict:
    """Per-sample Hessian diagonals of the scaled loss summands ``l_i``.

    Returns:
        ``{name: [N, *p.shape]}``; summed over the batch it is the Hessian diagonal.
    """
    problem = _Problem(model, lossfunc, X, y)
    result = {}
    for name, p in problem.params.items():

        def loss_of(value, x, y, name=name):
            return problem.sample_loss({**problem.params, name: value}, x, y)

        def diagonal(x, y, p=p, loss_of=loss_of):
            return hessian(loss_of)(p, x, y).reshape(p.numel(), p.numel()).diagonal()

        result[name] = vmap(diagonal)(X, y).reshape(X.shape[0], *p.shape)
    return result


# --------------------------------------------------------------------------------------------
# Kronecker factors
# --------------------------------------------------------------------------------------------
def _unfolded_input(module: nn.Module, x: Tensor) -> Tensor:
    """Columns ``u`` with ``z[c, pos] = W[c] . u[group(c), pos] + b[c]`` for one sample.

    For a convolution the patches are read off the Jacobian of the output w.r.t. the weight
    (the output is linear in the weight), so no unfolding code is needed.

    Args:
        module: ``nn.Linear`` or ``nn.ConvNd``.
        x: The module's input for one sample, with a batch axis of size 1.

    Returns:
        ``[positions, fan_in]`` where ``fan_in`` is ``in_features`` or ``C_in/groups * prod(k)``
        and the positions run over extra dimensions, spatial positions and groups.
    """
    if isinstance(module, nn.Linear):
        return x.reshape(-1, module.in_features)
    weight = module.weight.detach()

    def output_of(w):
        return functional_call(module, {"weight": w}, (x,))[0]

    jac = jacrev(output_of)(weight)  # [C_out, *spatial, C_out, C_in/groups, *kernel]
    c_out = weight.shape[0]
    jac = jac.reshape(c_out, -1, c_out, weight[0].numel())
    per_group = c_out // module.groups
    columns = [jac[g * per_group, :, g * per_group] for g in range(module.groups)]
    return torch.cat(columns)


def _sum_over_positions(ggn: Tensor, module: nn.Module) -> Tensor:
    """Reduce a per-sample output GGN ``[*z, *z]`` to ``[C_out, C_out]``.

    Every pair of positions, ``sum_{t, t'} G[t, t']``: BackPACK 1.7's convention for
    convolutions (each backpropagated column is summed over positions before its outer
    product), which the engine applies to the extra dimensions of a Linear layer too.
    Linear is channels last (``z = [*extra, out]``), convolutions channels first
    (``z = [C_out, *spatial]``).
    """
    z_shape = ggn.shape[: ggn.dim() // 2]
    if isinstance(module, nn.Linear):
        channels = z_shape[-1]
        ggn = ggn.reshape(-1, channels, z_shape.numel() // channels, channels)
        return torch.einsum("pcqd->cd", ggn)
    channels = z_shape[0]
    ggn = ggn.reshape(channels, -1, channels, z_shape.numel() // channels)
    return torch.einsum("cpdq->cd", ggn)


def _diagonal_positions(ggn: Tensor, module: nn.Module) -> Tensor:
    """Reduce a per-sample output GGN ``[*z, *z]`` to ``[C_out, C_out]`` over equal positions.

    ``sum_t G[t, t]``: the pairs of different positions are dropped (KFAC-expand).
    """
    z_shape = ggn.shape[: ggn.dim() // 2]
    if isinstance(module, nn.Linear):
        channels = z_shape[-1]
        ggn = ggn.reshape(-1, channels, z_shape.numel() // channels, channels)
        return torch.einsum("pcpd->cd", ggn)
    channels = z_shape[0]
    ggn = ggn.reshape(channels, -1, channels, z_shape.numel() // channels)
    return torch.einsum("cpdp->cd", ggn)


def kronecker_factors(
    model: nn.Module,
    lossfunc: nn.Module,
    X: Tensor,
    y: Tensor,
    module: nn.Module,
    kfac_approx: str,
) -> List[Tensor]:
    """The exact-GGN Kronecker factors ``[B, A]`` of a layer in one of three conventions.

    With ``G_n`` the exact per-sample GGN w.r.t. the layer's output and ``u_{n,t}`` its
    (unfolded) input at the ``T`` positions that share the weight:

    - ``"backpack"``: ``B = sum_n sum_{t,t'} G_n[t,t']``, ``A = (1/N) sum_{n,t} u u^T``;
    - ``"expand"``: ``B = sum_n sum_t G_n[t,t]``, ``A = (1/(N T)) sum_{n,t} u u^T``;
    - ``"reduce"``: ``B`` as backpack, ``A = (1/N) sum_n ubar ubar^T``, ``ubar`` the mean
      of ``u_{n,t}`` over ``t``.

    Returns:
        ``[B, A]``, ``B`` of shape ``[out, out]``, ``A`` of shape ``[fan_in, fan_in]``.
    """
    ggns = output_ggns(model, lossfunc, X, y, module)
    if kfac_approx == "expand":
        B = sum(_diagonal_positions(g, module) for g in ggns)
    else:
        B = sum(_sum_over_positions(g, module) for g in ggns)
    columns = [_unfolded_input(module, _module_io(model, module, x.unsqueeze(0))[0]) for x in X]
    if kfac_approx == "reduce":
        means = [u.mean(0, keepdim=True) for u in columns]
        A = sum(m.T @ m for m in means) / X.shape[0]
    else:
        A = sum(u.T @ u for u in columns) / X.shape[0]
        if kfac_approx == "expand":
            A = A / columns[0].shape[0]
    return [B, A]


def kflr_factors(
    model: nn.Module, lossfunc: nn.Module, X: Tensor, y: Tensor, module: nn.Module
) -> List[Tensor]:
    """KFLR's Kronecker factors ``[B, A]`` of a Linear or Conv layer's weight.

    ``A = (1/N) sum_n sum_pos u_{n,pos} u_{n,pos}^T`` over the layer's (unfolded) inputs.
    ``B`` reduces the exact per-sample GGNs ``G_n`` w.r.t. the layer's output over all pairs
    of positions (extra dimensions of a Linear layer, spatial positions of a convolution),
    ``sum_n sum_{t,t'} G_n[t, t']``, which is also the exact GGN block of the bias
    (BackPACK 1.7's convention for convolutions; without extra dimensions simply
    ``sum_n G_n``).

    Returns:
        ``[B, A]``, ``B`` of shape ``[out, out]``, ``A`` of shape ``[fan_in, fan_in]``.
    """
    ggns = output_ggns(model, lossfunc, X, y, module)
    B = sum(_sum_over_positions(g, module) for g in ggns)
    columns = [_unfolded_input(module, _module_io(model, module, x.unsqueeze(0))[0]) for x in X]
    A = sum(u.T @ u for u in columns) / X.shape[0]
    return [B, A]


# --------------------------------------------------------------------------------------------
# any loss module: no per-sample decomposition of the loss needed
# --------------------------------------------------------------------------------------------
def individual_gradients_any_loss(
    model: nn.Module, lossfunc: nn.Module, X: Tensor, y: Tensor
) -> ParamDict:
    """Individual gradients for any loss module, via one parameter copy per sample.

    Sample ``i``'s output is computed with its own copy of the parameters; the gradient of the
    reduced loss w.r.t. copy ``i`` is ``g_i``. This needs no knowledge of the loss's scaling.

    Returns:
        ``{name: [N, *p.shape]}``.
    """
    params = {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}
    copies = {n: p.expand(X.shape[0], *p.shape) for n, p in params.items()}

    def loss_of(copies):
        def output_of(sample_params, x):
            return functional_call(model, sample_params, (x.unsqueeze(0),)).squeeze(0)

        return lossfunc(vmap(output_of)(copies, X), y)

    return grad(loss_of)(copies)


def ggn_diagonal_any_loss(model: nn.Module, lossfunc: nn.Module, X: Tensor, y: Tensor) -> ParamDict:
    """GGN diagonal ``diag(J^T H J)`` from the whole batch, for any loss module.

    ``J`` is the Jacobian of the batch's output w.r.t. a parameter, ``H`` the Hessian of the
    reduced loss w.r.t. the batch's output.

    Returns:
        ``{name: tensor shaped like the parameter}``.
    """
    params = {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}
    output = functional_call(model, params, (X,)).detach()
    hess = hessian(lambda out: lossfunc(out, y))(output).reshape(output.numel(), -1)
    result = {}
    for name, p in params.items():

        def output_of(value, name=name):
            return functional_call(model, {**params, name: value}, (X,))

        jac = jacrev(output_of)(p).reshape(output.numel(), -1)
        result[name] = torch.einsum("op,oq,qp->p", jac, hess, jac).view_as(p)
    return result
