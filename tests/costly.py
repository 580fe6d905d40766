"""Strategies with one planted cost each, and a model big enough to time.

Each bench metric must find its planted cost: ``Twice`` runs the model twice (overhead
and floor_ratio), ``Hoarder`` keeps a large tensor from every call (retained and peak
memory), ``SlowBuild`` sleeps while attaching (build_time) and ``Doubled`` holds a second
copy of the weights (params_retained). Usable from the CLI as ``tests/costly.py:tower``.
"""

from __future__ import annotations

import copy
import time
from typing import Any, Sequence

import torch
from torch import nn

from strategies import Extraction, Extractor, Strategy, get_strategy

INPUT_SHAPE = (2, 32, 32, 32)
HOARD_BYTES = 64 * 2**20
BUILD_SLEEP = 0.2


class Tower(nn.Module):
    """Eight 3x3 convolutions: a few milliseconds a call, every block as costly as the next."""

    def __init__(self) -> None:
        super().__init__()
        self.blocks = nn.Sequential(*[nn.Sequential(nn.Conv2d(32, 32, 3, padding=1), nn.ReLU()) for _ in range(8)])
        self.head = nn.Conv2d(32, 8, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(x))


def tower() -> nn.Module:
    return Tower()


tower.input_shape = INPUT_SHAPE


class _Wrapped(Extractor):
    """``hooks+clone`` with something extra done on each call."""

    def __init__(self, inner: Extractor, *, module: nn.Module | None = None, runs: int = 1, hoard: bool = False) -> None:
        self.inner, self.module, self.runs, self.hoard = inner, module or inner.module, runs, hoard
        self.kept: list[torch.Tensor] = []

    def __call__(self, x: torch.Tensor) -> Extraction:
        return self.extract_with(self.inner.module, x)  # ``module`` may hold more than what runs

    def extract_with(self, module: nn.Module, x: torch.Tensor) -> Extraction:
        for _ in range(self.runs - 1):
            self.inner.extract_with(module, x)
        if self.hoard:
            self.kept.append(torch.ones(HOARD_BYTES // 4))
        return self.inner.extract_with(module, x)

    def close(self) -> None:
        self.inner.close()


def _inner(model: nn.Module, layers: Sequence[str]) -> Extractor:
    return get_strategy("hooks+clone").attach(model, layers=layers)


class Twice(Strategy):
    def attach(self, model: nn.Module, *, layers: Sequence[str], tracer_kwargs: Any = None) -> Extractor:
        return _Wrapped(_inner(model, layers), runs=2)


class Hoarder(Strategy):
    def attach(self, model: nn.Module, *, layers: Sequence[str], tracer_kwargs: Any = None) -> Extractor:
        return _Wrapped(_inner(model, layers), hoard=True)


class SlowBuild(Strategy):
    def attach(self, model: nn.Module, *, layers: Sequence[str], tracer_kwargs: Any = None) -> Extractor:
        time.sleep(BUILD_SLEEP)
        return _Wrapped(_inner(model, layers))


class Doubled(Strategy):
    def attach(self, model: nn.Module, *, layers: Sequence[str], tracer_kwargs: Any = None) -> Extractor:
        return _Wrapped(_inner(model, layers), module=nn.ModuleList([model, copy.deepcopy(model)]))


PLANTED = {"twice": Twice, "hoarder": Hoarder, "slow_build": SlowBuild, "doubled": Doubled}
