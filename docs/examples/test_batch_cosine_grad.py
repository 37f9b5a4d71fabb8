"""``BatchCosineGrad`` against an autograd reference, on the engine's table of settings.

Run from the repository root: ``python -m pytest docs/examples/test_batch_cosine_grad.py``.
The settings are those of ``test/backpack_core/settings.py`` plus the walkthrough's own
entry (``EXTRA_SETTINGS``).
"""

import sys
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.func import functional_call, grad, vmap
from torch.testing import assert_close

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parents[1] / "test" / "backpack_core"))

from batch_cosine_grad import BatchCosineGrad  # noqa: E402
from settings import SETTINGS, Setting, run_extended  # noqa: E402

# Step "settings entry" of the walkthrough: a new case is one Setting. In the engine's own
# suite it goes into SETTINGS in test/backpack_core/settings.py.
EXTRA_SETTINGS = [
    Setting(
        "walkthrough-mlp-sigmoid-ce-sum",
        lambda: nn.Sequential(nn.Linear(5, 4), nn.Sigmoid(), nn.Linear(4, 3)),
        (4, 5),
        "ce",
        "sum",
    ),
]
ALL_SETTINGS = SETTINGS + EXTRA_SETTINGS


def reference_batch_cosine(model, lossfunc, X, y):
    """``{name: [N, N]}`` from per-sample gradients computed by ``vmap(grad(...))``.

    Independent of the engine: each sample's loss is differentiated on its own, the
    gradients are normalised and their Gram matrix taken. The reduction's scale cancels in
    the cosine, so every sample's loss is taken with ``reduction="sum"``.
    """
    params = {name: p.detach() for name, p in model.named_parameters() if p.requires_grad}
    summed = type(lossfunc)(reduction="sum")

    def sample_loss(params, x, target):
        output = functional_call(model, params, (x.unsqueeze(0),))
        return summed(output, target.unsqueeze(0))

    per_sample = vmap(grad(sample_loss), in_dims=(None, 0, 0))(params, X, y)
    result = {}
    for name, g in per_sample.items():
        flat = g.flatten(start_dim=1)
        norms = flat.norm(dim=1, keepdim=True).clamp(min=torch.finfo(flat.dtype).tiny)
        unit = flat / norms
        result[name] = unit @ unit.T
    return result


@pytest.mark.parametrize("setting", ALL_SETTINGS, ids=[s.id for s in ALL_SETTINGS])
def test_batch_cosine_grad_matches_autograd(setting):
    """The extension equals the reference on every parameter that requires a gradient."""
    expected = reference_batch_cosine(*setting.build())
    params = run_extended(setting, BatchCosineGrad())
    for name, p in params.items():
        if not p.requires_grad:
            assert not hasattr(p, "batch_cosine")
            continue
        assert_close(p.batch_cosine, expected[name], **setting.tolerances)
