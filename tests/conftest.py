import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))

from conformance.running.runner import make_deterministic  # noqa: E402


@pytest.fixture(autouse=True, scope="session")
def _deterministic():
    make_deterministic(seed=0, threads=min(2, torch.get_num_threads()))


@pytest.fixture
def register():
    """Register strategy classes (or dotted paths) for one test; they are removed afterwards."""
    from strategies import register_strategy
    from strategies._registry import _known, _registry

    added = []

    def _register(name, cls):
        register_strategy(name, cls, clobber=True)
        added.append(name)

    yield _register
    for name in added:
        _registry.pop(name, None)
        _known.pop(name, None)


@pytest.fixture(scope="session")
def quick_fast_run(tmp_path_factory):
    """``conformance run --checks fast --jobs 1`` on the quick zoo, serially: about a minute on 2 idle cores."""
    from test_cli import conformance

    out = tmp_path_factory.mktemp("quick") / "serial"
    # the limit only stops a hang, on a loaded machine too
    run = conformance("run", "--checks", "fast", "--jobs", "1", "--out", str(out), timeout=1800, subprocess_=True)
    assert run.returncode == 0, run.stderr[-2000:]
    return out
