"""The parameter-layer view: its arrays against independent constructions.

Linear and convolution layers are one view (a grouped convolution over positions), so the
extensions are written once against it. Here its pieces are checked against ``torch``'s
own unfolding and by brute force, its faster routes against the generic ones, and a
Linear layer over positions against the same map written as a kernel-1 ``Conv1d``, for
every extension.
"""

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, vjp, vmap
from torch.testing import assert_close

from backpack_core import backpack, extend
from backpack_core.derivatives import derivatives_for
from backpack_core.derivatives.io import ModuleIO
from backpack_core.derivatives.parameter_layer import ParameterLayerDerivatives
from backpack_core.extensions import ALL, KFAC, KFRA, BatchDiagGGNMC, DiagGGNMC

CONVS = {
    "conv1d-stride-padding": (lambda: nn.Conv1d(2, 4, 3, stride=2, padding=1), (3, 2, 9)),
    "conv2d": (lambda: nn.Conv2d(3, 4, 3), (2, 3, 6, 5)),
    "conv2d-padding-dilation": (lambda: nn.Conv2d(2, 3, 3, padding=2, dilation=2), (2, 2, 6, 6)),
    "conv2d-same": (lambda: nn.Conv2d(2, 3, (3, 2), padding="same"), (2, 2, 5, 6)),
    "conv2d-stride-groups": (lambda: nn.Conv2d(4, 6, 3, stride=2, groups=2), (2, 4, 7, 7)),
    "conv3d-padding": (lambda: nn.Conv3d(2, 2, 2, padding=1), (2, 2, 3, 4, 3)),
}


def _call(build, shape):
    torch.manual_seed(0)
    module = build().double()
    inputs = torch.randn(*shape, dtype=torch.float64)
    output = module(inputs).detach()
    return module, inputs, ModuleIO(module, inputs, output)


@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel lengths")
@pytest.mark.parametrize("case", CONVS)
def test_unfolded_input_equals_torch_unfold(case):
    module, inputs, io = _call(*CONVS[case])
    view = derivatives_for(module).view(io)
    # the patches by a different route: a convolution whose kernels pick one input entry
    features = module.in_channels // module.groups * view.kernel_taps
    picks = torch.eye(module.in_channels * view.kernel_taps, dtype=inputs.dtype)
    picks = picks.reshape(-1, module.in_channels, *module.kernel_size)
    padding = module.padding if isinstance(module.padding, str) else module.padding
    conv = getattr(F, f"conv{len(module.kernel_size)}d")
    patches = conv(inputs, picks, None, module.stride, padding, module.dilation)
    # [N, C * K, *out] with channel-major features; keep each group's own channels
    patches = patches.reshape(inputs.shape[0], module.in_channels, view.kernel_taps, -1)
    groups = patches.reshape(
        inputs.shape[0], module.groups, -1, view.kernel_taps, patches.shape[-1]
    )
    expected = groups.reshape(inputs.shape[0], module.groups, features, -1)
    assert_close(view.unfolded(), expected)
    assert view.positions == io.output_shape[2:].numel()


@pytest.mark.parametrize("case", CONVS)
def test_tap_counts_by_brute_force(case):
    module, inputs, io = _call(*CONVS[case])
    view = derivatives_for(module).view(io)
    ones = torch.ones(1, module.in_channels, *inputs.shape[2:], dtype=inputs.dtype)
    unfolded = derivatives_for(module).view(ModuleIO(module, ones, module(ones).detach()))
    # entries of a ones input that lie in the input (not the padding), per tap
    per_tap = unfolded.unfolded()[0, 0].reshape(-1, view.kernel_taps, view.positions)[0]
    assert_close(view.tap_counts(), per_tap.sum(1))


@pytest.mark.parametrize("case", [c for c in CONVS if "groups" not in c])
def test_faster_routes_equal_the_generic_ones(case):
    module, _, io = _call(*CONVS[case])
    derivatives = derivatives_for(module)
    assert_close(derivatives.input_gram(io), ParameterLayerDerivatives.input_gram(derivatives, io))
    assert_close(
        derivatives.mean_inputs(io), ParameterLayerDerivatives.mean_inputs(derivatives, io)
    )


LINEARS = {
    "linear": (lambda: nn.Linear(5, 3), (4, 5)),
    "linear-positions": (lambda: nn.Linear(5, 3), (4, 2, 3, 5)),
}


@pytest.mark.parametrize("sum_batch", [True, False])
@pytest.mark.parametrize("case", {**CONVS, **LINEARS})
def test_parameter_jacobian_products_equal_vjp(case, sum_batch):
    build, shape = {**CONVS, **LINEARS}[case]
    module, inputs, io = _call(build, shape)
    columns = torch.randn(3, *io.output_shape, dtype=inputs.dtype)
    params = {name: p.detach() for name, p in module.named_parameters()}

    def sample(params, x):
        return functional_call(module, params, (x.unsqueeze(0),))[0]

    def per_sample(x, cols):  # cols [V, *out]
        _, pullback = vjp(lambda p: sample(p, x), params)
        return vmap(pullback)(cols)[0]

    expected = vmap(per_sample, in_dims=(0, 1), out_dims=1)(inputs, columns)
    derivatives = derivatives_for(module)
    for name in params:
        result = derivatives.param_jac_t_mat_prod(io, name, columns, sum_batch)
        assert_close(result, expected[name].sum(1) if sum_batch else expected[name])
        # a tensor of its own: callers square it in place
        assert result.untyped_storage().data_ptr() != columns.untyped_storage().data_ptr()


def _as_conv1d(linear):
    conv = nn.Conv1d(linear.in_features, linear.out_features, 1).double()
    with torch.no_grad():
        conv.weight.copy_(linear.weight.unsqueeze(-1))
        conv.bias.copy_(linear.bias)
    return conv


def _run(model, inputs, targets, extension):
    model = extend(model)
    loss_function = extend(nn.MSELoss(reduction="sum"))
    torch.manual_seed(3)  # the same Monte-Carlo draws for both nets
    with backpack(extension):
        loss_function(model(inputs), targets).backward()
    return model


def test_kfra_refuses_linear_over_positions():
    """KFRA's channel form reads the second axis, a Linear layer's channels are the last."""
    torch.manual_seed(0)
    inputs = torch.randn(5, 6, 3, dtype=torch.float64)
    targets = torch.randn(5, 6, 4, dtype=torch.float64)
    with pytest.raises(NotImplementedError, match="more than two dimensions"):
        _run(nn.Sequential(nn.Linear(3, 4).double()), inputs, targets, KFRA())


@pytest.mark.parametrize("extension", [e for e in ALL if e is not KFRA], ids=lambda e: e.__name__)
def test_linear_over_positions_is_a_kernel_one_convolution(extension):
    """``Linear`` on ``[N, T, C]`` and ``Conv1d(kernel_size=1)`` on ``[N, C, T]`` agree.

    (KFRA refuses such a Linear layer: see the test above.)
    """
    torch.manual_seed(0)
    linear = nn.Linear(3, 4).double()
    conv = _as_conv1d(linear)
    inputs = torch.randn(5, 6, 3, dtype=torch.float64)
    targets = torch.randn(5, 6, 4, dtype=torch.float64)
    make = (
        (lambda: extension(mc_samples=2))
        if extension in (KFAC, DiagGGNMC, BatchDiagGGNMC)
        else extension
    )
    linear_net = _run(nn.Sequential(linear), inputs, targets, make())
    # the Conv1d net sees [N, C, T] and gives [N, T, out] back to the same loss
    conv_net = _run(nn.Sequential(_Transpose(), conv, _Transpose()), inputs, targets, make())
    field = make().savefield
    for name in ("weight", "bias"):
        linear_value = getattr(linear_net[0], name)
        conv_value = getattr(conv_net[1], name)
        a, b = getattr(linear_value, field), getattr(conv_value, field)
        if isinstance(a, list):
            for left, right in zip(a, b):
                assert_close(left, right)
        else:
            assert_close(a, b.reshape(a.shape))


class _Transpose(nn.Module):
    def forward(self, x):
        return x.transpose(1, 2)
