"""``captum``: ``captum.attr.LayerActivation(model, layers).attribute(x)``, as Captum documents it.

One ``LayerActivation`` over the requested modules returns their outputs as a list, in
order. Captum evaluates under ``torch.no_grad()`` and does not return the model's output.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

from captum.attr import LayerActivation
from torch import nn

from .base import Arguments, Extraction, Extractor, Strategy, Tap, module_outputs

__all__ = ["Captum"]


class _CaptumExtractor(Extractor):
    def __init__(self, model: nn.Module, modules: Mapping[str, str]) -> None:
        self.module = model
        self.modules = modules
        self.paths = list(dict.fromkeys(modules.values()))
        self.activation = LayerActivation(model, [model.get_submodule(path) for path in self.paths])

    def extract_with(self, module: nn.Module, x: Any) -> Extraction:
        activation = self.activation
        if module is not self.module:
            activation = LayerActivation(module, [module.get_submodule(path) for path in self.paths])
        values = dict(zip(self.paths, activation.attribute(tuple(x) if isinstance(x, Arguments) else (x,) if isinstance(x, list) else x)))
        return Extraction(features={name: values[path] for name, path in self.modules.items()})


class Captum(Strategy):
    """``captum.attr.LayerActivation(model, [modules])``."""

    def attach(self, model: nn.Module, *, layers: Sequence[Tap], tracer_kwargs: Mapping[str, Any] | None = None) -> Extractor:
        return _CaptumExtractor(model, module_outputs(layers, seen_by="Captum's LayerActivation"))
