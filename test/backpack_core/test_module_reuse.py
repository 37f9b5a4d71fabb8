"""Calling a module several times: fine without parameters, refused with them.

A parameter-free module (one ``nn.Tanh`` used after every layer) is a chain of separate
calls, each with its own record; a module with parameters called twice in one graph would
need its results summed over the calls, which the engine refuses (see
``test_correct_or_refused.py``). Two separate graphs of the same model are independent.
"""

import torch
from reference import ggn_diagonal, hessian_diagonal, individual_gradients
from torch import nn
from torch.testing import assert_close

from backpack_core import backpack, extend
from backpack_core.extensions import BatchGrad, DiagGGNExact, DiagHessian


class SharedActivation(nn.Module):
    def __init__(self):
        super().__init__()
        self.first, self.second = nn.Linear(4, 5), nn.Linear(5, 3)
        self.activation = nn.Tanh()

    def forward(self, x):
        return self.second(self.activation(self.first(self.activation(x))))


def test_shared_parameter_free_module_gives_exact_curvature():
    torch.manual_seed(0)
    model = extend(SharedActivation().double())
    loss_function = extend(nn.CrossEntropyLoss())
    inputs = torch.randn(6, 4, dtype=torch.float64, requires_grad=True)
    labels = torch.randint(0, 3, (6,))
    with backpack(BatchGrad(), DiagGGNExact(), DiagHessian()):
        loss_function(model(inputs), labels).backward()
    detached = inputs.detach()
    expected_ggn = ggn_diagonal(model, loss_function, detached, labels)
    expected_hessian = hessian_diagonal(model, loss_function, detached, labels)
    expected_batch = individual_gradients(model, loss_function, detached, labels)
    for name, param in model.named_parameters():
        assert_close(param.diag_ggn_exact, expected_ggn[name])
        assert_close(param.diag_h, expected_hessian[name])
        assert_close(param.grad_batch, expected_batch[name])


def test_a_second_graph_of_the_same_model_is_independent():
    torch.manual_seed(0)
    model = extend(nn.Sequential(nn.Linear(4, 3)).double())
    loss_function = extend(nn.CrossEntropyLoss())
    first = torch.randn(5, 4, dtype=torch.float64)
    second = torch.randn(5, 4, dtype=torch.float64)
    labels = torch.randint(0, 3, (5,))
    kept = loss_function(model(first), labels)  # e.g. kept for logging
    with backpack(DiagGGNExact()):
        loss_function(model(second), labels).backward()
    expected = ggn_diagonal(model, loss_function, second, labels)
    assert_close(model[0].weight.diag_ggn_exact, expected["0.weight"])
    assert kept.grad_fn is not None
