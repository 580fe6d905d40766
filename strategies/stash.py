"""``stash``: the feature saved on the module as an attribute during ``forward``.

This is the classic tutorial pattern (``self.feature = x.detach()`` inside ``forward``),
applied generically: the module's ``forward`` is wrapped by an instance attribute, no hooks
and no source edits, and both the wrapper and the attribute are removed on ``close``.
``detach`` shares storage with the output, so in-place ops after the module show through;
``stash+clone`` stores ``x.detach().clone()`` instead. A module that returns a tuple, a list,
a dict or an object holding tensors has that output stashed as it is (``self.feature = out``),
each tensor in it detached (and cloned).
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch
from torch import nn

from .base import Extraction, Extractor, Strategy, Tap, call_model, map_tensors, module_outputs

__all__ = ["Stash", "StashClone"]

ATTRIBUTE = "stashed_feature"


def _detached_clone(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.detach().clone()


class _StashExtractor(Extractor):
    def __init__(self, model: nn.Module, modules: Mapping[str, str], *, clone: bool) -> None:
        self.module = model
        self.layers = list(modules)
        self.patched = [model.get_submodule(path) for path in modules.values()]
        for module in dict.fromkeys(self.patched):
            original_forward = module.forward

            def forward(*args: Any, _module: nn.Module = module, _forward: Any = original_forward, **kwargs: Any) -> Any:
                out = _forward(*args, **kwargs)
                object.__setattr__(_module, ATTRIBUTE, map_tensors(_detached_clone if clone else torch.Tensor.detach, out))
                return out

            module.forward = forward

    def extract_with(self, module: nn.Module, x: Any) -> Extraction:
        output = call_model(module, x)
        features = {
            name: getattr(module, ATTRIBUTE)
            for name, module in zip(self.layers, self.patched)
            if hasattr(module, ATTRIBUTE)
        }
        return Extraction(features=features, output=output)

    def close(self) -> None:
        for module in dict.fromkeys(self.patched):
            module.__dict__.pop("forward", None)
            module.__dict__.pop(ATTRIBUTE, None)


class Stash(Strategy):
    """Attribute stashing with ``detach()`` as in the tutorials."""

    clone = False

    def attach(self, model: nn.Module, *, layers: Sequence[Tap], tracer_kwargs: Mapping[str, Any] | None = None) -> Extractor:
        return _StashExtractor(model, module_outputs(layers, seen_by="an attribute stashed in forward"), clone=self.clone)


class StashClone(Stash):
    """Attribute stashing with ``detach().clone()``."""

    clone = True
