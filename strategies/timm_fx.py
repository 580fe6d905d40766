"""``timm-fx``: timm's FX feature extraction, ``timm.models.create_feature_extractor``.

torchvision's ``create_feature_extractor`` with timm's own leaf modules
(``register_notrace_module``) and autowrapped functions (``register_notrace_function``), as
timm users call it (and as ``features_only`` models with ``feature_cls='fx'`` build their
``FeatureGraphNet``). Layers are passed by name as ``return_nodes={layer: layer}``. A node
inside one of timm's leaf modules is no node of timm's graph: that layer is ``unsupported``.
"""

from __future__ import annotations

import re
from typing import Any, Mapping, Sequence

from timm.models import create_feature_extractor
from torch import nn

from .base import Extractor, Strategy, Tap, Unsupported
from .fx import _FxExtractor

__all__ = ["TimmFx"]


class TimmFx(Strategy):
    """``timm.models.create_feature_extractor(model, return_nodes={layer: layer})``."""

    def attach(self, model: nn.Module, *, layers: Sequence[Tap], tracer_kwargs: Mapping[str, Any] | None = None) -> Extractor:
        try:
            module = create_feature_extractor(model, {str(name): str(name) for name in layers})
        except ValueError as exc:
            missing = re.search(r"node: '(.+?)' is not present in model", str(exc))
            if missing:
                raise Unsupported(f"no node {missing.group(1)!r} in timm's FX graph", layers=[missing.group(1)]) from exc
            raise
        return _FxExtractor(module)
