"""Layer specs: module paths and the named sets ``@children``, ``@stages``, ``@leaves``.

A layer is a module path (``layer1``, ``features.3``) and means the output of that
module's forward call. ``@stages`` is timm's ``feature_info`` for timm models, a curated
list for the torchvision families that have natural stages, and, for families built on
one container (``features``, ``layers``), the last child of the container at each
spatial resolution, found by a shape probe on the meta device.
"""

from __future__ import annotations

import copy
import difflib
from typing import Callable, Sequence

import torch
from torch import nn

from .errors import ConformanceError
from .zoo import ModelSpec

__all__ = ["LAYER_SETS", "resolve_layers", "stage_layers"]


def _children(model: nn.Module) -> list[str]:
    return [name for name, _ in model.named_children()]


def _leaves(model: nn.Module) -> list[str]:
    return [name for name, module in model.named_modules() if name and not list(module.children())]


def _quarters(container: str) -> Callable[[nn.Module], list[str]]:
    def pick(model: nn.Module) -> list[str]:
        names = [f"{container}.{n}" for n, _ in model.get_submodule(container).named_children()]
        count = len(names)
        return [names[i] for i in sorted({count // 4 - 1, count // 2 - 1, 3 * count // 4 - 1, count - 1}) if i >= 0]

    return pick


def _fixed(*names: str) -> Callable[[nn.Module], list[str]]:
    return lambda model: list(names)


# Curated torchvision stage lists, by family (ModelSpec.family).
_TORCHVISION_STAGES: dict[str, Callable[[nn.Module], list[str]]] = {
    "resnet": _fixed("layer1", "layer2", "layer3", "layer4"),
    "resnext": _fixed("layer1", "layer2", "layer3", "layer4"),
    "wide_resnet": _fixed("layer1", "layer2", "layer3", "layer4"),
    "regnet": _fixed("trunk_output.block1", "trunk_output.block2", "trunk_output.block3", "trunk_output.block4"),
    "convnext": _fixed("features.1", "features.3", "features.5", "features.7"),
    "swin": _fixed("features.1", "features.3", "features.5", "features.7"),
    "swin_v2": _fixed("features.1", "features.3", "features.5", "features.7"),
    "maxvit": _fixed("blocks.0", "blocks.1", "blocks.2", "blocks.3"),
    "densenet": _fixed("features.denseblock1", "features.denseblock2", "features.denseblock3", "features.denseblock4"),
    "googlenet": _fixed("maxpool2", "inception3b", "inception4e", "inception5b"),
    "inception_v3": _fixed("Conv2d_4a_3x3", "Mixed_5d", "Mixed_6e", "Mixed_7c"),
    "shufflenet_v2": _fixed("maxpool", "stage2", "stage3", "stage4"),
    "vit": _quarters("encoder.layers"),
}
# Families whose stages are the resolution changes inside one container.
_STAGE_CONTAINERS = {"layers": ("mnasnet",)}


def _resolution_ends(model: nn.Module, container: str, input_shape: Sequence[int]) -> list[str]:
    """Last child of ``container`` at each spatial resolution (NCHW), probed on the meta device."""
    probe = copy.deepcopy(model).to("meta")
    shapes: dict[str, tuple[int, ...]] = {}
    handles = [
        child.register_forward_hook(lambda m, a, out, name=name: shapes.__setitem__(name, tuple(out.shape[2:])))
        for name, child in probe.get_submodule(container).named_children()
    ]
    try:
        probe(torch.empty(*input_shape, device="meta"))
    finally:
        for handle in handles:
            handle.remove()
    names = list(shapes)
    return [
        f"{container}.{name}"
        for name, following in zip(names, [*names[1:], None])
        if following is None or shapes[following] != shapes[name]
    ]


def stage_layers(model: nn.Module, spec: ModelSpec) -> list[str]:
    """The ``@stages`` of a model (see the module docstring)."""
    feature_info = getattr(model, "feature_info", None)
    if spec.source == "timm" and feature_info:
        return [info["module"] for info in feature_info]
    if spec.family in _TORCHVISION_STAGES:
        return _TORCHVISION_STAGES[spec.family](model)
    children = _children(model)
    container = next((c for c, families in _STAGE_CONTAINERS.items() if spec.family in families), "features")
    if container in children:
        return _resolution_ends(model, container, spec.input_shape)
    return children


LAYER_SETS: dict[str, Callable[[nn.Module, ModelSpec], list[str]]] = {
    "@children": lambda model, spec: _children(model),
    "@stages": stage_layers,
    "@leaves": lambda model, spec: _leaves(model),
}


def _completion_order(model: nn.Module) -> list[str]:
    """Module paths in the order a forward pass that runs modules as registered completes
    them: children before their parent (post-order)."""
    order: list[str] = []

    def visit(module: nn.Module, prefix: str) -> None:
        for name, child in module.named_children():
            path = f"{prefix}{name}"
            visit(child, f"{path}.")
            order.append(path)

    visit(model, "")
    return order


def resolve_layers(model: nn.Module, spec: ModelSpec, requested: Sequence[str]) -> list[str]:
    """Expand layer sets and check every path names a module; duplicates dropped.

    Explicit paths keep the order given. When layer sets are expanded, the union is put in
    completion order (children before parents), the order a forward pass produces them.
    """
    modules = {name for name, _ in model.named_modules() if name}
    layers: list[str] = []
    for item in requested:
        if item.startswith("@"):
            if item not in LAYER_SETS:
                raise ConformanceError(f"unknown layer set {item!r}", hint=f"choose one of {', '.join(LAYER_SETS)}")
            layers.extend(LAYER_SETS[item](model, spec))
        elif item in modules:
            layers.append(item)
        else:
            close = difflib.get_close_matches(item, sorted(modules), n=3, cutoff=0.5)
            hint = f"did you mean {', '.join(close)}?" if close else f"'conformance list layers {spec.id}' prints them"
            raise ConformanceError(f"{spec.id} has no module {item!r}", hint=hint)
    layers = list(dict.fromkeys(layers))
    if any(item.startswith("@") for item in requested):
        position = {name: index for index, name in enumerate(_completion_order(model))}
        layers.sort(key=position.__getitem__)
    return layers
