"""``fx``: torchvision's ``create_feature_extractor`` (symbolic tracing).

Layers are passed by name as ``return_nodes={layer: layer}``, as users pass them: FX node
names (``layer1.0.add``, ``layer1.0.relu_1``) and module paths, which FX reads as truncated
node names (the last node inside that module; for a module called more than once, its first
call). The model's own FX options (``tracer_kwargs``: ``leaf_modules``,
``autowrap_functions``, and ``concrete_args``) are passed on as its author gives them.
"""

from __future__ import annotations

import re
from typing import Any, Mapping, Sequence

from torch import nn
from torchvision.models.feature_extraction import create_feature_extractor

from .base import Extraction, Extractor, Strategy, Tap, Unsupported, call_model

__all__ = ["FxFeatureExtractor", "fx_options"]


class _FxExtractor(Extractor):
    def __init__(self, module: nn.Module) -> None:
        self.module = module

    def extract_with(self, module: nn.Module, x: Any) -> Extraction:
        return Extraction(features=call_model(module, x))


def fx_options(tracer_kwargs: Mapping[str, Any] | None) -> dict[str, Any]:
    """``create_feature_extractor``'s keyword arguments for a model's FX options (a fresh dict:
    torchvision adds its defaults to the one it is given)."""
    options = dict(tracer_kwargs or {})
    concrete_args = options.pop("concrete_args", None)
    return {"tracer_kwargs": options or None, "concrete_args": concrete_args}


def _built(build: Any) -> Extractor:
    try:
        return _FxExtractor(build())
    except ValueError as exc:
        # torchvision raises ValueError naming the first requested name that is no node of the graph.
        missing = re.search(r"node: '(.+?)' is not present in model", str(exc))
        if missing:
            raise Unsupported(f"no FX node {missing.group(1)!r} in the traced graph", layers=[missing.group(1)]) from exc
        raise


class FxFeatureExtractor(Strategy):
    """``create_feature_extractor(model, return_nodes={layer: layer})``."""

    def attach(self, model: nn.Module, *, layers: Sequence[Tap], tracer_kwargs: Mapping[str, Any] | None = None) -> Extractor:
        return _built(lambda: create_feature_extractor(model, return_nodes={str(name): str(name) for name in layers}, **fx_options(tracer_kwargs)))

    def attach_per_mode(self, model: nn.Module, *, train_layers: Sequence[Tap], eval_layers: Sequence[Tap],
                        tracer_kwargs: Mapping[str, Any] | None = None) -> Extractor:
        """Other layers in each mode: ``train_return_nodes`` and ``eval_return_nodes``."""
        return _built(lambda: create_feature_extractor(
            model, train_return_nodes={str(name): str(name) for name in train_layers}, eval_return_nodes={str(name): str(name) for name in eval_layers},
            **fx_options(tracer_kwargs)))
