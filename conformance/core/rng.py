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
import functools
import random
from typing import Any, Iterator

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from strategies.base import call_model, clone_tree, map_tensors

from conformance.core.timing import meta_copy

__all__ = ["PASS_SEED", "PinnedExtractor", "RecordDraws", "ReplayDraws", "draws_random_numbers", "pass_rng", "seed_torch"]

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
        seed_torch(PASS_SEED)
        random.seed(PASS_SEED)
        if numpy_random is not None:
            numpy_random.seed(PASS_SEED)
        try:
            yield
        finally:
            random.setstate(python_state)
            if numpy_random is not None:
                numpy_random.set_state(numpy_state)


@functools.cache
def _only_the_cpu() -> bool:
    """Whether this process has no device but the CPU: no CUDA, XPU, MTIA or MPS device, and no
    custom backend."""
    return not (torch.cuda.is_available() or torch.xpu.is_available() or torch.mtia.is_available()
                or torch.backends.mps.is_available() or torch._C._get_privateuse1_backend_name() != "privateuseone")


def seed_torch(seed: int) -> None:
    """``torch.manual_seed(seed)``. Where there is no device but the CPU, only the CPU's generator is
    seeded: ``torch.manual_seed`` would also queue a seed for each device that is not initialised,
    to be set should it ever be, and format the caller's stack for each (about a millisecond a
    pass here), for devices that cannot be initialised on such a machine."""
    if _only_the_cpu():
        torch.default_generator.manual_seed(seed)
    else:
        torch.manual_seed(seed)


#: aten ops that draw from a generator (their base names, without a trailing ``_``).
_RANDOM_OPS = frozenset({"rand", "randn", "randint", "randperm", "rand_like", "randn_like", "randint_like", "bernoulli", "normal",
                         "uniform", "multinomial", "exponential", "geometric", "cauchy", "log_normal", "random", "native_dropout"})


def _draws_random_numbers(func: Any) -> bool:
    return func.overloadpacket.__name__.rstrip("_") in _RANDOM_OPS


class RecordDraws(TorchDispatchMode):
    """Inside it, the output of every random op (``aten.rand``, ``aten.bernoulli_``, dropout) is kept,
    in order, cloned: what a pass drew."""

    def __init__(self) -> None:
        super().__init__()
        self.draws: list[tuple[str, Any]] = []

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        if _draws_random_numbers(func):
            self.draws.append((str(func), clone_tree(out)))
        return out


class ReplayDraws(TorchDispatchMode):
    """Inside it, each random op gives the next value ``draws`` holds (what another pass drew,
    :class:`RecordDraws`) of the same op and shape, in order; draws passed over (the other pass's
    own: a strategy's ``torch.rand`` before the model's) are not used again. Any other op runs as it is."""

    def __init__(self, draws: list[tuple[str, Any]]) -> None:
        super().__init__()
        self.pending = list(draws)

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        if _draws_random_numbers(func):
            match = next((index for index, (name, drawn) in enumerate(self.pending) if name == str(func) and _same_shapes(out, drawn)), None)
            if match is not None:
                drawn = self.pending[match][1]
                del self.pending[:match + 1]
                return clone_tree(drawn)
        return out


def draws_random_numbers(model: Any, x: Any) -> bool:
    """Whether a pass of ``model`` on ``x`` runs a random op, found on the meta device (no values,
    a fraction of a real pass); False where the model cannot run there (quantized ops, a branch on
    a value): its strategies' calls then run as they are, and ``rng_shifted`` names nothing there."""
    try:
        twin = meta_copy(model)
        with torch.no_grad(), RecordDraws() as recorder:
            call_model(twin, map_tensors(lambda t: t.to("meta"), x))
    except Exception:  # an op without a meta kernel, a branch on a value
        return False
    return bool(recorder.draws)


def _same_shapes(a: Any, b: Any) -> bool:
    leaves_a, spec_a = torch.utils._pytree.tree_flatten(a)
    leaves_b, spec_b = torch.utils._pytree.tree_flatten(b)
    return spec_a == spec_b and all(not isinstance(x, torch.Tensor) or (isinstance(y, torch.Tensor) and x.shape == y.shape and x.dtype == y.dtype)
                                    for x, y in zip(leaves_a, leaves_b))


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
