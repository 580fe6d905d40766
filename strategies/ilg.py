"""``ilg``: torchvision's ``IntermediateLayerGetter``.

It rebuilds the model from its direct children, run in registration order, and stops
after the last requested one. Only direct children can be requested.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

from torch import nn
from torchvision.models._utils import IntermediateLayerGetter

from .base import Arguments, Extraction, Extractor, Strategy, Tap, Unsupported, module_outputs, repeated_modules

__all__ = ["IntermediateLayerGetterStrategy"]


class _IlgExtractor(Extractor):
    def __init__(self, module: IntermediateLayerGetter) -> None:
        self.module = module

    def extract_with(self, module: nn.Module, x: Any) -> Extraction:
        if isinstance(x, Arguments):
            raise Unsupported(f"IntermediateLayerGetter's forward takes one input; the model takes {len(x)} positional arguments")
        return Extraction(features=module(x))


class IntermediateLayerGetterStrategy(Strategy):
    """``IntermediateLayerGetter(model, return_layers={layer: layer})``."""

    def attach(self, model: nn.Module, *, layers: Sequence[Tap], tracer_kwargs: Mapping[str, Any] | None = None) -> Extractor:
        modules = module_outputs(layers, seen_by="IntermediateLayerGetter")
        children = [name for name, _ in model.named_children()]
        nested = [name for name, path in modules.items() if path not in children]
        if nested:
            raise Unsupported(
                f"IntermediateLayerGetter takes direct children only; {', '.join(nested)} "
                f"{'is' if len(nested) == 1 else 'are'} not among them",
                layers=nested,
                reasons={name: f"IntermediateLayerGetter takes direct children only; {name} is not among them" for name in nested},
            )
        if repeated_modules(modules):
            raise Unsupported("IntermediateLayerGetter takes one name per child", layers=repeated_modules(modules))
        return _IlgExtractor(IntermediateLayerGetter(model, return_layers={path: name for name, path in modules.items()}))
