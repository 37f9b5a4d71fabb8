"""Fixtures of the backpack_core tests."""

import pytest
import torch


@pytest.fixture(autouse=True)
def one_thread():
    """Run each test on one intra-op thread.

    The tensors here are tiny: with several threads on a shared two-core machine, OpenMP's
    synchronisation costs ten times more than the arithmetic.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
