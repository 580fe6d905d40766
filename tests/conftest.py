import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))

from conformance.runner import make_deterministic  # noqa: E402


@pytest.fixture(autouse=True, scope="session")
def _deterministic():
    make_deterministic(seed=0, threads=min(2, torch.get_num_threads()))
