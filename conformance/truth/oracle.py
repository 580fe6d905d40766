"""The oracle: the true activations, captured independently of every strategy.

On a deep copy of the model, a forward hook on each requested module clones the output
the moment it is produced and records every call. It also keeps the output tensor
itself, cloned again after the whole forward pass, so that a strategy holding the
post-forward state of the same storage (in-place aliasing) can be recognised, and notes
which part of a returned dict or list the rest of the pass replaced by another tensor. Forward
pre-hooks on the top-level children record whether the model is a plain chain of its
children, which replaying strategies (``ilg``, timm's FeatureListNet) assume.

Requested ops (``layer1.0.add``: a :class:`~strategies.base.Tap` with no module) come from
the op-level recorder (:mod:`.nodes`) in a second pass over a twin copy, started from the
same random state; that pass's output must be bitwise the first's, so that the recorder
cannot have changed what the model computes.
"""

from __future__ import annotations

import contextlib

import functools
import inspect
import weakref
from dataclasses import dataclass, field
from typing import Any, Callable, Collection, Mapping, Sequence

import torch
from torch import nn

from strategies.base import Arguments, Tap, call_model, clone_tree, input_device, map_tensors

from conformance.core.compare import bitwise_equal, compare
from conformance.truth.nodes import record, record_faithfully, unrecorded
from conformance.core.rng import ReplayDraws, pass_rng
from conformance.core.timing import deep_copy, meta_copy, phase

__all__ = [
    "ChainBreak", "GradientPass", "LayerTruth", "OracleCapture", "capture", "capture_twice", "counterfactual", "gradients", "keep_first_inputs", "locate",
    "locate_nodes", "module_inputs", "replay_children",
]


@dataclass
class LayerTruth:
    """Everything the oracle saw of one module during one forward pass."""

    calls: list[Any] = field(default_factory=list)  # output of each call, cloned at capture
    after_forward: list[Any] = field(default_factory=list)  # the same outputs, cloned after the pass
    replaced: list[list[str]] = field(default_factory=list)  # per call: the parts of the returned dict or list the pass replaced
    keywords: list[str] = field(default_factory=list)  # keyword arguments of the last call
    index: int = -1  # the call that is the reference: the last, or the one a node name names
    finished: int = -1  # when its first call returned, counted in module outputs of the pass; -1: never
    bypassed: int = 0  # calls of its forward made without its __call__ (``self.block.forward(x)``), which run no hook

    @property
    def value(self) -> Any:
        """The reference: the output of the module's last call (or of the call the tap names)."""
        if not self.calls or not -len(self.calls) <= self.index < len(self.calls):
            return None
        return self.calls[self.index]


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
    keyword_calls: list[str] = field(default_factory=list)  # the modules called with keyword arguments other than their defaults, in the order they ran
    unsteady: dict[str, str] = field(default_factory=dict)  # layers (and "" for the output) another pass from the same random state changes, and how

    def after_chain_break(self, layer: str) -> bool:
        """Whether ``layer`` sits at or after the point where the children stop being a chain."""
        if self.chain_break is None:
            return False
        top = layer.split(".")[0]
        return self.children.index(top) >= self.children.index(self.chain_break.child)

    def run_order(self, layers: Sequence[str]) -> list[str]:
        """``layers`` in the order their modules' first calls return (layers that never return last)."""
        return sorted(layers, key=lambda layer: (self.layers[layer].finished < 0, self.layers[layer].finished))


def _chain_break(names: list[str], order: list[str], inputs: dict[str, Any], outputs: dict[str, Any], *,
                 arities: dict[str, int], model_arity: int) -> ChainBreak | None:
    """Where a replay of the top-level children in registration order, each given the one output of
    the one before (the first the model's input), parts from the model's own forward; None where
    it does not."""
    for position, (expected, ran) in enumerate(zip(names, order)):
        if expected != ran:
            return ChainBreak(
                child=expected,
                reason=f"top-level children run as {', '.join(order)}; registration order is {', '.join(names)}",
            )
        if arities.get(ran, 1) > (model_arity if position == 0 else 1):
            return ChainBreak(child=ran, reason=f"the model calls {ran!r} with {arities[ran]} positional arguments, a replay with "
                                                f"{model_arity if position == 0 else 1}")
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
    if len(order) < len(names):  # a child never called (a ModuleList whose elements the model calls): a replay calls it
        return ChainBreak(child=names[len(order)], reason=f"the model does not call its child {names[len(order)]!r}")
    return None


class _Observed:
    """The handles :func:`on_output` registered, removed together."""

    def __init__(self, module: nn.Module, handles: list[Any], forward: Any) -> None:
        self.module, self.handles, self.forward = module, handles, forward

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()
        if self.forward is not None:
            vars(self.module).pop("forward", None)
            if self.forward is not _NO_FORWARD:
                self.module.forward = self.forward


_NO_FORWARD = object()


def on_output(module: nn.Module, hook: Callable[[nn.Module, dict[str, Any], Any], None],
              before: Callable[[nn.Module, tuple], None] | None = None) -> _Observed:
    """Call ``hook(module, kwargs, output)`` each time ``module`` returns, and ``before(module,
    args)`` as each call starts: from its ``__call__`` (forward hooks), and from its ``forward``
    called directly (``self.block.forward(x)``, which runs no hook), each call once.
    ``bypassed(module)`` tells the latter apart while it runs."""
    depth = [0]

    def enter(m: nn.Module, args: Any) -> None:
        depth[0] += 1
        if before is not None:
            before(m, args)

    def leave(m: nn.Module, args: Any, kwargs: dict[str, Any], output: Any) -> None:
        depth[0] -= 1
        hook(m, kwargs, output)

    handles = [module.register_forward_pre_hook(enter), module.register_forward_hook(leave, with_kwargs=True)]
    previous = vars(module).get("forward", _NO_FORWARD)
    bound = module.forward

    def forward(*args: Any, **kwargs: Any) -> Any:
        if depth[0] == 0 and before is not None:
            before(module, args)
        output = bound(*args, **kwargs)
        if depth[0] == 0:
            _BYPASSED.add(id(module))
            try:
                hook(module, kwargs, output)
            finally:
                _BYPASSED.discard(id(module))
        return output

    forward.__wrapped__ = bound  # its signature is the module's own (inspect.signature follows it)
    try:
        module.forward = forward
    except Exception:  # a module whose forward cannot be replaced (scripted): its hooks alone
        return _Observed(module, handles, None)
    return _Observed(module, handles, previous)


_BYPASSED: set[int] = set()


def bypassed(module: nn.Module) -> bool:
    """Whether :func:`on_output`'s hook now runs for a ``forward`` called without ``__call__``."""
    return id(module) in _BYPASSED


def _taps(layers: Sequence[str]) -> list[Tap]:
    return [layer if isinstance(layer, Tap) else Tap(layer) for layer in layers]


def _rng_state(device: torch.device) -> tuple[torch.Tensor, torch.Tensor | None]:
    return torch.get_rng_state(), torch.cuda.get_rng_state(device) if device.type == "cuda" else None


def _set_rng_state(state: tuple[torch.Tensor, torch.Tensor | None], device: torch.device) -> None:
    torch.set_rng_state(state[0])
    if state[1] is not None:
        torch.cuda.set_rng_state(state[1], device)


def _tensors_by_path(value: Any) -> dict[str, torch.Tensor]:
    """The tensors in a returned structure, by their path (``[0]['masks']``)."""
    leaves, _ = torch.utils._pytree.tree_flatten_with_path(value)
    return {torch.utils._pytree.keystr(path): leaf for path, leaf in leaves if isinstance(leaf, torch.Tensor)}


def _replaced(returned: dict[str, weakref.ref], value: Any) -> list[str]:
    """The paths of a module's returned structure ``value`` that hold another tensor than the
    one returned there, a tensor where none was, or none where one was (dict entries the rest
    of the pass replaced, added or removed); empty where every tensor is the one returned."""
    now = _tensors_by_path(value)
    gone = [path for path, tensor in returned.items() if tensor() is None or now.get(path) is not tensor()]
    return gone + [path for path in now if path not in returned]


def _clone_noting(clones: dict[int, torch.Tensor], tensor: torch.Tensor) -> torch.Tensor:
    """A clone of ``tensor``, noted by the tensor's ``id`` for :func:`_after_pass`."""
    clones[id(tensor)] = tensor.clone()
    return clones[id(tensor)]


def _after_pass(clones: dict[int, torch.Tensor], value: Any) -> Any:
    """``value`` cloned as the pass left it; a tensor still bitwise what was cloned at capture is
    that clone, not a second copy (the truth of a model without in-place ops takes half the memory).
    The bitwise comparison alone decides: an ``id`` taken over by another tensor shares a clone
    only where the values are the same bytes."""
    def after(tensor: torch.Tensor) -> torch.Tensor:
        noted = clones.get(id(tensor))
        return noted if bitwise_equal(tensor, noted) else tensor.clone()

    return map_tensors(after, value)


def _defaults_only(module: nn.Module, kwargs: Mapping[str, Any]) -> bool:
    """Whether every keyword argument of a call is the very default of ``module.forward``'s
    parameter (``attn_mask=None``): the call runs the same with them dropped."""
    try:
        parameters = inspect.signature(module.forward).parameters
    except (TypeError, ValueError):
        return False
    return all(name in parameters and parameters[name].default is not inspect.Parameter.empty
               and (value is parameters[name].default or (type(value) in (bool, int, float, str) and type(value) is type(parameters[name].default)
                                                          and value == parameters[name].default))
               for name, value in kwargs.items())


@phase("oracle")
def capture(model: nn.Module, x: Any, *, layers: Sequence[str], on_copy: bool = True,
            tracer_kwargs: Mapping[str, Any] | None = None) -> OracleCapture:
    """Run ``x`` through a deep copy of ``model`` and record the requested layers' outputs.

    With ``on_copy=False`` the model itself runs, so that state it carries from call to
    call (batch-norm running statistics in train mode) is that of a sequence of calls.
    ``tracer_kwargs`` are the model's FX options, which decide how ops are named.
    """
    copy_ = deep_copy(model) if on_copy else model
    taps = _taps(layers)
    ops = [tap for tap in taps if tap.is_op]
    twin = deep_copy(copy_) if ops else None  # the model as the pass starts, for the recorder
    device = input_device(x)
    truths = {tap: LayerTruth(index=tap.call - 1 if tap.call else -1) for tap in taps}
    by_module: dict[str, list[Tap]] = {}
    for tap in taps:
        if not tap.is_op:
            by_module.setdefault(tap.module, []).append(tap)
    raw: dict[str, list[Any]] = {module: [] for module in by_module}
    returned_tensors: dict[str, list[dict[str, weakref.ref]]] = {module: [] for module in by_module}
    captured_clones: dict[str, list[dict[int, torch.Tensor]]] = {module: [] for module in by_module}
    handles = []
    returned = [0]
    for module, module_taps in by_module.items():
        def hook(m: nn.Module, kwargs: dict[str, Any], output: Any, module: str = module, module_taps: list[Tap] = module_taps) -> None:
            clones: dict[int, torch.Tensor] = {}
            value = map_tensors(functools.partial(_clone_noting, clones), output)
            captured_clones[module].append(clones)
            returned[0] += 1
            for tap in module_taps:
                if not truths[tap].calls:
                    truths[tap].finished = returned[0]
                truths[tap].calls.append(value)
                truths[tap].keywords = sorted(kwargs)
                truths[tap].bypassed += bypassed(m)
            raw[module].append(output)
            returned_tensors[module].append({path: weakref.ref(tensor) for path, tensor in _tensors_by_path(output).items()})
        handles.append(on_output(copy_.get_submodule(module), hook))

    keyword_calls: dict[str, None] = {}  # in the order they ran

    def note_keywords(module: nn.Module, args: Any, kwargs: dict[str, Any], name: str) -> None:
        if kwargs and not _defaults_only(module, kwargs):
            keyword_calls.setdefault(name)

    handles += [module.register_forward_pre_hook(functools.partial(note_keywords, name=name), with_kwargs=True)
                for name, module in copy_.named_modules() if name]
    children = [name for name, _ in copy_.named_children()]
    order: list[str] = []
    child_inputs: dict[str, Any] = {}
    child_outputs: dict[str, Any] = {}
    child_arities: dict[str, int] = {}
    for name, child in copy_.named_children():
        def pre_hook(module: nn.Module, args: Any, name: str = name) -> None:
            order.append(name)
            child_inputs.setdefault(name, clone_tree(args[0]) if args else None)
            child_arities.setdefault(name, len(args))

        def post_hook(module: nn.Module, kwargs: Any, output: Any, name: str = name) -> None:
            child_outputs.setdefault(name, clone_tree(output))

        handles.append(on_output(child, post_hook, before=pre_hook))
    try:
        with torch.no_grad(), pass_rng():
            start = _rng_state(device)
            output = call_model(copy_, x)
    finally:
        for handle in reversed(handles):  # last first: wrappers of one module stack
            handle.remove()
    for module, module_taps in by_module.items():
        after = [_after_pass(clones, value) for clones, value in zip(captured_clones[module], raw[module])]
        replaced = [_replaced(returned, value) for returned, value in zip(returned_tensors[module], raw[module])]
        for tap in module_taps:
            truths[tap].after_forward, truths[tap].replaced = after, replaced
    if ops:
        with pass_rng():
            table = record_faithfully(twin, x, output=output, before_each=lambda: _set_rng_state(start, device),
                                      wanted=[str(tap) for tap in ops], tracer_kwargs=tracer_kwargs)
        for tap in ops:
            if tap in table.values:
                truths[tap].calls, truths[tap].after_forward, truths[tap].replaced = [table.values[tap]], [table.after_forward[tap]], [[]]
    return OracleCapture(
        layers={str(tap): truth for tap, truth in truths.items()},
        output=output,
        children=children,
        chain_break=_chain_break(children, order, child_inputs, child_outputs, arities=child_arities,
                                 model_arity=len(x) if isinstance(x, Arguments) else 1),
        keyword_calls=list(keyword_calls),
    )


def capture_twice(model: nn.Module, x: Any, *, layers: Sequence[str], tracer_kwargs: Mapping[str, Any] | None = None) -> OracleCapture:
    """The truth (:func:`capture`), with the layers that a second pass over the same copy, from
    the same random state, changes noted in ``unsteady`` (``""``: the model's output): a model
    drawing from a generator of its own, or counting its calls, has no one true activation there."""
    copy_ = deep_copy(model)
    truth = capture(copy_, x, layers=layers, on_copy=False, tracer_kwargs=tracer_kwargs)
    again = capture(copy_, x, layers=layers, on_copy=False, tracer_kwargs=tracer_kwargs)
    pairs = {"": (truth.output, again.output)}
    pairs.update((layer, (value.value, again.layers[layer].value)) for layer, value in truth.layers.items())
    for layer, (first, second) in pairs.items():
        if layer and len(truth.layers[layer].calls) != len(again.layers[layer].calls):
            truth.unsteady[layer] = (f"runs {len(truth.layers[layer].calls)} times in one pass and "
                                     f"{len(again.layers[layer].calls)} times in the next, from the same random state")
            continue
        comparison = compare(second, first)
        if not comparison.close:
            how = comparison.detail or f"max abs err {comparison.max_abs_err:.3g}"
            truth.unsteady[layer] = f"a second pass from the same random state gives another value ({how})"
    return truth


@phase("oracle")
def replay_children(model: nn.Module, x: Any, *, layers: Sequence[str]) -> tuple[dict[str, Any], dict[str, Any], str | None]:
    """The layers' values when the top-level children run one after another in registration
    order, as replaying strategies run them (layers not reached before a crash, and layers
    that are no module's output, are absent); the same values as the replay left them (a later
    in-place child writes into the tensor the replay handed it); and what the replay raised
    (``Type: message``), if anything."""
    copy_ = deep_copy(model)
    seen: dict[str, Any] = {}
    raw: dict[str, Any] = {}
    error = None

    def keep(m: nn.Module, kwargs: Any, out: Any, name: str) -> None:
        seen[name], raw[name] = clone_tree(out), out

    handles = [on_output(copy_.get_submodule(tap.module), functools.partial(keep, name=str(tap)))
               for tap in _taps(layers) if tap.is_module_output]
    try:
        with torch.no_grad(), pass_rng():
            for position, child in enumerate(copy_.children()):
                x = call_model(child, x) if position == 0 else child(x)
    except Exception as exc:  # replaying is expected to crash on models that are no chain
        error = f"{type(exc).__name__}: {exc}"
    finally:
        for handle in reversed(handles):  # last first: wrappers of one module stack
            handle.remove()
    return seen, {name: clone_tree(value) for name, value in raw.items()}, error


def locate(model: nn.Module, x: Any, values: Sequence[torch.Tensor], *, close: Callable[[Any, Any], bool]) -> list[list[str]]:
    """For each of ``values``, the modules any of whose calls output it, in one pass (compared on
    the fly, nothing stored)."""
    copy_ = deep_copy(model)
    found: list[list[str]] = [[] for _ in values]

    def hook(module: nn.Module, kwargs: dict[str, Any], output: Any, name: str) -> None:
        if isinstance(output, torch.Tensor):
            for value, names in zip(values, found):
                if output.shape == value.shape and name not in names and close(output, value):
                    names.append(name)

    handles = [on_output(module, functools.partial(hook, name=name)) for name, module in copy_.named_modules() if name]
    try:
        with torch.no_grad(), pass_rng():
            call_model(copy_, x)
    finally:
        for handle in reversed(handles):  # last first: wrappers of one module stack
            handle.remove()
    return found


class GradientPass:
    """The true gradients of ``sum((output of layer * weights[layer]).sum())``, for the input and
    for every parameter by name (those no layer depends on are absent), for any weighting of any of
    ``layers``: one pass of a deep copy of ``model`` (in its current mode) taking every layer, whose
    graph each weighting's backward then differentiates. Over the same pass, the backward of a sum
    over some of the layers reaches the nodes and adds the gradients that a pass taking those
    layers alone gives (``tests/test_oracle.py``). Weightings of op layers (FX node names), which the
    op-level recorder takes, each have a pass of their own (:func:`gradients`).

    The hooks clone the output, which autograd differentiates through, so a later in-place op
    cannot change the value a loss is taken from. Raises what the pass raises.
    """

    @phase("oracle")
    def __init__(self, model: nn.Module, x: torch.Tensor, *, layers: Sequence[str], tracer_kwargs: Mapping[str, Any] | None = None) -> None:
        self.model, self.tracer_kwargs = model, tracer_kwargs
        self._input = x
        self.layers = [str(tap) for tap in _taps(layers) if not tap.is_op]
        self._copy = deep_copy(model)
        self._x = x.detach().clone().requires_grad_(True)
        self._taken = _taken_in_pass(self._copy, self._x, self.layers, tracer_kwargs=tracer_kwargs)
        self._named = [(name, p) for name, p in self._copy.named_parameters() if p.requires_grad]

    @phase("oracle")
    def __call__(self, *, weights: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        if not set(weights) <= set(self.layers):
            return gradients(self.model, self._input, weights=dict(weights), tracer_kwargs=self.tracer_kwargs)
        return _differentiate(self._taken, weights, x=self._x, named=self._named, keep_graph=True)


def _taken_in_pass(copy_: nn.Module, x: torch.Tensor, layers: Sequence[str], *, tracer_kwargs: Mapping[str, Any] | None) -> dict[str, torch.Tensor]:
    """A pass of ``copy_`` on ``x`` with autograd on, and each layer's output in it, cloned (the
    call a layer names, else the last): module layers by hooks, op layers by the recorder."""
    taps = _taps(layers)
    taken: dict[str, torch.Tensor] = {}
    calls: dict[str, int] = {}
    handles = []
    for tap in taps:
        if tap.is_op:
            continue

        def hook(m: nn.Module, k: Any, out: Any, tap: Tap = tap) -> None:
            with unrecorded():
                calls[tap] = calls.get(tap, 0) + 1
                if tap.call is None or calls[tap] == tap.call:
                    taken[tap] = out.clone()
        handles.append(on_output(copy_.get_submodule(tap.module), hook))
    ops = [str(tap) for tap in taps if tap.is_op]
    try:
        with torch.enable_grad(), pass_rng():
            if ops:
                taken.update(record(copy_, x, wanted=ops, tracer_kwargs=tracer_kwargs).values)
            else:
                call_model(copy_, x)
    finally:
        for handle in reversed(handles):  # last first: wrappers of one module stack
            handle.remove()
    return taken


@phase("oracle")
def gradients(model: nn.Module, x: torch.Tensor, *, weights: dict[str, torch.Tensor],
              tracer_kwargs: Mapping[str, Any] | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The true gradients of ``sum((output of layer * weights[layer]).sum())`` over the
    layers, for the input and for every parameter by name (those no layer depends on are
    absent), from a pass of its own (:class:`GradientPass` answers many weightings from one).
    The model runs in its current mode; requested ops come from the op-level recorder in the same pass.
    """
    copy_ = deep_copy(model)
    x = x.detach().clone().requires_grad_(True)
    taken = _taken_in_pass(copy_, x, list(weights), tracer_kwargs=tracer_kwargs)
    named = [(name, p) for name, p in copy_.named_parameters() if p.requires_grad]
    return _differentiate(taken, weights, x=x, named=named, keep_graph=False)


def _differentiate(taken: Mapping[str, torch.Tensor], weights: Mapping[str, torch.Tensor], *, x: torch.Tensor,
                   named: list[tuple[str, nn.Parameter]], keep_graph: bool) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The gradients of the weighted sum of the taken outputs, for ``x`` and each parameter by name."""
    with torch.enable_grad():
        loss = sum((taken[layer] * weight).sum() for layer, weight in weights.items())
        grads = torch.autograd.grad(loss, [x, *(p for _, p in named)], allow_unused=True, retain_graph=keep_graph)
    return grads[0], {name: grad for (name, _), grad in zip(named, grads[1:]) if grad is not None}


def counterfactual(model: nn.Module, x: Any, *, layers: Sequence[str], skip_nodes: Collection[str] = (),
                   drop_keywords: Sequence[str] = (), replace_input: tuple[str, Any] | None = None,
                   replay_draws: list[tuple[str, Any]] | None = None, tracer_kwargs: Mapping[str, Any] | None = None,
                   shapes_only: bool = False, after_pass: bool = False, every_call: bool = False) -> dict[str, Any] | None:
    """The layers' values when the model runs with one change: the nodes ``skip_nodes`` (in-place
    ops, functions FX keeps whole) not run, their first argument passing through, the module
    ``drop_keywords`` called with their positional arguments only, or the module
    ``replace_input[0]`` given ``replace_input[1]`` as its first argument (every call), or its
    random ops giving the numbers ``replay_draws`` holds (what a strategy's pass drew:
    :class:`~conformance.core.rng.ReplayDraws`). Layers that do not run are absent.

    ``shapes_only``: run on the meta device, which gives the layers' structure and shapes and no
    values, at a fraction of the cost; None where the model does not run there (an op without a
    meta kernel, a branch on a value, a tensor kept outside the parameters and buffers), which
    says nothing of the real run.

    ``after_pass``: the values as the rest of the changed pass left them (a later in-place op
    overwrote them), for a value two mechanisms give together; ``every_call``: a module layer's
    value is the list of every call's output (a reused module)."""
    copy_ = meta_copy(model) if shapes_only else deep_copy(model)
    if shapes_only:
        x = map_tensors(lambda t: t.to("meta"), x)
    taps = _taps(layers)
    seen: dict[str, Any] = {}
    handles = []
    for tap in taps:
        if tap.is_op:
            continue

        def hook(m: nn.Module, k: Any, out: Any, tap: Tap = tap, count: list[int] = [0]) -> None:
            with unrecorded():
                count[0] += 1
                kept = out if after_pass else clone_tree(out)
                if every_call:
                    seen.setdefault(tap, []).append(kept)
                elif tap.call is None or count[0] == tap.call:
                    seen[tap] = kept
        handles.append(on_output(copy_.get_submodule(tap.module), hook))
    handles += [copy_.get_submodule(module).register_forward_pre_hook(lambda m, a, k: (a, {}), with_kwargs=True) for module in drop_keywords]
    if replace_input is not None:
        module, value = replace_input
        handles.append(copy_.get_submodule(module).register_forward_pre_hook(lambda m, a: (clone_tree(value), *a[1:])))
    ops = [str(tap) for tap in taps if tap.is_op]
    try:
        with torch.no_grad(), pass_rng(), ReplayDraws(replay_draws) if replay_draws else contextlib.nullcontext():
            if ops or skip_nodes:
                table = record(copy_, x, wanted=ops, tracer_kwargs=tracer_kwargs, skip=frozenset(skip_nodes).__contains__ if skip_nodes else None)
                seen.update(table.after_forward if after_pass else table.values)
            else:
                call_model(copy_, x)
    except Exception:  # the changed model may not run at all: then the change reproduces nothing
        return None if shapes_only else {}
    finally:
        for handle in reversed(handles):  # last first: wrappers of one module stack
            handle.remove()
    return {str(name): clone_tree(value) if after_pass else value for name, value in seen.items()}


def keep_first_inputs(modules: Mapping[str, nn.Module], into: dict[str, Any]) -> list[Any]:
    """Pre-hooks that keep in ``into``, by name, the first argument of each module's first call,
    cloned; the handles, for the caller to remove."""
    def keep(name: str, args: tuple) -> None:  # returns None: a pre-hook's return value replaces the arguments
        if name not in into:
            into[name] = clone_tree(args[0]) if args else None

    return [module.register_forward_pre_hook(lambda m, args, name=name: keep(name, args)) for name, module in modules.items()]


def module_inputs(model: nn.Module, x: Any, *, modules: Sequence[str]) -> dict[str, Any]:
    """The first argument of the first call of each of ``modules`` (paths of ``model``), cloned, in a
    pass of ``model`` itself (the caller passes a copy); modules that do not run are absent."""
    seen: dict[str, Any] = {}
    handles = keep_first_inputs({name: model.get_submodule(name) for name in modules}, seen)
    try:
        with torch.no_grad(), pass_rng():
            call_model(model, x)
    finally:
        for handle in handles:
            handle.remove()
    return seen


def locate_nodes(model: nn.Module, x: Any, values: Sequence[torch.Tensor], *, close: Callable[[Any, Any], bool],
                 tracer_kwargs: Mapping[str, Any] | None = None, train: bool | None = None, skip_nodes: Collection[str] = ()) -> list[list[str]]:
    """For each of ``values``, the nodes of the forward pass (:mod:`.nodes`) whose value it is, in
    one pass (compared on the fly, nothing stored), on a copy of ``model`` in its own mode, or in
    train mode when ``train``; with ``skip_nodes`` (as :func:`counterfactual`) not run."""
    found: list[list[str]] = [[] for _ in values]

    def visit(node: Any, produced: Any) -> None:
        if isinstance(produced, torch.Tensor):
            for value, names in zip(values, found):
                if produced.shape == value.shape and close(produced, value):
                    names.append(node.name)

    with torch.no_grad():
        twin = deep_copy(model)
        if train is not None:
            twin.train(train)
        with pass_rng():
            record(twin, x, visit=visit, tracer_kwargs=tracer_kwargs, skip=frozenset(skip_nodes).__contains__ if skip_nodes else None)
    return found
