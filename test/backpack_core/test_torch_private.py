"""The private torch APIs behind ``backpack_core._torch_private``, on the installed torch.

Each test fails when a torch upgrade removes or changes what the engine relies on.
"""

import torch
from torch import nn

from backpack_core import _torch_private


def test_graph_task_id_identifies_one_backward_pass():
    seen = []
    x = torch.randn(3, requires_grad=True)
    for _ in range(2):
        y = x * 2
        z = y.sin()
        y.register_hook(lambda grad: seen.append(_torch_private.graph_task_id()))
        z.register_hook(lambda grad: seen.append(_torch_private.graph_task_id()))
        z.sum().backward()
    assert all(isinstance(task, int) for task in seen)
    assert seen[0] == seen[1] and seen[2] == seen[3] and seen[1] != seen[2]


def test_saved_tensors_of_max_pooling_and_dropout():
    x = torch.randn(2, 1, 4, 4, requires_grad=True)
    pooled = nn.MaxPool2d(2)(x)
    indices = _torch_private.saved_tensor(pooled.grad_fn, "result1")
    assert indices is not None and indices.shape == pooled.shape
    assert not indices.dtype.is_floating_point
    dropped = nn.Dropout(0.5).train()(x)
    masks = [_torch_private.saved_tensor(dropped.grad_fn, name) for name in ("other", "result1")]
    assert any(mask is not None and mask.shape == x.shape for mask in masks)


def test_sum_coefficients_of_additions_and_subtractions():
    a, b = torch.randn(3, requires_grad=True), torch.randn(3, requires_grad=True)
    assert _torch_private.sum_coefficients((a + b).grad_fn) == (1.0, 1.0)
    assert _torch_private.sum_coefficients(torch.add(a, b, alpha=3).grad_fn) == (1.0, 3.0)
    assert _torch_private.sum_coefficients((a - b).grad_fn) == (1.0, -1.0)
    assert _torch_private.sum_coefficients(torch.sub(a, b, alpha=2).grad_fn) == (1.0, -2.0)
    assert _torch_private.sum_coefficients((a * b).grad_fn) is None
