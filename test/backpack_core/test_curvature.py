"""Second-order extensions against the ``torch.func`` references, and Kronecker properties.

Monte-Carlo extensions are checked by convergence: with 20,000 samples in float64 their
relative error is about 1%, the tolerance is a few percent of the largest entry.
"""

import functools

import pytest
import reference
import torch
from settings import (
    SETTING_IDS,
    SETTINGS,
    Setting,
    kronecker_layers,
    reference_of,
    run_extended,
)
from torch import nn
from torch.testing import assert_close

from backpack_core import backpack, extend
from backpack_core.extensions import (
    ALL,
    KFAC,
    KFLR,
    KFRA,
    BatchDiagGGNExact,
    BatchDiagGGNMC,
    BatchDiagHessian,
    BatchDotGrad,
    BatchGrad,
    DiagGGNExact,
    DiagGGNMC,
    DiagHessian,
    Variance,
)

# (extension class, attribute, function of the reference module)
DIAGONALS = [
    (DiagGGNExact, "diag_ggn_exact", "ggn_diagonal"),
    (BatchDiagGGNExact, "diag_ggn_exact_batch", "batch_ggn_diagonal"),
    (DiagHessian, "diag_h", "hessian_diagonal"),
    (BatchDiagHessian, "diag_h_batch", "batch_hessian_diagonal"),
]
DIAGONAL_IDS = [extension.__name__ for extension, _, _ in DIAGONALS]

MC_SAMPLES = 20_000
SINGLE_LAYER_IDS = [
    "linear-ce-mean",
    "linear-ce-sum",
    "linear-mse-mean",
    "linear-mse-sum",
    "linear-nobias-ce-mean",
    "linear-extradims-mse-mean",
    "conv2d-mse-sum",
    "conv2d-flatten-ce-mean",
    "conv1d-stride-mse-sum",
]
# Kronecker factors the engine refuses by design, as BackPACK 1.7 does:
# (setting id, extension name) -> class of the refused module
REFUSED = {
    ("conv2d-groups-ce-mean", "KFLR"): "Conv2d",
    ("conv2d-groups-nobias-rect-ce-sum", "KFLR"): "Conv2d",
    ("conv2d-one-position-groups-ce-sum", "KFLR"): "Conv2d",
    ("linear-extradims-mse-mean", "KFRA"): "Linear",
}
MC_IDS = [
    "linear-ce-mean",
    "linear-extradims-mse-mean",
    "mlp-sigmoid-mse-sum",
    "conv2d-ce-mean",
    "tf-same-padding-hook-ce-mean",
    "upsampling-bilinear-ce-mean",
]


def _setting(setting_id: str) -> Setting:
    return SETTINGS[SETTING_IDS.index(setting_id)]


def _monte_carlo_tolerances(expected: torch.Tensor) -> dict:
    return {"rtol": 0.05, "atol": 0.03 * expected.abs().max().item()}


# --------------------------------------------------------------------------------------------
# diagonals
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("extension, savefield, quantity", DIAGONALS, ids=DIAGONAL_IDS)
@pytest.mark.parametrize("setting", SETTINGS, ids=SETTING_IDS)
def test_diagonal_matches_reference(setting, extension, savefield, quantity):
    expected = reference_of(setting, quantity)
    params = run_extended(setting, extension())
    for name, p in params.items():
        if not p.requires_grad:
            assert not hasattr(p, savefield), f"frozen {name} got {savefield}"
            continue
        assert_close(getattr(p, savefield), expected[name], **setting.tolerances)


@pytest.mark.parametrize("setting_id", ["mlp-sigmoid-ce-mean", "avgpool2d-tanh-ce-mean"])
def test_per_sample_diagonals_sum_to_full_ones(setting_id):
    setting = _setting(setting_id)
    extensions = [DiagGGNExact(), BatchDiagGGNExact(), DiagHessian(), BatchDiagHessian()]
    params = run_extended(setting, *extensions)
    for p in params.values():
        assert_close(p.diag_ggn_exact_batch.sum(0), p.diag_ggn_exact, **setting.tolerances)
        assert_close(p.diag_h_batch.sum(0), p.diag_h, **setting.tolerances)


@pytest.mark.parametrize("setting_id", MC_IDS)
def test_diag_ggn_mc_converges_to_exact(setting_id):
    setting = _setting(setting_id)
    exact = reference_of(setting, "ggn_diagonal")
    exact_batch = reference_of(setting, "batch_ggn_diagonal")
    params = run_extended(setting, DiagGGNMC(MC_SAMPLES), BatchDiagGGNMC(MC_SAMPLES))
    for name, p in params.items():
        assert_close(p.diag_ggn_mc, exact[name], **_monte_carlo_tolerances(exact[name]))
        batch_tolerances = _monte_carlo_tolerances(exact_batch[name])
        assert_close(p.diag_ggn_mc_batch, exact_batch[name], **batch_tolerances)


def _sampled_run(setting: Setting, extension, seed: int) -> dict:
    """One backward pass with the global generator seeded right before it."""
    model, lossfunc, X, y = setting.build()
    model, lossfunc = extend(model), extend(lossfunc)
    loss = lossfunc(model(X), y)
    torch.manual_seed(seed)
    with backpack(extension):
        loss.backward()
    return dict(model.named_parameters())


@pytest.mark.parametrize(
    "make_extension, read",
    [
        (lambda: DiagGGNMC(), lambda p: [p.diag_ggn_mc]),
        (lambda: BatchDiagGGNMC(mc_samples=2), lambda p: [p.diag_ggn_mc_batch]),
        (lambda: KFAC(), lambda p: p.kfac),
    ],
    ids=["DiagGGNMC", "BatchDiagGGNMC", "KFAC"],
)
def test_monte_carlo_is_reproducible_with_manual_seed(make_extension, read):
    setting = _setting("mlp-relu-ce-mean")
    first = _sampled_run(setting, make_extension(), seed=3)
    again = _sampled_run(setting, make_extension(), seed=3)
    other = _sampled_run(setting, make_extension(), seed=4)
    for name, p in first.items():
        for value, repeated in zip(read(p), read(again[name])):
            assert torch.equal(value, repeated), name
    # the seed is what fixes the numbers: another seed draws other samples
    last_weight = first["2.weight"]
    assert not torch.equal(read(last_weight)[0], read(other["2.weight"])[0])


# --------------------------------------------------------------------------------------------
# Kronecker factors
# --------------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=None)
def _kflr_references(setting: Setting) -> dict:
    """``{layer name: [B, A]}`` of every Linear/Conv layer of the setting."""
    model, lossfunc, X, y = setting.build()
    return {
        name: reference.kflr_factors(model, lossfunc, X, y, layer)
        for name, layer in kronecker_layers(model).items()
    }


def _param_name(layer: str, name: str) -> str:
    return f"{layer}.{name}" if layer else name


def _assert_kronecker_factors(params, expected, savefield, tolerances):
    for layer, (B, A) in expected.items():
        weight = params[_param_name(layer, "weight")]
        bias = params.get(_param_name(layer, "bias"))
        if weight.requires_grad:
            factors = getattr(weight, savefield)
            assert len(factors) == 2, f"{layer}.weight: {len(factors)} factors"
            assert_close(factors[0], B, **tolerances)
            assert_close(factors[1], A, **tolerances)
        if bias is not None and bias.requires_grad:
            factors = getattr(bias, savefield)
            assert len(factors) == 1, f"{layer}.bias: {len(factors)} factors"
            assert_close(factors[0], B, **tolerances)


def _assert_refused(setting: Setting, extension) -> None:
    """The engine raises NotImplementedError naming the extension and the module class."""
    module_class = REFUSED[(setting.id, extension.__class__.__name__)]
    with pytest.raises(NotImplementedError) as info:
        run_extended(setting, extension)
    assert module_class in str(info.value) and extension.__class__.__name__ in str(info.value)


@pytest.mark.parametrize("setting", SETTINGS, ids=SETTING_IDS)
def test_kflr_matches_reference(setting):
    if (setting.id, "KFLR") in REFUSED:
        return _assert_refused(setting, KFLR())
    expected = _kflr_references(setting)
    params = run_extended(setting, KFLR())
    _assert_kronecker_factors(params, expected, "kflr", setting.tolerances)


@pytest.mark.parametrize("loss", ["ce", "mse"])
def test_kflr_of_one_sample_is_the_exact_ggn_block_of_a_linear_layer(loss):
    setting = Setting("one-sample-linear", lambda: nn.Linear(5, 3), (1, 5), loss, "mean")
    model, lossfunc, X, y = setting.build()
    weight_block = reference.ggn_block(model, lossfunc, X, y, "weight")
    bias_block = reference.ggn_block(model, lossfunc, X, y, "bias")
    params = run_extended(setting, KFLR())
    B, A = params["weight"].kflr
    assert B.shape == (3, 3) and A.shape == (5, 5)
    assert_close(torch.kron(B, A), weight_block, **setting.tolerances)
    assert_close(params["bias"].kflr[0], bias_block, **setting.tolerances)


@pytest.mark.parametrize("setting_id", SINGLE_LAYER_IDS)
def test_kfra_equals_kflr_on_a_single_layer(setting_id):
    setting = _setting(setting_id)
    if (setting.id, "KFRA") in REFUSED:
        return _assert_refused(setting, KFRA())
    expected = _kflr_references(setting)
    params = run_extended(setting, KFRA())
    _assert_kronecker_factors(params, expected, "kfra", setting.tolerances)


@pytest.mark.parametrize("setting_id", MC_IDS)
def test_kfac_converges_to_kflr(setting_id):
    setting = _setting(setting_id)
    expected = _kflr_references(setting)
    params = run_extended(setting, KFAC(mc_samples=MC_SAMPLES))
    for layer, (B, A) in expected.items():
        weight, bias = params[_param_name(layer, "weight")], params[_param_name(layer, "bias")]
        # the input factor is not sampled
        assert_close(weight.kfac[1], A, **setting.tolerances)
        assert_close(weight.kfac[0], B, **_monte_carlo_tolerances(B))
        assert_close(bias.kfac[0], B, **_monte_carlo_tolerances(B))


@pytest.mark.parametrize("setting_id", ["deep-linear-ce-mean", "deep-linear-mse-sum"])
def test_kfra_equals_kflr_on_a_deep_linear_network(setting_id):
    # with sample-independent Jacobians KFRA's batch averages lose nothing
    setting = _setting(setting_id)
    params = run_extended(setting, KFRA())
    _assert_kronecker_factors(params, _kflr_references(setting), "kfra", setting.tolerances)


@pytest.mark.parametrize(
    "setting_id, last_layer",
    [
        ("mlp-sigmoid-ce-mean", "2"),
        ("mlp-relu-ce-mean", "2"),
        ("maxpool2d-ce-mean", "4"),
        ("conv2d-stride-padding-sigmoid-ce-mean", "3"),
    ],
)
def test_kfra_input_factors_and_last_output_factor_are_exact(setting_id, last_layer):
    # A is KFLR's in every layer; the last layer's B is the summed loss Hessian, as in KFLR
    setting = _setting(setting_id)
    expected = _kflr_references(setting)
    params = run_extended(setting, KFRA())
    for layer, (_, A) in expected.items():
        assert_close(params[f"{layer}.weight"].kfra[1], A, **setting.tolerances)
    B_last = expected[last_layer][0]
    assert_close(params[f"{last_layer}.weight"].kfra[0], B_last, **setting.tolerances)
    assert_close(params[f"{last_layer}.bias"].kfra[0], B_last, **setting.tolerances)


@pytest.mark.parametrize(
    "setting_id",
    [
        "mlp-sigmoid-ce-mean",
        "conv2d-stride-padding-sigmoid-ce-mean",
        "maxpool2d-ce-mean",
        "linear-extradims-flatten-ce-mean",
    ],
)
def test_all_exact_extensions_in_one_backward_pass(setting_id):
    # extensions that share backpropagated quantities must not disturb each other
    setting = _setting(setting_id)
    extensions = [BatchGrad(), Variance(), BatchDotGrad(), KFLR()]
    extensions += [extension() for extension, _, _ in DIAGONALS]
    params = run_extended(setting, *extensions)
    first_order = reference_of(setting, "first_order")
    kflr = _kflr_references(setting)
    for name, p in params.items():
        for savefield in ("grad_batch", "variance", "batch_dot"):
            assert_close(getattr(p, savefield), first_order[savefield][name], **setting.tolerances)
        for _, savefield, quantity in DIAGONALS:
            expected = reference_of(setting, quantity)[name]
            assert_close(getattr(p, savefield), expected, **setting.tolerances)
    _assert_kronecker_factors(params, kflr, "kflr", setting.tolerances)


def test_quantities_are_overwritten_not_accumulated():
    # p.grad accumulates over two backward passes; the extensions' values are the last pass's
    setting = _setting("mlp-tanh-mse-mean")
    model, lossfunc, X, y = setting.build()
    model, lossfunc = extend(model), extend(lossfunc)
    for _ in range(2):
        with backpack(BatchGrad(), DiagGGNExact()):
            lossfunc(model(X), y).backward()
    for name, p in model.named_parameters():
        expected_grad_batch = reference_of(setting, "first_order")["grad_batch"][name]
        assert_close(p.grad, 2 * expected_grad_batch.sum(0), **setting.tolerances)
        assert_close(p.grad_batch, expected_grad_batch, **setting.tolerances)
        expected_ggn = reference_of(setting, "ggn_diagonal")[name]
        assert_close(p.diag_ggn_exact, expected_ggn, **setting.tolerances)


def test_every_curvature_extension_is_tested_here():
    tested = {extension for extension, _, _ in DIAGONALS}
    tested |= {DiagGGNMC, BatchDiagGGNMC, KFAC, KFLR, KFRA}
    assert {extension for extension in ALL if extension().quantities()} == tested
