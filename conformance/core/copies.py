"""Deep copies of models: ``copy.deepcopy``, with its steps for plain modules done directly.

Every attempt and behaviour check acts on a fresh deep copy of the model, so copying is the
harness's largest cost. For a small model most of a ``copy.deepcopy`` is Python's generic
machinery visiting each module (``__reduce_ex__``, ``_reconstruct``) and each of its dozen
empty hook dictionaries. :func:`copy_model` takes the steps that machinery takes for a module
whose class reduces the way ``object`` does (as ``nn.Module`` and nearly all its subclasses
do): a new instance of the class, its ``__getstate__()`` deep-copied with one memo (so shared
and tied tensors stay shared), then ``__setstate__``. Empty dictionaries and sets are made
fresh and entered in the memo (a hook's handle holds the module's hook dictionaries), values
deepcopy keeps as they are (numbers, strings, tuples of them) are kept, the parameter and
buffer dictionaries are copied entry by entry, a parameter (``nn.Parameter``
itself) is made as its ``__deepcopy__`` makes it, and so is a plain buffer (its storage copied
once with the memo, so buffers viewing one storage view one copy). A quantized convolution is
copied by its own ``__getstate__`` and ``__setstate__``, as its ``__deepcopy__`` copies it, except
that the copy holds the original's packed-weights object: that ``__deepcopy__`` unpacks the weights
and packs them again, most of a quantized model's copying, and nothing changes a packed object
(setting or loading weights packs a new one). A class with its own ``__deepcopy__``,
``__reduce_ex__``, ``__reduce__`` or new-arguments (GraphModule, other quantized and scripted
modules), a state that is not a dict, and every value that is not a module go to
``copy.deepcopy`` with the same memo. A quantized module's copy, by ``copy.deepcopy`` as by this,
holds the original's bias tensor, which its state dict returns: a change written into a copy's
state dict reaches the original, so nothing here writes into one (``tests/test_copies.py``).

:class:`SharedParameters` is one more copy of a model's parameters, made once, that the copies
strategies attach to hold instead of each their own (``copy_model(model, shared.memo())``): new
``nn.Parameter`` objects over the same bytes, so each copy has its own gradients, flags and
``requires_grad``, and copying no longer moves every weight. Nothing a strategy is asked to do
writes into weights, and what does is seen: :meth:`SharedParameters.intact` says whether the shared
bytes still equal the model's and whether any in-place op ran on them (the copies share their
version counters), and where not the runner takes the model's units again on copies of their own.
"""

from __future__ import annotations

import contextlib
import copy
import copyreg
from collections import OrderedDict
from typing import Any, Iterator, TypeVar

import torch
from torch import nn
from torch.ao.nn.quantized.modules.conv import _ConvNd as _PackedConv

from conformance.core.compare import bitwise_equal

__all__ = ["SharedParameters", "copy_model", "unpacking_once"]

Copied = TypeVar("Copied")

_generic_classes: dict[type, bool] = {}
_packed_conv_classes: dict[type, bool] = {}

#: Values ``copy.deepcopy`` returns as they are (and tuples of them).
_ATOMIC = frozenset({bool, int, float, complex, str, bytes, type(None), type, torch.dtype})

#: Sets tensors' version counters (private to torch: where a release drops it, buffers are set on their copied storage).
_set_versions = getattr(torch._C._autograd, "_unsafe_set_version_counter", None)

#: Containers an empty one of which is copied as a new empty one.
_EMPTY_CONTAINERS = (dict, OrderedDict, set)


def _copied_generically(cls: type) -> bool:
    """Whether ``copy.deepcopy`` of a ``cls`` instance takes the generic path: a module class
    that reduces as ``object`` does (new instance, state, ``__setstate__``)."""
    if cls not in _generic_classes:
        _generic_classes[cls] = (
            issubclass(cls, nn.Module)
            and cls.__reduce_ex__ is object.__reduce_ex__ and cls.__reduce__ is object.__reduce__
            and not any(hasattr(cls, name) for name in ("__deepcopy__", "__getnewargs__", "__getnewargs_ex__"))
            and cls not in copyreg.dispatch_table
        )
    return _generic_classes[cls]


def _copied_as_packed_conv(cls: type) -> bool:
    """Whether ``cls`` is a quantized convolution that ``copy.deepcopy`` copies by
    ``_ConvNd``'s own ``__deepcopy__``, ``__getstate__`` and ``__setstate__``."""
    if cls not in _packed_conv_classes:
        _packed_conv_classes[cls] = all(getattr(cls, name, None) is getattr(_PackedConv, name)
                                        for name in ("__deepcopy__", "__getstate__", "__setstate__", "__reduce_ex__", "__reduce__"))
    return _packed_conv_classes[cls]


def copy_model(model: Copied, memo: dict[int, Any] | None = None) -> Copied:
    """What ``copy.deepcopy(model, memo)`` returns, sooner for modules."""
    memo = {} if memo is None else memo
    found = memo.get(id(model))
    if found is not None:
        return found
    cls = type(model)
    own_deepcopy = "__deepcopy__" in vars(model)
    generic = not own_deepcopy and _copied_generically(cls)
    if not generic and not own_deepcopy and _copied_as_packed_conv(cls):  # asked only outside the common case
        return _copy_packed_conv(model, memo)
    state = model.__getstate__() if generic else None
    if type(state) is not dict:
        return copy.deepcopy(model, memo)
    twin = cls.__new__(cls)
    memo[id(model)] = twin
    for key, value in state.items():
        kind = type(value)
        if kind in _ATOMIC:
            continue  # what copy.deepcopy returns for these is the object itself
        if kind in _EMPTY_CONTAINERS and not value:  # entered in the memo: a hook's handle refers to the module's own dicts
            state[key] = memo.setdefault(id(value), kind())
        elif key == "_modules" and kind is dict:
            state[key] = {name: None if child is None else copy_model(child, memo) for name, child in value.items()}
        elif key == "_parameters" and kind is dict:
            state[key] = {name: _copy_parameter(tensor, memo) for name, tensor in value.items()}
        elif key == "_buffers" and kind is dict:
            state[key] = {name: _copy_buffer(tensor, memo) for name, tensor in value.items()}
        elif kind is tuple and all(type(item) in _ATOMIC for item in value):
            continue
        else:
            state[key] = copy.deepcopy(value, memo)
    twin.__setstate__(state)
    return twin


def _copy_packed_conv(conv: _PackedConv, memo: dict[int, Any]) -> _PackedConv:
    """``conv.__deepcopy__(memo)`` of a quantized convolution without unpacking its weights and
    packing them again: its own ``__getstate__`` and ``__setstate__`` make the copy, the weights
    passing between them as the original's packed-weights object, which the copy then holds.
    Nothing changes such an object: setting or loading weights packs a new one
    (``tests/test_copies.py``)."""
    packed = conv._packed_params
    twin = type(conv).__new__(type(conv))
    nn.Module.__init__(twin)
    vars(conv)["_weight_bias"] = lambda: (packed, None)
    vars(twin)["set_weight_bias"] = lambda weight, bias: setattr(twin, "_packed_params", weight)
    try:
        twin.__setstate__(conv.__getstate__())
    finally:
        del vars(conv)["_weight_bias"], vars(twin)["set_weight_bias"]
    memo[id(conv)] = twin
    return twin


def _subclasses(cls: type) -> list[type]:
    return [sub for direct in cls.__subclasses__() for sub in (direct, *_subclasses(direct))]


@contextlib.contextmanager
def unpacking_once(unpacked: dict[tuple[int, Any], tuple[Any, Any]]) -> Iterator[None]:
    """Inside, a quantized convolution's weight and bias (its ``_weight_bias``, which its state
    dict calls) come from ``unpacked``, keyed by its packed-weights object and unpacked there on
    first use. The copies hold the model's packed objects, which nothing changes
    (:func:`_copy_packed_conv`), so every state dict of a copy would otherwise unpack the same
    weights again. The same tensors are given each time: for callers that only read them."""
    originals = {cls: vars(cls)["_weight_bias"] for cls in _subclasses(_PackedConv) if "_weight_bias" in vars(cls)}

    def once(original: Any) -> Any:
        def _weight_bias(conv: _PackedConv) -> Any:
            packed = conv._packed_params
            found = unpacked.get((id(packed), original))
            if found is None:  # the entry holds the packed object, so its id is not reused while it is there
                found = unpacked[(id(packed), original)] = (packed, original(conv))
            return found[1]
        return _weight_bias

    for cls, original in originals.items():
        cls._weight_bias = once(original)
    try:
        yield
    finally:
        for cls, original in originals.items():
            cls._weight_bias = original


def _copy_buffer(tensor: torch.Tensor | None, memo: dict[int, Any]) -> torch.Tensor | None:
    """``copy.deepcopy(tensor, memo)``; for a plain dense tensor on the CPU or CUDA with nothing
    attached (no gradient, no attributes, not a view into autograd, not conjugated or negated),
    the steps ``Tensor.__deepcopy__`` takes: its storage deep-copied with the memo (so buffers
    sharing one share the copy), and a tensor set on it at the same offset, size and stride. A
    storage seen first through a tensor that fills it contiguously is copied by cloning that
    tensor, and entered in the memo under both keys ``copy.deepcopy`` and the storage's own
    ``__deepcopy__`` use; the clone itself is the copy where its strides are the tensor's (its version
    counter set to what ``set_`` leaves)."""
    if (type(tensor) is not torch.Tensor or tensor.device.type not in ("cpu", "cuda") or tensor.is_sparse or tensor.is_quantized
            or not tensor.is_leaf or tensor.requires_grad or tensor.grad is not None or tensor.is_conj() or tensor.is_neg()
            or tensor.is_inference() or tensor.__dict__):
        return None if tensor is None else copy.deepcopy(tensor, memo)
    found = memo.get(id(tensor))
    if found is None:
        original = tensor.untyped_storage()
        storage = memo.get(id(original))
        if storage is None:
            if tensor.storage_offset() == 0 and tensor.is_contiguous() and tensor.numel() * tensor.element_size() == original.nbytes():
                clone = tensor.clone()
                storage = clone.untyped_storage()
                memo[id(original)] = memo.setdefault("torch", {})[original._cdata] = storage
                memo.setdefault(id(memo), []).append(original)  # as copy.deepcopy keeps what it copied alive
                if _set_versions is not None and clone.stride() == tensor.stride():  # the clone is the tensor set on the new storage
                    _set_versions((clone,), (1,))  # and counts the one write, set_, that deepcopy's tensor counts
                    memo[id(tensor)] = clone
                    return clone
            else:
                storage = copy.deepcopy(original, memo)
        found = memo[id(tensor)] = tensor.new_empty([]).set_(storage, tensor.storage_offset(), tensor.size(), tensor.stride())
    return found


def _copy_parameter(tensor: torch.Tensor | None, memo: dict[int, Any]) -> torch.Tensor | None:
    """``copy.deepcopy(tensor, memo)``; for an ``nn.Parameter`` (the class itself), the steps its
    ``__deepcopy__`` takes, without ``copy.deepcopy``'s dispatch."""
    if type(tensor) is not nn.Parameter:
        return None if tensor is None else copy.deepcopy(tensor, memo)
    found = memo.get(id(tensor))
    if found is None:
        found = memo[id(tensor)] = nn.Parameter(tensor.data.clone(memory_format=torch.preserve_format), tensor.requires_grad)
    return found


class SharedParameters:
    """One copy of ``model``'s parameters (those of the class ``nn.Parameter`` itself) for many
    copies of the model to hold, and the measure of whether anything wrote into it."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self._pairs = [(parameter, parameter.detach().clone(memory_format=torch.preserve_format))
                       for parameter in model.parameters() if type(parameter) is nn.Parameter]
        self._versions = [tensor._version for _, tensor in self._pairs]
        self._lent = False  # whether a copy was given the shared tensors since intact() last measured them

    def memo(self) -> dict[int, Any]:
        """A memo for :func:`copy_model` of the model: each parameter a new ``nn.Parameter`` over the
        shared tensor (its version counter shared too), with the model's parameter's ``requires_grad``."""
        self._lent = True
        return {id(parameter): nn.Parameter(tensor, parameter.requires_grad) for parameter, tensor in self._pairs}  # over a detached alias of it

    def state(self, model_state: dict[str, Any]) -> dict[str, Any]:
        """``model_state`` (the model's state dict) with the shared tensor in place of each shared
        parameter's entry: what a copy holding them holds, found there by its memory."""
        shared = {id(parameter): tensor for parameter, tensor in self._pairs}
        state = dict(model_state)
        for name, parameter in self.model.named_parameters(remove_duplicate=False):
            if id(parameter) in shared and name in state:
                state[name] = shared[id(parameter)]
        return state

    def intact(self) -> bool:
        """Whether no in-place op ran on the shared tensors and their bytes equal the model's
        parameters' (a write behind autograd's back, through ``.data`` or NumPy, shows there). Measured
        only where a copy was given them since the last measure: a write needs a copy that holds them."""
        if not self._lent:
            return True
        self._lent = False
        return (all(tensor._version == version for (_, tensor), version in zip(self._pairs, self._versions))
                and all(bitwise_equal(tensor, parameter) for parameter, tensor in self._pairs))
