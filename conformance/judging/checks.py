"""The value checks: each judges one extraction request against the oracle's truth.

A check is a function from a :class:`CheckContext` to :class:`CheckResult` rows; it is
named in :data:`CHECKS`. Per-layer checks give one row per requested layer; request-wide
checks (``keys``, ``model_output``, ``weights``, ...) give one row with layer ``*``.
A ``values`` failure carries a diagnosis where the oracle's records explain it.

The extractor is called three times: on the previous input, on the input (the features
most checks judge) and on the previous input again. Checks that act on the strategy
(attach it again, train, differentiate, script...) live in ``behaviour/``.
"""

from __future__ import annotations

import contextlib
import enum
import functools
import hashlib
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Mapping

import torch
from torch import nn
from torch.utils._pytree import tree_flatten

from strategies.base import call_model, map_tensors

from conformance.core.compare import bitwise_equal, compare, same_bits
from conformance.core.rng import pass_rng
from conformance.judging.context import ALL_LAYERS, CheckContext, CheckResult, nondeterministic
from conformance.judging.diagnoses import diagnose

__all__ = [
    "CHECKS",
    "PER_LAYER_CHECKS",
    "model_changes",
    "snapshot",
    "tensor_digest",
    "tensor_digests",
]


def snapshot(features: Mapping[str, Any], *, reuse: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The features as they are now, cloned, in their order; leaves that cannot be cloned
    (tensors left over from tracing) are kept as they are, for the checks to report.

    A tensor feature bitwise equal to the same name's tensor in ``reuse`` (an earlier snapshot)
    is that tensor, not another clone: a strategy's repeated calls hold equal features once."""

    def freeze(leaf: torch.Tensor) -> Any:
        try:
            return leaf.detach().clone()
        except Exception:
            return leaf

    def kept(name: str, value: Any) -> Any:
        earlier = (reuse or {}).get(name)
        with contextlib.suppress(Exception):  # a fake tensor cannot be compared; it is kept as it is below
            if isinstance(value, torch.Tensor) and bitwise_equal(value.detach(), earlier):
                return earlier
        return map_tensors(freeze, value)

    return {name: kept(name, value) for name, value in features.items()}


def _never_called(check: str, layer: str, features: Mapping[str, Any], *, call: str = "this input") -> CheckResult:
    """The row of a layer whose module does not run for the input (an aux head in eval mode)."""
    if layer in features:
        return CheckResult(check, layer, "fail", "not_called", f"the module does not run for {call}, yet a value was returned")
    return CheckResult(check, layer, "skipped", "not_called", f"the module does not run for {call} and nothing was returned")


def _missing(check: str, layer: str, ctx: CheckContext) -> CheckResult:
    """The row of a layer the strategy returned nothing for, with the measured reason where there
    is one: every call of the module ran its ``forward`` without its ``__call__``, which runs no
    hook (``call_bypassed``); the module is registered under more than one name
    (``registered_twice``); its output is, bit for bit, another requested layer's, returned under
    that name only (``shared_output``: FX returns one name per node)."""
    truth = ctx.truth.layers[layer]
    absent = f"no feature named {layer!r} returned"
    if truth.calls and truth.bypassed == len(truth.calls):
        return CheckResult(check, layer, "fail", "call_bypassed",
                           f"{absent}: the module's forward runs without its __call__ (called as .forward()), which runs no hook")
    names = ctx.aliases.get(layer, [])
    if len(names) > 1:
        return CheckResult(check, layer, "fail", "registered_twice",
                           f"{absent}: its module is registered under {len(names)} names ({', '.join(names)})")
    if truth.calls and isinstance(truth.value, torch.Tensor):
        same = [other for other in ctx.layers if other != layer and other in ctx.features and ctx.truth.layers[other].calls
                and bitwise_equal(ctx.truth.layers[other].value, truth.value)]
        if same:
            return CheckResult(check, layer, "fail", "shared_output",
                               f"{absent}: its output is, bit for bit, that of {same[0]!r}, returned under that name only")
    return CheckResult(check, layer, "fail", "missing", absent)


def check_values(ctx: CheckContext) -> list[CheckResult]:
    """The strategy's value for each layer is the true activation (last call of the module)."""
    results = []
    for layer in ctx.layers:
        truth = ctx.truth.layers[layer]
        if layer in ctx.truth.unsteady:
            results.append(nondeterministic("values", layer, ctx.truth.unsteady[layer]))
            continue
        if not truth.calls:
            results.append(_never_called("values", layer, ctx.features))
            continue
        if layer not in ctx.features:
            results.append(_missing("values", layer, ctx))
            continue
        comparison = ctx.against_truth(layer)
        row = CheckResult(
            "values", layer, "pass" if comparison.close else "fail",
            max_abs_err=comparison.max_abs_err, scale=comparison.scale, bitwise=comparison.bitwise,
        )
        if not comparison.close:
            row.diagnosis, why = diagnose(ctx, layer)
            row.detail = "; ".join(filter(None, [comparison.detail, why]))
        elif not comparison.bitwise:
            row.detail = "within tolerance, not bitwise equal"
        results.append(row)
    return results


def _leaf_property(ctx: CheckContext, check: str, describe: Callable[[torch.Tensor], Any]) -> list[CheckResult]:
    results = []
    for layer in ctx.layers:
        truth = ctx.truth.layers[layer].value
        if truth is None:
            results.append(_never_called(check, layer, ctx.features))
            continue
        if layer not in ctx.features:
            results.append(_missing(check, layer, ctx))
            continue
        got = [describe(leaf) if isinstance(leaf, torch.Tensor) else type(leaf).__name__ for leaf in tree_flatten(ctx.features[layer])[0]]
        want = [describe(leaf) if isinstance(leaf, torch.Tensor) else type(leaf).__name__ for leaf in tree_flatten(truth)[0]]
        if got == want:
            results.append(CheckResult(check, layer, "pass"))
            continue
        diagnosis, why = diagnose(ctx, layer)
        results.append(CheckResult(check, layer, "fail", diagnosis, f"got {', '.join(map(str, got))}; expected {', '.join(map(str, want))}; {why}"))
    return results


def check_shape(ctx: CheckContext) -> list[CheckResult]:
    """Each feature has the true activation's shape."""
    return _leaf_property(ctx, "shape", lambda t: tuple(t.shape))


def check_dtype(ctx: CheckContext) -> list[CheckResult]:
    """Each feature has the true activation's dtype."""
    return _leaf_property(ctx, "dtype", lambda t: str(t.dtype).removeprefix("torch."))


def check_keys(ctx: CheckContext) -> list[CheckResult]:
    """Features come back under the requested names, in the requested order."""
    got, want = list(ctx.features.keys()), list(ctx.layers)
    if got == want:
        return [CheckResult("keys", ALL_LAYERS, "pass")]
    missing = [k for k in want if k not in got]
    extra = [k for k in got if k not in want]
    if missing or extra:
        diagnosis = "missing" if missing else "extra"
        detail = "; ".join(filter(None, [
            f"missing: {', '.join(map(str, missing))}" if missing else "",
            f"extra: {', '.join(map(str, extra))}" if extra else "",
        ]))
    else:
        diagnosis, detail = "order", f"returned in the order {', '.join(map(str, got))}"
    return [CheckResult("keys", ALL_LAYERS, "fail", diagnosis, detail)]


def _common_fields(returned: Any, plain: Any) -> tuple[Any, Any, list[str]]:
    """``returned`` and ``plain`` as dicts of ``plain``'s fields where ``returned`` is a mapping
    holding all of them and more (a transformers ``ModelOutput`` of a call with
    ``output_hidden_states=True``), and the fields it adds; else both as they are."""
    if not (isinstance(returned, Mapping) and isinstance(plain, Mapping)) or not set(plain) < set(returned):
        return returned, plain, []
    return {key: returned[key] for key in plain}, dict(plain), [str(key) for key in returned if key not in plain]


def check_model_output(ctx: CheckContext) -> list[CheckResult]:
    """The model's output is unchanged while attached, and equals the plain output where returned."""
    if "" in ctx.truth.unsteady:
        return [CheckResult("model_output", ALL_LAYERS, "skipped", "nondeterministic_model",
                            f"the model is nondeterministic: its output, {ctx.truth.unsteady['']}")]
    problems = []
    attached = compare(ctx.attached_output, ctx.truth.output)
    if not attached.close:
        problems.append(f"the model called while attached differs ({attached.detail or f'max abs err {attached.max_abs_err:.3g}'})")
    added: list[str] = []
    if ctx.returned_output is not None:
        returned_output, plain_output, added = _common_fields(ctx.returned_output, ctx.truth.output)
        returned = compare(returned_output, plain_output)
        if not returned.close:
            problems.append(f"the returned output differs ({returned.detail or f'max abs err {returned.max_abs_err:.3g}'})")
    equal = "output returned and equal" + (f" in the plain call's fields (it adds {', '.join(added)})" if added else "")
    detail = "; ".join(problems) or (equal if ctx.returned_output is not None else "no output returned; model unaffected")
    return [CheckResult("model_output", ALL_LAYERS, "fail" if problems else "pass", "output_changed" if problems else "", detail,
                        max_abs_err=attached.max_abs_err, scale=attached.scale)]


def tensor_digest(tensor: Any) -> str:
    """A content hash of one state-dict entry: a tensor's values, dtype and shape (a quantized
    tensor's integers and quantization parameters); a packed tuple's parts; any other value's repr.
    SHA-1 over the tensor's own bytes (no copy where it is contiguous on the CPU): an identity, not
    a defence, and about three times the speed of BLAKE2b here."""
    digest = hashlib.sha1(usedforsecurity=False)
    if isinstance(tensor, (tuple, list)):
        for part in tensor:
            digest.update(tensor_digest(part).encode())
        return digest.hexdigest()
    if not isinstance(tensor, torch.Tensor):
        digest.update(repr(tensor).encode())
        return digest.hexdigest()
    data = tensor.detach().cpu()
    if data.is_quantized:
        parameters = (data.q_scale(), data.q_zero_point()) if data.qscheme() in (torch.per_tensor_affine, torch.per_tensor_symmetric) else (
            data.q_per_channel_scales().tolist(), data.q_per_channel_zero_points().tolist(), data.q_per_channel_axis())
        digest.update(repr((data.qscheme(), parameters)).encode())
        data = data.int_repr()
    data = data.contiguous().reshape(-1)
    if data.numel():
        digest.update(data.view(torch.uint8).numpy())
    digest.update(f"{tensor.dtype}{tuple(tensor.shape)}".encode())
    return digest.hexdigest()


def _memory(value: Any) -> tuple | None:
    """Where a plain tensor's bytes lie: two tensors with the same hold the same bytes; a quantized
    tensor, by the object itself (an unpacked weight given again, ``copies.unpacking_once``)."""
    if not isinstance(value, torch.Tensor):
        return None
    if value.is_quantized:
        return ("quantized", id(value))
    return (value.device, value.dtype, value.data_ptr(), tuple(value.shape), value.stride())


def _same_entry(value: Any, reference: Any) -> bool:
    """Whether a state-dict entry has the reference's digest without hashing it: bitwise equal, or
    for a quantized tensor (a quantized convolution's weight, unpacked anew by each state dict),
    the same dtype, shape, quantizer and integers."""
    if isinstance(value, torch.Tensor) and isinstance(reference, torch.Tensor) and value.is_quantized and reference.is_quantized:
        return (value.dtype == reference.dtype and value.shape == reference.shape and value.device == reference.device
                and torch.equal(value, reference))
    return bitwise_equal(value, reference)


def tensor_digests(module: nn.Module, *, state: Mapping[str, Any] | None = None, reference: Mapping[str, Any] | None = None,
                   reference_digests: Mapping[str, str] | None = None) -> dict[str, str]:
    """A content hash of every state-dict tensor, by name, hashed on as many threads as torch
    computes on (hashlib lets go of the GIL while it hashes); ``state`` is ``module``'s state dict
    where the caller has just taken it (a quantized module's unpacks every weight again).

    With ``reference`` (a state dict) and its ``reference_digests``, an entry that is one of the
    reference's tensors (the same memory, under any name) or bitwise equal to the reference's
    entry of the same name (:func:`_same_entry`) takes that digest without being hashed again:
    each weight is hashed once per model, and a strategy's module that holds the attached copy's
    tensors is not read."""
    state = module.state_dict() if state is None else state
    reference, reference_digests = reference or {}, reference_digests or {}
    held = {_memory(tensor): name for name, tensor in reference.items() if name in reference_digests and _memory(tensor) is not None}
    known = {}
    for name, value in state.items():
        same = held.get(_memory(value))
        if same is not None:
            known[name] = reference_digests[same]
        elif name in reference_digests and _same_entry(value, reference.get(name)):
            known[name] = reference_digests[name]
    unknown = [name for name in state if name not in known]
    with ThreadPoolExecutor(max_workers=max(1, torch.get_num_threads())) as pool:
        known.update(zip(unknown, pool.map(tensor_digest, (state[name] for name in unknown))))
    return {name: known[name] for name in state}


def check_weights(ctx: CheckContext) -> list[CheckResult]:
    """The strategy runs on the model's own weights: every tensor it holds is one of the model's."""
    known = set(ctx.model_digests.values())
    foreign = [name for name, digest in ctx.strategy_digests.items() if digest not in known]
    if not ctx.strategy_digests:
        return [CheckResult("weights", ALL_LAYERS, "fail", "no_weights", "the strategy's module holds no tensors")]
    if foreign:
        shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
        return [CheckResult("weights", ALL_LAYERS, "fail", "weights_differ", f"{len(foreign)} of {len(ctx.strategy_digests)} tensors are not the model's: {shown}")]
    return [CheckResult("weights", ALL_LAYERS, "pass", "", f"{len(ctx.strategy_digests)} tensors, all identical to the model's")]


def check_repeatable(ctx: CheckContext) -> list[CheckResult]:
    """The same input gives the same features again after another input has been through."""
    results = []
    for layer in ctx.layers:
        if layer in ctx.truth.unsteady:
            results.append(nondeterministic("repeatable", layer, ctx.truth.unsteady[layer]))
            continue
        if not ctx.previous_truth.layers[layer].calls:
            results.append(_never_called("repeatable", layer, ctx.repeat_features, call="the third call's input"))
            continue
        if layer not in ctx.repeat_features or layer not in ctx.first_features:
            call = "first" if layer not in ctx.first_features else "third"
            results.append(CheckResult("repeatable", layer, "fail", "missing", f"no value returned on the {call} call"))
            continue
        again = compare(ctx.repeat_features[layer], ctx.first_features[layer])
        if again.close:
            how = "bitwise" if again.bitwise else "within tolerance"
            results.append(CheckResult("repeatable", layer, "pass", "", f"the third call equals the first ({how})",
                                       max_abs_err=again.max_abs_err, scale=again.scale, bitwise=again.bitwise))
            continue
        current = ctx.truth.layers[layer].value
        stale = current is not None and compare(ctx.repeat_features[layer], current).close
        results.append(CheckResult(
            "repeatable", layer, "fail", "stale" if stale else "not_repeatable",
            "the third call, on the first call's input, " + ("holds the second input's value" if stale else
                                                             f"differs from the first ({again.detail or f'max abs err {again.max_abs_err:.3g}'})"),
            max_abs_err=again.max_abs_err, scale=again.scale, bitwise=False,
        ))
    return results


def check_stale_results(ctx: CheckContext) -> list[CheckResult]:
    """Results of one call are not changed by the next, and hold nothing left over from the previous."""
    problems, diagnosis = [], ""
    changed = [
        layer for layer, value in ctx.first_features.items()
        if layer not in ctx.first_after_next or not same_bits(ctx.first_after_next[layer], value)
    ]
    added = [layer for layer in ctx.first_after_next if layer not in ctx.first_features]
    if changed or added:
        diagnosis = "mutated_by_next_call"
        container = "the same dictionary is returned by every call" if ctx.same_container else "the tensors are overwritten in place"
        problems.append(f"the first call's results changed when the next call ran ({container}): {', '.join(map(str, changed + added))}")
    calls = (("second", ctx.truth, ctx.features, ctx.first_features), ("third", ctx.previous_truth, ctx.repeat_features, ctx.features))
    for call, truth, features, before in calls:
        leftover = [
            layer for layer in ctx.layers
            if not truth.layers[layer].calls and layer in features and layer in before and compare(features[layer], before[layer]).close
        ]
        if leftover:
            diagnosis = diagnosis or "left_over"
            problems.append(f"{', '.join(leftover)} did not run for the {call} call's input, yet the call before's value was returned")
    if problems:
        return [CheckResult("stale_results", ALL_LAYERS, "fail", diagnosis, "; ".join(problems))]
    detail = "a new container each call" if not ctx.same_container else "the same container each call, not changed"
    return [CheckResult("stale_results", ALL_LAYERS, "pass", "", f"first call's results unchanged by the next; {detail}")]


def _hook_counts(module: nn.Module) -> dict[str, int]:
    return {name: len(value) for name, value in vars(module).items() if name.endswith("hooks") and isinstance(value, dict)}


#: Attribute values compared with ``==``.
_PLAIN_VALUES = (type(None), bool, int, float, complex, str, bytes, enum.Enum, torch.dtype, torch.device, torch.Size,
                 torch.memory_format, torch.layout)


_HEAP_TYPE = 1 << 9  # Py_TPFLAGS_HEAPTYPE: a class made by a class statement, not in C
_COPYING = ("__reduce_ex__", "__reduce__", "__getstate__", "__setstate__", "__deepcopy__", "__copy__")


@functools.cache
def _state_in_dict(cls: type) -> bool:
    """Whether an instance of ``cls`` holds all its state in its ``__dict__`` and is deep-copied
    as that dict: a Python class (every base but ``object`` too) with no ``__slots__`` and no
    copying of its own, as torchvision's ``BoxCoder`` and ``Matcher``."""
    return (all(klass is object or klass.__flags__ & _HEAP_TYPE for klass in cls.__mro__)
            and not any("__slots__" in vars(klass) for klass in cls.__mro__)
            and all(getattr(cls, name, None) is getattr(object, name, None) for name in _COPYING))


def _same_value(original: Any, value: Any, places: Mapping[int, int], depth: int = 0) -> bool:
    """Whether an attribute ``value`` of the closed copy is provably ``original``'s as far as a
    forward pass can tell: the same type, and a module at the same place in the tree, a tensor
    bit for bit, a plain value equal, a container's items the same, an object that holds its
    state in its ``__dict__`` (:func:`_state_in_dict`) that dict the same, anything else the very
    object (what a deep copy shares: functions, classes). No proof is a ``False``."""
    if type(original) is not type(value) or depth > 8:
        return False
    if isinstance(original, nn.Module):
        return places.get(id(original)) == id(value)
    if isinstance(original, torch.Tensor):
        return bitwise_equal(original.detach(), value.detach())
    if isinstance(original, _PLAIN_VALUES):
        return original == value or (original != original and value != value)  # NaN is its own value here
    if isinstance(original, (tuple, list)):
        return len(original) == len(value) and all(_same_value(a, b, places, depth + 1) for a, b in zip(original, value))
    if isinstance(original, dict):
        return list(original) == list(value) and all(_same_value(original[k], value[k], places, depth + 1) for k in original)
    if isinstance(original, (set, frozenset)):
        return all(isinstance(item, _PLAIN_VALUES) for item in original) and original == value
    if isinstance(original, functools.partial):
        return original.func is value.func and _same_value((original.args, original.keywords), (value.args, value.keywords), places, depth + 1)
    if original is value:
        return True
    return _state_in_dict(type(original)) and _same_value(vars(original), vars(value), places, depth + 1)


def _same_state(pristine: nn.Module, model: nn.Module) -> bool:
    """Whether every module of ``model`` (a closed copy of ``pristine`` whose state dict is
    pristine's, bit for bit) is of its original's class and holds what it holds (:func:`_same_value`),
    attribute by attribute, the tree shaped the same and shared modules shared alike. Then the
    copy's forward pass is the pristine model's, computed from the same state by the same code."""
    before, after = list(pristine.named_modules(remove_duplicate=False)), list(model.named_modules(remove_duplicate=False))
    if [name for name, _ in before] != [name for name, _ in after]:
        return False
    places: dict[int, int] = {}
    pairs = {}
    for (_, original), (_, module) in zip(before, after):
        if places.setdefault(id(original), id(module)) != id(module):
            return False
        pairs[id(original)] = (original, module)
    if len(set(places.values())) != len(places):
        return False
    for original, module in pairs.values():
        attributes, copied = vars(original), vars(module)
        if type(original) is not type(module) or attributes.keys() != copied.keys():
            return False
        for key, value in attributes.items():
            if key in ("_parameters", "_buffers"):  # the state dict's tensors are the digests' to compare
                outside = original._non_persistent_buffers_set if key == "_buffers" else set()
                if list(value) != list(copied[key]) or any(
                        type(v) is not type(copied[key][k]) or (k in outside and not _same_value(v, copied[key][k], places)) for k, v in value.items()):
                    return False
            elif not _same_value(value, copied[key], places):
                return False
    return True


def _global_forward_hooks() -> bool:
    """Whether a forward hook for every module is registered (``register_module_forward_hook``)."""
    from torch.nn.modules import module as module_

    return bool(getattr(module_, "_global_forward_pre_hooks", None) or getattr(module_, "_global_forward_hooks", None))


def model_changes(*, pristine: nn.Module, model: nn.Module, truth: Callable[[], tuple[Any, Any]], digests: Mapping[str, str], pristine_digests: Mapping[str, str],
                  unsteady_output: str | None = None) -> list[str]:
    """How ``model`` (a deep copy of ``pristine`` that a strategy was attached to, used with
    and closed) differs from it: state dict (its :func:`tensor_digests` when closed, ``digests``,
    against the pristine model's: bit for bit), hooks, instance attributes, mode and output
    (for the input and the model's output ``truth`` gives, asked for only where it is needed).

    The output is computed where anything else differs, where a forward hook for every module
    is registered, or where no attribute-by-attribute comparison shows the copy to hold what
    the model holds (:func:`_same_state`), which leaves it the same output; another change made
    outside the model (to a torch function or a class, shared by the model and its copies) is
    not the model's and is not looked for. Where the model's own output changes from pass to pass
    (``unsteady_output``: how), the output says nothing and is not compared."""
    changes = []
    before = dict(pristine.named_modules())
    after = dict(model.named_modules())
    if set(before) != set(after):
        changes.append(f"submodules added or removed: {', '.join(sorted(set(before) ^ set(after))[:5])}")
    for name, module in after.items():
        original = before.get(name)
        if original is None:
            continue
        where = name or "the model"
        if _hook_counts(module) != _hook_counts(original):
            left = {k: v for k, v in _hook_counts(module).items() if v != _hook_counts(original).get(k, 0)}
            changes.append(f"{where}: hooks left behind ({', '.join(f'{k}: {v}' for k, v in left.items())})")
        added = sorted(set(vars(module)) - set(vars(original)))
        if added:
            changes.append(f"{where}: attributes added ({', '.join(added)})")
        if module.training != original.training:
            changes.append(f"{where}: training={module.training}, was {original.training}")
    differing = [key for key, digest in pristine_digests.items() if digests.get(key) != digest]
    if differing or set(digests) != set(pristine_digests):
        changes.append(f"state dict differs ({', '.join(differing[:3]) or 'keys'})")
    if unsteady_output is None and (changes or _global_forward_hooks() or not _same_state(pristine, model)):
        x, output = truth()
        with torch.no_grad(), pass_rng():
            comparison = compare(call_model(model, x), output)
        if not comparison.close:
            changes.append(f"the output differs ({comparison.detail or f'max abs err {comparison.max_abs_err:.3g}'})")
    return changes[:6]


def check_model_untouched(ctx: CheckContext) -> list[CheckResult]:
    """After the extractor is used and closed, the model has the same state, hooks, methods, mode and output."""
    if ctx.model_changes:
        return [CheckResult("model_untouched", ALL_LAYERS, "fail", "model_changed", "; ".join(ctx.model_changes))]
    return [CheckResult("model_untouched", ALL_LAYERS, "pass", "", "same state dict, hooks, attributes, mode and output")]


def check_kwargs_and_tuples(ctx: CheckContext) -> list[CheckResult]:
    """A module called with keyword arguments or returning a tuple or dict is captured exactly or not at all."""
    results = []
    for layer in ctx.layers:
        truth = ctx.truth.layers[layer]
        kinds = ([f"called with {', '.join(truth.keywords)}="] if truth.keywords else []) + (
            [f"returns a {type(truth.value).__name__}"] if truth.calls and not isinstance(truth.value, torch.Tensor) else []
        )
        if layer in ctx.truth.unsteady:
            results.append(nondeterministic("kwargs_and_tuples", layer, ctx.truth.unsteady[layer]))
            continue
        if not kinds:
            why = "the module does not run" if not truth.calls else "called positionally, returns a tensor"
            results.append(CheckResult("kwargs_and_tuples", layer, "skipped", "", why))
            continue
        if layer not in ctx.features:
            results.append(CheckResult("kwargs_and_tuples", layer, "fail", "silently_dropped", f"{'; '.join(kinds)}: no value returned and no error raised"))
            continue
        comparison = ctx.against_truth(layer)
        if comparison.close:
            results.append(CheckResult("kwargs_and_tuples", layer, "pass", "", f"{'; '.join(kinds)}: captured exactly"))
        else:
            diagnosis, why = diagnose(ctx, layer)
            detail = comparison.detail or f"max abs err {comparison.max_abs_err:.3g}"
            results.append(CheckResult("kwargs_and_tuples", layer, "fail", diagnosis, f"{'; '.join(kinds)}: silently wrong, {detail}; {why}"))
    return results


CHECKS: dict[str, Callable[[CheckContext], list[CheckResult]]] = {
    "values": check_values,
    "shape": check_shape,
    "dtype": check_dtype,
    "keys": check_keys,
    "model_output": check_model_output,
    "weights": check_weights,
    "repeatable": check_repeatable,
    "stale_results": check_stale_results,
    "model_untouched": check_model_untouched,
    "kwargs_and_tuples": check_kwargs_and_tuples,
}
#: Checks that give one row per layer (the others give one row per request).
PER_LAYER_CHECKS = ("values", "shape", "dtype", "repeatable", "kwargs_and_tuples")
