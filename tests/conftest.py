import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))

from conformance.runner import make_deterministic  # noqa: E402


@pytest.fixture(autouse=True, scope="session")
def _deterministic():
    make_deterministic(seed=0, threads=min(2, torch.get_num_threads()))


@pytest.fixture
def register():
    """Register strategy classes for one test; they are removed afterwards."""
    from strategies import register_strategy
    from strategies._registry import _registry

    added = []

    def _register(name, cls):
        register_strategy(name, cls, clobber=True)
        added.append(name)

    yield _register
    for name in added:
        _registry.pop(name, None)
