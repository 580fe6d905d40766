"""``torchextractor``: ``torchextractor.Extractor`` as its README shows it.

``Extractor(model, module_names)`` returns ``(output, feature_maps)``; the dictionary is
the same object on every call and holds output references. ``torchextractor+clone`` uses
the package's own ``capture_fn`` argument to store clones.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch
import torchextractor
from torch import nn

from .base import Extraction, Extractor, Strategy, Tap, Unsupported, call_model, module_outputs, repeated_modules

__all__ = ["TorchExtractor", "TorchExtractorClone"]


def _capture_clone(module: nn.Module, inputs: Any, output: Any, module_name: str, feature_maps: dict) -> None:
    feature_maps[module_name] = output.clone() if isinstance(output, torch.Tensor) else output


class _TorchExtractorExtractor(Extractor):
    def __init__(self, extractor: torchextractor.Extractor, names: Mapping[str, str]) -> None:
        self.extractor = extractor
        self.module = extractor
        self.renamed = {path: name for name, path in names.items() if name != path}

    def extract_with(self, module: nn.Module, x: Any) -> Extraction:
        output, feature_maps = call_model(module, x)
        if self.renamed:  # a node name of a module's last call: torchextractor keys by module path
            feature_maps = {self.renamed.get(key, key): value for key, value in feature_maps.items()}
        return Extraction(features=feature_maps, output=output)

    def close(self) -> None:
        # What ``del extractor`` does through ``Extractor.__del__``.
        for handle in self.extractor.hook_handles:
            handle.remove()


class TorchExtractor(Strategy):
    """``torchextractor.Extractor(model, module_names)``."""

    capture_fn = None

    def attach(self, model: nn.Module, *, layers: Sequence[Tap], tracer_kwargs: Mapping[str, Any] | None = None) -> Extractor:
        modules = module_outputs(layers, seen_by="torchextractor")
        if repeated_modules(modules):
            raise Unsupported("torchextractor keys features by module path: two requested names are one module's output",
                              layers=repeated_modules(modules))
        extractor = torchextractor.Extractor(model, list(modules.values()), capture_fn=type(self).capture_fn)
        return _TorchExtractorExtractor(extractor, modules)


class TorchExtractorClone(TorchExtractor):
    """``torchextractor.Extractor`` with a ``capture_fn`` that clones."""

    capture_fn = staticmethod(_capture_clone)
