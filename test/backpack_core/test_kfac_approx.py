"""The three conventions of KFAC/KFLR for layers with weight sharing (``kfac_approx``).

References, all independent of the engine: the exact GGN block of a conv or Linear weight
from ``torch.func`` in the limits where a convention is exact (expand: one output position,
or derivatives uncorrelated across positions and alike at each, as for a squared error on
the layer's output; reduce: inputs equal at every position), the per-convention factors
from the exact per-sample output GGNs (``reference.kronecker_factors``), and curvlinops'
``KFACLinearOperator`` (a test-only dependency).
"""

import functools

import pytest
import reference
import torch
from settings import SETTING_IDS, SETTINGS, Setting, kronecker_layers, run_extended
from torch import nn
from torch.testing import assert_close

from backpack_core import backpack, extend
from backpack_core.derivatives.loss import CrossEntropyDerivatives, MSELossDerivatives
from backpack_core.extensions import KFAC, KFLR, KFRA

APPROXIMATIONS = ["backpack", "expand", "reduce"]
TOLERANCES = {"rtol": 1e-7, "atol": 1e-10}

# Settings with weight sharing (convolutions, Linear layers with extra dimensions) and a few
# without, where the three conventions must coincide.
KRONECKER_IDS = [
    "linear-ce-mean",
    "linear-mse-sum",
    "linear-extradims-mse-mean",
    "linear-extradims-mse-sum",
    "linear-extradims-flatten-ce-mean",
    "linear-extradims-flatten-ce-sum",
    "conv1d-relu-ce-mean",
    "conv1d-stride-mse-sum",
    "conv2d-ce-mean",
    "conv2d-stride-padding-sigmoid-ce-mean",
    "conv2d-same-tanh-mse-mean",
    "conv2d-dilation-ce-mean",
    "conv2d-stride-exceeds-kernel-tanh-ce-mean",
    "conv2d-padding-relu-conv-mse-sum",
    "conv3d-ce-mean",
    "maxpool2d-ce-mean",
    "tf-same-padding-hook-ce-mean",
    "conv2d-ce-sum-float32",
]


def _setting(setting_id: str) -> Setting:
    return SETTINGS[SETTING_IDS.index(setting_id)]


@functools.lru_cache(maxsize=None)
def _references(setting: Setting, kfac_approx: str) -> dict:
    model, lossfunc, X, y = setting.build()
    return {
        name: reference.kronecker_factors(model, lossfunc, X, y, layer, kfac_approx)
        for name, layer in kronecker_layers(model).items()
    }


def _kflr(model, lossfunc, X, y, kfac_approx, savefield="kflr", extension=None):
    """``{layer name: (weight factors, bias factors or None)}`` after one backward pass."""
    model, lossfunc = extend(model), extend(lossfunc)
    extension = KFLR(kfac_approx=kfac_approx) if extension is None else extension
    with backpack(extension):
        lossfunc(model(X), y).backward()
    result = {}
    for name, layer in kronecker_layers(model).items():
        bias = getattr(layer.bias, savefield) if layer.bias is not None else None
        result[name] = (getattr(layer.weight, savefield), bias)
    return result


# --------------------------------------------------------------------------------------------
# the interface
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "make", [lambda v: KFLR(kfac_approx=v), lambda v: KFAC(mc_samples=1, kfac_approx=v)]
)
@pytest.mark.parametrize("value", ["Expand", "kfc", None, 1])
def test_unknown_kfac_approx_is_a_value_error_naming_it_and_the_choices(make, value):
    with pytest.raises(ValueError) as info:
        make(value)
    message = str(info.value)
    assert repr(value) in message and "kfac_approx" in message
    assert all(repr(choice) in message for choice in APPROXIMATIONS)


def test_default_is_backpack_and_shown_in_repr():
    assert KFLR().kfac_approx == KFAC().kfac_approx == "backpack"
    assert repr(KFAC(mc_samples=2, kfac_approx="expand")) == (
        "KFAC(mc_samples=2, kfac_approx='expand')"
    )
    assert repr(KFLR(kfac_approx="reduce")) == "KFLR(kfac_approx='reduce')"
    assert KFRA().kfac_approx == "backpack"


# --------------------------------------------------------------------------------------------
# against the per-convention references from the exact output GGNs
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kfac_approx", APPROXIMATIONS)
@pytest.mark.parametrize("setting_id", KRONECKER_IDS)
def test_kflr_matches_reference_in_each_convention(setting_id, kfac_approx):
    setting = _setting(setting_id)
    expected = _references(setting, kfac_approx)
    params = run_extended(setting, KFLR(kfac_approx=kfac_approx))
    for layer, (B, A) in expected.items():
        prefix = f"{layer}." if layer else ""
        weight, bias = params[prefix + "weight"], params.get(prefix + "bias")
        assert_close(weight.kflr[0], B, **setting.tolerances)
        assert_close(weight.kflr[1], A, **setting.tolerances)
        if bias is not None:
            assert len(bias.kflr) == 1
            assert_close(bias.kflr[0], B, **setting.tolerances)


@pytest.mark.parametrize("kfac_approx", ["backpack", "expand"])
@pytest.mark.parametrize("setting_id", ["conv2d-stride-padding-sigmoid-ce-mean", "conv3d-ce-mean"])
def test_input_factor_from_patches_of_a_few_samples_at_a_time(monkeypatch, setting_id, kfac_approx):
    from backpack_core.derivatives import convolution

    monkeypatch.setattr(convolution, "_PATCH_BUFFER_ELEMENTS", 1)  # one sample per chunk
    setting = _setting(setting_id)
    params = run_extended(setting, KFLR(kfac_approx=kfac_approx))
    for layer, (_, A) in _references(setting, kfac_approx).items():
        assert_close(params[f"{layer}.weight"].kflr[1], A, **setting.tolerances)


STRIDE_ONE_IDS = [
    "conv1d-relu-ce-mean",
    "conv2d-ce-mean",
    "conv2d-same-tanh-mse-mean",
    "conv2d-dilation-ce-mean",
    "conv2d-padding-relu-conv-mse-sum",
    "conv3d-ce-mean",
    "zeropad2d-ce-mean",
    "conv2d-ce-sum-float32",
]


@pytest.mark.parametrize("kfac_approx", ["backpack", "expand"])
@pytest.mark.parametrize("setting_id", STRIDE_ONE_IDS)
def test_input_factor_from_shifted_products(monkeypatch, setting_id, kfac_approx):
    # the form chosen for stride-1 convolutions with many channels, forced on small ones
    from backpack_core.derivatives.convolution import ConvolutionDerivatives

    monkeypatch.setattr(ConvolutionDerivatives, "input_gram", ConvolutionDerivatives._shift_gram)
    setting = _setting(setting_id)
    params = run_extended(setting, KFLR(kfac_approx=kfac_approx))
    for layer, (_, A) in _references(setting, kfac_approx).items():
        assert_close(params[f"{layer}.weight"].kflr[1], A, **setting.tolerances)


@pytest.mark.parametrize("setting_id", ["linear-ce-mean", "linear-mse-sum"])
def test_conventions_coincide_without_weight_sharing(setting_id):
    factors = [run_extended(_setting(setting_id), KFLR(v))["weight"].kflr for v in APPROXIMATIONS]
    for other in factors[1:]:
        assert_close(other[0], factors[0][0])
        assert_close(other[1], factors[0][1])


def test_kfac_and_kflr_of_different_conventions_in_one_backward_pass():
    # memoised factors must be kept apart per convention and per extension
    setting = _setting("conv2d-stride-padding-sigmoid-ce-mean")
    model, lossfunc, X, y = setting.build()
    model, lossfunc = extend(model), extend(lossfunc)
    with backpack(KFLR(kfac_approx="expand"), KFAC(kfac_approx="reduce")):
        lossfunc(model(X), y).backward()
    expand, reduce = _references(setting, "expand"), _references(setting, "reduce")
    for layer in expand:
        weight = model.get_submodule(layer).weight
        assert_close(weight.kflr[0], expand[layer][0])
        assert_close(weight.kflr[1], expand[layer][1])
        assert_close(weight.kfac[1], reduce[layer][1])


@pytest.mark.parametrize("kfac_approx", APPROXIMATIONS)
@pytest.mark.parametrize("loss_derivatives", [CrossEntropyDerivatives, MSELossDerivatives])
def test_kfac_applies_the_convention_to_its_sampled_factor(
    monkeypatch, loss_derivatives, kfac_approx
):
    # With the exact factor in place of the sampled one, KFAC must give KFLR's factors.
    monkeypatch.setattr(
        loss_derivatives, "sqrt_hessian_sampled", lambda self, io, mc: self.sqrt_hessian(io)
    )
    setting_id = {CrossEntropyDerivatives: "conv2d-ce-mean"}
    setting = _setting(setting_id.get(loss_derivatives, "conv2d-padding-relu-conv-mse-sum"))
    params = run_extended(setting, KFAC(kfac_approx=kfac_approx))
    for layer, (B, A) in _references(setting, kfac_approx).items():
        assert_close(params[f"{layer}.weight"].kfac[0], B)
        assert_close(params[f"{layer}.weight"].kfac[1], A)
        assert_close(params[f"{layer}.bias"].kfac[0], B)


# --------------------------------------------------------------------------------------------
# against the exact GGN block where a convention is exact
# --------------------------------------------------------------------------------------------
def _block(model, lossfunc, X, y, name):
    return reference.ggn_block(model, lossfunc, X, y, name)


def _build(make_model, X, loss, reduction, seed=0):
    torch.manual_seed(seed)
    model = make_model().double()
    with torch.no_grad():
        output = model(X)
    if loss == "ce":
        return model, nn.CrossEntropyLoss(reduction=reduction), torch.randint(3, (X.shape[0],))
    return model, nn.MSELoss(reduction=reduction), torch.randn_like(output)


@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize(
    "make_model, input_shape",
    [
        (lambda: nn.Conv2d(2, 3, 2, padding=1), (3, 2, 3, 3)),
        (lambda: nn.Conv1d(2, 2, 3, stride=2), (2, 2, 7)),
        (lambda: nn.Linear(3, 2), (3, 4, 3)),
    ],
    ids=["conv2d-padding", "conv1d-stride", "linear-extradims"],
)
def test_expand_is_exact_for_derivatives_uncorrelated_across_positions(
    make_model, input_shape, reduction
):
    # A squared error on the layer's output: every backpropagated column is one (channel,
    # position) unit vector, so different positions never meet, and each position sees the
    # same curvature 2c I. Then B kron A of expand is the weight's GGN block, for any batch.
    torch.manual_seed(1)
    X = torch.randn(input_shape, dtype=torch.float64)
    model, lossfunc, y = _build(make_model, X, "mse", reduction)
    block = _block(model, lossfunc, X, y, "weight")
    factors = _kflr(model, lossfunc, X, y, "expand")[""]
    B, A = factors[0]
    assert_close(torch.kron(B, A), block, **TOLERANCES)
    # reduce and backpack are not exact here (positions > 1)
    B, A = _kflr(model, lossfunc, X, y, "reduce")[""][0]
    assert not torch.allclose(torch.kron(B, A), block)


@pytest.mark.parametrize("loss", ["ce", "mse"])
def test_every_convention_is_exact_for_one_output_position_and_one_sample(loss):
    # a kernel as large as the input: a single output position, nothing to share
    def make_model():
        return nn.Sequential(
            nn.Conv2d(2, 3, 3), nn.ReLU(), nn.Flatten(), nn.Linear(3, 4), nn.Sigmoid()
        )

    X = torch.randn(1, 2, 3, 3, dtype=torch.float64)
    model, lossfunc, y = _build(make_model, X, loss, "mean")
    block = _block(model, lossfunc, X, y, "0.weight")
    bias_block = _block(model, lossfunc, X, y, "0.bias")
    for kfac_approx in APPROXIMATIONS:
        (B, A), (bias_B,) = _kflr(model, lossfunc, X, y, kfac_approx)["0"]
        assert_close(torch.kron(B, A), block, **TOLERANCES)
        assert_close(bias_B, bias_block, **TOLERANCES)


def _constant_over_positions(shape):
    """Inputs ``[N, C, *spatial]`` equal at every position (different per sample/channel)."""
    values = torch.randn(*shape[:2], *([1] * (len(shape) - 2)), dtype=torch.float64)
    return values.expand(shape).clone()


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_reduce_is_exact_for_inputs_equal_at_every_position_in_a_deep_net(reduction):
    # Without padding every unfolded patch of a spatially constant input is the same, and
    # the next layer's input stays constant too. One sample (several samples with
    # different inputs make any Kronecker product inexact, see the next test).
    def make_model():
        return nn.Sequential(
            nn.Conv2d(2, 3, 2),
            nn.Tanh(),
            nn.Conv2d(3, 2, 2),
            nn.Flatten(),
            nn.Linear(8, 3),
        )

    X = _constant_over_positions((1, 2, 4, 4))
    model, lossfunc, y = _build(make_model, X, "ce", reduction)
    factors = _kflr(model, lossfunc, X, y, "reduce")
    backpack_factors = _kflr(model, lossfunc, X, y, "backpack")
    for layer, positions in (("0", 9), ("2", 4)):
        block = _block(model, lossfunc, X, y, f"{layer}.weight")
        (B, A), (bias_B,) = factors[layer]
        assert_close(torch.kron(B, A), block, **TOLERANCES)
        assert_close(bias_B, _block(model, lossfunc, X, y, f"{layer}.bias"), **TOLERANCES)
        # BackPACK's convention: the same B with T times reduce's A, T times the block
        (B, A), _ = backpack_factors[layer]
        assert_close(torch.kron(B, A), positions * block, **TOLERANCES)


def _constant_over_extra_dims(shape):
    """Inputs ``[N, T, in]`` of a Linear layer equal at every position ``t``."""
    values = torch.randn(shape[0], 1, shape[2], dtype=torch.float64)
    return values.expand(shape).clone()


@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize(
    "make_model, make_input",
    [
        (lambda: nn.Conv2d(2, 3, 2), lambda: _constant_over_positions((3, 2, 4, 4))),
        (lambda: nn.Linear(3, 2), lambda: _constant_over_extra_dims((3, 5, 3))),
    ],
    ids=["conv2d", "linear-extradims"],
)
def test_reduce_is_exact_for_equal_inputs_over_positions_and_a_squared_error(
    make_model, make_input, reduction
):
    # A squared error on the output gives every sample the same position-summed curvature,
    # so with inputs equal over positions reduce is exact for a batch of different samples.
    torch.manual_seed(4)
    X = make_input()
    model, lossfunc, y = _build(make_model, X, "mse", reduction)
    block = _block(model, lossfunc, X, y, "weight")
    (B, A), _ = _kflr(model, lossfunc, X, y, "reduce")[""]
    assert_close(torch.kron(B, A), block, **TOLERANCES)
    # BackPACK's convention counts the T equal positions in A once more: T times the block
    (B, A), _ = _kflr(model, lossfunc, X, y, "backpack")[""]
    positions = model(X)[0, 0].numel() if isinstance(model, nn.Conv2d) else X.shape[1]
    assert_close(torch.kron(B, A), positions * block, **TOLERANCES)


def _trace_ratios(positions_side: int, seed: int = 0) -> dict:
    """``tr(B) tr(A) / tr(G)`` of one conv layer's weight for each convention."""
    torch.manual_seed(seed)
    side = positions_side + 2  # a 3x3 kernel without padding

    def make_model():
        return nn.Sequential(
            nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * positions_side**2, 5)
        )

    X = torch.rand(4, 3, side, side, dtype=torch.float64)  # pixels in [0, 1]
    model, lossfunc, y = _build(make_model, X, "ce", "mean", seed=seed)
    exact = _block(model, lossfunc, X, y, "0.weight").trace()
    ratios = {}
    for kfac_approx in APPROXIMATIONS:
        (B, A), _ = _kflr(model, lossfunc, X, y, kfac_approx)["0"]
        ratios[kfac_approx] = (B.trace() * A.trace() / exact).item()
    return ratios


@pytest.mark.parametrize("side, seed", [(4, 0), (4, 1), (8, 0)])
def test_trace_ratio_of_one_conv_layer_shows_backpacks_overestimate(side, seed):
    # T output positions: BackPACK's convention overestimates the block's trace by about T
    # (measured 13.5 and 18.2 at T = 16, 59 at T = 64), expand and reduce stay on its scale
    # (0.7 to 1.5).
    positions = side * side
    ratios = _trace_ratios(side, seed)
    assert positions / 4 < ratios["backpack"] < 2 * positions
    assert 0.25 < ratios["expand"] < 4
    assert 0.25 < ratios["reduce"] < 4


# --------------------------------------------------------------------------------------------
# equality with curvlinops' KFACLinearOperator
# --------------------------------------------------------------------------------------------
curvlinops = pytest.importorskip("curvlinops")


def _curvlinops_factors(model, lossfunc, X, y, kfac_approx, fisher_type="type-2"):
    operator = curvlinops.KFACLinearOperator(
        model,
        lossfunc,
        [p for p in model.parameters() if p.requires_grad],
        [(X, y)],
        fisher_type=fisher_type,
        kfac_approx=kfac_approx,
        check_deterministic=False,
    )
    operator.compute_kronecker_factors()
    return operator._gradient_covariances, operator._input_covariances


def _conv_net():
    return nn.Sequential(
        nn.Conv2d(2, 3, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(3, 2, 2, stride=2, bias=False),
        nn.Sigmoid(),
        nn.Flatten(),
        nn.Linear(8, 3),
    )


def _linear_extradims_net():
    return nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 3))


def _linear_extradims_flatten_net():
    return nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Flatten(), nn.Linear(8, 3))


def _wide_net():
    # enough input channels (32) for the shifted products of a stride-1 convolution
    return nn.Sequential(
        nn.Conv2d(32, 3, 3, padding=1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(300, 300),
        nn.Linear(300, 3),
    )


CURVLINOPS_CASES = [
    ("wide-ce", _wide_net, (3, 32, 10, 10), "ce"),
    ("conv-ce", _conv_net, (4, 2, 4, 4), "ce"),
    ("conv-mse", _conv_net, (3, 2, 4, 4), "mse"),
    ("linear-extradims-mse", _linear_extradims_net, (3, 5, 3), "mse"),
    ("linear-extradims-flatten-ce", _linear_extradims_flatten_net, (4, 2, 3), "ce"),
]


@pytest.mark.parametrize("kfac_approx", ["expand", "reduce"])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize(
    "make_model, input_shape, loss",
    [case[1:] for case in CURVLINOPS_CASES],
    ids=[case[0] for case in CURVLINOPS_CASES],
)
def test_kflr_equals_curvlinops_type2(
    monkeypatch, make_model, input_shape, loss, reduction, kfac_approx
):
    torch.manual_seed(2)
    X = torch.randn(input_shape, dtype=torch.float64)
    model, lossfunc, y = _build(make_model, X, loss, reduction)
    if model(X).dim() > 2:
        # T loss terms per sample ([N, T, C] outputs): curvlinops' type-2 backpropagates C
        # columns per sample, column c holding column c of every term's Hessian factor at
        # once. Their outer products add cross terms between the T terms that the GGN does
        # not have, which changes reduce's B (ours is the GGN's, see
        # test_kflr_matches_reference_in_each_convention). Given curvlinops' columns, the
        # conventions agree:
        exact_factor = MSELossDerivatives.sqrt_hessian

        def summed_over_terms(self, io):
            terms, classes = io.input.shape[1:]
            columns = exact_factor(self, io)  # [T*C, N, T, C]
            return columns.reshape(terms, classes, *columns.shape[1:]).sum(0)

        monkeypatch.setattr(MSELossDerivatives, "sqrt_hessian", summed_over_terms)
    gradient_covariances, input_covariances = _curvlinops_factors(
        model, lossfunc, X, y, kfac_approx
    )
    ours = _kflr(model, lossfunc, X, y, kfac_approx)
    for name, ((B, A), bias) in ours.items():
        assert_close(B, gradient_covariances[name], **TOLERANCES)
        assert_close(A, input_covariances[name], **TOLERANCES)
        if bias is not None:
            assert_close(bias[0], gradient_covariances[name], **TOLERANCES)


@pytest.mark.parametrize("kfac_approx", ["expand", "reduce"])
def test_kfac_input_factor_equals_curvlinops_mc(kfac_approx):
    # A does not depend on the sampled labels
    torch.manual_seed(3)
    X = torch.randn(4, 2, 4, 4, dtype=torch.float64)
    model, lossfunc, y = _build(_conv_net, X, "ce", "mean")
    _, input_covariances = _curvlinops_factors(model, lossfunc, X, y, kfac_approx, "mc")
    ours = _kflr(model, lossfunc, X, y, None, "kfac", KFAC(kfac_approx=kfac_approx))
    for name, ((B, A), _) in ours.items():
        assert B.shape[0] == B.shape[1] and torch.isfinite(B).all()
        assert_close(A, input_covariances[name], **TOLERANCES)
