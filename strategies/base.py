"""The one interface every extraction strategy implements.

A :class:`Strategy` attaches to a model for a list of layers (:class:`Tap`) and returns
an :class:`Extractor`; calling the extractor on an input gives an :class:`Extraction`.
Strategies make no claims about what they support beyond raising :class:`Unsupported`
when their API cannot express a request: everything else is measured by the checks.
"""

from __future__ import annotations

import copy
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Mapping, Sequence

import torch
from torch import nn

__all__ = ["Arguments", "Extraction", "Extractor", "Strategy", "Tap", "Unsupported", "call_model", "clone_tree", "input_device", "map_tensors", "tensor_tree", "module_outputs", "repeated_modules"]


class Tap(str):
    """A requested layer: its name, under which its feature comes back, and what it names.

    * a module path (``layer1``) names the module's output, its last call when it runs
      more than once;
    * an FX-style node name of a module's call (``layer1.0.relu_1``) names that call:
      ``module`` and ``call`` of ``calls`` (torchvision's names: ``relu`` is call 1,
      ``relu_1`` call 2);
    * an FX-style node name of an op (``layer1.0.add``) names that op's output: ``op`` in
      the code of the module ``scope``; ``module`` is ``None``.

    A tap is its name (a ``str``), so results and features stay keyed by name; the fields
    are read-only data, after timm's ``FeatureInfo``.
    """

    module: str | None
    call: int | None
    calls: int
    op: str
    scope: str

    def __new__(cls, name: str, *, module: str | None = "", call: int | None = None, calls: int = 1, op: str = "", scope: str = "") -> "Tap":
        tap = super().__new__(cls, name)
        tap.module = (None if op else str(name)) if module == "" else module
        tap.call, tap.calls, tap.op, tap.scope = call, calls, op, scope
        return tap

    def __getnewargs_ex__(self) -> tuple[tuple, dict]:
        return (str(self),), {"module": self.module, "call": self.call, "calls": self.calls, "op": self.op, "scope": self.scope}

    @property
    def is_op(self) -> bool:
        """An op in a module's code, not a module's call."""
        return self.module is None

    @property
    def is_module_output(self) -> bool:
        """The module's output: a module path, or the node of the module's last call."""
        return self.module is not None and (self.call is None or self.call == self.calls)

    def describe(self) -> str:
        if self.is_op:
            return f"op {self.op} in {self.scope}" if self.scope else f"op {self.op} in the model's own forward"
        if self.call is None:
            return f"output of module {self.module}"
        return f"call {self.call} of {self.calls} of module {self.module}"


def module_outputs(layers: Sequence[str], *, seen_by: str) -> dict[str, str]:
    """``{layer: module path}`` for a strategy that names modules and gets their output (their
    last call); raise :class:`Unsupported` naming the layers it cannot express, and why."""
    taps = [layer if isinstance(layer, Tap) else Tap(layer) for layer in layers]
    refused = {}
    for tap in taps:
        if tap.is_op:
            refused[tap] = f"{tap} is {tap.describe()}"
        elif not tap.is_module_output:
            refused[tap] = f"{tap} is call {tap.call} of {tap.calls} of {tap.module}, not its last"
    if refused:
        why = f"{seen_by} names a module and gets its output (its last call)"
        raise Unsupported(f"{why}: {'; '.join(refused.values())}", layers=list(refused),
                          reasons={str(tap): f"{why}: {reason}" for tap, reason in refused.items()})
    return {str(tap): tap.module for tap in taps}


def repeated_modules(modules: Mapping[str, str]) -> list[str]:
    """The names in ``{name: module path}`` whose module an earlier name already names."""
    seen: set[str] = set()
    repeated = []
    for name, path in modules.items():
        if path in seen:
            repeated.append(name)
        seen.add(path)
    return repeated


class Unsupported(Exception):
    """The strategy's API cannot express this request (the message says why).

    ``layers`` names the requested layers at fault when only some are; the others can
    then be extracted on their own. ``None`` means the request fails as a whole.
    ``reasons`` gives a layer's own reason where it differs from the message.
    """

    def __init__(self, reason: str, *, layers: Sequence[str] | None = None, reasons: Mapping[str, str] | None = None) -> None:
        super().__init__(reason)
        self.layers = list(layers) if layers is not None else None
        self.reasons = dict(reasons or {})

    def reason_for(self, layer: str) -> str:
        """Why ``layer`` cannot be expressed: its own reason, else the message."""
        return self.reasons.get(layer, str(self))


@dataclass
class Extraction:
    """What one call of an extractor returned.

    ``features`` is the strategy's own container, exactly as it hands it to users (it may
    be mutated by later calls; that is a property the checks observe). ``output`` is the
    model's output where the strategy returns it, else ``None``.
    """

    features: Mapping[str, Any]
    output: Any = None


class Extractor(ABC):
    """A strategy attached to one model for one list of layers."""

    #: The module the strategy executes; its weights are compared with the model's.
    module: nn.Module

    def __call__(self, x: Any) -> Extraction:
        """Run the input through and return the features (``x``: a tensor, or what the model
        takes: a list of images, :class:`Arguments`)."""
        return self.extract_with(self.module, x)

    @abstractmethod
    def extract_with(self, module: nn.Module | torch.jit.ScriptModule, x: Any) -> Extraction:
        """Run ``x`` through ``module`` and collect the features the way this strategy does.

        ``module`` is :attr:`module` or a transformed stand-in for it (scripted, compiled,
        exported, deep-copied); whether the strategy still works then is what checks measure.
        """

    def close(self) -> None:
        """Undo whatever attaching did to the model, as the strategy's users would."""


class Strategy(ABC):
    """A way of getting intermediate features out of a model."""

    name: str = ""
    #: Why the strategy's package refuses to run in a multiprocessing child, where it does
    #: (TorchLens): the process executor's workers are then interpreters of their own. Where it
    #: runs, not what it can do: the checks judge it the same either way.
    main_process_only: ClassVar[str] = ""

    @abstractmethod
    def attach(self, model: nn.Module, *, layers: Sequence[Tap], tracer_kwargs: Mapping[str, Any] | None = None) -> Extractor:
        """Return an extractor for ``layers`` of ``model``, its features keyed by each tap's name.

        ``tracer_kwargs`` are the FX tracer options the model's author gives
        (``leaf_modules``, ``autowrap_functions``, ``concrete_args``), for strategies that
        trace. Raise :class:`Unsupported` when the strategy cannot express the request.

        A strategy whose API takes other layers in train and eval mode offers
        ``attach_per_mode(model, *, train_layers, eval_layers, tracer_kwargs)`` as well.
        """

    def refusal(self, model: nn.Module) -> str | None:
        """Why the strategy serves no request at all on ``model`` (not its kind of model), read
        from the model without changing it; ``None`` where it may serve one. :meth:`attach`
        raises it first (:meth:`refuse`), so a harness may ask it of a model it has not copied."""
        return None

    def refuse(self, model: nn.Module) -> None:
        """Raise :class:`Unsupported` with :meth:`refusal`'s reason, where it gives one."""
        reason = self.refusal(model)
        if reason is not None:
            raise Unsupported(reason)


class Arguments(tuple):
    """The positional arguments of a model that takes more than one input (RAFT's two images).
    Any other input, a tensor or a list of images, is the model's one positional argument."""


torch.utils._pytree.register_pytree_node(
    Arguments, lambda arguments: (list(arguments), None), lambda values, context: Arguments(values),
    serialized_type_name=f"{__name__}.Arguments",
)


def call_model(module: Any, x: Any) -> Any:
    """``module`` called on the input ``x``: ``module(*x)`` for :class:`Arguments`, else ``module(x)``."""
    return module(*x) if isinstance(x, Arguments) else module(x)


def input_device(x: Any) -> torch.device:
    """The device of the input's (first) tensor."""
    return next(leaf for leaf in torch.utils._pytree.tree_leaves(x) if isinstance(leaf, torch.Tensor)).device


def _holds_tensors(node: Any) -> bool:
    """Whether ``node`` is a plain object with tensors among its attributes (torchvision's ``ImageList``)."""
    attributes = getattr(node, "__dict__", None)
    return (isinstance(attributes, dict) and not isinstance(node, (nn.Module, type))
            and any(isinstance(leaf, torch.Tensor) for leaf in torch.utils._pytree.tree_leaves(list(attributes.values()))))


def map_tensors(function: Callable[[torch.Tensor], Any], value: Any) -> Any:
    """``value`` (possibly nested lists, tuples, dicts, objects holding tensors) with ``function``
    applied to every tensor in it; an object holding tensors is copied with its tensors mapped;
    other values are kept as they are (a ``torch.Size`` stays one)."""
    def leaf(node: Any) -> Any:
        if isinstance(node, torch.Tensor):
            return function(node)
        if _holds_tensors(node):
            copied = copy.copy(node)
            vars(copied).update({name: map_tensors(function, attribute) for name, attribute in vars(node).items()})
            return copied
        return node

    return torch.utils._pytree.tree_map(leaf, value, is_leaf=lambda node: isinstance(node, torch.Size))


def tensor_tree(value: Any) -> Any:
    """``value`` with every object holding tensors replaced by ``{type name: its attributes}``,
    so that its tensors are leaves of the tree that comparing and hashing walk."""
    return torch.utils._pytree.tree_map(
        lambda node: {type(node).__qualname__: tensor_tree(dict(vars(node)))} if _holds_tensors(node) else node, value,
        is_leaf=lambda node: isinstance(node, torch.Size),
    )


def clone_tree(value: Any) -> Any:
    """Clone every tensor in a (possibly nested) structure; leave other values as they are."""
    return map_tensors(torch.Tensor.clone, value)
