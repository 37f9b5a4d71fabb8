"""The autograd fallback and graphs that are not chains.

The settings table (``settings.py``) runs every extension on nets with ELU, GELU, Softplus,
SiLU and a user's ``x^3/3 + x`` module (which have no registered derivatives) and on
residual nets, against the ``torch.func`` references. Here: the fallback as the oracle of
every registered parameter-free layer's derivatives, the Monte-Carlo extensions on those
nets, and the refusals.
"""

import pytest
import reference
import torch
from settings import (
    SETTING_IDS,
    SETTINGS,
    kronecker_layers,
    module_call,
    reference_of,
    run_extended,
)
from torch import nn
from torch.testing import assert_close

from backpack_core import backpack, extend, set_memory_limit
from backpack_core.derivatives import derivatives_for
from backpack_core.derivatives.autograd import AutogradDerivatives
from backpack_core.derivatives.base import ModuleIO
from backpack_core.extensions import KFAC, KFRA, BatchDiagGGNMC, DiagGGNExact, DiagGGNMC

TOLERANCES = {"rtol": 1e-7, "atol": 1e-10}


# --------------------------------------------------------------------------------------------
# the fallback is the oracle of the registered parameter-free derivatives
# --------------------------------------------------------------------------------------------
LAYERS = {
    "relu": (nn.ReLU, (3, 4)),
    "leakyrelu": (lambda: nn.LeakyReLU(0.2), (3, 4)),
    "sigmoid": (nn.Sigmoid, (3, 2, 3)),
    "tanh": (nn.Tanh, (3, 4)),
    "dropout-eval": (lambda: nn.Dropout(0.3).eval(), (3, 4)),
    "flatten": (nn.Flatten, (3, 2, 3, 2)),
    "zeropad2d": (lambda: nn.ZeroPad2d((1, 0, 2, 1)), (2, 2, 3, 3)),
    "zeropad2d-crop": (lambda: nn.ZeroPad2d((-1, 1, 0, -1)), (2, 2, 3, 3)),
    "maxpool1d": (lambda: nn.MaxPool1d(2), (2, 2, 6)),
    "maxpool2d-stride1": (lambda: nn.MaxPool2d(2, stride=1), (2, 2, 4, 4)),
    "maxpool2d-padding": (lambda: nn.MaxPool2d(3, stride=2, padding=1), (2, 2, 5, 5)),
    "maxpool3d": (lambda: nn.MaxPool3d(2), (2, 1, 4, 4, 4)),
    "avgpool2d": (lambda: nn.AvgPool2d(2), (2, 2, 4, 4)),
    "avgpool2d-padding": (
        lambda: nn.AvgPool2d(3, 2, padding=1, count_include_pad=False),
        (2, 2, 5, 5),
    ),
    "avgpool3d": (lambda: nn.AvgPool3d(2), (2, 1, 4, 4, 4)),
    "upsampling-bilinear": (lambda: nn.UpsamplingBilinear2d(scale_factor=2), (2, 2, 2, 3)),
    "upsampling-nearest": (lambda: nn.UpsamplingNearest2d(scale_factor=2), (2, 2, 2, 3)),
    "upsample-bicubic": (lambda: nn.Upsample(size=(3, 5), mode="bicubic"), (2, 1, 2, 3)),
}


def _call(name):
    module, _, _, io = module_call(*LAYERS[name])
    registered = derivatives_for(module)
    assert registered is not None and not isinstance(registered, AutogradDerivatives), name
    return registered, io


@pytest.mark.parametrize("columns", [1, 3])
@pytest.mark.parametrize("name", list(LAYERS))
def test_registered_jac_t_mat_prod_equals_autograd(name, columns):
    registered, io = _call(name)
    mat = torch.randn(columns, *io.output.shape, dtype=io.output.dtype)
    expected = AutogradDerivatives().jac_t_mat_prod(io, mat)
    assert expected.shape == (columns, *io.input.shape)
    assert_close(registered.jac_t_mat_prod(io, mat), expected, **TOLERANCES)


@pytest.mark.parametrize("name", ["relu", "leakyrelu", "sigmoid", "tanh", "maxpool2d-stride1"])
def test_registered_hessian_residual_equals_autograd(name):
    registered, io = _call(name)
    grad_output = torch.randn_like(io.output)
    expected = AutogradDerivatives().hessian_residual(io, grad_output)
    result = registered.hessian_residual(io, grad_output)
    if expected is None:
        assert result is None or not result.any()
    else:
        assert_close(result, expected, **TOLERANCES)


def test_fallback_checks_the_module_for_a_second_derivative_across_entries():
    class Normalize(nn.Module):
        def forward(self, x):
            return x / x.norm(dim=1, keepdim=True)

    module = Normalize()
    x = torch.randn(3, 4, dtype=torch.float64)
    io = ModuleIO(module, x, module(x))
    with pytest.raises(NotImplementedError, match="Normalize.*not elementwise"):
        AutogradDerivatives().hessian_residual(io, torch.randn_like(x))


# --------------------------------------------------------------------------------------------
# Monte-Carlo extensions on fallback and residual nets: seeded, and converging to exact
# --------------------------------------------------------------------------------------------
MC_SAMPLES = 20_000
MC_IDS = [
    "mlp-elu-ce-mean",
    "mlp-cube-ce-mean",
    "conv2d-silu-ce-mean",
    "residual-mlp-tanh-sigmoid-ce-mean",
    "residual-conv-tanh-ce-sum",
]


def _setting(setting_id):
    return SETTINGS[SETTING_IDS.index(setting_id)]


def _monte_carlo_tolerances(expected):
    return {"rtol": 0.05, "atol": 0.03 * expected.abs().max().item()}


@pytest.mark.parametrize("setting_id", MC_IDS)
def test_diag_ggn_mc_and_kfac_converge_to_exact(setting_id):
    setting = _setting(setting_id)
    exact = reference_of(setting, "ggn_diagonal")
    exact_batch = reference_of(setting, "batch_ggn_diagonal")
    extensions = DiagGGNMC(MC_SAMPLES), BatchDiagGGNMC(MC_SAMPLES), KFAC(MC_SAMPLES)
    params = run_extended(setting, *extensions)
    for name, p in params.items():
        assert_close(p.diag_ggn_mc, exact[name], **_monte_carlo_tolerances(exact[name]))
        tolerances = _monte_carlo_tolerances(exact_batch[name])
        assert_close(p.diag_ggn_mc_batch, exact_batch[name], **tolerances)
    model, lossfunc, X, y = setting.build()
    for layer_name, layer in kronecker_layers(model).items():
        B, A = reference.kflr_factors(model, lossfunc, X, y, layer)
        weight = params[f"{layer_name}.weight"]
        assert_close(weight.kfac[1], A, **setting.tolerances)  # the input factor is exact
        assert_close(weight.kfac[0], B, **_monte_carlo_tolerances(B))
        assert_close(params[f"{layer_name}.bias"].kfac[0], B, **_monte_carlo_tolerances(B))


class FunctionalTanh(nn.Module):
    """``torch.tanh`` in a module the engine has no derivatives for."""

    def forward(self, x):
        return torch.tanh(x)


@pytest.mark.parametrize("make_extension", [lambda: DiagGGNMC(3), lambda: KFAC(2)], ids=repr)
def test_seeded_monte_carlo_through_the_fallback_equals_the_registered_layer(make_extension):
    # same seed, same samples: the fallback's Jacobians must give the registered numbers
    results = []
    for activation in (nn.Tanh, FunctionalTanh):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(6, 5), activation(), nn.Linear(5, 3)).double()
        X, y = torch.randn(4, 6, dtype=torch.float64), torch.randint(3, (4,))
        model, lossfunc = extend(model), extend(nn.CrossEntropyLoss())
        loss = lossfunc(model(X), y)
        torch.manual_seed(1)
        extension = make_extension()
        with backpack(extension):
            loss.backward()
        results.append({n: getattr(p, extension.savefield) for n, p in model.named_parameters()})
    for name, value in results[0].items():
        values = value if isinstance(value, list) else [value]
        others = results[1][name] if isinstance(value, list) else [results[1][name]]
        for first, second in zip(values, others):
            assert_close(first, second, **TOLERANCES)


# --------------------------------------------------------------------------------------------
# refusals
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "setting_id",
    [
        "residual-mlp-tanh-sigmoid-ce-mean",
        "residual-conv-relu-mse-mean",
        "shared-input-sub-tanh-ce-mean",
    ],
)
def test_kfra_refuses_branching_with_the_reason(setting_id):
    with pytest.raises(NotImplementedError) as info:
        run_extended(_setting(setting_id), KFRA())
    assert "KFRA" in str(info.value) and "cross terms" in str(info.value)


class Scaled(nn.Module):
    """A residual block whose sum is scaled outside any module."""

    def __init__(self):
        super().__init__()
        self.lin0, self.lin1, self.out = nn.Linear(6, 5), nn.Linear(5, 5), nn.Linear(5, 3)

    def forward(self, x):
        x = self.lin0(x)
        return self.out(0.5 * (self.lin1(x) + x))


def test_an_operation_between_modules_is_refused_with_the_way_out():
    torch.manual_seed(0)
    model, lossfunc = extend(Scaled().double()), extend(nn.CrossEntropyLoss())
    loss = lossfunc(model(torch.randn(3, 6, dtype=torch.float64)), torch.randint(3, (3,)))
    with pytest.raises(NotImplementedError) as info:
        with backpack(DiagGGNExact()):
            loss.backward()
    message = str(info.value)
    assert "DiagGGNExact" in message and "MulBackward0" in message
    assert "module of its own" in message


class SumPairs(nn.Module):
    """Sums neighbouring features: halves the features (a parameter-free reshaping module)."""

    def forward(self, x):
        return x.reshape(x.shape[0], -1, 2).sum(2)


def test_the_memory_limit_applies_to_the_fallback():
    # 10 columns: 8 KB at the last Linear's input [8, 25], 16 KB at SumPairs' input [8, 50]
    torch.manual_seed(0)
    model = extend(nn.Sequential(nn.Linear(10, 50), SumPairs(), nn.Linear(25, 10)))
    lossfunc = extend(nn.CrossEntropyLoss())
    loss = lossfunc(model(torch.randn(8, 10)), torch.randint(0, 10, (8,)))
    set_memory_limit(10_000)
    try:
        with pytest.raises(MemoryError, match="SumPairs"):
            with backpack(DiagGGNExact()):
                loss.backward()
    finally:
        set_memory_limit(None)


class Masked(nn.Module):
    """A parameter-free module with a second input: the fallback cannot call it alone."""

    def forward(self, x, mask):
        return x * mask


class MaskedNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin0, self.masked, self.out = nn.Linear(6, 5), Masked(), nn.Linear(5, 3)

    def forward(self, x):
        return self.out(self.masked(self.lin0(x), (x[:, :5] > 0).to(x.dtype)))


def test_a_parameter_free_module_with_a_second_input_is_refused_naming_it():
    torch.manual_seed(0)
    model, lossfunc = extend(MaskedNet().double()), extend(nn.CrossEntropyLoss())
    loss = lossfunc(model(torch.randn(3, 6, dtype=torch.float64)), torch.randint(3, (3,)))
    with pytest.raises(NotImplementedError) as info:
        with backpack(DiagGGNExact()):
            loss.backward()
    assert "Masked" in str(info.value) and "DiagGGNExact" in str(info.value)
