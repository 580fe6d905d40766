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
constant the first trace set on its root) is traced afresh. Each ``GraphModule`` compiles its
generated source with ``compile`` (six times per extractor: each mode, before and after the
return nodes are set); inside, a source compiled before gives the code object compiled then,
executed in the new module's globals as FX executes it (the generated source is registered
under its own name all the same). ``tests/test_fxtraces.py``
proves the extractors equal, bitwise and in generated code, to fresh
``create_feature_extractor`` calls. The bench never uses it: costs stay those users pay.
"""

from __future__ import annotations

import contextlib
import copy
import operator
from collections import OrderedDict
from types import CodeType
from typing import Any, Hashable, Iterator

from torch import fx, nn

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
        attributes = tuple(sorted((key, value) for key, value in vars(module).items() if not key.startswith("_") and _plain(value)))
        functions = tuple(sorted((key, id(value)) for key, value in vars(module).items() if callable(value) and not isinstance(value, nn.Module)))
        parts.append((name, type(module), module.training, tensors, attributes, functions))
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
        self.code: dict[tuple, CodeType] = {}  # generated source and where from -> its compiled code
        self.hits = 0
        self.misses = 0


def _tracer_options(tracer: Any, concrete_args: Any) -> Hashable:
    return (type(tracer), tuple(getattr(tracer, "leaf_modules", ())), frozenset(tracer._autowrap_function_ids),
            tuple(id(module) for module in tracer._autowrap_search), tracer.param_shapes_constant, repr(concrete_args))


@contextlib.contextmanager
def reusing_fx_traces(cache: TraceCache | None = None) -> Iterator[TraceCache]:
    """Inside, torchvision's ``NodePathTracer.trace`` returns a copy of an earlier trace of the
    same structure (:func:`structure`) and options, and FX compiles each generated source once;
    ``cache`` keeps both across uses."""
    from torch.fx import graph_module
    from torchvision.models.feature_extraction import NodePathTracer

    cache = TraceCache() if cache is None else cache
    original = NodePathTracer.trace
    original_exec = graph_module._exec_with_source

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
        cache.graphs[key] = _copy(graph, self.node_to_qualname)
        return graph

    NodePathTracer.trace, graph_module._exec_with_source = trace, exec_with_source
    try:
        yield cache
    finally:
        NodePathTracer.trace, graph_module._exec_with_source = original, original_exec
