"""The random state every pass starts from (``conformance/core/rng.py``)."""

import contextlib
import random

import numpy
import pytest
import torch

from conformance.core import rng


def _state_after(seed_with, seed: int) -> torch.Tensor:
    torch.rand(5)  # a state other than the seeded one
    seed_with(seed)
    return torch.get_rng_state()


@pytest.mark.parametrize("seed", [0, 7, 2**40])
def test_seed_torch_sets_the_cpu_generator_as_torch_manual_seed_does(seed):
    assert torch.equal(_state_after(rng.seed_torch, seed), _state_after(torch.manual_seed, seed))
    # control: another seed is another state, which the comparison sees
    assert not torch.equal(_state_after(rng.seed_torch, seed), _state_after(torch.manual_seed, seed + 1))


def test_seed_torch_is_torch_manual_seed_wherever_a_device_besides_the_cpu_exists(monkeypatch):
    seeded = []
    monkeypatch.setattr(torch, "manual_seed", seeded.append)
    monkeypatch.setattr(rng, "_only_the_cpu", lambda: False)
    rng.seed_torch(3)
    assert seeded == [3]
    monkeypatch.setattr(rng, "_only_the_cpu", lambda: True)
    rng.seed_torch(4)
    assert seeded == [3]  # control: on the CPU alone, its generator only
    assert torch.equal(torch.get_rng_state(), _state_after(torch.default_generator.manual_seed, 4))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_seed_torch_seeds_cuda_as_torch_manual_seed_does():
    torch.cuda.init()
    rng.seed_torch(5)
    ours = torch.cuda.get_rng_state()
    torch.cuda.manual_seed_all(9)
    torch.manual_seed(5)
    assert torch.equal(ours, torch.cuda.get_rng_state())


def _states() -> tuple:
    return torch.get_rng_state(), random.getstate(), numpy.random.get_state()[1].copy()


def _a_pass_from(seed: int) -> tuple[tuple, tuple, tuple]:
    """The states before and after a pass that starts from ``seed``, and what it drew."""
    torch.manual_seed(seed)
    random.seed(seed)
    numpy.random.seed(seed)
    before = _states()
    with rng.pass_rng():
        drawn = torch.rand(3), random.random(), numpy.random.rand()
    return before, _states(), drawn


def _same(a: tuple, b: tuple) -> bool:
    return torch.equal(a[0], b[0]) and a[1] == b[1] and bool((a[2] == b[2]).all())


def test_every_pass_starts_from_the_pass_seed_and_gives_the_callers_state_back(monkeypatch):
    before, after, drawn = _a_pass_from(11)
    assert _same(before, after)
    torch.manual_seed(rng.PASS_SEED)
    random.seed(rng.PASS_SEED)
    numpy.random.seed(rng.PASS_SEED)
    assert torch.equal(drawn[0], torch.rand(3)) and drawn[1:] == (random.random(), numpy.random.rand())
    # control: a pass that keeps torch's state as it left it is caught
    monkeypatch.setattr(torch.random, "fork_rng", lambda devices: contextlib.nullcontext())
    before, after, _ = _a_pass_from(11)
    assert not _same(before, after)
