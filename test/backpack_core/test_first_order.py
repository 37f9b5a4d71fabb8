"""First-order extensions against the ``torch.func`` references, on the settings table."""

import pytest
from settings import SETTING_IDS, SETTINGS, reference_of, run_extended
from torch.testing import assert_close

from backpack_core.extensions import (
    ALL,
    BatchDotGrad,
    BatchGrad,
    BatchL2Grad,
    SumGradSquared,
    Variance,
)

# (extension class, attribute on each parameter == key of reference.first_order)
FIRST_ORDER = [
    (BatchGrad, "grad_batch"),
    (BatchL2Grad, "batch_l2"),
    (SumGradSquared, "sum_grad_squared"),
    (Variance, "variance"),
    (BatchDotGrad, "batch_dot"),
]
FIRST_ORDER_IDS = [extension.__name__ for extension, _ in FIRST_ORDER]


@pytest.mark.parametrize("extension, savefield", FIRST_ORDER, ids=FIRST_ORDER_IDS)
@pytest.mark.parametrize("setting", SETTINGS, ids=SETTING_IDS)
def test_first_order_extension_matches_reference(setting, extension, savefield):
    expected = reference_of(setting, "first_order")
    params = run_extended(setting, extension())
    for name, p in params.items():
        if not p.requires_grad:
            assert not hasattr(p, savefield), f"frozen {name} got {savefield}"
            continue
        assert_close(getattr(p, savefield), expected[savefield][name], **setting.tolerances)
        # the extension leaves the ordinary gradient alone
        assert_close(p.grad, expected["grad"][name], **setting.tolerances)


@pytest.mark.parametrize("setting_id", ["conv2d-groups-ce-mean", "mlp-tanh-mse-mean"])
def test_all_first_order_extensions_at_once(setting_id):
    setting = SETTINGS[SETTING_IDS.index(setting_id)]
    expected = reference_of(setting, "first_order")
    params = run_extended(setting, *(extension() for extension, _ in FIRST_ORDER))
    for name, p in params.items():
        for _, savefield in FIRST_ORDER:
            assert_close(getattr(p, savefield), expected[savefield][name], **setting.tolerances)


def test_every_first_order_extension_is_in_the_table():
    first_order = {extension for extension in ALL if not extension().quantities()}
    assert first_order == {extension for extension, _ in FIRST_ORDER}
