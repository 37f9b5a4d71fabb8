"""Every BackOBS test runs on synthetic data unless it switches it off itself."""

import pytest

import backobs
from backobs import data


@pytest.fixture(autouse=True)
def synthetic_data():
    """Every test runs on synthetic data (seed 0) unless it switches it off itself."""
    backobs.use_synthetic_data(True, seed=0)
    yield
    data._reset_synthetic_switch()
