"""Shared test settings."""

import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def _one_thread():
    """The test models are tiny: with 2 OpenMP threads on a 2-core machine that is also busy,
    threads spin-wait on each other and tiny forwards run 10-60x slower (measured here)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
