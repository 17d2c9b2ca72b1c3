"""Fixtures of the roiops tests (helper functions are in helpers.py)."""

import pytest
import torch

from devices import ALL_DEVICES, select
from op_table import OP_TABLE


@pytest.fixture
def restore_threads():
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


@pytest.fixture
def deterministic_algorithms():
    before = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    yield
    torch.use_deterministic_algorithms(before, warn_only=warn_only)


@pytest.fixture(params=OP_TABLE, ids=lambda op: op.id)
def op(request):
    """A row of the op table (tests/op_table.py)."""
    return request.param


@pytest.fixture(params=ALL_DEVICES)
def dev(request):
    """Where the kernels under test run (tests/devices.py); test modules may narrow it."""
    return select(request)
