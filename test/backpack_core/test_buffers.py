"""Reuse of the previous step's grad_batch: only when nothing else can see it."""

import pytest
import torch
from torch import nn

from backpack_core import backpack, extend
from backpack_core.extensions import BatchGrad


def _setup(layer):
    torch.manual_seed(0)
    model = extend(nn.Sequential(layer, nn.Flatten(), nn.LazyLinear(3)))
    loss_function = extend(nn.CrossEntropyLoss())
    return model, loss_function


def _step(model, loss_function, inputs, labels):
    with backpack(BatchGrad()):
        loss_function(model(inputs), labels).backward()


LAYERS = {
    "linear": (lambda: nn.Linear(5, 4), (6, 5)),
    "conv": (lambda: nn.Conv2d(2, 3, 3), (6, 2, 5, 5)),
}


@pytest.mark.parametrize("name", LAYERS)
def test_unreferenced_result_is_reused_and_correct(name):
    build, shape = LAYERS[name]
    model, loss_function = _setup(build())
    model(torch.randn(*shape))  # initialise the lazy layer
    weight = model[0].weight
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    _step(model, loss_function, torch.randn(*shape), labels)
    address = weight.grad_batch.data_ptr()
    inputs = torch.randn(*shape)
    _step(model, loss_function, inputs, labels)
    assert weight.grad_batch.data_ptr() == address

    def per_sample_loss(params, x, y):
        out = torch.func.functional_call(model, params, (x.unsqueeze(0),))
        return nn.functional.cross_entropy(out, y.unsqueeze(0)) / inputs.shape[0]

    params = {k: v.detach() for k, v in model.named_parameters()}
    expected = torch.func.vmap(torch.func.grad(per_sample_loss), in_dims=(None, 0, 0))(
        params, inputs, labels
    )["0.weight"]
    torch.testing.assert_close(weight.grad_batch, expected)


@pytest.mark.parametrize("keep", ["reference", "view", "numpy"])
def test_result_the_user_kept_is_never_overwritten(keep):
    model, loss_function = _setup(nn.Linear(5, 4))
    inputs, labels = torch.randn(6, 5), torch.tensor([0, 1, 2, 0, 1, 2])
    _step(model, loss_function, inputs, labels)
    weight = model[0].weight
    snapshot = weight.grad_batch.clone()
    kept = {
        "reference": lambda t: t,
        "view": lambda t: t[1:],
        "numpy": lambda t: t.numpy(),
    }[keep](weight.grad_batch)
    _step(model, loss_function, torch.randn(6, 5), labels)
    torch.testing.assert_close(torch.as_tensor(kept), snapshot if keep != "view" else snapshot[1:])
    assert not torch.equal(weight.grad_batch, snapshot)
