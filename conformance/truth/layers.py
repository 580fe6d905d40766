"""Layer specs: module paths, FX-style node names, and the sets ``@children``, ``@stages``,
``@leaves`` and ``@nodes``; each resolves to a :class:`~strategies.base.Tap`.

A module path (``layer1``, ``features.3``) means the output of that module's forward call
(its last call when it runs more than once). Any other name is looked up among the nodes
of the eager forward pass, named as torchvision names FX nodes (:mod:`.nodes`): a call of
a module (``layer1.0.relu_1``: call 2) or an op in a module's code (``layer1.0.add``).
``@stages`` is timm's ``feature_info`` for timm models, the modules ``hidden_states`` and
``last_hidden_state`` stand for in ``hf:`` models (the embeddings, the encoder's layers, the final
norm; a wrapped timm model's ``feature_info``), a curated list for the torchvision families that have natural stages, and, for families built on one container
(``features``, ``layers``), the last child of the container at each spatial resolution,
found by a shape probe on the meta device. ``@nodes`` is every node with a tensor value,
in the order the eval-mode forward pass runs them; there a module's node means the call
it names (``layer1.0.relu`` is call 1 of 2, as in FX).
"""

from __future__ import annotations

import difflib
from typing import Any, Callable, Mapping, Sequence

import torch
from torch import nn

from strategies.base import Tap
from strategies.hf_hidden_states import hidden_state_modules

from conformance.core.errors import ConformanceError
from conformance.core.rng import seed_torch
from conformance.truth.nodes import Node, NodeTable, record_faithfully
from conformance.core.timing import deep_copy, meta_copy
from conformance.zoo.specs import ModelSpec, name_stem

__all__ = ["LAYER_SETS", "NODE_SET", "SET_NAMES", "example_input", "node_table", "node_tap", "resolve_layers", "runs_in", "stage_layers"]


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


def _block_sequences(container: str) -> Callable[[nn.Module], list[str]]:
    """The children of ``container`` that are sequences of transformer blocks (Swin's stages,
    between its patch merges: ``features.1, 3, 5, 7`` in 2-D, ``features.0, 2, 4, 6`` in 3-D)."""
    def pick(model: nn.Module) -> list[str]:
        return [
            f"{container}.{name}" for name, child in model.get_submodule(container).named_children()
            if isinstance(child, nn.Sequential) and len(child) and all(type(block).__name__.endswith("Block") or
                                                                       type(block).__name__.endswith("BlockV2") for block in child)
        ]

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
    "swin": _block_sequences("features"),  # swin_t and swin3d_t (stem "swin")
    "swin_v2": _block_sequences("features"),
    "maxvit": _fixed("blocks.0", "blocks.1", "blocks.2", "blocks.3"),
    "densenet": _fixed("features.denseblock1", "features.denseblock2", "features.denseblock3", "features.denseblock4"),
    "googlenet": _fixed("maxpool2", "inception3b", "inception4e", "inception5b"),
    "inception_v3": _fixed("Conv2d_4a_3x3", "Mixed_5d", "Mixed_6e", "Mixed_7c"),
    "shufflenet_v2": _fixed("maxpool", "stage2", "stage3", "stage4"),
    "vit": _quarters("encoder.layers"),
}
# Families whose stages are the resolution changes inside one container.
_STAGE_CONTAINERS = {"layers": ("mnasnet",)}


def _child_resolutions(probe: nn.Module, container: str, x: torch.Tensor) -> dict[str, tuple[int, ...]]:
    shapes: dict[str, tuple[int, ...]] = {}
    handles = [
        child.register_forward_hook(lambda m, a, out, name=name: shapes.__setitem__(name, tuple(out.shape[2:])))
        for name, child in probe.get_submodule(container).named_children()
    ]
    try:
        with torch.no_grad():
            probe(x)
    finally:
        for handle in handles:
            handle.remove()
    return shapes


def _resolution_ends(model: nn.Module, container: str, input_shape: Sequence[int]) -> list[str]:
    """Last child of ``container`` at each spatial resolution (NCHW), probed on the meta device,
    or on the CPU where the model cannot run there (quantized ops read their scales)."""
    try:
        shapes = _child_resolutions(meta_copy(model), container, torch.empty(*input_shape, device="meta"))
    except (NotImplementedError, RuntimeError):
        shapes = _child_resolutions(deep_copy(model).cpu(), container, torch.zeros(*input_shape))
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
        # entries naming no module of the model (HRNet's ``stem``, ``stage1``: modules of its features wrapper only)
        # or the model itself (TResNet's ``''``: its space-to-depth stem is a function of the features wrapper) are left out
        modules = {name for name, _ in model.named_modules() if name}
        return [info["module"] for info in feature_info if info["module"] in modules]
    if spec.source == "hf":
        indices, final = hidden_state_modules(model)
        if indices or final:
            return [*indices, *([final] if final else [])]
        # a wrapper of a timm model (TimmWrapperModel's timm_model, whose forward_features it calls): the timm model's stages
        wrapped = [(name, child) for name, child in model.named_children() if getattr(child, "feature_info", None)]
        return [f"{name}.{info['module']}" for name, child in wrapped for info in child.feature_info] or _children(model)
    stem = name_stem(spec.name.removeprefix("quantized_")) if spec.source == "torchvision" else None
    if stem in _TORCHVISION_STAGES:  # a classifier, or its quantized version
        return _TORCHVISION_STAGES[stem](model)
    children = _children(model)
    container = next((c for c, families in _STAGE_CONTAINERS.items() if stem in families), "features")
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


NODE_SET = "@nodes"
#: Every set a layer request may name.
SET_NAMES = (*LAYER_SETS, NODE_SET)


def example_input(spec: ModelSpec) -> torch.Tensor:
    """A fixed-seed input of the model's shape, for finding its nodes."""
    return torch.randn(*spec.input_shape, generator=torch.Generator().manual_seed(0))


def node_table(model: nn.Module, *, example: torch.Tensor, tracer_kwargs: Mapping[str, Any] | None = None, train: bool = False) -> NodeTable:
    """The nodes of one forward pass of a copy of ``model`` (eval mode, or train), named as FX names them."""
    copy_ = deep_copy(model).train(train)
    param = next(copy_.parameters(), None)
    example = example.to(param.device) if param is not None else example
    with torch.random.fork_rng(devices=[]):
        seed_torch(0)
        with torch.no_grad():
            output = deep_copy(copy_)(example)
        return record_faithfully(copy_, example, output=output, before_each=lambda: seed_torch(0), tracer_kwargs=tracer_kwargs)


def runs_in(tap: Tap, table: NodeTable) -> bool:
    """Whether the layer runs in the pass ``table`` records: its node, or a node inside its module."""
    if tap.is_op or tap.call is not None:
        return tap in table
    return any(node.module == tap.module or node.scope == tap.module or node.scope.startswith(f"{tap.module}.") for node in table.nodes)


def node_tap(node: Node) -> Tap:
    """The tap of one node: a module's call, or an op."""
    if node.kind == "module":
        return Tap(node.name, module=node.module, call=node.call, calls=node.calls)
    return Tap(node.name, op=node.op, scope=node.scope)


def resolve_layers(model: nn.Module, spec: ModelSpec, requested: Sequence[str], *, example: torch.Tensor | None = None) -> list[Tap]:
    """Expand layer sets, check every name, and give each its tap; duplicates dropped.

    Explicit names keep the order given. When sets are expanded, the union is put in the
    order a forward pass completes them. The nodes of the forward pass (``example``, else a
    fixed-seed input) are recorded only when a name is not a module path or ``@nodes`` is asked;
    a name is looked up in the eval-mode pass, then in the train-mode pass.
    """
    modules = {name for name, _ in model.named_modules(remove_duplicate=False) if name}
    tables: dict[str, NodeTable] = {}

    def nodes(mode: str = "eval") -> NodeTable:
        if mode not in tables:
            tables[mode] = node_table(model, example=example_input(spec) if example is None else example, tracer_kwargs=spec.tracer_kwargs,
                                      train=mode == "train")
        return tables[mode]

    def found(name: str) -> Node | None:
        """The node named ``name`` with a tensor value, in the eval pass, else the train pass."""
        for mode in ("eval", "train"):
            if name in nodes(mode) and nodes(mode)[name].tensor:
                return nodes(mode)[name]
        return None

    layers: list[Tap] = []
    for item in requested:
        if item == NODE_SET:
            layers.extend(node_tap(node) for node in nodes().nodes if node.tensor and node.kind in ("module", "function"))
        elif item.startswith("@"):
            if item not in LAYER_SETS:
                raise ConformanceError(f"unknown layer set {item!r}", hint=f"choose one of {', '.join(SET_NAMES)}")
            layers.extend(Tap(name) for name in LAYER_SETS[item](model, spec))
        elif item in modules:
            layers.append(Tap(item))
        elif found(item) is not None:
            layers.append(node_tap(found(item)))
        else:
            known = sorted(modules | {node.name for mode in ("eval", "train") for node in nodes(mode).nodes if node.tensor})
            close = difflib.get_close_matches(item, known, n=3, cutoff=0.5)
            hint = f"did you mean {', '.join(close)}?" if close else f"'conformance list layers {spec.id} --nodes' prints them"
            raise ConformanceError(f"{spec.id} has no module or node {item!r}", hint=hint)
    layers = list({str(tap): tap for tap in reversed(layers)}.values())[::-1]
    if any(item.startswith("@") for item in requested):
        layers.sort(key=_positions(model, layers, tables.get("eval")))
    return layers


def _positions(model: nn.Module, layers: list[Tap], table: NodeTable | None) -> Callable[[Tap], float]:
    """The position of each tap in the forward pass: its node's, or, for a module without one
    (not a leaf), that of the last node inside it; module completion order without a table."""
    if table is None:
        position = {name: index for index, name in enumerate(_completion_order(model))}
        return lambda tap: position[tap]
    index = {node.name: i for i, node in enumerate(table.nodes)}
    last_inside: dict[str, int] = {}
    for i, node in enumerate(table.nodes):
        path = node.module if node.kind == "module" else node.scope
        while path:
            last_inside[path] = i
            path = path.rpartition(".")[0]
    return lambda tap: index.get(tap, last_inside.get(tap.module or "", len(index)) + 0.5)
