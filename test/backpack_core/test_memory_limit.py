"""Curvature quantities above the memory limit fail early with a message, not an OOM kill."""

import pytest
import torch
from torch import nn

from backpack_core import backpack, extend, memory_limit, set_memory_limit
from backpack_core.config import format_bytes
from backpack_core.extensions import KFRA, DiagGGNExact, DiagGGNMC, DiagHessian


@pytest.fixture
def small_limit():
    set_memory_limit(2000)
    yield
    set_memory_limit(None)


def _run(extension):
    torch.manual_seed(0)
    model = extend(nn.Sequential(nn.Linear(10, 50), nn.Sigmoid(), nn.Linear(50, 10)))
    loss_function = extend(nn.CrossEntropyLoss())
    with backpack(extension):
        loss_function(model(torch.randn(8, 10)), torch.randint(0, 10, (8,))).backward()
    return model


@pytest.mark.parametrize("extension", [DiagGGNExact(), DiagHessian()], ids=repr)
def test_too_large_factor_raises_with_the_way_out(small_limit, extension):
    with pytest.raises(MemoryError) as error:
        _run(extension)
    message = str(error.value)
    assert "Linear(in_features=50, out_features=10" in message
    assert "limit 2.0 KiB" in message
    assert "DiagGGNMC" in message and "set_memory_limit" in message


def test_too_large_kfra_matrix_raises_with_the_way_out(small_limit):
    # The 50 x 50 matrix at the Sigmoid (the last Linear passes J^T M J on lazily).
    with pytest.raises(MemoryError) as error:
        _run(KFRA())
    message = str(error.value)
    assert "dense 50 x 50 matrix" in message and "Sigmoid()" in message
    assert "limit is 2.0 KiB" in message


def test_monte_carlo_variant_fits_where_exact_does_not(small_limit):
    # 10 columns per sample do not fit in 2 KB, one sampled column does (8 x 50 floats).
    model = _run(DiagGGNMC(mc_samples=1))
    assert model[0].weight.diag_ggn_mc.shape == (50, 10)


def test_default_limit_is_restored_and_positive():
    set_memory_limit(123)
    assert memory_limit() == 123
    set_memory_limit(None)
    assert memory_limit() > 2**30


def test_format_bytes():
    assert format_bytes(512) == "512 B"
    assert format_bytes(1536) == "1.5 KiB"
    assert format_bytes(3 * 2**30) == "3.0 GiB"


def test_default_limit_follows_the_device(monkeypatch):
    # CUDA tensors: the device's free memory (faked here: the tests run without a GPU)
    calls = []

    def mem_get_info(device):
        calls.append(device)
        return 3 * 2**20, 8 * 2**20

    monkeypatch.setattr(torch.cuda, "mem_get_info", mem_get_info)
    assert memory_limit(torch.device("cuda", 1)) == 3 * 2**20
    assert calls == [torch.device("cuda", 1)]
    assert memory_limit("cpu") == memory_limit() > 2**30
    set_memory_limit(5000)
    try:  # a limit the user sets holds for every device
        assert memory_limit("cuda") == memory_limit("cpu") == 5000
    finally:
        set_memory_limit(None)
