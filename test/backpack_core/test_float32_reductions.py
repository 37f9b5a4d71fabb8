"""Long float32 reductions keep float32's accuracy (``backpack_core.reductions``).

torch's ``vector_norm`` over a row of millions of float32 entries, and ``x @ x.T`` for a few
long rows, lose about 1e-4 relative accuracy; BatchL2Grad and BatchDotGrad of a large layer
(fmnist_2c2d's 3136 x 1024 dense layer) went through both. The references here are float64.
"""

import pytest
import torch
from torch.func import functional_call, grad, vmap

from backpack_core import backpack, extend
from backpack_core.extensions import BatchDotGrad, BatchGrad, BatchL2Grad
from backpack_core.reductions import GRAM_PIECE, NORM_PIECE, row_gram, squared_norms

# float32 carries 6e-8 relative; a reduction that keeps it stays well below 1e-6
ACCURATE = 1e-6


def _relative_error(actual, expected):
    return ((actual.double() - expected).abs().max() / expected.abs().max()).item()


@pytest.mark.parametrize(
    "shape",
    [(3, 3 * NORM_PIECE * 256 + 17), (2, 4, 5 * NORM_PIECE), (3, NORM_PIECE - 1), (5, 1)],
    ids=["long-rows-with-remainder", "leading-dims", "shorter-than-a-piece", "one-entry"],
)
def test_squared_norms_match_float64(shape):
    x = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    expected = (x.double() ** 2).sum(-1)
    assert _relative_error(squared_norms(x), expected) < ACCURATE


def test_squared_norms_are_more_accurate_than_one_pass_vector_norm():
    """The case the module exists for.

    If torch's one-pass norm becomes accurate, this fails, and ``squared_norms`` can go back
    to ``vector_norm``.
    """
    x = torch.randn(3, 3_211_264, generator=torch.Generator().manual_seed(0))
    expected = (x.double() ** 2).sum(-1)
    one_pass = torch.linalg.vector_norm(x, dim=-1).square()
    assert _relative_error(one_pass, expected) > 10 * _relative_error(squared_norms(x), expected)


@pytest.mark.parametrize("columns", [3 * GRAM_PIECE + 5, GRAM_PIECE // 2])
def test_row_gram_matches_float64_and_adds_to_out(columns):
    generator = torch.Generator().manual_seed(1)
    rows = torch.randn(3, columns, generator=generator)
    expected = rows.double() @ rows.double().T
    assert _relative_error(row_gram(rows), expected) < ACCURATE
    start = torch.randn(3, 3, generator=generator)
    total = row_gram(rows, out=start.clone())
    assert _relative_error(total, expected + start.double()) < ACCURATE


@pytest.mark.parametrize("with_batch_grad", [True, False], ids=["from-grad_batch", "factorised"])
def test_norms_and_dots_of_a_large_layer_keep_float32_accuracy(with_batch_grad):
    """fmnist_2c2d's dense layer, three samples: float32 engine against float64 autograd."""
    torch.manual_seed(0)
    layer = torch.nn.Linear(3136, 1024)
    inputs, targets = torch.rand(3, 3136), torch.randn(3, 1024)
    model, loss_function = extend(torch.nn.Sequential(layer)), extend(torch.nn.MSELoss())
    extensions = [BatchL2Grad(), BatchDotGrad()] + ([BatchGrad()] if with_batch_grad else [])
    with backpack(*extensions):
        loss_function(model(inputs), targets).backward()

    wide = {k: v.detach().double() for k, v in layer.named_parameters()}

    def sample_loss(params, x, y):
        output = functional_call(layer, params, (x.unsqueeze(0),))
        return ((output - y) ** 2).sum() / (3 * 1024)

    individual = vmap(grad(sample_loss), in_dims=(None, 0, 0))(
        wide, inputs.double(), targets.double()
    )
    flat = individual["weight"].flatten(1)
    assert _relative_error(layer.weight.batch_l2, (flat**2).sum(1)) < ACCURATE
    assert _relative_error(layer.weight.batch_dot, flat @ flat.T) < ACCURATE
