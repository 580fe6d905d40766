"""The random state every forward pass of a model starts from.

The truth and each strategy's pass must draw the same random numbers where the model draws
any (noise in eval mode, a VAE's sample, dropout in train mode): every pass the harness makes,
the oracle's and the strategies', runs inside :func:`pass_rng`, which sets torch's CPU and CUDA
generators, Python's ``random`` and NumPy's global generator to one fixed state and puts the
caller's state back afterwards. A model that still gives another value from that state (a
generator of its own, a counter) is found by the oracle's second pass (``OracleCapture.unsteady``).
"""

from __future__ import annotations

import contextlib
import random
from typing import Any, Iterator

import torch

__all__ = ["PASS_SEED", "PinnedExtractor", "pass_rng"]

#: The seed of the state every pass starts from.
PASS_SEED = 0


@contextlib.contextmanager
def pass_rng() -> Iterator[None]:
    """Run the body from the fixed random state (:data:`PASS_SEED`), then restore the caller's."""
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_initialized() else []
    python_state = random.getstate()
    numpy_random = _numpy_random()
    numpy_state = numpy_random.get_state() if numpy_random is not None else None
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(PASS_SEED)
        random.seed(PASS_SEED)
        if numpy_random is not None:
            numpy_random.seed(PASS_SEED)
        try:
            yield
        finally:
            random.setstate(python_state)
            if numpy_random is not None:
                numpy_random.set_state(numpy_state)


def _numpy_random() -> Any:
    try:
        import numpy
    except ImportError:  # torch runs without NumPy
        return None
    return numpy.random


class PinnedExtractor:
    """A strategy's extractor whose every call starts from :func:`pass_rng`'s state; anything
    else (``module``, ``close``) is the extractor's own."""

    def __init__(self, extractor: Any) -> None:
        self._extractor = extractor

    def __call__(self, x: Any) -> Any:
        with pass_rng():
            return self._extractor(x)

    def extract_with(self, module: Any, x: Any) -> Any:
        with pass_rng():
            return self._extractor.extract_with(module, x)

    def __getattr__(self, name: str) -> Any:
        if name == "_extractor":  # not yet set: a copy being built
            raise AttributeError(name)
        return getattr(self._extractor, name)
