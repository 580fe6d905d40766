"""Strategy registry: a private dict, a read-only public view, built-ins loaded lazily.

Built-ins are registered by dotted path (``module:attribute``) so that importing the
registry imports no optional package; a strategy whose package is missing is reported
as unavailable with an install hint instead of breaking the run.
"""

from __future__ import annotations

import fnmatch
import importlib
from types import MappingProxyType
from typing import Iterable, Mapping

from .base import Strategy

__all__ = [
    "StrategyUnavailable",
    "available_strategies",
    "get_strategy",
    "list_strategies",
    "register_strategy",
    "registry",
]

# name -> (dotted path "module:attribute", pip requirement that provides it)
_known: dict[str, tuple[str, str]] = {
    "stash": ("strategies.stash:Stash", "torch"),
    "stash+clone": ("strategies.stash:StashClone", "torch"),
    "hooks": ("strategies.hooks:Hooks", "torch"),
    "hooks+clone": ("strategies.hooks:HooksClone", "torch"),
    "ilg": ("strategies.ilg:IntermediateLayerGetterStrategy", "torchvision"),
    "torchextractor": ("strategies.torchextractor_adapter:TorchExtractor", "torchextractor"),
    "torchextractor+clone": ("strategies.torchextractor_adapter:TorchExtractorClone", "torchextractor"),
    "timm": ("strategies.timm_features:TimmFeaturesOnly", "timm"),
    "fx": ("strategies.fx:FxFeatureExtractor", "torchvision"),
    "timm-fx": ("strategies.timm_fx:TimmFx", "timm"),
    "timm-intermediates": ("strategies.timm_intermediates:TimmIntermediates", "timm"),
    "torchlens": ("strategies.torchlens_adapter:TorchLens", "'feature-conformance[torchlens]'"),
    "captum": ("strategies.captum_adapter:Captum", "'feature-conformance[captum]'"),
    "nnsight": ("strategies.nnsight_adapter:NNsightStrategy", "'feature-conformance[nnsight]'"),
    "hf-hidden-states": ("strategies.hf_hidden_states:HfHiddenStates", "torch"),
    "hf-backbone": ("strategies.hf_backbone:HfBackbone", "'feature-conformance[hf]'"),
}
_registry: dict[str, type[Strategy]] = {}

#: Read-only view of the strategies loaded so far (name -> class).
registry: Mapping[str, type[Strategy]] = MappingProxyType(_registry)

#: The six strategies users ask about; variants (``+clone``) are extra.
CORE_STRATEGIES = ("stash", "hooks", "ilg", "torchextractor", "timm", "fx")


class StrategyUnavailable(Exception):
    """A known strategy whose package is not installed."""

    def __init__(self, name: str, requirement: str, cause: BaseException) -> None:
        super().__init__(f"strategy {name!r} is unavailable ({cause}); install it with: pip install {requirement}")
        self.name = name
        self.requirement = requirement


def register_strategy(name: str, target: type[Strategy] | str, *, requirement: str = "", clobber: bool = False) -> None:
    """Register a strategy class, or a dotted path ``module:attribute`` loaded on first use."""
    if not clobber and (name in _registry or name in _known):
        raise ValueError(f"strategy {name!r} is already registered; pass clobber=True to replace it")
    _registry.pop(name, None)
    if isinstance(target, str):
        _known[name] = (target, requirement or target.split(".")[0])
    else:
        _known.pop(name, None)
        _registry[name] = target


def list_strategies(*, include: str | Iterable[str] = "*", exclude: str | Iterable[str] = ()) -> list[str]:
    """Names of all registered strategies matching fnmatch patterns, core ones first."""
    includes = [include] if isinstance(include, str) else list(include)
    excludes = [exclude] if isinstance(exclude, str) else list(exclude)
    names = list(dict.fromkeys([*_known, *_registry]))
    return [
        n for n in names
        if any(fnmatch.fnmatchcase(n, p) for p in includes) and not any(fnmatch.fnmatchcase(n, p) for p in excludes)
    ]


def get_strategy(name: str) -> Strategy:
    """An instance of the strategy called ``name``.

    Raises ``KeyError`` for an unknown name and :class:`StrategyUnavailable` when its
    package is not installed.
    """
    if name not in _registry:
        if name not in _known:
            raise KeyError(name)
        path, requirement = _known[name]
        module_name, _, attribute = path.partition(":")
        try:
            _registry[name] = getattr(importlib.import_module(module_name), attribute)
        except ImportError as exc:
            raise StrategyUnavailable(name, requirement, exc) from exc
    strategy = _registry[name]()
    strategy.name = name
    return strategy


def available_strategies() -> dict[str, str]:
    """Every strategy name mapped to ``"available"`` or the reason it is not."""
    status = {}
    for name in list_strategies():
        try:
            get_strategy(name)
            status[name] = "available"
        except StrategyUnavailable as exc:
            status[name] = str(exc)
    return status
