"""KFRA's forms: dense on flat features, channel form on feature maps, lazy congruences.

The lazy ``(J, M)`` form, the direct projection of a reshape, the single column through
modules that mix no channels and the tap-summed weight of a layer are shortcuts: they must
give the same numbers as the generic rule (``C_out`` columns through every module's
transposed Jacobian, every dense matrix formed).
"""

import pytest
import torch
from torch import nn

from backpack_core import backpack, extend, set_memory_limit
from backpack_core.derivatives.pooling import MaxPoolDerivatives
from backpack_core.extensions import KFLR, KFRA, kfra


def _conv_net():
    return nn.Sequential(
        nn.Conv2d(2, 3, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(3, 3, 2, stride=2, padding=1),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(12, 5),
        nn.Linear(5, 4),
        nn.Tanh(),
        nn.Linear(4, 3),
    )


def _kfra(model, reduction="mean"):
    torch.manual_seed(1)
    inputs, labels = torch.randn(6, 2, 6, 6, dtype=torch.float64), torch.randint(0, 3, (6,))
    loss_function = extend(nn.CrossEntropyLoss(reduction=reduction))
    model.zero_grad()
    with backpack(KFRA(), KFLR()):
        loss_function(model(inputs), labels).backward()
    return {name: [f.clone() for f in p.kfra] for name, p in model.named_parameters()}


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_shortcuts_equal_the_generic_rule(monkeypatch, reduction):
    torch.manual_seed(0)
    model = extend(_conv_net().double())
    lazy = _kfra(model, reduction)
    monkeypatch.setattr(kfra, "SHORTCUTS", False)
    dense = _kfra(model, reduction)
    for name in lazy:
        for lazy_factor, dense_factor in zip(lazy[name], dense[name]):
            torch.testing.assert_close(lazy_factor, dense_factor)


@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize(
    "layer, shape",
    [
        (lambda: nn.Conv2d(2, 3, 3, stride=2), (5, 2, 7, 7)),
        (lambda: nn.Conv1d(2, 3, 2, padding=1), (5, 2, 6)),
        (lambda: nn.Linear(6, 4), (5, 6)),
    ],
    ids=["conv2d", "conv1d", "linear"],
)
def test_kfra_equals_kflr_for_one_layer(layer, shape, reduction):
    torch.manual_seed(0)
    model = extend(nn.Sequential(layer(), nn.Flatten()).double())
    inputs = torch.randn(*shape, dtype=torch.float64)
    outputs = model(inputs)
    loss_function = extend(nn.MSELoss(reduction=reduction))
    with backpack(KFRA(), KFLR()):
        loss_function(outputs, torch.randn_like(outputs)).backward()
    for param in model.parameters():
        for factor, kflr in zip(param.kfra, param.kflr):
            torch.testing.assert_close(factor, kflr)


def test_kernel_one_conv1d_and_linear_over_positions_agree():
    """The same map written as Linear on ``[N, T, C]`` and as Conv1d on ``[N, C, T]``.

    (KFRA refuses Linear layers on more than two dimensions, so KFLR speaks for both.)
    """
    torch.manual_seed(0)
    linear = nn.Linear(3, 4).double()
    conv = nn.Conv1d(3, 4, 1).double()
    with torch.no_grad():
        conv.weight.copy_(linear.weight.unsqueeze(2))
        conv.bias.copy_(linear.bias)
    inputs = torch.randn(5, 6, 3, dtype=torch.float64)
    targets = torch.randn(5, 6, 4, dtype=torch.float64)
    factors = {}
    for name, model, x, y in [
        ("linear", nn.Sequential(linear, nn.Flatten()), inputs, targets),
        (
            "conv",
            nn.Sequential(conv, nn.Flatten()),
            inputs.transpose(1, 2),
            targets.transpose(1, 2),
        ),
    ]:
        extend(model)
        loss_function = extend(nn.MSELoss())
        with backpack(KFLR()):
            loss_function(model(x), y.flatten(1)).backward()
        factors[name] = model[0].weight.kflr
    torch.testing.assert_close(factors["linear"][0], factors["conv"][0])
    torch.testing.assert_close(factors["linear"][1], factors["conv"][1].reshape(3, 3))


def test_grouped_convolution_factors_are_refused():
    # a frozen grouped convolution passes the recursion on (test_kfra_reference.py)
    model = extend(nn.Sequential(nn.Conv2d(2, 4, 3, groups=2), nn.Flatten()))
    loss_function = extend(nn.MSELoss())
    outputs = model(torch.randn(3, 2, 5, 5))
    with pytest.raises(NotImplementedError, match="KFRA.*grouped convolutions"):
        with backpack(KFRA()):
            loss_function(outputs, torch.randn_like(outputs)).backward()


def test_columns_above_the_memory_limit_raise_with_the_way_out():
    # ELU has no registered derivatives: the generic rule passes C_out columns through it
    model = extend(nn.Sequential(nn.Conv2d(2, 8, 1), nn.ELU(), nn.Conv2d(8, 8, 1), nn.Flatten()))
    loss_function = extend(nn.MSELoss())
    outputs = model(torch.randn(3, 2, 8, 8))
    set_memory_limit(1000)
    try:
        with pytest.raises(MemoryError, match="KFRA would pass 8 columns .* ELU.*limit is"):
            with backpack(KFRA()):
                loss_function(outputs, torch.randn_like(outputs)).backward()
    finally:
        set_memory_limit(None)


@pytest.mark.parametrize("declared", [False, True])
def test_max_pooling_with_sample_independent_position_sums(monkeypatch, declared):
    # every output entry of a max pooling is one input entry: the position sums of
    # J_n^T v are the same for every sample, so one sample suffices (same numbers)
    torch.manual_seed(0)
    model = extend(_conv_net().double())
    monkeypatch.setattr(kfra, "SHORTCUTS", False)
    expected = _kfra(model)
    monkeypatch.setattr(kfra, "SHORTCUTS", True)
    monkeypatch.setattr(
        MaxPoolDerivatives, "sample_independent_position_sums", declared, raising=False
    )
    factors = _kfra(model)
    for name in expected:
        for factor, wanted in zip(factors[name], expected[name]):
            torch.testing.assert_close(factor, wanted)
