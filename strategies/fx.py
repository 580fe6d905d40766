"""``fx``: torchvision's ``create_feature_extractor`` (symbolic tracing).

Layers are passed as ``return_nodes={layer: layer}``; a module path names the last node
inside that module, and a module called twice gives two nodes (``relu``, ``relu_1``) of
which the plain name is the first call.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn
from torchvision.models.feature_extraction import create_feature_extractor

from .base import Extraction, Extractor, Strategy, Unsupported

__all__ = ["FxFeatureExtractor"]


class _FxExtractor(Extractor):
    def __init__(self, module: nn.Module) -> None:
        self.module = module

    def extract_with(self, module: nn.Module, x: torch.Tensor) -> Extraction:
        return Extraction(features=module(x))


class FxFeatureExtractor(Strategy):
    """``create_feature_extractor(model, return_nodes={layer: layer})``."""

    def attach(self, model: nn.Module, *, layers: Sequence[str]) -> Extractor:
        try:
            module = create_feature_extractor(model, return_nodes={name: name for name in layers})
        except ValueError as exc:
            # torchvision raises ValueError when a requested name is no node of the graph.
            if "is not present in model" in str(exc):
                raise Unsupported(f"no FX node for the request: {exc}") from exc
            raise
        return _FxExtractor(module)
