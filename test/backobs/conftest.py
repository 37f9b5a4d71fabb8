"""Every BackOBS test runs on synthetic data unless it switches it off itself."""

import pytest
import torch

import backobs
from backobs.adapter import data


@pytest.fixture(autouse=True)
def seeded_torch():
    """Torch's global generator starts from seed 0 in every test.

    A test's random draws (a net's initialisation, a sampled batch) then do not depend on
    which tests ran before it. A module-scoped fixture is set up before this one and seeds
    itself.
    """
    torch.manual_seed(0)


@pytest.fixture(autouse=True)
def synthetic_data():
    """Every test runs on synthetic data (seed 0) unless it switches it off itself."""
    backobs.use_synthetic_data(True, seed=0)
    yield
    data._reset_synthetic_switch()
