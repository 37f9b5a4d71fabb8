"""Reuse of the previous step's grad_batch: an explicit option, off by default."""

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


def _step(model, loss_function, inputs, labels, reuse_buffer):
    with backpack(BatchGrad(reuse_buffer=reuse_buffer)):
        loss_function(model(inputs), labels).backward()


LAYERS = {
    "linear": (lambda: nn.Linear(5, 4), (6, 5)),
    "conv": (lambda: nn.Conv2d(2, 3, 3), (6, 2, 5, 5)),
}


def _expected(model, inputs, labels):
    def per_sample_loss(params, x, y):
        out = torch.func.functional_call(model, params, (x.unsqueeze(0),))
        return nn.functional.cross_entropy(out, y.unsqueeze(0)) / inputs.shape[0]

    params = {k: v.detach() for k, v in model.named_parameters()}
    return torch.func.vmap(torch.func.grad(per_sample_loss), in_dims=(None, 0, 0))(
        params, inputs, labels
    )


@pytest.mark.parametrize("name", LAYERS)
def test_with_reuse_the_result_is_written_into_the_previous_tensor(name):
    build, shape = LAYERS[name]
    model, loss_function = _setup(build())
    model(torch.randn(*shape))  # initialise the lazy layer
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    _step(model, loss_function, torch.randn(*shape), labels, reuse_buffer=True)
    previous = {name: p.grad_batch for name, p in model.named_parameters()}
    inputs = torch.randn(*shape)
    _step(model, loss_function, inputs, labels, reuse_buffer=True)
    expected = _expected(model, inputs, labels)
    for param_name, param in model.named_parameters():
        assert param.grad_batch is previous[param_name]
        torch.testing.assert_close(param.grad_batch, expected[param_name])


@pytest.mark.parametrize("keep", ["reference", "view", "numpy"])
def test_by_default_a_result_the_user_kept_is_never_overwritten(keep):
    model, loss_function = _setup(nn.Linear(5, 4))
    inputs, labels = torch.randn(6, 5), torch.tensor([0, 1, 2, 0, 1, 2])
    _step(model, loss_function, inputs, labels, reuse_buffer=False)
    weight = model[0].weight
    snapshot = weight.grad_batch.clone()
    kept = {
        "reference": lambda t: t,
        "view": lambda t: t[1:],
        "numpy": lambda t: t.numpy(),
    }[keep](weight.grad_batch)
    _step(model, loss_function, torch.randn(6, 5), labels, reuse_buffer=False)
    torch.testing.assert_close(torch.as_tensor(kept), snapshot if keep != "view" else snapshot[1:])
    assert not torch.equal(weight.grad_batch, snapshot)


def test_a_result_of_another_shape_is_not_reused():
    model, loss_function = _setup(nn.Linear(5, 4))
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    _step(model, loss_function, torch.randn(6, 5), labels, reuse_buffer=True)
    first = model[0].weight.grad_batch
    _step(model, loss_function, torch.randn(3, 5), labels[:3], reuse_buffer=True)
    assert model[0].weight.grad_batch is not first
    assert model[0].weight.grad_batch.shape == (3, 4, 5)


def test_reuse_buffer_must_be_a_bool():
    with pytest.raises(ValueError, match="reuse_buffer must be True or False"):
        BatchGrad(reuse_buffer="yes")
