"""``torchextractor``: ``torchextractor.Extractor`` as its README shows it.

``Extractor(model, module_names)`` returns ``(output, feature_maps)``; the dictionary is
the same object on every call and holds output references. ``torchextractor+clone`` uses
the package's own ``capture_fn`` argument to store clones.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
import torchextractor
from torch import nn

from .base import Extraction, Extractor, Strategy

__all__ = ["TorchExtractor", "TorchExtractorClone"]


def _capture_clone(module: nn.Module, inputs: Any, output: Any, module_name: str, feature_maps: dict) -> None:
    feature_maps[module_name] = output.clone() if isinstance(output, torch.Tensor) else output


class _TorchExtractorExtractor(Extractor):
    def __init__(self, extractor: torchextractor.Extractor) -> None:
        self.extractor = extractor
        self.module = extractor

    def extract_with(self, module: nn.Module, x: torch.Tensor) -> Extraction:
        output, feature_maps = module(x)
        return Extraction(features=feature_maps, output=output)

    def close(self) -> None:
        # What ``del extractor`` does through ``Extractor.__del__``.
        for handle in self.extractor.hook_handles:
            handle.remove()


class TorchExtractor(Strategy):
    """``torchextractor.Extractor(model, module_names)``."""

    capture_fn = None

    def attach(self, model: nn.Module, *, layers: Sequence[str]) -> Extractor:
        capture_fn = type(self).capture_fn
        return _TorchExtractorExtractor(torchextractor.Extractor(model, list(layers), capture_fn=capture_fn))


class TorchExtractorClone(TorchExtractor):
    """``torchextractor.Extractor`` with a ``capture_fn`` that clones."""

    capture_fn = staticmethod(_capture_clone)
