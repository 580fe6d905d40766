"""The oracle: the true activations, captured independently of every strategy.

On a deep copy of the model, a forward hook on each requested module clones the output
the moment it is produced and records every call. It also keeps the output tensor
itself, cloned again after the whole forward pass, so that a strategy holding the
post-forward state of the same storage (in-place aliasing) can be recognised. Forward
pre-hooks on the top-level children record whether the model is a plain chain of its
children, which replaying strategies (``ilg``, timm's FeatureListNet) assume.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch
from torch import nn

from strategies.base import clone_tree

__all__ = ["ChainBreak", "LayerTruth", "OracleCapture", "capture", "gradients", "locate", "replay_children"]


@dataclass
class LayerTruth:
    """Everything the oracle saw of one module during one forward pass."""

    calls: list[Any] = field(default_factory=list)  # output of each call, cloned at capture
    after_forward: list[Any] = field(default_factory=list)  # the same outputs, cloned after the pass
    keywords: list[str] = field(default_factory=list)  # keyword arguments of the last call

    @property
    def value(self) -> Any:
        """The reference: the output of the module's last call."""
        return self.calls[-1] if self.calls else None


@dataclass(frozen=True)
class ChainBreak:
    """Where the model stops being ``children[0] -> children[1] -> ...`` in registration order."""

    child: str  # the first top-level child whose input a replaying strategy gets wrong
    reason: str


@dataclass
class OracleCapture:
    """The truth for one input."""

    layers: dict[str, LayerTruth]
    output: Any
    children: list[str]  # top-level children in registration order
    chain_break: ChainBreak | None  # None when the top-level children form a plain chain

    def after_chain_break(self, layer: str) -> bool:
        """Whether ``layer`` sits at or after the point where the children stop being a chain."""
        if self.chain_break is None:
            return False
        top = layer.split(".")[0]
        return self.children.index(top) >= self.children.index(self.chain_break.child)


def _chain_break(names: list[str], order: list[str], inputs: dict[str, Any], outputs: dict[str, Any]) -> ChainBreak | None:
    for position, (expected, ran) in enumerate(zip(names, order)):
        if expected != ran:
            return ChainBreak(
                child=expected,
                reason=f"top-level children run as {', '.join(order)}; registration order is {', '.join(names)}",
            )
        if position == 0:
            continue
        previous = names[position - 1]
        given, produced = inputs[ran], outputs[previous]
        same = (
            isinstance(given, torch.Tensor) and isinstance(produced, torch.Tensor)
            and given.shape == produced.shape and torch.equal(given, produced)
        )
        if not same:
            return ChainBreak(child=ran, reason=f"the input of {ran!r} is not the output of {previous!r}: code runs between them")
    if len(order) > len(names):
        return ChainBreak(child=names[-1], reason=f"top-level children run as {', '.join(order)}")
    return None


def capture(model: nn.Module, x: torch.Tensor, *, layers: Sequence[str], on_copy: bool = True) -> OracleCapture:
    """Run ``x`` through a deep copy of ``model`` and record the requested layers' outputs.

    With ``on_copy=False`` the model itself runs, so that state it carries from call to
    call (batch-norm running statistics in train mode) is that of a sequence of calls.
    """
    copy_ = copy.deepcopy(model) if on_copy else model
    truths = {name: LayerTruth() for name in layers}
    raw: dict[str, list[Any]] = {name: [] for name in layers}
    handles = []
    for name in layers:
        def hook(module: nn.Module, args: Any, kwargs: dict[str, Any], output: Any, name: str = name) -> None:
            truths[name].calls.append(clone_tree(output))
            truths[name].keywords = sorted(kwargs)
            raw[name].append(output)
        handles.append(copy_.get_submodule(name).register_forward_hook(hook, with_kwargs=True))

    children = [name for name, _ in copy_.named_children()]
    order: list[str] = []
    child_inputs: dict[str, Any] = {}
    child_outputs: dict[str, Any] = {}
    for name, child in copy_.named_children():
        def pre_hook(module: nn.Module, args: Any, name: str = name) -> None:
            order.append(name)
            child_inputs.setdefault(name, clone_tree(args[0]) if args else None)

        def post_hook(module: nn.Module, args: Any, output: Any, name: str = name) -> None:
            child_outputs.setdefault(name, clone_tree(output))

        handles.append(child.register_forward_pre_hook(pre_hook))
        handles.append(child.register_forward_hook(post_hook))
    try:
        with torch.no_grad():
            output = copy_(x)
    finally:
        for handle in handles:
            handle.remove()
    for name in layers:
        truths[name].after_forward = [clone_tree(value) for value in raw[name]]
    return OracleCapture(
        layers=truths,
        output=output,
        children=children,
        chain_break=_chain_break(children, order, child_inputs, child_outputs),
    )


def replay_children(model: nn.Module, x: torch.Tensor, *, layers: Sequence[str]) -> dict[str, Any]:
    """The layers' values when the top-level children run one after another in registration
    order, as replaying strategies run them; layers not reached before a crash are absent."""
    copy_ = copy.deepcopy(model)
    seen: dict[str, Any] = {}
    handles = [
        copy_.get_submodule(name).register_forward_hook(lambda m, a, out, name=name: seen.__setitem__(name, clone_tree(out)))
        for name in layers
    ]
    try:
        with torch.no_grad():
            for child in copy_.children():
                x = child(x)
    except Exception:  # replaying is expected to crash on models that are no chain
        pass
    finally:
        for handle in handles:
            handle.remove()
    return seen


def locate(model: nn.Module, x: torch.Tensor, value: torch.Tensor, *, close: Callable[[Any, Any], bool]) -> list[str]:
    """The modules any of whose calls output ``value`` (compared on the fly, nothing stored)."""
    copy_ = copy.deepcopy(model)
    found: list[str] = []

    def hook(module: nn.Module, args: Any, output: Any, name: str) -> None:
        if isinstance(output, torch.Tensor) and output.shape == value.shape and name not in found and close(output, value):
            found.append(name)

    handles = [module.register_forward_hook(lambda m, a, out, name=name: hook(m, a, out, name)) for name, module in copy_.named_modules() if name]
    try:
        with torch.no_grad():
            copy_(x)
    finally:
        for handle in handles:
            handle.remove()
    return found


def gradients(model: nn.Module, x: torch.Tensor, *, weights: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The true gradients of ``sum((output of layer * weights[layer]).sum())`` over the
    layers, for the input and for every parameter by name (those no layer depends on are
    absent). The model runs in its current mode.

    The hooks clone the output, which autograd differentiates through, so a later in-place
    op cannot change the value a loss is taken from.
    """
    copy_ = copy.deepcopy(model)
    taken: dict[str, torch.Tensor] = {}
    handles = [
        copy_.get_submodule(layer).register_forward_hook(lambda m, a, out, layer=layer: taken.__setitem__(layer, out.clone()))
        for layer in weights
    ]
    x = x.detach().clone().requires_grad_(True)
    try:
        with torch.enable_grad():
            copy_(x)
            named = [(name, p) for name, p in copy_.named_parameters() if p.requires_grad]
            loss = sum((taken[layer] * weight).sum() for layer, weight in weights.items())
            grads = torch.autograd.grad(loss, [x, *(p for _, p in named)], allow_unused=True)
    finally:
        for handle in handles:
            handle.remove()
    return grads[0], {name: grad for (name, _), grad in zip(named, grads[1:]) if grad is not None}
