"""Both kernels of a convolution's per-sample weight gradients agree with torch.func.

Which kernel runs follows a fixed rule of the layer's shape; here each is pinned through
the public override ``backpack_core.set_conv_individual_gradients``.
"""

import pytest
import torch
from torch import nn
from torch.func import functional_call, grad, vmap

from backpack_core import backpack, extend, set_conv_individual_gradients
from backpack_core.config import conv_individual_gradients
from backpack_core.derivatives.convolution import _individual_gradients_method
from backpack_core.derivatives.io import ModuleIO
from backpack_core.extensions import BatchGrad

CASES = {
    "conv1d-stride": (lambda: nn.Conv1d(2, 4, 3, stride=2), (5, 2, 9)),
    "conv2d-same-dilation": (lambda: nn.Conv2d(2, 3, 3, padding="same", dilation=2), (4, 2, 7, 7)),
    "conv2d-groups-padding": (lambda: nn.Conv2d(4, 6, 3, padding=1, groups=2), (3, 4, 5, 5)),
    "conv2d-one-channel": (lambda: nn.Conv2d(1, 3, 5, stride=2, bias=False), (4, 1, 9, 9)),
    "conv3d": (lambda: nn.Conv3d(2, 2, 2, stride=(1, 2, 1)), (3, 2, 4, 5, 4)),
}


@pytest.fixture
def pinned():
    yield set_conv_individual_gradients
    set_conv_individual_gradients("auto")


@pytest.mark.parametrize("method", ["unfold", "grouped", "auto"])
@pytest.mark.parametrize("case", CASES)
def test_per_sample_weight_gradients(case, method, pinned):
    build, shape = CASES[case]
    torch.manual_seed(0)
    module = build().double()
    inputs = torch.randn(*shape, dtype=torch.float64)
    output = module(inputs)
    grad_output = torch.randn_like(output)

    def summand(params, x, g):
        return (functional_call(module, params, (x.unsqueeze(0),))[0] * g).sum()

    params = {name: p.detach() for name, p in module.named_parameters()}
    expected = vmap(grad(summand), in_dims=(None, 0, 0))(params, inputs, grad_output)

    pinned(method)
    extend(module)
    with backpack(BatchGrad()):
        (module(inputs) * grad_output).sum().backward()
    for name, param in module.named_parameters():
        torch.testing.assert_close(param.grad_batch, expected[name])


@pytest.mark.parametrize(
    "layer, shape, method",
    [
        (nn.Conv2d(96, 96, 3, padding=1), (32, 96, 32, 32), "grouped"),  # allcnnc 32x32
        (nn.Conv2d(32, 64, 5, padding=2), (128, 32, 14, 14), "unfold"),  # mnist_2c2d 2nd
        (nn.Conv2d(3, 64, 5), (64, 3, 32, 32), "unfold"),  # cifar10_3c3d 1st
        (nn.Conv2d(1, 32, 5, padding=2), (128, 1, 28, 28), "unfold"),  # mnist_2c2d 1st
        (nn.Conv2d(64, 96, 3), (64, 64, 13, 13), "unfold"),  # cifar10_3c3d 2nd
        (nn.Conv2d(192, 192, 3, padding=1), (32, 192, 8, 8), "unfold"),  # allcnnc 8x8
    ],
)
def test_the_kernel_follows_a_fixed_rule_of_the_shape(layer, shape, method):
    output_shape = layer(torch.zeros(1, *shape[1:])).shape
    io = ModuleIO(layer, input_shape=shape, output_shape=(shape[0], *output_shape[1:]))
    assert _individual_gradients_method(io) == method


def test_the_override_is_checked(pinned):
    with pytest.raises(ValueError, match="method must be one of 'auto', 'unfold', 'grouped'"):
        pinned("fastest")
    assert conv_individual_gradients() == "auto"
