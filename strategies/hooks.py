"""``hooks``: ``register_forward_hook`` storing the output, as the tutorials show it.

The hook keeps a reference to the module's output (no clone), so a later in-place op
changes what was stored. ``hooks+clone`` applies the well-known fix.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch
from torch import nn

from .base import Extraction, Extractor, Strategy, Tap, call_model, module_outputs

__all__ = ["Hooks", "HooksClone"]


class _HookExtractor(Extractor):
    def __init__(self, model: nn.Module, modules: Mapping[str, str], *, clone: bool) -> None:
        self.module = model
        self.features: dict[str, Any] = {}
        self.handles = []
        for name, path in modules.items():
            def hook(module: nn.Module, args: Any, output: Any, name: str = name) -> None:
                self.features[name] = output.clone() if clone and isinstance(output, torch.Tensor) else output
            self.handles.append(model.get_submodule(path).register_forward_hook(hook))

    def extract_with(self, module: nn.Module, x: Any) -> Extraction:
        output = call_model(module, x)
        return Extraction(features=self.features, output=output)

    def close(self) -> None:
        for handle in self.handles:
            handle.remove()


class Hooks(Strategy):
    """Forward hooks that store the output reference."""

    clone = False

    def attach(self, model: nn.Module, *, layers: Sequence[Tap], tracer_kwargs: Mapping[str, Any] | None = None) -> Extractor:
        return _HookExtractor(model, module_outputs(layers, seen_by="a forward hook"), clone=self.clone)


class HooksClone(Hooks):
    """Forward hooks that store a clone of the output."""

    clone = True
