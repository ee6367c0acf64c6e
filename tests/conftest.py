"""Shared test settings: CPU, few threads, quick mode, fixed seeds."""

import os

os.environ.setdefault("VAETUT_MODE", "quick")
os.environ.setdefault("MPLBACKEND", "Agg")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield

