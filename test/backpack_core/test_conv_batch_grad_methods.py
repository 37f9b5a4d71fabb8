"""Both forms of a convolution's per-sample weight gradients agree with torch.func.

The engine times the unfolded and the grouped-convolution form once per layer shape and
keeps the faster, so which one a test meets depends on the machine: here each is pinned.
"""

import pytest
import torch
from torch import nn
from torch.func import functional_call, grad, vmap

from backpack_core.derivatives import derivatives_for
from backpack_core.derivatives.base import ModuleIO

CASES = {
    "conv1d-stride": (lambda: nn.Conv1d(2, 4, 3, stride=2), (5, 2, 9)),
    "conv2d-same-dilation": (lambda: nn.Conv2d(2, 3, 3, padding="same", dilation=2), (4, 2, 7, 7)),
    "conv2d-groups-padding": (lambda: nn.Conv2d(4, 6, 3, padding=1, groups=2), (3, 4, 5, 5)),
    "conv2d-one-channel": (lambda: nn.Conv2d(1, 3, 5, stride=2, bias=False), (4, 1, 9, 9)),
    "conv3d": (lambda: nn.Conv3d(2, 2, 2, stride=(1, 2, 1)), (3, 2, 4, 5, 4)),
}


@pytest.mark.parametrize("method", ["_batch_grad_unfold", "_batch_grad_grouped"])
@pytest.mark.parametrize("case", CASES)
def test_per_sample_weight_gradients(case, method):
    build, shape = CASES[case]
    torch.manual_seed(0)
    module = build().double()
    inputs = torch.randn(*shape, dtype=torch.float64)
    output = module(inputs)
    grad_output = torch.randn_like(output)

    def summand(params, x, g):
        return (functional_call(module, params, (x.unsqueeze(0),))[0] * g).sum()

    params = {name: p.detach() for name, p in module.named_parameters()}
    expected = vmap(grad(summand), in_dims=(None, 0, 0))(params, inputs, grad_output)["weight"]
    derivatives = derivatives_for(module)
    io = ModuleIO(module, inputs, output.detach())
    result = getattr(derivatives, method)(io, grad_output)
    torch.testing.assert_close(result, expected)
    buffer = torch.empty_like(expected)
    written = getattr(derivatives, method)(
        ModuleIO(module, inputs, output.detach()), grad_output, buffer
    )
    assert written.data_ptr() == buffer.data_ptr()
    torch.testing.assert_close(buffer, expected)
