"""Why a strategy's value is not the truth: each diagnosis a measured claim about what it did.

:func:`diagnose` tries the mechanisms below in order. A mechanism names a row only when it
*reproduces* the strategy's value: the oracle's records, or the model run again with one
change, give that very value (within the values tolerance). When none does, the row says
``unexplained``: an honest unknown, counted in the reports. Each mechanism has a planted
fault (``tests/pitfalls.py``, ``tests/test_diagnoses.py``) that it must name, and the
other mechanisms must not claim it.

======================  ==================================================================  ==============================
diagnosis               reproduced by                                                       planted fault
======================  ==================================================================  ==============================
reformatted             the true tokens, prefix tokens dropped, laid out as an NCHW map      timm ViT ``features_only``;
                        (or one element of a list of token sequences the module returns);  ``cross_tokens``,
                        the true tokens in another order, one permutation for every image, ``tokens``,
                        laid out as a map; the true values with their dimensions permuted   ``channels_last``
                        (a channels-last map laid out channels-first), unless a module or
                        node inside the layer computed that value (``permuted_stages``: FX's
                        binding of the node before a stage's last permute is wrong_layer)
container_changed       the true values in a tuple where the module returns a list, or the   ``cross_tokens``
                        other way round
reshaped                the true values in another shape (flattened, viewed)                ``flattened``
cast                    the true values in another dtype                                    ``double``
inplace_aliasing        the output after the pass: a later in-place op changed it, or        ``inplace_after_tap``,
                        replaced a part of the dict or list the module returned             ``replaced_entry``
reused_module           another call of the same module ("matches call 1 of 2")             ``reused_module``
wrong_layer             another requested layer's value                                     ``two_identical_paths``
stale                   this layer's value for the previous input                           (behaviour checks)
dead_code_eliminated    the model without the in-place ops or functions kept whole that     ``dead_inplace``,
                        the strategy's traced graph lacks                                   ``wrapped_mutation``
kwargs_dropped          the model with one module called without its keyword arguments      ``kwargs_and_tuples``
                        (a change whose meta-device run gives another shape is not run)
children_not_chained    the top-level children replayed in registration order              ``functional_between``
post_processed          a norm the strategy holds, run in its pass on the true value (or    ``normed_stages``
                        one tensor of the tuple, its tokens maybe reordered), as it is or
                        laid out as above (a transformers backbone's ``hidden_states_norms``)
post_processed          the same norm run on another module's output, another node's value, ``normed_stages``
+wrong_layer,           or the layer's value when the model runs with the input the
+wrong_node,            strategy's own forward gives one of the layer's ancestors
+own_forward
wrong_layer             the output of another module ("matches module 'conv'")              ``kwargs_and_tuples``
wrong_node              the value of another node of the pass ("matches node 'layer1.add'")  ``two_identical_paths``
partial_output          one element of the tuple or list the module returns, where no node  ``sized_patches``
                        of the pass is that value (a ``torch.Size``)
rng_shifted             the model's pass (in train mode: ``behaviour.check_train_mode``), each ``draws_before_forward``
                        module call starting from the RNG state it had in the strategy's pass
A+inplace_aliasing      mechanism A (children_not_chained, dead_code_eliminated,            ``chain_inplace``,
                        kwargs_dropped) applied, its run's value read as that run left it   ``dead_then_inplace``
dead_code_eliminated    the value of another node of the pass without the dead ops          fuzz regression
+wrong_node                                                                                 (``dead_inplace``, ``pair``)
unexplained             nothing above
======================  ==================================================================  ==============================

A layer the strategy returns nothing for is ``missing`` (``checks._missing``), or, where it is
measured: ``call_bypassed`` (every call ran its ``forward`` without ``__call__``: no hook runs;
``forward_called``), ``registered_twice`` (the module has several names; a test's ``Aliased``),
``shared_output`` (another requested layer's output bit for bit, returned under that name only).
A layer whose value the model itself changes from pass to pass from the same random state is
``skipped`` as ``nondeterministic_model`` for every strategy (``own_generator``).
"""

from __future__ import annotations

import itertools
import math
from collections import Counter
from typing import TYPE_CHECKING, Any, Callable, Iterator, Optional

import torch
from torch.utils._pytree import tree_flatten

from strategies.base import tensor_tree

from conformance.core.compare import bitwise_equal, is_close

if TYPE_CHECKING:
    from conformance.judging.context import CheckContext, StrategyPass

__all__ = ["UNEXPLAINED", "diagnose", "graph_ops", "norm_modules"]

UNEXPLAINED = "unexplained"
_MAX_TOKENS = 1 << 16  # token sequences longer than this are not searched for a permutation
_MAX_DROP_TRIALS = 64  # choices of the calls a traced graph lacks tried at most, each a forward pass

Diagnosis = Optional[tuple[str, str]]


def graph_ops(module: Any) -> list[str] | None:
    """The op of every call node of the FX graphs in ``module`` (what a traced strategy runs),
    named as the op-level recorder names ops; ``None`` when it runs no graph."""
    graphs = [m.graph for m in module.modules() if isinstance(m, torch.fx.GraphModule)] if isinstance(module, torch.nn.Module) else []
    if not graphs:
        return None
    return [node.target if isinstance(node.target, str) else getattr(node.target, "__name__", str(node.target))
            for graph in graphs for node in graph.nodes if node.op in ("call_function", "call_method")]


def norm_modules(module: Any) -> list[tuple[str, torch.nn.Module]]:
    """The normalisation layers (``LayerNorm``, ``GroupNorm``, ``BatchNorm2d``, a library's own
    ``...LayerNorm``) of the module a strategy runs, by name, in registration order."""
    if not isinstance(module, torch.nn.Module):
        return []
    return [(name, child) for name, child in module.named_modules() if name and "Norm" in type(child).__name__]


def _close(a: Any, b: Any) -> bool:
    return b is not None and is_close(a, b)


def _as_token_map(value: Any, truth: Any) -> Any:
    """``truth`` (N, tokens, C) laid out like ``value`` (N, C, H, W), prefix tokens dropped; else None."""
    if not (isinstance(value, torch.Tensor) and isinstance(truth, torch.Tensor) and value.dim() == 4 and truth.dim() == 3):
        return None
    batch, channels, height, width = value.shape
    if truth.shape[0] != batch or truth.shape[2] != channels or truth.shape[1] < height * width:
        return None
    return truth[:, truth.shape[1] - height * width:, :].transpose(1, 2).reshape(batch, channels, height, width)


def _token_order(value: Any, truth: Any) -> torch.Tensor | None:
    """The permutation ``order`` of the tokens of ``truth`` (N, L, C) that puts them where ``value``
    (N, C, H, W) holds them, L = H * W, measured on the first image; None if there is no such one."""
    if not (isinstance(value, torch.Tensor) and isinstance(truth, torch.Tensor) and value.dim() == 4 and truth.dim() == 3):
        return None
    return _token_permutation(value.flatten(2).transpose(1, 2), truth)


def _token_permutation(tokens: Any, truth: Any) -> torch.Tensor | None:
    """The permutation ``order`` with ``tokens`` (N, L, C) = ``truth[:, order]`` on the first image
    (nearest tokens; the caller checks every image); None where the shapes differ or no
    permutation is found."""
    if not (isinstance(tokens, torch.Tensor) and isinstance(truth, torch.Tensor) and tokens.dim() == 3 and tokens.shape == truth.shape):
        return None
    if not truth.is_floating_point() or truth.shape[1] > _MAX_TOKENS:
        return None
    reference = truth[0].float()
    order = torch.cat([torch.cdist(chunk, reference).argmin(dim=1) for chunk in tokens[0].float().split(1024)])
    if torch.unique(order).numel() != order.numel():
        return None
    return order


def _permutations(value: Any, truth: Any) -> list[tuple[int, ...]]:
    """The permutations of the dimensions of ``truth`` that give ``value``'s shape, identity aside."""
    if not (isinstance(value, torch.Tensor) and isinstance(truth, torch.Tensor)) or value.dim() != truth.dim() or not 3 <= value.dim() <= 5:
        return []
    if value.shape == truth.shape or sorted(value.shape) != sorted(truth.shape):
        return []
    return [dims for dims in itertools.permutations(range(truth.dim())) if dims[0] == 0 and truth.permute(dims).shape == value.shape]


def _layout(value: Any, truth: Any) -> str | None:
    """How ``value`` holds ``truth``'s tokens as an NCHW map, in words: the tokens (or one
    element of the list of token sequences ``truth`` is, CrossViT's branches), prefix tokens
    dropped, or in another order (Hiera's unrolled tokens); None where no such layout gives it."""
    token_map = _as_token_map(value, truth)
    if token_map is not None and _close(value, token_map):
        return f"the true tokens, {_dropped(value, truth)}laid out as an NCHW map"
    if isinstance(truth, (list, tuple)):
        for index, element in enumerate(truth):
            token_map = _as_token_map(value, element)
            if token_map is not None and _close(value, token_map):
                return f"element {index} of the {len(truth)} token sequences the module returns, {_dropped(value, element)}laid out as an NCHW map"
    order = _token_order(value, truth)
    if order is not None and _close(value, truth[:, order].transpose(1, 2).reshape(value.shape)):
        return f"the true tokens in another order (one permutation of the {len(order)} tokens, the same for every image), laid out as an NCHW map"
    return None


def _dropped(value: torch.Tensor, tokens: torch.Tensor) -> str:
    """The prefix tokens (class, registers) an NCHW ``value`` leaves out of ``tokens``, in words."""
    count = tokens.shape[1] - value.shape[2] * value.shape[3]
    return f"{count} prefix token{'s' if count > 1 else ''} dropped, " if count else ""


def reformatted(ctx: CheckContext, layer: str, value: Any) -> Diagnosis:
    """A different shape holding the true values in another layout (:func:`_layout`; the true
    tensor with its dimensions permuted: :func:`permuted`)."""
    layout = _layout(value, ctx.truth.layers[layer].value)
    return ("reformatted", layout) if layout else None


def rng_shifted(ctx: CheckContext, layer: str, value: Any) -> Diagnosis:
    """The model's pass gives the value when its random ops give the numbers drawn in the
    strategy's call (recorded below the strategy, at the aten level, in that very call, on models
    that draw): the strategy draws from the global RNG before or while the model runs, so the
    model's random ops (ViT-MAE's masking noise, a VAE's sample) get other numbers."""
    draws = ctx.random_draws if isinstance(value, torch.Tensor) else []
    if not draws:
        return None
    if _close(value, (ctx.counterfactual(replay_draws=draws) or {}).get(layer)):
        ops = ", ".join(dict.fromkeys(name for name, _ in draws))
        return "rng_shifted", (f"the model's pass gives it when its random ops give the numbers drawn in the strategy's call "
                               f"({len(draws)} draw{'s' if len(draws) > 1 else ''}: {ops}): the strategy draws from the global RNG, "
                               "so the model's random ops get other numbers")
    return None


def post_processed(ctx: CheckContext, layer: str, value: Any) -> Diagnosis:
    """A norm the strategy holds ran in the strategy's pass, and its output, as it is or laid out
    as :func:`_layout` lays tokens out, is the value: a transformers backbone normalises each stage
    with norms of its own (ConvNeXt's and Swin's ``hidden_states_norms``) or with the model's final
    norm (DINOv2's ``layernorm``). What the norm ran on names the rest:

    * the true value, or one tensor of the tuple the module returns (its tokens maybe in another
      order, one permutation for every image): ``post_processed``;
    * another module's output (``+wrong_layer``) or another node's value (``+wrong_node``);
    * the layer's value when the model runs with the input the strategy's own forward gives one of
      the layer's modules or their ancestors (Hiera's backbone gives its encoder the embeddings
      without the unrolling the model's forward does between them): ``+own_forward``.

    A norm run on anything else explains nothing. Measured in a pass of the strategy with its
    modules' calls recorded, so it is tried after every mechanism the model's own records reproduce."""
    if not isinstance(value, torch.Tensor):
        return None
    strategy_pass = ctx.strategy_pass()
    calls = [(name, kind, seen, output) for name, kind, recorded in strategy_pass.norm_calls for seen, output in recorded
             if isinstance(seen, torch.Tensor)]
    # bit for bit first: where two norms ran on nearly the same values (a stage that barely changes
    # its input at init), the one whose output the strategy returned is the one that gives it exactly
    calls.sort(key=lambda call: not bitwise_equal(value, call[3]))
    for name, kind, seen, output in calls:
        layout = _as_it_is(value, output) or _layout(value, output)
        if not layout:
            continue
        how = f"through the strategy's own {kind} {name!r}, {layout.replace('the true tokens', 'its tokens')}"
        found = _part_of(seen, ctx.truth.layers[layer].value, "the true value")
        if found:
            return "post_processed", f"{found} {how}"
        modules = [module for module in ctx.locate(seen) if module != layer]
        if modules:
            return "post_processed+wrong_layer", f"the output of module {', '.join(repr(m) for m in modules[:3])} {how}"
        nodes = [node for node in ctx.locate_nodes(seen) if node != layer]
        if nodes:
            return "post_processed+wrong_node", f"the value of node {', '.join(repr(n) for n in nodes[:3])} {how}"
        for module, given, changed in _other_inputs(ctx, strategy_pass, layer):
            found = _part_of(seen, changed, "the layer's value")
            if found:
                return "post_processed+own_forward", (f"{found} when the model's {module!r} is given what the strategy's own forward gives it "
                                                      f"({given}, where the model's forward gives it another value) {how}")
    return None


def _part_of(seen: torch.Tensor, truth: Any, whole: str) -> str | None:
    """Where ``seen`` is ``truth`` or one tensor of the tuple it is, maybe with its tokens in another
    order (one permutation for every image), in words; else None."""
    parts = [(whole, truth)] + ([(f"element {index} of the {len(truth)} the module returns", item)
                                 for index, item in enumerate(truth)] if isinstance(truth, (list, tuple)) else [])
    for what, part in parts:
        if _close(seen, part):
            return what
        order = _token_permutation(seen, part)
        if order is not None and _close(seen, part[:, order]):
            return f"{what}, its tokens in another order (one permutation for every image)"
    return None


def _other_inputs(ctx: CheckContext, strategy_pass: StrategyPass, layer: str) -> Iterator[tuple[str, str, Any]]:
    """The requested modules and their ancestors that the strategy's own forward gives another first
    input than the model's forward does, in the order the model calls them (the first is where the
    two forwards part): each one's path, what that input is (a module's output or a node's value,
    where one of the model's pass is), and the layer's value in the model run with that input."""
    model_inputs = ctx.model_inputs(tuple(strategy_pass.inputs))
    for path, own in model_inputs.items():
        given = strategy_pass.inputs.get(path)
        if own is None or given is None or _close(given, own):
            continue
        changed = (ctx.counterfactual(replace_input=(path, given)) or {}).get(layer)
        if changed is not None:
            modules = ctx.locate(given) if isinstance(given, torch.Tensor) else []
            nodes = ctx.locate_nodes(given) if isinstance(given, torch.Tensor) and not modules else []
            given_is = (f"the output of module {modules[0]!r}" if modules else f"the value of node {nodes[0]!r}" if nodes
                        else "a value no module or node of the model's pass has")
            yield path, given_is, changed


def _as_it_is(value: Any, other: torch.Tensor) -> str | None:
    return "as it is" if isinstance(value, torch.Tensor) and other.shape == value.shape and _close(value, other) else None


def permuted(ctx: CheckContext, layer: str, value: Any) -> Diagnosis:
    """``reformatted``: the true tensor with its dimensions permuted (a channels-last map returned
    channels-first), unless the value is, bit for bit, the output of a module or node inside the
    layer: where the layer ends by permuting (Swin's and NesT's stages), the value before that
    permute is a strategy's binding of the wrong node (``wrong_layer``, ``wrong_node``), not a
    layout. A node after the layer that permutes its output as the strategy did (the next
    stage's first permute) does not count: that is the layout."""
    truth = ctx.truth.layers[layer].value
    for dims in _permutations(value, truth):
        if _close(value, truth.permute(dims)):
            inside = [name for name in (*ctx.locate(value, exact=True), *ctx.locate_nodes(value, exact=True)) if name.startswith(f"{layer}.")]
            if inside:
                return None
            layout = " (a channels-last map laid out channels-first)" if dims == (0, truth.dim() - 1, *range(1, truth.dim() - 1)) else ""
            return "reformatted", f"the true values with their dimensions permuted as {dims}{layout}"
    return None


def container_changed(ctx: CheckContext, layer: str, value: Any) -> Diagnosis:
    truth = ctx.truth.layers[layer].value
    if isinstance(value, (list, tuple)) and isinstance(truth, (list, tuple)) and type(value) is not type(truth) and len(value) == len(truth):
        if _close(type(truth)(*value) if hasattr(truth, "_fields") else type(truth)(value), truth):  # a named tuple takes its fields
            return "container_changed", f"the true values, in a {type(value).__name__} where the module returns a {type(truth).__name__}"
    return None


def partial_output(ctx: CheckContext, layer: str, value: Any) -> Diagnosis:
    truth = ctx.truth.layers[layer].value
    if isinstance(truth, (list, tuple)) and len(truth) > 1:
        for index, element in enumerate(truth):
            if _close(value, element):
                return "partial_output", (f"element {index} ({_kind(element)}) of the {len(truth)} the module returns "
                                          f"as a {type(truth).__name__}, alone")
    return None


def _kind(value: Any) -> str:
    if isinstance(value, torch.Tensor):
        return f"a tensor {tuple(value.shape)}"
    shown = repr(tuple(value) if isinstance(value, (list, tuple)) else value)
    return f"the {type(value).__name__} {shown}" if len(shown) <= 40 else f"a {type(value).__name__}"


def reshaped(ctx: CheckContext, layer: str, value: Any) -> Diagnosis:
    truth = ctx.truth.layers[layer].value
    if isinstance(value, torch.Tensor) and isinstance(truth, torch.Tensor) and value.shape != truth.shape and value.numel() == truth.numel():
        if _close(value.reshape(truth.shape), truth):
            return "reshaped", f"the true values reshaped to {tuple(value.shape)}"
    return None


def cast(ctx: CheckContext, layer: str, value: Any) -> Diagnosis:
    truth = ctx.truth.layers[layer].value
    if isinstance(value, torch.Tensor) and isinstance(truth, torch.Tensor) and value.dtype != truth.dtype and value.shape == truth.shape:
        if _close(value.to(truth.dtype), truth):
            return "cast", f"the true values cast to {str(value.dtype).removeprefix('torch.')}"
    return None


def inplace_aliasing(ctx: CheckContext, layer: str, value: Any) -> Diagnosis:
    truth = ctx.truth.layers[layer]
    if _close(value, truth.after_forward[truth.index]):
        replaced = truth.replaced[truth.index]
        if replaced:
            parts = ", ".join(replaced[:4]) + (f" and {len(replaced) - 4} more" if len(replaced) > 4 else "")
            return "inplace_aliasing", (f"equals the output after the pass: a later op replaced {parts} in the "
                                        f"{type(truth.value).__name__} the module returned, which the strategy kept, not a copy")
        return "inplace_aliasing", "equals the output after a later in-place op overwrote it"
    return None


def reused_module(ctx: CheckContext, layer: str, value: Any) -> Diagnosis:
    truth = ctx.truth.layers[layer]
    count = len(truth.calls)
    reference = truth.index % count
    for index in (i for i in range(count) if i != reference):
        if _close(value, truth.calls[index]):
            return "reused_module", f"matches call {index + 1} of {count}"
        if _close(value, truth.after_forward[index]):
            return "reused_module", f"matches call {index + 1} of {count} after a later in-place op"
    return None


def another_layer(ctx: CheckContext, layer: str, value: Any) -> Diagnosis:
    for other, other_truth in ctx.truth.layers.items():
        if other != layer and other_truth.calls and _close(value, other_truth.value):
            return "wrong_layer", f"matches layer {other!r}"
    return None


def stale(ctx: CheckContext, layer: str, value: Any) -> Diagnosis:
    if _close(value, ctx.previous_truth.layers[layer].value):
        return "stale", "matches this layer's value for the previous input"
    return None


def _in_changed_run(ctx: CheckContext, layer: str, value: Any, **change: Any) -> tuple[str, str] | None:
    """Where the model run with ``change`` (``oracle.counterfactual``) gives ``value`` for the
    layer: ``("", "")`` as the layer returned it; ``("+inplace_aliasing", ...)`` as the rest of
    that run left it; ``("+reused_module", ...)`` as another call of the module returned it, or
    left it. None where none of these does: the change alone, and with each second mechanism."""
    if _close(value, ctx.counterfactual(**change).get(layer)):
        return "", ""
    if _close(value, ctx.counterfactual(**change, after_pass=True).get(layer)):
        return "+inplace_aliasing", " after a later in-place op of that run overwrote it"
    truth = ctx.truth.layers.get(layer)
    if truth is None or len(truth.calls) < 2:
        return None
    for after_pass in (False, True):
        calls = ctx.counterfactual(**change, every_call=True, after_pass=after_pass).get(layer) or []
        for index, call in enumerate(calls):
            if index != truth.index % len(calls) and _close(value, call):
                after = " after a later in-place op overwrote it" if after_pass else ""
                return "+reused_module", f" at call {index + 1} of {len(calls)} of the module{after}"
    return None


def dead_code_eliminated(ctx: CheckContext, layer: str, value: Any) -> Diagnosis:
    """The strategy runs a traced graph lacking calls that the eager pass runs (in-place ops, or
    functions FX keeps whole that change their arguments, as MViT v2's ``_add_shortcut``), and
    the model run without them gives its value (pytorch/pytorch#68301: FX removes a call whose
    result is unused as dead code). An op the graph lacks every call of is dropped whole; where
    it lacks only some, each call is tried in turn with those, then, where it lacks several, every
    choice of that many calls (:data:`_MAX_DROP_TRIALS` at most). Where none of those runs gives the
    value as the layer returned it, they are tried again as the rest of the run left it: a later
    in-place op wrote into the tensor the graph kept (both mechanisms at once)."""
    graph_ops = ctx.graph_ops()
    if graph_ops is None:
        return None
    in_graph, in_pass = Counter(graph_ops), Counter(node.op for node in ctx.droppable_nodes())
    missing = [node for node in ctx.droppable_nodes() if in_graph[node.op] < in_pass[node.op]]
    every_call = tuple(node.name for node in missing if in_graph[node.op] == 0)
    some_calls = [node for node in missing if in_graph[node.op] > 0]
    trials = ([every_call] if every_call else []) + [(*every_call, node.name) for node in some_calls]
    # where the graph lacks several calls of one op, every choice of that many of them, with the other ops' choices
    partial = {op: in_pass[op] - in_graph[op] for op in dict.fromkeys(node.op for node in some_calls)}
    choices = [list(itertools.combinations([node.name for node in some_calls if node.op == op], count)) for op, count in partial.items()]
    if any(count > 1 for count in partial.values()) and math.prod(map(len, choices)) <= _MAX_DROP_TRIALS:
        trials += [(*every_call, *itertools.chain.from_iterable(combo)) for combo in itertools.product(*choices)]
    trials = list(dict.fromkeys(trials))
    for skipped in trials:
        found = _in_changed_run(ctx, layer, value, skip_nodes=skipped)
        if found is not None:
            nodes = [next(node for node in missing if node.name == name) for name in skipped]
            named = ", ".join(f"{node.name} ({node.describe()})" for node in nodes[:3]) + (f" and {len(nodes) - 3} more" if len(nodes) > 3 else "")
            calls = "a call" if len(nodes) == 1 else f"{len(nodes)} calls"
            also, how = found
            return f"dead_code_eliminated{also}", (f"the traced graph lacks {calls} of the eager pass, {named}, which FX drops as dead code "
                                                   f"when the result is unused; the model run without {'it' if len(nodes) == 1 else 'them'} "
                                                   f"gives this value{how}")
    plain_pass_has_it = isinstance(value, torch.Tensor) and any(node != layer for node in ctx.locate_nodes(value))
    for skipped in trials if isinstance(value, torch.Tensor) and not plain_pass_has_it else ():  # else plain wrong_node
        nodes = [node for node in ctx.locate_nodes(value, skip_nodes=skipped) if node != layer]
        if nodes:
            named = ", ".join(skipped[:3]) + (f" and {len(skipped) - 3} more" if len(skipped) > 3 else "")
            return "dead_code_eliminated+wrong_node", (f"the traced graph lacks {named}, which FX drops as dead code when the result is "
                                                       f"unused; the model run without {'it' if len(skipped) == 1 else 'them'} gives this "
                                                       f"value at node {nodes[0]!r}")
    return None


def kwargs_dropped(ctx: CheckContext, layer: str, value: Any) -> Diagnosis:
    """Each module called with keyword arguments, called without them, then all of them at once
    (a replay of the children calls every one positionally); the value as it returned, then as
    the rest of that run left it. A change whose run on the meta device gives the layer another
    structure or shape cannot give the value, and its real run (a whole forward pass) is left out."""
    calls = ctx.truth.keyword_calls
    changes = [(module,) for module in calls] + ([tuple(calls)] if len(calls) > 1 else [])
    for modules in changes:
        if not _same_shapes(value, ctx.counterfactual(drop_keywords=modules, shapes_only=True), layer):
            continue
        named = repr(modules[0]) if len(modules) == 1 else f"each of {', '.join(map(repr, modules))}"
        found = _in_changed_run(ctx, layer, value, drop_keywords=modules)
        if found is not None:
            also, how = found
            return f"kwargs_dropped{also}", f"the model run with {named} called without its keyword arguments gives this value{how}"
    return None


def _same_shapes(value: Any, shapes: dict[str, Any] | None, layer: str) -> bool:
    """Whether ``value`` may be the layer's value in a run whose meta-device twin gave ``shapes``
    (None: the twin did not run, so it may)."""
    if shapes is None:
        return True
    if layer not in shapes:
        return False
    leaves, spec = tree_flatten(tensor_tree(value))
    shaped, shaped_spec = tree_flatten(tensor_tree(shapes[layer]))
    return spec == shaped_spec and all(
        not isinstance(leaf, torch.Tensor) or (isinstance(other, torch.Tensor) and leaf.shape == other.shape) for leaf, other in zip(leaves, shaped))


def children_not_chained(ctx: CheckContext, layer: str, value: Any) -> Diagnosis:
    """The children replayed in registration order give the value, as it returned or as the
    rest of the replay left it (a later in-place child overwrote it: both mechanisms at once)."""
    if layer not in ctx.replayed or not ctx.truth.chain_break:
        return None
    if _close(value, ctx.replayed[layer]):
        return "children_not_chained", f"matches the children replayed in registration order; {ctx.truth.chain_break.reason}"
    if _close(value, ctx.replayed_after.get(layer)):
        return "children_not_chained+inplace_aliasing", (
            f"matches the children replayed in registration order, as a later in-place child of the replay overwrote it; "
            f"{ctx.truth.chain_break.reason}")
    return None


def another_module(ctx: CheckContext, layer: str, value: Any) -> Diagnosis:
    if isinstance(value, torch.Tensor):
        modules = [module for module in ctx.locate(value) if module != layer]
        if modules:
            return "wrong_layer", f"matches module {', '.join(repr(m) for m in modules[:3])}"
    return None


def another_node(ctx: CheckContext, layer: str, value: Any) -> Diagnosis:
    if isinstance(value, torch.Tensor):
        nodes = [node for node in ctx.locate_nodes(value) if node != layer]
        if nodes:
            return "wrong_node", f"matches node {', '.join(repr(n) for n in nodes[:3])}"
    return None


#: The mechanisms, most specific first.
MECHANISMS: tuple[Callable[["CheckContext", str, Any], Diagnosis], ...] = (
    reformatted, permuted, container_changed, reshaped, cast, inplace_aliasing, reused_module, another_layer, stale, dead_code_eliminated, kwargs_dropped,
    children_not_chained, another_module, another_node, partial_output, rng_shifted, post_processed,
)


def diagnose(ctx: CheckContext, layer: str) -> tuple[str, str]:
    """Why the strategy's feature for ``layer`` is wrong: the first mechanism that reproduces
    it, as ``(diagnosis, detail)``; else ``unexplained``. Measured once, whichever checks find
    the feature wrong (values, shape, dtype)."""
    if layer not in ctx.diagnosed:
        value = ctx.features[layer]
        ctx.diagnosed[layer] = next(filter(None, (mechanism(ctx, layer, value) for mechanism in MECHANISMS)),
                                    (UNEXPLAINED, "no mechanism the suite knows reproduces this value"))
    return ctx.diagnosed[layer]
