"""A wrapper that plants one fault into a correct strategy (``hooks+clone``).

Each check must catch its planted fault; the same wrapper with no fault must pass every
check, which is the control for the controls.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import nn

from strategies import Extraction, Extractor, Strategy, get_strategy
from strategies.base import map_tensors

Corrupt = Callable[["Corrupted", nn.Module, torch.Tensor, Extraction], Extraction]


class Corrupted(Extractor):
    """``hooks+clone`` with ``corrupt`` applied to every extraction, however it is run."""

    def __init__(self, inner: Extractor, corrupt: Corrupt) -> None:
        self.inner, self.corrupt, self.module = inner, corrupt, inner.module
        self.calls: list[dict[str, Any]] = []

    def extract_with(self, module: nn.Module, x: torch.Tensor) -> Extraction:
        extraction = self.inner.extract_with(module, x)
        self.calls.append({k: map_tensors(lambda t: t.detach().clone(), v) for k, v in extraction.features.items()})
        return self.corrupt(self, module, x, extraction)

    def close(self) -> None:
        self.inner.close()


def corrupted(corrupt: Corrupt, *, on_attach: Callable[[nn.Module], None] | None = None, inner: str = "hooks+clone") -> type[Strategy]:
    """A strategy class: ``inner`` attached as usual, with ``corrupt`` planted."""

    class CorruptedStrategy(Strategy):
        def attach(self, model: nn.Module, *, layers: Any, tracer_kwargs: Any = None) -> Extractor:
            if on_attach:
                on_attach(model)
            return Corrupted(get_strategy(inner).attach(model, layers=layers), corrupt)

    return CorruptedStrategy


def features_mapped(function: Callable[[torch.Tensor], torch.Tensor]) -> Corrupt:
    """A fault that applies ``function`` to every feature."""

    def corrupt(ex: Corrupted, module: nn.Module, x: torch.Tensor, extraction: Extraction) -> Extraction:
        return Extraction({k: function(v) for k, v in extraction.features.items()}, extraction.output)

    return corrupt


def unchanged(ex: Corrupted, module: nn.Module, x: torch.Tensor, extraction: Extraction) -> Extraction:
    return extraction
