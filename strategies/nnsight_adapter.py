"""``nnsight``: ``nnsight.NNsight(model)``, tracing with ``.output.save()`` on each module.

As nnsight's documentation shows it::

    with wrapped.trace(x):
        feature = wrapped.layer1.output.save()
        output = wrapped.output.save()

``.output`` inside a trace is the module's first call; nnsight reaches later calls only
when the code asks for them one after another.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

from nnsight import NNsight
from torch import nn

from .base import Arguments, Extraction, Extractor, Strategy, Tap, module_outputs

__all__ = ["NNsightStrategy"]


def _envoy(wrapped: Any, path: str) -> Any:
    for part in path.split("."):
        wrapped = getattr(wrapped, part)
    return wrapped


class _NNsightExtractor(Extractor):
    def __init__(self, model: nn.Module, modules: Mapping[str, str]) -> None:
        self.module = model
        self.modules = modules
        self.paths = list(dict.fromkeys(modules.values()))
        self.wrapped = NNsight(model)

    def extract_with(self, module: nn.Module, x: Any) -> Extraction:
        wrapped = self.wrapped if module is self.module else NNsight(module)
        saved = {}
        with wrapped.trace(*(x if isinstance(x, Arguments) else (x,))):
            for path in self.paths:
                saved[path] = _envoy(wrapped, path).output.save()
            output = wrapped.output.save()
        return Extraction(features={name: saved[path] for name, path in self.modules.items()}, output=output)


class NNsightStrategy(Strategy):
    """``nnsight.NNsight(model)`` with ``.output.save()`` on each requested module."""

    def attach(self, model: nn.Module, *, layers: Sequence[Tap], tracer_kwargs: Mapping[str, Any] | None = None) -> Extractor:
        return _NNsightExtractor(model, module_outputs(layers, seen_by="nnsight's .output"))
