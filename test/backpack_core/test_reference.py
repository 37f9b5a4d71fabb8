"""The references themselves, checked against each other and against plain autograd."""

import pytest
import reference
import torch
from settings import SETTING_IDS, SETTINGS, Setting, reference_of
from torch import nn
from torch.testing import assert_close

# Settings whose network is piecewise linear in each parameter block (no Sigmoid, Tanh, ELU,
# ...): there the diagonal blocks of the Hessian equal those of the GGN.
CURVED = ("sigmoid", "tanh", "extradims-flatten", "nested", "dropout", "upsampling")
CURVED += ("-elu-", "-gelu-", "-softplus-", "-silu-", "-cube-")
PIECEWISE_LINEAR = [s for s in SETTINGS if not any(word in s.id for word in CURVED)]


@pytest.mark.parametrize("setting", SETTINGS, ids=SETTING_IDS)
def test_individual_gradients_sum_to_grad(setting):
    model, lossfunc, X, y = setting.build()
    quantities = reference_of(setting, "first_order")
    lossfunc(model(X), y).backward()
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    assert quantities["grad"].keys() == trainable.keys()
    for name, p in trainable.items():
        assert_close(quantities["grad"][name], p.grad, **setting.tolerances)
        flat = quantities["grad_batch"][name].flatten(start_dim=1)
        assert_close(quantities["batch_dot"][name].diagonal(), quantities["batch_l2"][name])
        n = X.shape[0]
        variance = (flat**2).sum(0) / n - (p.grad.flatten() / n) ** 2
        assert_close(quantities["variance"][name].flatten(), variance, **setting.tolerances)


def test_individual_gradient_of_one_sample_is_its_scaled_gradient():
    model, lossfunc, X, y = SETTINGS[SETTING_IDS.index("mlp-tanh-mse-mean")].build()
    g = reference.individual_gradients(model, lossfunc, X, y)
    # MSELoss(mean) averages over N * D elements
    loss = nn.functional.mse_loss(model(X[1:2]), y[1:2], reduction="sum") / y.numel()
    loss.backward()
    for name, p in model.named_parameters():
        assert_close(g[name][1], p.grad)


def _dense_ggn_blocks(setting: Setting):
    """Dense GGN blocks ``J^T H J`` of the whole batch.

    ``J`` is the Jacobian of the whole batch's output, ``H`` the Hessian of the reduced loss
    module w.r.t. that output, both from ``torch.autograd.functional``.
    """
    model, lossfunc, X, y = setting.build()
    params = {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}
    output = model(X).detach()
    hess = torch.autograd.functional.hessian(lambda out: lossfunc(out, y), output)
    hess = hess.reshape(output.numel(), output.numel())
    blocks = {}
    for name, p in params.items():

        def output_of(value, name=name):
            return torch.func.functional_call(model, {**params, name: value}, (X,))

        jac = torch.autograd.functional.jacobian(output_of, p).reshape(output.numel(), -1)
        blocks[name] = jac.T @ hess @ jac
    return blocks


@pytest.mark.parametrize("setting", SETTINGS, ids=SETTING_IDS)
def test_ggn_against_dense_whole_batch_ggn(setting):
    model, lossfunc, X, y = setting.build()
    diagonal = reference_of(setting, "ggn_diagonal")
    per_sample = reference_of(setting, "batch_ggn_diagonal")
    for name, block in _dense_ggn_blocks(setting).items():
        assert_close(diagonal[name].flatten(), block.diagonal(), **setting.tolerances)
        assert_close(per_sample[name].sum(0), diagonal[name], **setting.tolerances)
        own_block = reference.ggn_block(model, lossfunc, X, y, name)
        assert_close(own_block, block, **setting.tolerances)


@pytest.mark.parametrize("setting", SETTINGS, ids=SETTING_IDS)
def test_per_sample_hessian_diagonals_sum_to_hessian_diagonal(setting):
    model, lossfunc, X, y = setting.build()
    full = reference_of(setting, "hessian_diagonal")
    per_sample = reference_of(setting, "batch_hessian_diagonal")
    for name, diagonal in full.items():
        assert per_sample[name].shape == (X.shape[0], *diagonal.shape)
        assert_close(per_sample[name].sum(0), diagonal, **setting.tolerances)


@pytest.mark.parametrize("setting", PIECEWISE_LINEAR, ids=[s.id for s in PIECEWISE_LINEAR])
def test_hessian_diagonal_equals_ggn_diagonal_for_piecewise_linear_nets(setting):
    model, lossfunc, X, y = setting.build()
    hess = reference_of(setting, "hessian_diagonal")
    ggn = reference_of(setting, "ggn_diagonal")
    for name in hess:
        assert_close(hess[name], ggn[name], **setting.tolerances)


@pytest.mark.parametrize("setting_id", ["mlp-sigmoid-ce-mean", "mlp-tanh-mse-mean"])
def test_hessian_diagonal_has_residual_terms_for_curved_nets(setting_id):
    setting = SETTINGS[SETTING_IDS.index(setting_id)]
    model, lossfunc, X, y = setting.build()
    hess = reference_of(setting, "hessian_diagonal")
    ggn = reference_of(setting, "ggn_diagonal")
    # the first layer sees the activation's second derivative, the last does not
    assert (hess["0.weight"] - ggn["0.weight"]).abs().max() > 1e-4
    assert_close(hess["2.weight"], ggn["2.weight"])


@pytest.mark.parametrize("setting_id", ["mlp-sigmoid-ce-mean", "conv2d-groups-ce-mean"])
def test_hessian_diagonal_against_double_backward(setting_id):
    setting = SETTINGS[SETTING_IDS.index(setting_id)]
    model, lossfunc, X, y = setting.build()
    expected = reference_of(setting, "hessian_diagonal")
    loss = lossfunc(model(X), y)
    for name, p in model.named_parameters():
        (g,) = torch.autograd.grad(loss, p, create_graph=True)
        g = g.flatten()
        diagonal = torch.stack(
            [
                torch.autograd.grad(g[k], p, retain_graph=True)[0].flatten()[k]
                for k in range(p.numel())
            ]
        )
        assert_close(diagonal.view_as(p), expected[name])


def test_output_ggns_sum_to_bias_block():
    setting = SETTINGS[SETTING_IDS.index("mlp-sigmoid-mse-sum")]
    model, lossfunc, X, y = setting.build()
    for index in (0, 2):
        output_ggn = reference.output_ggns(model, lossfunc, X, y, model[index]).sum(0)
        bias_block = reference.ggn_block(model, lossfunc, X, y, f"{index}.bias")
        assert_close(output_ggn, bias_block)


@pytest.mark.parametrize(
    "make_layer, input_shape",
    [
        (lambda: nn.Linear(5, 3), (1, 5)),
        # output of a single spatial position: KFLR is exact for one sample
        (lambda: nn.Conv2d(2, 3, 3), (1, 2, 3, 3)),
        (lambda: nn.Conv1d(2, 2, 3, bias=False), (1, 2, 3)),
    ],
    ids=["linear", "conv2d", "conv1d"],
)
def test_kflr_factors_are_exact_for_one_sample_and_one_position(make_layer, input_shape):
    torch.manual_seed(0)
    layer = make_layer().double()
    model = nn.Sequential(layer, nn.Flatten())
    X = torch.randn(input_shape, dtype=torch.float64)
    y = torch.randint(2, (1,))  # every layer here has at least two outputs
    lossfunc = nn.CrossEntropyLoss()
    B, A = reference.kflr_factors(model, lossfunc, X, y, layer)
    assert_close(torch.kron(B, A), reference.ggn_block(model, lossfunc, X, y, "0.weight"))


def test_unfolded_input_matches_torch_unfold():
    torch.manual_seed(0)
    conv = nn.Conv2d(2, 3, (3, 2), stride=2, padding=1, dilation=(1, 2)).double()
    x = torch.randn(1, 2, 5, 6, dtype=torch.float64)
    expected = nn.functional.unfold(
        x, (3, 2), dilation=(1, 2), padding=1, stride=2
    )  # [1, C_in*k*k, positions]
    assert_close(reference._unfolded_input(conv, x), expected[0].T)


def test_kflr_input_factor_of_grouped_convolution_sums_over_groups():
    torch.manual_seed(0)
    conv = nn.Conv2d(4, 2, 3, groups=2).double()
    x = torch.randn(1, 4, 4, 4, dtype=torch.float64)
    columns = reference._unfolded_input(conv, x)
    per_group = [nn.functional.unfold(x[:, 2 * g : 2 * g + 2], 3)[0].T for g in range(2)]
    assert_close(columns, torch.cat(per_group))


@pytest.mark.parametrize("setting", SETTINGS, ids=SETTING_IDS)
def test_builds_share_no_modules(setting):
    # hooks the engine installs on one build must not leak into the next
    first, second = setting.build()[0], setting.build()[0]
    assert not {id(m) for m in first.modules()} & {id(m) for m in second.modules()}


@pytest.mark.parametrize("setting", SETTINGS, ids=SETTING_IDS)
def test_any_loss_references_agree_with_per_sample_ones(setting):
    model, lossfunc, X, y = setting.build()
    g = reference.individual_gradients_any_loss(model, lossfunc, X, y)
    ggn = reference.ggn_diagonal_any_loss(model, lossfunc, X, y)
    for name, expected in reference_of(setting, "first_order")["grad_batch"].items():
        assert_close(g[name], expected, **setting.tolerances)
        assert_close(ggn[name], reference_of(setting, "ggn_diagonal")[name], **setting.tolerances)


@pytest.mark.parametrize("setting_id", ["conv2d-ce-mean", "tf-same-padding-hook-ce-mean"])
def test_kflr_output_factor_of_a_convolution_is_its_bias_ggn_block(setting_id):
    setting = SETTINGS[SETTING_IDS.index(setting_id)]
    model, lossfunc, X, y = setting.build()
    conv = [m for m in model.modules() if isinstance(m, nn.Conv2d)][0]
    bias_name = [n for n, p in model.named_parameters() if p is conv.bias][0]
    B, _ = reference.kflr_factors(model, lossfunc, X, y, conv)
    assert_close(B, reference.ggn_block(model, lossfunc, X, y, bias_name))
