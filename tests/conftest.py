"""Fixtures of the roiops tests (helper functions are in helpers.py)."""

import pytest
import torch


@pytest.fixture
def restore_threads():
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)
