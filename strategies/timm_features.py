"""``timm``: timm's ``features_only`` wrapper, on the very same weights as the model.

The architecture is rebuilt with ``timm.create_model(arch, features_only=True,
out_indices=...)``, so timm itself picks its wrapper (FeatureListNet, FeatureHookNet or
FeatureGetterNet), and the model's own tensors are then loaded into it. The wrappers
rename parameters (``stages.0`` -> ``stages_0`` when flattening, a ``body.`` or ``model.``
prefix), which :func:`match_state_dict` undoes. Only the taps in the model's
``feature_info`` can be requested; features come back as a list, named here by the
``feature_info`` module of each position.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import timm
import torch
from torch import nn

from .base import Extraction, Extractor, Strategy, Tap, Unsupported, module_outputs, repeated_modules

__all__ = ["TimmFeaturesOnly", "feature_info_indices", "match_state_dict"]


def _candidate_names(key: str) -> list[str]:
    """Names ``key`` of a features_only wrapper may have had in the plain model."""
    head, _, rest = key.partition(".")
    candidates = [key]
    if head in ("body", "model") and rest:
        candidates.append(rest)
    parts = head.split("_")
    for cut in range(1, len(parts)):  # FeatureListNet flattens "stages.0" into "stages_0"
        candidates.append(f"{'_'.join(parts[:cut])}.{'_'.join(parts[cut:])}.{rest}".rstrip("."))
    return candidates


def match_state_dict(target: nn.Module, source: nn.Module) -> dict[str, torch.Tensor]:
    """A state dict for ``target`` holding ``source``'s tensors, matched by name and shape."""
    source_state = source.state_dict()
    matched = {}
    for key, tensor in target.state_dict().items():
        hits = [c for c in _candidate_names(key) if c in source_state and source_state[c].shape == tensor.shape]
        if len(hits) != 1:
            raise RuntimeError(f"cannot match timm features_only parameter {key!r} to the model ({len(hits)} candidates)")
        matched[key] = source_state[hits[0]]
    return matched


class _TimmExtractor(Extractor):
    def __init__(self, module: nn.Module, names: Mapping[str, str]) -> None:
        self.module = module
        self.names = names  # feature_info module -> requested name

    def extract_with(self, module: nn.Module, x: torch.Tensor) -> Extraction:
        out = module(x)
        if isinstance(out, dict):
            return Extraction(features={self.names.get(key, key): value for key, value in out.items()})
        return Extraction(features=dict(zip((self.names.get(path, path) for path in self.module.feature_info.module_name()), out)))


def feature_info_indices(model: nn.Module, layers: Sequence[Tap], *, seen_by: str, can_take: str, one_per: str) -> dict[str, int]:
    """``{requested name: its index in the model's feature_info}``; :class:`Unsupported` naming
    the layers that are not feature_info taps (``can_take`` lists the taps) or repeat one (``one_per``)."""
    modules = module_outputs(layers, seen_by=seen_by)
    taps = [info["module"] for info in model.feature_info]
    missing = [name for name, path in modules.items() if path not in taps]
    if missing:
        raise Unsupported(f"not in timm feature_info; {can_take}: {', '.join(taps)}", layers=missing)
    if repeated_modules(modules):
        raise Unsupported(one_per, layers=repeated_modules(modules))
    return {name: taps.index(path) for name, path in modules.items()}


class TimmFeaturesOnly(Strategy):
    """``timm.create_model(arch, features_only=True, out_indices=...)`` with the model's weights."""

    def refusal(self, model: nn.Module) -> str | None:
        if not (getattr(model, "pretrained_cfg", None) or {}).get("architecture") or not getattr(model, "feature_info", None):
            return "not a timm model: timm features_only needs a timm architecture with feature_info"
        return None

    def attach(self, model: nn.Module, *, layers: Sequence[Tap], tracer_kwargs: Mapping[str, Any] | None = None) -> Extractor:
        self.refuse(model)
        arch, feature_info = model.pretrained_cfg["architecture"], model.feature_info
        indices = feature_info_indices(model, layers, seen_by="timm features_only", can_take="timm can tap only",
                                       one_per="timm features_only returns one feature per tap")
        out_indices = tuple(indices.values())
        features = timm.create_model(arch, pretrained=False, features_only=True, out_indices=out_indices)
        features.load_state_dict(match_state_dict(features, model))
        param = next(model.parameters(), None)
        if param is not None:
            features.to(param.device)
        features.train(model.training)
        return _TimmExtractor(features, {feature_info[index]["module"]: name for name, index in indices.items()})
