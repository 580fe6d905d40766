"""One FX trace per model structure: torchvision's ``NodePathTracer.trace``, remembered.

``create_feature_extractor`` (torchvision's, and timm's, which calls it) traces the whole model
twice, in train and in eval mode, on every call; the graph it gets depends on the model's code,
its module tree and the tracer's options, never on the values of its weights or the return
nodes asked for. The behaviour checks attach ``fx`` and ``timm-fx`` a dozen times per model
(each layer alone, each mode, each copy), so most of their cost was the same trace done again.

Inside :func:`reusing_fx_traces`, a trace of a model whose :func:`structure` and tracer options
were traced before returns a copy of that graph, with the tracer left as a fresh trace leaves
it (``root``, ``graph``, ``node_to_qualname``); everything after the trace (the return nodes,
dead-code elimination, the ``GraphModule``, the generated code) is still torchvision's own
code, run on every call. A graph that reads an attribute the new model lacks (a tensor
constant the first trace set on its root) is traced afresh, and a trace that changed the model it
traced (its code set a flag, as Glow's ActNorm marks itself initialised) is not remembered: a copy
of its graph would leave that change out.

Each ``GraphModule`` writes its graph's Python source and compiles it six times per extractor
(each mode, before and after the return nodes are set, and again at each change of mode).
Inside, ``Graph.python_code`` answers a graph whose nodes it has written before (the same
names, kinds, targets, arguments, annotations and metadata, :func:`_source_key`) with the
source written then and a copy of its globals; a graph holding a value the key cannot vouch
for is written afresh. A source compiled before gives the code object compiled then, executed
in the new module's globals as FX executes it (the source is registered under its own name all
the same). ``tests/test_fxtraces.py`` proves the sources equal to FX's own for every graph,
and the extractors equal, bitwise and in generated code, to fresh ``create_feature_extractor``
calls. The bench never uses it: costs stay those users pay.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import operator
import os
import types
from collections import OrderedDict
from types import CodeType
from typing import Any, Hashable, Iterator

import torch
from torch import fx, nn
from torch.fx.immutable_collections import immutable_dict, immutable_list

__all__ = ["TraceCache", "reusing_fx_traces", "structure"]

_SCALARS = (bool, int, float, str, type(None))


def _plain(value: Any) -> bool:
    return isinstance(value, _SCALARS) or (isinstance(value, tuple) and all(isinstance(item, _SCALARS) for item in value))


def structure(model: nn.Module) -> Hashable:
    """What a symbolic trace of ``model`` can depend on: every module's name, class and mode,
    its parameters' and buffers' names, shapes and dtypes, its plain attributes (flags, sizes)
    and any function set on the instance (a patched ``forward``)."""
    parts = []
    for name, module in model.named_modules(remove_duplicate=False):
        tensors = tuple((kind, key, None if value is None else (tuple(value.shape), value.dtype, value.device.type))
                        for kind, table in (("p", module._parameters), ("b", module._buffers)) for key, value in table.items())
        attributes, functions = [], []
        for key, value in vars(module).items():  # one pass over the instance's attributes
            if not key.startswith("_") and _plain(value):
                attributes.append((key, value))
            if callable(value) and not isinstance(value, nn.Module):
                functions.append((key, id(value)))
        parts.append((name, type(module), module.training, tensors, tuple(sorted(attributes)), tuple(sorted(functions))))
    return tuple(parts)


def _copy(graph: fx.Graph, qualnames: dict[fx.Node, str]) -> tuple[fx.Graph, OrderedDict]:
    """A copy of ``graph`` (as ``Graph.__deepcopy__`` makes it, with the traced function's
    ``_co_fields``, which a fresh trace sets) and ``qualnames`` for its nodes."""
    nodes: dict[fx.Node, fx.Node] = {}
    twin = fx.Graph(tracer_cls=graph._tracer_cls)
    output = twin.graph_copy(graph, val_map=nodes, return_output_node=True)
    twin._codegen = copy.deepcopy(graph._codegen)
    twin._co_fields = dict(graph._co_fields)  # where the traced forward is: the generated code's file name says it
    if output is not None:
        value, old_output = output
        twin.output(value, type_expr=getattr(old_output, "type", None)).meta = dict(old_output.meta)
    return twin, OrderedDict((nodes[node], qualname) for node, qualname in qualnames.items() if node in nodes)


def _resolves(root: nn.Module, graph: fx.Graph) -> bool:
    """Whether every module and attribute ``graph`` reads exists on ``root``."""
    try:
        for node in graph.nodes:
            if node.op in ("call_module", "get_attr"):
                operator.attrgetter(node.target)(root)
    except AttributeError:
        return False
    return True


class TraceCache:
    """Graphs by model structure and tracer options, and how often each was reused."""

    def __init__(self) -> None:
        self.graphs: dict[Hashable, tuple[fx.Graph, OrderedDict]] = {}
        self.sources: dict[Hashable, tuple[Any, list]] = {}  # a graph's nodes -> its generated Python, and the objects its key names by id
        self.code: dict[tuple, CodeType] = {}  # generated source and where from -> its compiled code
        self.hits = 0
        self.misses = 0


class _Unkeyed(Exception):
    """A graph holds a value whose generated code the key cannot vouch for."""


_VALUES = frozenset({bool, int, str, type(None), type(Ellipsis), torch.dtype, torch.device, torch.memory_format, torch.layout})
_SEQUENCES = frozenset({tuple, list, immutable_list, torch.Size})
_MAPPINGS = frozenset({dict, immutable_dict})
_BY_IDENTITY = (type, types.FunctionType, types.BuiltinFunctionType, types.MethodDescriptorType, types.WrapperDescriptorType,
                torch._ops.OpOverload, torch._ops.OpOverloadPacket)


def _value_key(value: Any, positions: dict[fx.Node, int], named: list) -> Hashable:
    """What the generated code of an argument depends on: a node by its place, a constant by value
    (a float by its text: -0.0 and 0.0 are written apart), a function or class by identity."""
    kind = type(value)
    if kind is fx.Node:
        return positions[value]
    if kind in _VALUES:
        return kind, value
    if kind in _SEQUENCES:
        return kind, tuple(positions[item] if type(item) is fx.Node else _value_key(item, positions, named) for item in value)
    if kind is float:
        return kind, repr(value)
    if kind in _MAPPINGS:
        return kind, tuple((_value_key(key, positions, named), _value_key(item, positions, named)) for key, item in value.items())
    if kind is slice:
        return kind, _value_key(value.start, positions, named), _value_key(value.stop, positions, named), _value_key(value.step, positions, named)
    if isinstance(value, _BY_IDENTITY) or value.__class__.__module__ == "typing":
        named.append(value)  # kept alive, so that its id stays its own
        return "id", id(value)
    raise _Unkeyed


def _source_key(graph: fx.Graph, root_module: str, named: list) -> Hashable:
    """Everything ``Graph.python_code`` reads to write a graph's source, for a graph of FX's plain
    code generator: each node's name, kind, target, arguments, annotation and metadata, and the
    registry of custom builtins and the setting that prints metadata; :class:`_Unkeyed` where a
    value falls outside what :func:`_value_key` vouches for."""
    codegen = graph._codegen
    if type(codegen) is not fx.graph.CodeGen or vars(codegen) != {"_body_transformer": None, "_func_name": "forward"}:
        raise _Unkeyed
    positions: dict[fx.Node, int] = {}
    nodes = []
    for node in graph.nodes:
        nodes.append((node.name, node.op, _value_key(node.target, positions, named), _value_key(node.args, positions, named),
                      _value_key(node.kwargs, positions, named) if node.kwargs else None,
                      None if node.type is None else _value_key(node.type, positions, named),
                      _value_key(node.meta, positions, named) if node.meta else None))
        positions[node] = len(positions)
    return (root_module, tuple((name, builtin.import_str) for name, builtin in fx.graph._custom_builtins.items()), os.environ.get("FX_GRAPH_SHOW_META"), tuple(nodes))


def _tracer_options(tracer: Any, concrete_args: Any) -> Hashable:
    return (type(tracer), tuple(getattr(tracer, "leaf_modules", ())), frozenset(tracer._autowrap_function_ids),
            tuple(id(module) for module in tracer._autowrap_search), tracer.param_shapes_constant, repr(concrete_args))


@contextlib.contextmanager
def reusing_fx_traces(cache: TraceCache | None = None) -> Iterator[TraceCache]:
    """Inside, torchvision's ``NodePathTracer.trace`` returns a copy of an earlier trace of the
    same structure (:func:`structure`) and options, FX writes each graph's source once and
    compiles each source once; ``cache`` keeps all three across uses."""
    from torch.fx import graph_module
    from torchvision.models.feature_extraction import NodePathTracer

    cache = TraceCache() if cache is None else cache
    original = NodePathTracer.trace
    original_exec = graph_module._exec_with_source
    original_python_code = fx.Graph.python_code

    def python_code(self: fx.Graph, root_module: str, **options: Any) -> Any:
        if any(options.values()):  # verbose, strides, colours...: as FX writes them
            return original_python_code(self, root_module, **options)
        named: list = []
        try:
            key = _source_key(self, root_module, named)
        except (_Unkeyed, KeyError):  # KeyError: an argument that is a node of another graph
            return original_python_code(self, root_module, **options)
        known = cache.sources.get(key)
        if known is None:
            known = cache.sources[key] = (original_python_code(self, root_module, **options), named)
        code = known[0]
        return dataclasses.replace(code, globals=dict(code.globals), _lineno_map=None if code._lineno_map is None else dict(code._lineno_map))

    def exec_with_source(src: str, globals: dict[str, Any], co_fields: dict[str, Any] | None = None) -> None:
        key = graph_module._loader.cache(src, globals, co_fields)  # the source under a name of its own, as FX registers it
        known = (src, tuple(sorted((co_fields or {}).items())))  # the code's file name tells where it was generated from
        code = cache.code.get(known)
        if code is None:
            code = cache.code[known] = compile(src, key, "exec", dont_inherit=True)
        exec(code, globals)

    def trace(self: Any, root: Any, concrete_args: dict[str, Any] | None = None) -> fx.Graph:
        if not isinstance(root, nn.Module):
            return original(self, root, concrete_args)
        key = (structure(root), _tracer_options(self, concrete_args))
        known = cache.graphs.get(key)
        if known is not None and _resolves(root, known[0]):
            cache.hits += 1
            self.root, self.root_module_name = root, root._get_name()
            self.graph, self.node_to_qualname = _copy(*known)
            return self.graph
        cache.misses += 1
        graph = original(self, root, concrete_args)
        if structure(root) == key[0]:  # a trace that changed its model (a flag its code sets) cannot be replayed on another
            cache.graphs[key] = _copy(graph, self.node_to_qualname)
        return graph

    NodePathTracer.trace, graph_module._exec_with_source, fx.Graph.python_code = trace, exec_with_source, python_code
    try:
        yield cache
    finally:
        NodePathTracer.trace, graph_module._exec_with_source, fx.Graph.python_code = original, original_exec, original_python_code
