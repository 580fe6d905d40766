"""``timm-intermediates``: timm's ``forward_intermediates``, as timm's documentation shows it.

``model.forward_intermediates(x, indices=[...], intermediates_only=True)`` returns the
features of the model's own ``feature_info`` taps, in execution order, with timm's defaults
(``norm=False``, ``output_fmt="NCHW"``: a ViT block's tokens come back as a feature map,
class token dropped). The requested layers are mapped to their index in ``feature_info``;
a layer that is not one of its taps cannot be requested. The call is wrapped in a module
whose ``forward`` is that call, so that scripting, compiling and exporting apply to it.
"""

from __future__ import annotations

from typing import Any, List, Mapping, Sequence, Tuple, Union

import torch
from torch import nn

from .base import Extraction, Extractor, Strategy, Tap, Unsupported
from .timm_features import feature_info_indices

__all__ = ["TimmIntermediates"]


class ForwardIntermediates(nn.Module):
    """``forward`` is ``model.forward_intermediates(x, indices=indices, intermediates_only=True)``."""

    def __init__(self, model: nn.Module, indices: list[int]) -> None:
        super().__init__()
        self.model = model
        self.indices = indices

    def forward(self, x: torch.Tensor) -> Union[List[torch.Tensor], Tuple[torch.Tensor, List[torch.Tensor]]]:
        # what timm annotates forward_intermediates to return (TorchScript checks it)
        return self.model.forward_intermediates(x, indices=self.indices, intermediates_only=True)


class _IntermediatesExtractor(Extractor):
    def __init__(self, module: ForwardIntermediates, names: Sequence[Sequence[str]]) -> None:
        self.module = module
        self.names = names  # per returned feature, the requested names it answers

    def extract_with(self, module: nn.Module, x: torch.Tensor) -> Extraction:
        features = {}
        for names, value in zip(self.names, module(x)):
            features.update(dict.fromkeys(names, value))
        return Extraction(features=features)


class TimmIntermediates(Strategy):
    """``model.forward_intermediates(x, indices=..., intermediates_only=True)`` on a timm model."""

    def refusal(self, model: nn.Module) -> str | None:
        if not callable(getattr(model, "forward_intermediates", None)) or not getattr(model, "feature_info", None):
            return "not a timm model with forward_intermediates and feature_info"
        return None

    def attach(self, model: nn.Module, *, layers: Sequence[Tap], tracer_kwargs: Mapping[str, Any] | None = None) -> Extractor:
        self.refuse(model)
        index_of = feature_info_indices(model, layers, seen_by="timm forward_intermediates", can_take="forward_intermediates can take only",
                                        one_per="forward_intermediates returns one feature per index")
        indices = sorted(index_of.values())  # timm returns the features in execution order
        names = [[name for name, index in index_of.items() if index == taken] for taken in indices]
        return _IntermediatesExtractor(ForwardIntermediates(model, indices), names)
