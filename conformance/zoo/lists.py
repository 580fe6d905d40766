"""The zoos: which model references a name like ``quick`` or ``timm-families`` stands for."""

from __future__ import annotations

import fnmatch
from typing import Iterable

from conformance.core.errors import ConformanceError
from conformance.zoo.families import timm_families, torchvision_families
from conformance.zoo.specs import QUICK_INPUT_SHAPES, QUICK_ZOO, TIMM_ZOO, TORCHVISION_GROUPS, torchvision_names

__all__ = ["list_models", "zoo_input_shape"]


def list_models(
    *, zoo: str = "quick", include: str | Iterable[str] = "*", exclude: str | Iterable[str] = ()
) -> list[str]:
    """Model references in a zoo, fnmatch-filtered: ``quick``, ``torchvision`` (classification),
    ``torchvision-segmentation``, ``-video``, ``-quantization``, ``-detection``, ``-optical-flow``,
    ``torchvision-all`` (every group), ``torchvision-families`` (one model per torchvision model
    module), ``timm`` (curated), ``timm-families`` (one model per timm model module; both
    :mod:`conformance.zoo.families`), ``hf-families`` (one transformers vision model per model
    type, :mod:`conformance.zoo.hf`) or ``all`` (``torchvision`` and ``timm``)."""
    zoos = {
        "quick": lambda: list(QUICK_ZOO),
        "torchvision": lambda: [f"torchvision:{n}" for n in torchvision_names("classification")],
        **{f"torchvision-{group.replace('_', '-')}": (lambda group=group: [f"torchvision:{n}" for n in torchvision_names(group)])
           for group in TORCHVISION_GROUPS[1:]},
        "torchvision-all": lambda: [f"torchvision:{n}" for n in torchvision_names()],
        "timm": lambda: [f"timm:{n}" for n in TIMM_ZOO],
        "timm-families": lambda: [choice.reference for choice in timm_families()],
        "torchvision-families": lambda: [choice.reference for choice in torchvision_families()],
        "hf-families": _hf_families,
    }
    zoos["all"] = lambda: zoos["torchvision"]() + zoos["timm"]()
    if zoo not in zoos:
        raise ConformanceError(f"unknown zoo {zoo!r}", hint=f"choose one of {', '.join(zoos)}")
    includes = [include] if isinstance(include, str) else list(include)
    excludes = [exclude] if isinstance(exclude, str) else list(exclude)
    return [
        ref for ref in zoos[zoo]()
        if any(fnmatch.fnmatchcase(ref, p) or fnmatch.fnmatchcase(ref.partition(":")[2], p) for p in includes)
        and not any(fnmatch.fnmatchcase(ref, p) or fnmatch.fnmatchcase(ref.partition(":")[2], p) for p in excludes)
    ]


def _hf_families() -> list[str]:
    try:
        from conformance.zoo.hf import hf_model_types

        return [f"hf:{name}" for name in hf_model_types()]
    except ImportError:
        raise ConformanceError("the hf-families zoo needs transformers", hint="pip install 'feature-conformance[hf]'") from None


def zoo_input_shape(*, zoo: str, reference: str) -> tuple[int, ...] | None:
    """The input a zoo gives ``reference`` where it is not the model's own default (``None``)."""
    return QUICK_INPUT_SHAPES.get(reference) if zoo == "quick" else None
