"""The ``timm-families`` and ``torchvision-families`` zoos: one model per model module, chosen by rule.

timm registers every architecture in a model module (``timm.models.resnet``,
``timm.models.vision_transformer``, ...); a module is a family. torchvision defines its
builders the same way (``torchvision.models.resnet``, ``torchvision.models.video.resnet``,
``torchvision.models.detection.faster_rcnn``, ...). The rule: from each module, the
architecture with the fewest parameters, counted on the meta device (ties broken by name).
timm's models run at their default pretrained-config input size, torchvision's at the
zoo's input for their group. Counting all of timm's architectures takes minutes, so the
choice is stored per timm version: the file shipped in ``conformance/zoo/data/`` for the pinned
version, and a cache under ``~/.cache/feature-conformance`` made on first use for any
other. torchvision's 121 builders are counted on each call (seconds).

Example::

    >>> from conformance.zoo.families import timm_families, torchvision_families
    >>> choice = timm_families()[0]
    >>> choice.module, choice.model, choice.params, choice.candidates
    >>> [choice.reference for choice in torchvision_families()][:2]
    ['torchvision:alexnet', 'torchvision:convnext_tiny']
"""

from __future__ import annotations

import functools
import json
import os
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import torch

__all__ = ["FamilyChoice", "choose_family_model", "timm_families", "torchvision_families"]

_SHIPPED = Path(__file__).parent / "data"


@dataclass(frozen=True)
class FamilyChoice:
    """The model the rule chose for one model module, and why."""

    module: str  # the model module (family), e.g. "resnet", or torchvision's "video.resnet"
    model: str  # the chosen architecture
    params: int  # its parameter count, on the meta device
    candidates: int  # architectures registered in the module
    input_size: tuple[int, ...]  # timm: (C, H, W) of its default pretrained config; torchvision: the zoo's input shape
    unbuildable: tuple[str, ...] = ()  # architectures the meta-device count could not build
    library: str = "timm"  # "timm" or "torchvision"

    @property
    def reference(self) -> str:
        return f"{self.library}:{self.model}"


def _count_on_meta(build: Callable[[], torch.nn.Module]) -> int:
    """Parameters of the model ``build`` makes, built on the meta device (no memory, no init)."""
    with warnings.catch_warnings(), torch.device("meta"):
        warnings.simplefilter("ignore")
        return sum(p.numel() for p in build().parameters())


def _meta_params(name: str) -> int:
    import timm

    return _count_on_meta(lambda: timm.create_model(name, pretrained=False))


def choose_family_model(module: str) -> FamilyChoice:
    """Apply the rule to one timm model module."""
    import timm

    names = timm.list_models(module=module)
    counts: dict[str, int] = {}
    unbuildable = []
    for name in names:
        try:
            counts[name] = _meta_params(name)
        except Exception:  # a constructor that cannot run on meta: the rule skips it, and says so
            unbuildable.append(name)
    if not counts:
        raise RuntimeError(f"no architecture of timm module {module!r} builds on the meta device")
    model = min(counts, key=lambda name: (counts[name], name))
    cfg = timm.get_pretrained_cfg(model)
    size = tuple(cfg.input_size) if cfg is not None and cfg.input_size else (3, 224, 224)
    return FamilyChoice(module, model, counts[model], len(names), size, tuple(unbuildable))


def _cache_path(version: str) -> Path:
    root = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "feature-conformance"
    return root / f"timm-families-{version}.json"


def _load(path: Path, version: str) -> list[FamilyChoice] | None:
    if not path.is_file():
        return None
    document = json.loads(path.read_text())
    if document.get("timm") != version:
        return None
    return [FamilyChoice(**{**entry, "input_size": tuple(entry["input_size"]), "unbuildable": tuple(entry["unbuildable"])})
            for entry in document["families"]]


def save_families(choices: list[FamilyChoice], *, path: Path, version: str) -> None:
    """Write the choices for one timm version as JSON."""
    path.parent.mkdir(parents=True, exist_ok=True)
    document = {"timm": version, "rule": "fewest parameters on the meta device per timm model module; ties by name",
                "families": [asdict(choice) for choice in choices]}
    path.write_text(json.dumps(document, indent=1) + "\n")


def timm_families(*, refresh: bool = False) -> list[FamilyChoice]:
    """The rule's choice for every timm model module of the installed timm, in module order.

    Read from the shipped file or the cache when they are for this timm version; otherwise
    (or with ``refresh``) computed, which builds every architecture on the meta device
    (about 4 minutes for timm 1.0.31 on 2 cores), and cached.
    """
    import timm

    version = timm.__version__
    shipped = _SHIPPED / f"timm-families-{version}.json"
    if not refresh:
        for path in (shipped, _cache_path(version)):
            choices = _load(path, version)
            if choices is not None:
                return choices
    choices = [choose_family_model(module) for module in sorted(timm.list_modules())]
    save_families(choices, path=_cache_path(version), version=version)
    return choices


def _torchvision_params(name: str, group: str) -> int:
    """Parameters of a torchvision builder, counted on the meta device as the zoo builds it
    (no backbone weights; a quantizable model before it is quantized); for a builder that
    computes with tensors while it builds (RegNet), the ``num_params`` of its weights' metadata."""
    import torchvision

    from conformance.zoo.specs import _GROUP_BUILD_OPTIONS

    options = {key: value for key, value in _GROUP_BUILD_OPTIONS.get(group, {}).items() if key != "quantize"}
    try:
        return _count_on_meta(lambda: torchvision.models.get_model(name, weights=None, **options))
    except Exception:
        return next(iter(torchvision.models.get_model_weights(name))).meta["num_params"]


@functools.cache
def torchvision_families() -> list[FamilyChoice]:
    """The rule's choice for every torchvision model module, group by group (the order of
    ``TORCHVISION_GROUPS``), modules by name: 38 families for torchvision 0.29."""
    import torchvision

    from conformance.zoo.specs import TORCHVISION_GROUPS, resolve_model, torchvision_names

    choices = []
    for group in TORCHVISION_GROUPS:
        modules: dict[str, list[str]] = {}
        for name in torchvision_names(group):
            module = torchvision.models.get_model_builder(name).__module__.removeprefix("torchvision.models.")
            modules.setdefault(module, []).append(name)
        for module, names in sorted(modules.items()):
            counts: dict[str, int] = {}
            unbuildable = []
            for name in names:
                try:
                    counts[name] = _torchvision_params(name, group)
                except Exception:  # neither counted on meta nor in its weights' metadata: the rule skips it, and says so
                    unbuildable.append(name)
            if not counts:
                raise RuntimeError(f"no builder of torchvision module {module!r} builds on the meta device")
            model = min(counts, key=lambda name: (counts[name], name))
            shape = resolve_model(f"torchvision:{model}").input_shape
            choices.append(FamilyChoice(module, model, counts[model], len(names), shape, tuple(unbuildable), library="torchvision"))
    return choices
