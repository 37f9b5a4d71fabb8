"""KFRA's factors of every layer against a reference that does not use the engine.

The reference writes the KFRA recursion densely, with per-sample Jacobians of each module
from ``torch.func.jacrev`` and the loss Hessian from ``torch.func.hessian``:

- at the loss input ``M = c sum_n H_n``, ``H_n`` the Hessian of sample ``n``'s summed loss
  w.r.t. its output and ``c`` the reduction's scale (1 for ``"sum"``; ``1/N`` for a mean
  cross-entropy, ``1/(N D)`` for a mean squared error), as the engine starts it;
- through a module ``M_in = (1/N) sum_n J_n^T M_out J_n``;
- on a feature map ``[C, *spatial]`` with ``T`` positions (any tensor with more than one
  axis per sample) the matrix is *homogenised*: its channel form
  ``K[c, c'] = (1/T) sum_{t, t'} M[(c, t), (c', t')]`` is kept and the matrix replaced by
  ``K kron (1 1^T) / T`` (whose channel form is ``K`` again) before the recursion goes on.

A layer's ``B`` is the matrix at its output: dense for flat outputs, ``T_out K`` on a
feature map. Its ``A`` is the batch average of ``sum_t u_t u_t^T`` over the input patches
``u_t`` that the weight sees (a Linear layer: the input), the patches taken from
``jacrev`` of the layer's output w.r.t. its weight, not from an unfolding.

The models are ``nn.Sequential`` chains of leaf modules (KFRA refuses branching); a layer
with frozen parameters gets no factors but passes the recursion on. Each case
also runs with ``kfra.SHORTCUTS = False`` (every module by the generic rule).

Before issue 15 the engine's per-layer channel rules ignored borders: a convolution passed
``K`` on as ``W_sum^T K W_sum T_out / T_in`` (``W_sum`` the tap-summed weight), counting the
taps that read padding, average pooling as ``K T_out / T_in``, and a cropping ``ZeroPad2d``
(negative padding) as ``K T_in / T_out``. Against this reference the ``B`` of the layer
before such a module was off by (relative Frobenius norm, every loss): 1.31-1.40 before a
padded 3x3 convolution (conv2d-padding-stride-avgpool), 0.44 before a padded dilated
Conv1d, 0.82 before ``AvgPool2d(3, 2, padding=1)``, 6.29 before ``AvgPool3d(2, 2,
padding=1)``, 2.16 before a crop after a padded max pooling; with each module alone after a
conv layer: 0.99 (padded 3x3 convolution), 1.73 (padded average pooling), 1.44 (crop),
exact for a padded max pooling and a positive ``ZeroPad2d``. Upsample and fallback modules
(ELU) on feature maps and frozen grouped convolutions were refused. Cases without padding
matched.
"""

from math import prod
from typing import Callable, Dict, List, Tuple

import pytest
import torch
from torch import Tensor, nn
from torch.func import hessian, jacrev, vmap
from torch.nn import functional as F
from torch.testing import assert_close

from backpack_core import backpack, extend
from backpack_core.extensions import KFRA, kfra

TOLERANCES = {"rtol": 1e-9, "atol": 1e-12}


# --------------------------------------------------------------------------------------------
# the reference
# --------------------------------------------------------------------------------------------
def _loss_scale(lossfunc: nn.Module, output: Tensor) -> float:
    if lossfunc.reduction == "sum":
        return 1.0
    if isinstance(lossfunc, nn.CrossEntropyLoss):
        return 1.0 / output.shape[0]
    return 1.0 / output.numel()


def _sample_loss(lossfunc: nn.Module) -> Callable[[Tensor, Tensor], Tensor]:
    """The summed loss of one sample (no batch axis) as a function of its output."""
    if isinstance(lossfunc, nn.CrossEntropyLoss):
        return lambda f, y: F.cross_entropy(f.unsqueeze(0), y.unsqueeze(0), reduction="sum")
    return lambda f, y: F.mse_loss(f, y, reduction="sum")


def _homogenise(matrix: Tensor, shape: torch.Size) -> Tuple[Tensor, Tensor]:
    """The channel form ``K`` of a dense matrix on a feature map, and ``K kron 11^T / T``."""
    channels, positions = shape[0], prod(shape[1:])
    blocks = matrix.reshape(channels, positions, channels, positions)
    channel_form = blocks.sum((1, 3)) / positions
    ones = torch.ones(positions, positions, dtype=matrix.dtype) / positions
    return channel_form, torch.kron(channel_form, ones)


def _per_sample_jacobians(module: nn.Module, x: Tensor) -> Tensor:
    """``[N, D_out, D_in]``: the Jacobian of the module on each sample alone."""

    def forward(sample: Tensor) -> Tensor:
        return module(sample.unsqueeze(0)).squeeze(0)

    jacobians = vmap(jacrev(forward))(x)
    return jacobians.reshape(x.shape[0], -1, prod(x.shape[1:]))


def _patches(layer: nn.Module, x: Tensor) -> Tensor:
    """``[N, T, C_in * K]``: what the weight multiplies at each output position."""
    if isinstance(layer, nn.Linear):
        return x.reshape(x.shape[0], 1, -1)
    convolution = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[x.dim() - 2]
    weight = layer.weight[:1].detach()

    def first_channel(w: Tensor) -> Tensor:
        return convolution(x, w, None, layer.stride, layer.padding, layer.dilation, layer.groups)[
            :, 0
        ]

    jacobian = jacrev(first_channel)(weight)  # [N, *out, 1, C_in, *kernel]
    return jacobian.reshape(x.shape[0], -1, weight[0].numel())


def kfra_reference(
    model: nn.Sequential, lossfunc: nn.Module, X: Tensor, y: Tensor
) -> Dict[str, List[Tensor]]:
    """``{parameter name: [B, A] or [B]}`` of every Linear and Conv layer, as defined above."""
    tensors, modules = [X], list(model)
    with torch.no_grad():
        for module in modules:
            tensors.append(module(tensors[-1]))
    output, batch = tensors[-1], X.shape[0]
    sample_loss = _sample_loss(lossfunc)
    hessians = vmap(hessian(sample_loss))(output, y)  # [N, *out, *out]
    features = prod(output.shape[1:])
    matrix = hessians.reshape(batch, features, features).sum(0) * _loss_scale(lossfunc, output)
    # at each tensor: (matrix, channel form or None)
    at: List[Tuple[Tensor, Tensor]] = [None] * len(tensors)
    for index in range(len(tensors) - 1, -1, -1):
        shape = tensors[index].shape[1:]
        channel_form = None
        if len(shape) > 1:
            channel_form, matrix = _homogenise(matrix, shape)
        at[index] = (matrix, channel_form)
        if index > 0:
            jacobians = _per_sample_jacobians(modules[index - 1], tensors[index - 1])
            matrix = torch.einsum("nji,jk,nkl->il", jacobians, matrix, jacobians) / batch
    factors = {}
    for index, module in enumerate(modules):
        if not isinstance(module, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            continue
        if not module.weight.requires_grad:
            continue
        matrix, channel_form = at[index + 1]
        positions = prod(tensors[index + 1].shape[2:])
        B = matrix if channel_form is None else positions * channel_form
        u = _patches(module, tensors[index])
        A = torch.einsum("nti,ntj->ij", u, u) / batch
        factors[f"{index}.weight"] = [B, A]
        if module.bias is not None:
            factors[f"{index}.bias"] = [B]
    return factors


# --------------------------------------------------------------------------------------------
# the cases
# --------------------------------------------------------------------------------------------
def _frozen(layer: nn.Module) -> nn.Module:
    for param in layer.parameters():
        param.requires_grad_(False)
    return layer


CASES = {
    "mlp-sigmoid-relu": (
        lambda: [nn.Linear(5, 6), nn.Sigmoid(), nn.Linear(6, 4), nn.ReLU(), nn.Linear(4, 3)],
        (4, 5),
    ),
    "conv2d-relu-maxpool-sigmoid-tanh": (
        lambda: [
            nn.Conv2d(2, 3, 3),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(3, 2, 2),
            nn.Sigmoid(),
            nn.Flatten(),
            nn.Linear(8, 5),
            nn.Tanh(),
            nn.Linear(5, 3),
        ],
        (3, 2, 8, 8),
    ),
    "conv2d-padding-stride-avgpool": (
        lambda: [
            nn.Conv2d(2, 3, 3, stride=2, padding=1),
            nn.Tanh(),
            nn.Conv2d(3, 3, 3, padding=1),
            nn.ReLU(),
            nn.AvgPool2d(2),
            nn.Flatten(),
            nn.Linear(12, 3),
        ],
        (3, 2, 7, 8),
    ),
    "conv1d-padding-stride-dilation": (
        lambda: [
            nn.Conv1d(2, 3, 3, stride=2, padding=2),
            nn.Sigmoid(),
            nn.Conv1d(3, 2, 2, dilation=2, padding=1),
            nn.Flatten(),
            nn.Linear(12, 3),
        ],
        (4, 2, 9),
    ),
    "zeropad-conv-avgpool-padding": (
        lambda: [
            nn.ZeroPad2d((1, 0, 2, 1)),
            nn.Conv2d(2, 3, 3),
            nn.ReLU(),
            nn.AvgPool2d(3, stride=2, padding=1),
            nn.Conv2d(3, 2, 2, stride=2),
            nn.Flatten(),
            nn.Linear(4, 4),
            nn.ReLU(),
            nn.Linear(4, 3),
        ],
        (3, 2, 6, 7),
    ),
    "maxpool-padding-crop": (
        lambda: [
            nn.Conv2d(2, 3, 2, padding=1),
            nn.MaxPool2d(3, stride=2, padding=1),
            nn.ZeroPad2d((-1, 0, 0, -1)),
            nn.Conv2d(3, 2, 1),
            nn.Flatten(),
            nn.Linear(18, 3),
        ],
        (3, 2, 6, 6),
    ),
    "conv3d-avgpool3d-padding": (
        lambda: [
            nn.Conv3d(1, 2, 2, padding=1),
            nn.ReLU(),
            nn.AvgPool3d(2, stride=2, padding=1),
            nn.Conv3d(2, 2, 2, stride=2),
            nn.Flatten(),
            nn.Linear(2, 3),
        ],
        (2, 1, 3, 3, 4),
    ),
    "upsample-elu-fallback": (
        lambda: [
            nn.Conv2d(2, 3, 2),
            nn.Upsample(scale_factor=2, mode="bilinear"),
            nn.ELU(),
            nn.Conv2d(3, 2, 3, stride=2),
            nn.Flatten(),
            nn.Linear(4, 3),
        ],
        (3, 2, 3, 4),
    ),
    "frozen-grouped-conv": (
        lambda: [
            nn.Conv2d(2, 4, 2),
            nn.Sigmoid(),
            _frozen(nn.Conv2d(4, 4, 3, groups=2, padding=1)),
            nn.Flatten(),
            nn.Linear(36, 3),
        ],
        (3, 2, 4, 4),
    ),
    "conv-feature-map-loss": (
        lambda: [nn.Conv2d(2, 3, 3, padding=1), nn.Tanh(), nn.Conv2d(3, 2, 2)],
        (3, 2, 5, 4),
    ),
}
LOSSES = ["ce-mean", "ce-sum", "mse-mean", "mse-sum"]
IDS = [
    (case, loss)
    for case in CASES
    for loss in LOSSES
    if not (case == "conv-feature-map-loss" and loss.startswith("ce"))
]


def build(case: str, loss: str, seed: int = 0):
    """Model, loss module, inputs and targets of a case, float64."""
    make_layers, input_shape = CASES[case]
    torch.manual_seed(seed)
    model = nn.Sequential(*make_layers()).double()
    X = torch.randn(*input_shape, dtype=torch.float64)
    kind, reduction = loss.split("-")
    with torch.no_grad():
        output = model(X)
    if kind == "ce":
        lossfunc = nn.CrossEntropyLoss(reduction=reduction)
        y = torch.randint(0, output.shape[1], (X.shape[0],))
    else:
        lossfunc = nn.MSELoss(reduction=reduction)
        y = torch.randn_like(output)
    return model, lossfunc, X, y


def engine_kfra(model, lossfunc, X, y) -> Dict[str, List[Tensor]]:
    """The engine's ``p.kfra`` of every parameter."""
    model, lossfunc = extend(model), extend(lossfunc)
    with backpack(KFRA()):
        lossfunc(model(X), y).backward()
    return {name: p.kfra for name, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("shortcuts", [True, False], ids=["shortcuts", "generic"])
@pytest.mark.parametrize("case, loss", IDS, ids=[f"{case}-{loss}" for case, loss in IDS])
def test_kfra_matches_the_dense_reference(case, loss, shortcuts, monkeypatch):
    monkeypatch.setattr(kfra, "SHORTCUTS", shortcuts)
    model, lossfunc, X, y = build(case, loss)
    expected = kfra_reference(model, lossfunc, X, y)
    factors = engine_kfra(model, lossfunc, X, y)
    assert factors.keys() == expected.keys()
    for name, reference in expected.items():
        assert len(factors[name]) == len(reference), name
        for which, (value, wanted) in zip("BA", zip(factors[name], reference)):
            message = f"{name} {which}"
            assert_close(value, wanted, **TOLERANCES, msg=lambda m, at=message: f"{at}: {m}")


def test_the_reference_homogenises_to_its_channel_form():
    torch.manual_seed(0)
    matrix = torch.randn(6, 6, dtype=torch.float64)
    channel_form, homogeneous = _homogenise(matrix, torch.Size([2, 3]))
    assert_close(_homogenise(homogeneous, torch.Size([2, 3]))[0], channel_form)


def test_the_reference_patches_are_the_unfolded_input():
    torch.manual_seed(0)
    layer = nn.Conv2d(2, 3, 3, stride=2, padding=1).double()
    x = torch.randn(2, 2, 5, 6, dtype=torch.float64)
    unfolded = F.unfold(x, 3, padding=1, stride=2).transpose(1, 2)  # [N, T, C * K]
    assert_close(_patches(layer, x), unfolded)
