"""The op-level oracle: every op of the real eager forward pass, named as torchvision names FX nodes.

:func:`record` runs the model once under a :class:`torch.overrides.TorchFunctionMode` while
forward pre-hooks and hooks on every module keep the module call stack. It never traces:
values are those of the eager pass, cloned the moment they are produced (for the nodes
asked for), so the oracle also follows data-dependent control flow that FX cannot.

Each recorded op gets the name torchvision's ``NodePathTracer`` gives the FX node it would
be (``create_feature_extractor`` and ``get_graph_node_names`` use these names):

* a leaf module's call is its module path (``layer1.0.relu``; its second call ``layer1.0.relu_1``);
* a function or tensor method is the op's name in the scope of the module running it
  (``layer1.0.add``), numbered ``_1``, ``_2``... within the scope when repeated;
* the forward's parameters are the input nodes; a parameter used by traced code is a
  ``get_attr`` node (``bn1.bn1_weight``).

As in FX, an op is a node only when one of its arguments derives from the input or a
parameter (a proxy, to FX): an op on buffers alone (``num_batches_tracked.add_(1)``) runs
unrecorded, as FX runs it for real while tracing.

Leaf modules are those FX does not trace into: ``torch.nn`` modules other than
``Sequential``, the module classes of ``torchvision.ops`` (torchvision adds them), and the
model's own ``leaf_modules``. Functions FX keeps whole are one node each, as in FX: those
registered with ``torch.fx.wrap``, the public functions of ``math`` and ``torchvision.ops``
(torchvision's ``autowrap_modules``) and the model's ``autowrap_functions``. Like FX, the recorder counts the ``getitem`` nodes of unpacking a
size or an op's tuple, and arithmetic and comparisons on sizes (``B * N``, ``x.ndim == 4``),
by handing the model tracked sizes and integers; :attr:`NodeTable.output` lets a caller check
that they changed nothing (the pass's output is bitwise the plain forward's), and
``track_sizes=False`` records without them. What FX records and an eager pass cannot see:
``_assert`` on a Python bool, and the fields of a named tuple (``x.max(dim=1)``).

Example::

    >>> table = record(torchvision.models.resnet18().eval(), torch.randn(1, 3, 224, 224))
    >>> [node.name for node in table.nodes if node.kind == "function"][:3]
    ['layer1.0.add', 'layer1.1.add', 'layer2.0.add']
"""

from __future__ import annotations

import contextlib
import dis
import functools
import inspect
import math
import operator
import os
import re
import sys
import weakref
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import BuiltinFunctionType, FunctionType, ModuleType
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from strategies.base import call_model, clone_tree

from conformance.core.timing import deep_copy

__all__ = ["Node", "NodeTable", "RecordingChanged", "is_leaf_module", "record", "record_faithfully", "same_value", "unrecorded"]

_RECORDING: list["_Recorder"] = []  # the recorders whose pass is running


@contextlib.contextmanager
def unrecorded() -> Iterator[None]:
    """Code the harness runs inside a recorded pass (a hook's clone) is not the model's: not recorded."""
    for recorder in _RECORDING:
        recorder.paused += 1
    try:
        yield
    finally:
        for recorder in _RECORDING:
            recorder.paused -= 1


@dataclass(frozen=True)
class Node:
    """One node of the forward pass, as plain data."""

    name: str  # the FX-style node name
    kind: str  # "input", "module" (a leaf module's call), "function" (an op or tensor method), "get_attr"
    scope: str  # the module whose code runs it ("" for the model itself)
    module: str | None = None  # "module" nodes: the module path
    call: int = 1  # "module" nodes: which call of the module (1-based)
    calls: int = 1  # "module" nodes: how many times the module runs in the pass
    op: str = ""  # other nodes: the op (add, relu_, flatten, getitem...)
    tensor: bool = True  # the node's value is a tensor
    inplace: bool = False  # an in-place op: its output is its first argument, changed
    kept_whole: bool = False  # a function FX keeps whole (``torch.fx.wrap``, autowrap): what it does inside is not recorded

    def describe(self) -> str:
        if self.kind == "module":
            return f"call {self.call} of {self.calls} of module {self.module}" if self.calls > 1 else f"output of module {self.module}"
        if self.kind == "function":
            where = f"in {self.scope}" if self.scope else "in the model's own forward"
            return f"{'in-place ' if self.inplace else 'function ' if self.kept_whole else ''}op {self.op} {where}"
        return {"input": "the input", "get_attr": "a parameter or buffer"}.get(self.kind, self.kind)


@dataclass
class NodeTable:
    """The nodes of one forward pass in the order they ran, and the values asked for."""

    nodes: list[Node]
    values: dict[str, Any] = field(default_factory=dict)  # cloned when produced
    after_forward: dict[str, Any] = field(default_factory=dict)  # the same outputs, cloned after the pass
    output: Any = None

    def __post_init__(self) -> None:
        self._by_name = {node.name: node for node in self.nodes}

    def __getitem__(self, name: str) -> Node:
        return self._by_name[name]

    def __contains__(self, name: object) -> bool:
        return name in self._by_name

    def names(self) -> list[str]:
        return [node.name for node in self.nodes]


def _tracer_defaults(tracer_kwargs: Mapping[str, Any] | None) -> tuple[tuple[type, ...], tuple[ModuleType, ...], tuple[Callable, ...]]:
    """Leaf modules, autowrap modules and autowrap functions as torchvision's feature
    extraction traces with them: its defaults added to the model's own options."""
    import torchvision
    from torchvision.models.feature_extraction import _get_leaf_modules_for_ops

    options = tracer_kwargs or {}
    leaves = (*options.get("leaf_modules", ()), *_get_leaf_modules_for_ops())
    modules = (*options.get("autowrap_modules", ()), math, torchvision.ops)
    return leaves, modules, tuple(options.get("autowrap_functions", ()))


def is_leaf_module(module: nn.Module, *, leaf_modules: Sequence[type] = ()) -> bool:
    """Whether FX records ``module`` as one node instead of tracing into it."""
    if leaf_modules and isinstance(module, tuple(leaf_modules)):
        return True
    return module.__module__.startswith(("torch.nn", "torch.ao.nn")) and not isinstance(module, nn.Sequential)


_MAGIC = {"add", "sub", "mul", "floordiv", "truediv", "div", "mod", "pow", "lshift", "rshift", "and", "or", "xor", "matmul"}
_TORCH_DIR = str(Path(torch.__file__).parent) + os.sep
_THIS_FILE = __file__


def _snake_case(name: str) -> str:
    """FX's ``_snake_case``: ``pascalCase`` -> ``pascal_case``, ``ALL_CAPS`` -> ``all_caps``."""
    return re.sub(r"(?<=[a-z])([A-Z])", r"_\1", name).lower()


# Python's binary operators, as the bytecode shows them, and the ``operator`` function FX records for each.
_OPERATORS = {"+": "add", "-": "sub", "*": "mul", "/": "truediv", "//": "floordiv", "%": "mod", "**": "pow", "@": "matmul",
              "&": "and_", "|": "or_", "^": "xor", "<<": "lshift", ">>": "rshift"}
_OPCODES = {"ADD": "add", "SUBTRACT": "sub", "MULTIPLY": "mul", "TRUE_DIVIDE": "truediv", "FLOOR_DIVIDE": "floordiv", "MODULO": "mod",
            "POWER": "pow", "MATRIX_MULTIPLY": "matmul", "AND": "and_", "OR": "or_", "XOR": "xor", "LSHIFT": "lshift", "RSHIFT": "rshift"}


def _binary_operator() -> tuple[str, bool] | None:
    """The operator of the model's code that led here, if it is one (``x / y``, ``x += y``):
    FX records ``operator.truediv`` or ``operator.add`` where torch calls ``div`` or ``add_``.
    The second item says whether it is augmented (in place)."""
    frame = sys._getframe(2)
    while frame is not None and (frame.f_code.co_filename.startswith(_TORCH_DIR) or frame.f_code.co_filename == _THIS_FILE):
        frame = frame.f_back
    if frame is None:
        return None
    return _operators_in(frame.f_code).get(frame.f_lasti)


@functools.lru_cache(maxsize=4096)
def _operators_in(code: Any) -> dict[int, tuple[str, bool]]:
    """``{offset: (FX op, augmented)}`` for the binary-operator instructions of ``code``."""
    found = {}
    for instruction in dis.get_instructions(code):
        if instruction.opname == "BINARY_OP":  # Python 3.11+
            symbol = instruction.argrepr
            if symbol.rstrip("=") in _OPERATORS:
                found[instruction.offset] = (_OPERATORS[symbol.rstrip("=")], symbol.endswith("="))
            continue
        kind, _, op = instruction.opname.partition("_")  # BINARY_ADD, INPLACE_ADD (before 3.11)
        if kind in ("BINARY", "INPLACE") and op in _OPCODES:
            found[instruction.offset] = (_OPCODES[op], kind == "INPLACE")
    return found


# What torch calls for an operator: a dunder, or a method (``div`` for ``/``, ``add_`` for ``+=``).
_OPERATOR_METHODS = {"add", "sub", "mul", "div", "true_divide", "floor_divide", "remainder", "pow", "matmul",
                     "bitwise_and", "bitwise_or", "bitwise_xor", "bitwise_left_shift", "bitwise_right_shift"}


def _op_name(func: Callable) -> tuple[str, bool]:
    """The name FX gives the node of ``func`` (``Graph._target_to_str``), and whether it is in place."""
    name = getattr(func, "__name__", None) or str(func)
    if name == "__get__":  # a tensor property (x.shape, x.ndim): FX records getattr
        return "getattr", False
    if (name.startswith("__") and name.endswith("__")) or name in _OPERATOR_METHODS or name.rstrip("_") in _OPERATOR_METHODS:
        operator_ = _binary_operator()
        if operator_ is not None:
            return operator_
    if name.startswith("__") and name.endswith("__"):
        name = name[2:-2]
        if name[:1] in ("i", "r") and name[1:] in _MAGIC:  # x += y, 2 + x: FX records the plain op
            return name[1:], name[0] == "i"
        return name, name == "setitem"
    if name.endswith("_") and not name.startswith("_"):
        return name, True
    return _snake_case(name), False


_POSTFIX = re.compile(r".+_[0-9]+$")


class _Namer:
    """torchvision's ``NodePathTracer._get_node_qualname``: scope, op, and a postfix numbering
    repeats within the scope, with its quirk: a trailing ``_<digits>`` is taken for a postfix
    and dropped. torchvision scans every earlier name for the latest of ``base`` or
    ``base_<n>``; keeping the latest number of each base gives the same names in linear time."""

    def __init__(self) -> None:
        self.latest: dict[str, int] = {}  # base -> the number of its latest name (0: the base itself)

    def reserve(self, name: str) -> None:
        """A name taken before the pass (an input)."""
        self.latest.setdefault(name, 0)

    def name(self, scope: str, op: str | None) -> str:
        base = scope if op is None else (f"{scope}.{op}" if scope else op)
        if _POSTFIX.match(base) is not None:
            base = base.rsplit("_", 1)[0]
        number = self.latest[base] + 1 if base in self.latest else 0
        self.latest[base] = number
        return f"{base}_{number}" if number else base


class _Tracked:
    """Mixin for values FX would hold as proxies: operations on them are nodes."""

    _recorder: "_Recorder"

    @classmethod
    def of(cls, value: Any, recorder: "_Recorder") -> Any:
        tracked = cls(value)
        tracked._recorder = recorder
        return tracked


class _TrackedInt(_Tracked, int):
    """An integer taken from a size: arithmetic and comparisons on it are nodes, as in FX."""


def _int_operation(name: str, function: Callable, *, reflected: bool = False) -> Callable:
    def method(self: _TrackedInt, other: Any) -> Any:
        if not isinstance(other, (int, float)) or isinstance(other, bool):
            return NotImplemented
        result = function(int(other), int(self)) if reflected else function(int(self), int(other))
        return self._recorder.derived(name, result)

    return method


for _name, _function in {"add": operator.add, "sub": operator.sub, "mul": operator.mul, "floordiv": operator.floordiv,
                         "truediv": operator.truediv, "mod": operator.mod, "pow": operator.pow}.items():
    setattr(_TrackedInt, f"__{_name}__", _int_operation(_name, _function))
    setattr(_TrackedInt, f"__r{_name}__", _int_operation(_name, _function, reflected=True))
for _name, _function in {"eq": operator.eq, "ne": operator.ne, "lt": operator.lt, "le": operator.le, "gt": operator.gt, "ge": operator.ge}.items():
    setattr(_TrackedInt, f"__{_name}__", _int_operation(_name, _function))
_TrackedInt.__hash__ = int.__hash__  # type: ignore[method-assign]
_TrackedInt.__neg__ = lambda self: self._recorder.derived("neg", -int(self))  # type: ignore[method-assign]


class _TrackedSequence(_Tracked):
    """A size or an op's tuple of tensors: indexing or unpacking it is a ``getitem`` node."""

    def __iter__(self):
        for index in range(len(self)):
            yield self[index]

    def __getitem__(self, index: Any) -> Any:
        return self._recorder.derived("getitem", tuple.__getitem__(self, index))


class _TrackedTuple(_TrackedSequence, tuple):
    pass


class _TrackedSize(_TrackedSequence, tuple):
    """``torch.Size`` cannot be subclassed; this tuple carries its one extra method."""

    def __getitem__(self, index: Any) -> Any:
        value = tuple.__getitem__(self, index)
        return self._recorder.derived("getitem", torch.Size(value) if isinstance(index, slice) else value)

    def numel(self) -> int:
        count = 1
        for size in tuple.__iter__(self):
            count *= size
        return count


class _Recorder(TorchFunctionMode):
    """Records every op outside leaf modules, and every leaf module call, with its name."""

    def __init__(self, model: nn.Module, *, wanted: Iterable[str], leaf_modules: Sequence[type], skip: Callable[[str], bool] | None,
                 track_sizes: bool, visit: Callable[[Node, Any], None] | None) -> None:
        super().__init__()
        self.model = model
        self.paths = {module: name for name, module in model.named_modules()}
        self.parameters = {id(tensor): name for name, tensor in model.named_parameters()}  # buffers are no proxies to FX
        self.traced: dict[int, weakref.ref] = {}  # what FX would hold as proxies: the input and what derives from it
        self.leaf_modules = tuple(leaf_modules)
        self.wanted = set(wanted)
        self.skip = skip
        self.track_sizes = track_sizes
        self.visit = visit
        self.namer = _Namer()
        self.nodes: list[Node] = []
        self.values: dict[str, Any] = {}
        self.raw: dict[str, Any] = {}
        self.scopes: list[str] = [""]
        self.leaf_depth = 0
        self.paused = 0  # the recorder's own work, not the model's
        self.calls: dict[str, int] = {}
        self.parameters_seen: set[int] = set()
        self.devices: dict[int, torch.device] = {}  # x.device, a proxy to FX; kept alive so that ids stay theirs
        self.finished = False  # tracked values kept by the model do nothing after the pass

    @property
    def active(self) -> bool:
        return not (self.leaf_depth or self.paused or self.finished)

    def add(self, kind: str, op: str | None, value: Any, *, module: str | None = None, inplace: bool = False, kept_whole: bool = False) -> str:
        """Name and record one node in the current scope; clone its value if it is wanted."""
        scope = self.scopes[-1]
        name = self.namer.name(module if module is not None else scope, op)
        call = 1
        if module is not None:
            call = self.calls[module] = self.calls.get(module, 0) + 1
        node = Node(name, kind, scope, module=module, call=call, op=op or "", tensor=isinstance(value, torch.Tensor), inplace=inplace,
                    kept_whole=kept_whole)
        self.nodes.append(node)
        if self.visit is not None:
            self.paused += 1
            try:
                self.visit(node, value)
            finally:
                self.paused -= 1
        if name in self.wanted:
            self.paused += 1
            try:
                self.values[name] = clone_tree(value)
            finally:
                self.paused -= 1
            self.raw[name] = value
        return name

    def derived(self, op: str, value: Any) -> Any:
        """A node for an operation on a tracked value; its result is tracked in turn."""
        if not self.active:
            return value
        self.add("function", op, value)
        return self.track(value)

    def track(self, value: Any) -> Any:
        if not self.track_sizes:
            return value
        if type(value) is torch.Size:
            return _TrackedSize.of(value, self)
        if type(value) is int:
            return _TrackedInt.of(value, self)
        if type(value) is tuple and value:
            return _TrackedTuple.of(value, self)
        if isinstance(value, torch.device):  # a fresh object each time (dtypes are shared: not tracked)
            self.devices[id(value)] = value
        return value

    def mark(self, value: Any) -> None:
        """Count the tensors in ``value`` as derived from the input."""
        for leaf in torch.utils._pytree.tree_leaves(value):
            if isinstance(leaf, torch.Tensor):
                self.traced[id(leaf)] = weakref.ref(leaf)

    def _traced_arguments(self, args: tuple, kwargs: dict) -> bool:
        """Whether FX would see a proxy among the arguments; ``get_attr`` nodes for the
        parameters among them, on their first use."""
        traced = False
        for leaf in torch.utils._pytree.tree_leaves((args, kwargs)):
            if isinstance(leaf, _Tracked) or (isinstance(leaf, torch.device) and self.devices.get(id(leaf)) is leaf):
                traced = True
            elif isinstance(leaf, torch.Tensor):
                if id(leaf) in self.parameters:
                    traced = True
                    if id(leaf) not in self.parameters_seen:
                        self.parameters_seen.add(id(leaf))
                        self.add("get_attr", re.sub(r"[^0-9a-zA-Z_]+", "_", _snake_case(self.parameters[id(leaf)])), leaf)
                else:
                    reference = self.traced.get(id(leaf))
                    traced = traced or (reference is not None and reference() is leaf)
        return traced

    def __torch_function__(self, func: Callable, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        if not self.active or not self._traced_arguments(args, kwargs):
            return func(*args, **kwargs)
        op, inplace = _op_name(func)
        inplace = inplace or kwargs.get("inplace") is True
        if inplace and self.skip is not None and self.skip(self._next_name(op)):
            self.add("function", op, args[0], inplace=True)
            return args[0]
        out = func(*args, **kwargs)
        self.add("function", op, out, inplace=inplace)
        self.mark(out)
        return self.track(out)

    def wrapped(self, function: Callable) -> Callable:
        """``function`` as FX keeps it: one node when called on traced values, nothing inside recorded."""
        op = _snake_case(function.__name__)

        @functools.wraps(function)
        def call(*args: Any, **kwargs: Any) -> Any:
            if not self.active or not self._traced_arguments(args, kwargs):
                return function(*args, **kwargs)
            if self.skip is not None and self.skip(self._next_name(op)):
                self.add("function", op, args[0] if args else None, kept_whole=True)
                return args[0] if args else None
            self.paused += 1
            try:
                out = function(*args, **kwargs)
            finally:
                self.paused -= 1
            self.add("function", op, out, kept_whole=True)
            self.mark(out)
            return self.track(out)

        return call

    def _next_name(self, op: str) -> str:
        """The name the next ``op`` here will get, without taking it."""
        saved = dict(self.namer.latest)
        name = self.namer.name(self.scopes[-1], op)
        self.namer.latest = saved
        return name

    def enter(self, module: nn.Module) -> None:
        if self.paused:
            return
        if self.leaf_depth:
            self.leaf_depth += 1
        elif module is not self.model and is_leaf_module(module, leaf_modules=self.leaf_modules):
            self.leaf_depth = 1
        else:
            self.scopes.append("" if module is self.model else self.paths.get(module, self.scopes[-1]))

    def leave(self, module: nn.Module, output: Any) -> Any:
        if self.paused:
            return None
        if self.leaf_depth:
            self.leaf_depth -= 1
            if self.leaf_depth == 0:
                self.add("module", None, output, module=self.paths.get(module, ""))
                self.mark(output)
                return self.track(output) if type(output) is tuple else None
            return None
        self.scopes.pop()
        return None


def _inputs(model: nn.Module) -> list[str]:
    """The forward's parameters: FX's placeholder nodes."""
    kinds = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return [name for name, parameter in inspect.signature(model.forward).parameters.items() if parameter.kind in kinds]


def _kept_whole(model: nn.Module, modules: Sequence[ModuleType], functions: Sequence[Callable]) -> list[tuple[dict, str]]:
    """Where FX patches functions it keeps whole: the ``torch.fx.wrap`` registrations, and the
    autowrapped functions named in the globals of the model's forward code."""
    import torch.fx._symbolic_trace as symbolic_trace

    places = {(id(frame), name): (frame, name) for (_, name), frame in symbolic_trace._wrapped_fns_to_patch.copy().items() if name in frame}
    ids = {id(function) for function in functions}
    ids.update(id(value) for module in modules for name, value in vars(module).items()
               if not name.startswith("_") and isinstance(value, (FunctionType, BuiltinFunctionType)))
    for module in model.modules():
        frame = getattr(getattr(module, "forward", None), "__globals__", {})
        for name, value in frame.items():
            if not name.startswith("_") and id(value) in ids:
                places[(id(frame), name)] = (frame, name)
    return list(places.values())


def record(model: nn.Module, x: Any, *, wanted: Iterable[str] = (), tracer_kwargs: Mapping[str, Any] | None = None,
           skip: Callable[[str], bool] | None = None, visit: Callable[[Node, Any], None] | None = None, track_sizes: bool = True) -> NodeTable:
    """Run ``x`` through ``model`` (eagerly, as it is, in its current mode) and name every node;
    the values of the ``wanted`` nodes are cloned as they are produced and again after the pass.

    ``tracer_kwargs`` are the model's FX options (``leaf_modules``, ``autowrap_functions``,
    ``autowrap_modules``), added to torchvision's. ``skip`` names in-place ops and functions
    kept whole not to run (their first argument passes through unchanged), so that a diagnosis
    can measure what the model gives without them; ``visit`` sees every node and its value as it is produced.
    """
    leaves, autowrap_modules, autowrap_functions = _tracer_defaults(tracer_kwargs)
    recorder = _Recorder(model, wanted=wanted, leaf_modules=leaves, skip=skip, track_sizes=track_sizes, visit=visit)
    inputs = _inputs(model)
    for name in inputs:
        recorder.namer.reserve(name)
    handles = []
    for module in model.modules():
        handles.append(module.register_forward_pre_hook(lambda m, args: recorder.enter(m)))
        handles.append(module.register_forward_hook(lambda m, args, output: recorder.leave(m, output)))
    patched = [(frame, name, frame[name]) for frame, name in _kept_whole(model, autowrap_modules, autowrap_functions)]
    for frame, name, function in patched:
        frame[name] = recorder.wrapped(function)
    recorder.mark(x)
    _RECORDING.append(recorder)
    try:
        with recorder:
            output = call_model(model, x)
    finally:
        _RECORDING.remove(recorder)
        recorder.finished = True
        for frame, name, function in patched:
            frame[name] = function
        for handle in handles:
            handle.remove()
    counts: dict[str, int] = {}
    for node in recorder.nodes:
        if node.module is not None:
            counts[node.module] = counts.get(node.module, 0) + 1
    nodes = [Node(name, "input", "") for name in inputs]
    nodes += [replace(node, calls=counts[node.module]) if node.module is not None else node for node in recorder.nodes]
    return NodeTable(nodes, recorder.values, {name: clone_tree(value) for name, value in recorder.raw.items()}, _untracked(output))


class RecordingChanged(Exception):
    """The op-level recording changed the model's output: its node values cannot be trusted."""


def same_value(a: Any, b: Any) -> bool:
    """Bitwise equality of two (nested) values."""
    leaves_a, spec_a = torch.utils._pytree.tree_flatten(a)
    leaves_b, spec_b = torch.utils._pytree.tree_flatten(b)
    return spec_a == spec_b and all(
        torch.equal(x, y) if isinstance(x, torch.Tensor) and isinstance(y, torch.Tensor) else x == y for x, y in zip(leaves_a, leaves_b)
    )


def record_faithfully(model: nn.Module, x: Any, *, output: Any, before_each: Callable[[], None] = lambda: None,
                      **options: Any) -> NodeTable:
    """:func:`record` on a copy of ``model``, checked to give the model's own ``output``
    bitwise; taken again without tracked sizes when they changed what the model computes
    (``before_each`` resets what each attempt must start from, such as the random state).
    Raises :class:`RecordingChanged` when neither attempt gives ``output``."""
    for track_sizes in (True, False):
        before_each()
        with torch.no_grad():
            table = record(deep_copy(model), x, track_sizes=track_sizes, **options)
        if same_value(table.output, output):
            return table
    raise RecordingChanged("the op-level recording changes the model's output, even without tracking sizes")


def _untracked(value: Any) -> Any:
    """``value`` with the recorder's tracked containers and integers made plain again."""
    if isinstance(value, _TrackedSize):
        return torch.Size(tuple.__iter__(value))
    if isinstance(value, _TrackedTuple):
        return tuple(_untracked(item) for item in tuple.__iter__(value))
    if isinstance(value, _TrackedInt):
        return int(value)
    if type(value) in (tuple, list):
        return type(value)(_untracked(item) for item in value)
    if type(value) is dict:
        return {key: _untracked(item) for key, item in value.items()}
    return value
