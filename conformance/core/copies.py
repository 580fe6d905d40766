"""Deep copies of models: ``copy.deepcopy``, with its steps for plain modules done directly.

Every attempt and behaviour check acts on a fresh deep copy of the model, so copying is the
harness's largest cost. For a small model most of a ``copy.deepcopy`` is Python's generic
machinery visiting each module (``__reduce_ex__``, ``_reconstruct``) and each of its dozen
empty hook dictionaries. :func:`copy_model` takes the steps that machinery takes for a module
whose class reduces the way ``object`` does (as ``nn.Module`` and nearly all its subclasses
do): a new instance of the class, its ``__getstate__()`` deep-copied with one memo (so shared
and tied tensors stay shared), then ``__setstate__``. Empty dictionaries and sets are made
fresh, values deepcopy keeps as they are (numbers, strings, tuples of them) are kept, the
parameter and buffer dictionaries are copied entry by entry, a parameter (``nn.Parameter``
itself) is made as its ``__deepcopy__`` makes it, and so is a plain buffer (its storage copied
once with the memo, so buffers viewing one storage view one copy). A class with its own
``__deepcopy__``, ``__reduce_ex__``, ``__reduce__`` or new-arguments (GraphModule, quantized and
scripted modules), a state that is not a dict, and every value that is not a module go to
``copy.deepcopy`` with the same memo. A quantized module's own ``__deepcopy__`` unpacks its
weights and packs them again, which is most of a quantized model's copying, and packs them with
the original's bias tensor, which its state dict returns: a change written into a copy's state
dict reaches the original, so nothing here writes into one (``tests/test_copies.py``).
"""

from __future__ import annotations

import copy
import copyreg
from collections import OrderedDict
from typing import Any, TypeVar

import torch
from torch import nn

__all__ = ["copy_model"]

Copied = TypeVar("Copied")

_generic_classes: dict[type, bool] = {}

#: Values ``copy.deepcopy`` returns as they are (and tuples of them).
_ATOMIC = frozenset({bool, int, float, complex, str, bytes, type(None), type, torch.dtype})

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


def copy_model(model: Copied, memo: dict[int, Any] | None = None) -> Copied:
    """What ``copy.deepcopy(model, memo)`` returns, sooner for modules."""
    memo = {} if memo is None else memo
    found = memo.get(id(model))
    if found is not None:
        return found
    cls = type(model)
    state = model.__getstate__() if _copied_generically(cls) and "__deepcopy__" not in vars(model) else None
    if type(state) is not dict:
        return copy.deepcopy(model, memo)
    twin = cls.__new__(cls)
    memo[id(model)] = twin
    for key, value in state.items():
        kind = type(value)
        if kind in _ATOMIC:
            continue  # what copy.deepcopy returns for these is the object itself
        if kind in _EMPTY_CONTAINERS and not value:
            state[key] = kind()
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


def _copy_buffer(tensor: torch.Tensor | None, memo: dict[int, Any]) -> torch.Tensor | None:
    """``copy.deepcopy(tensor, memo)``; for a plain dense tensor on the CPU or CUDA with nothing
    attached (no gradient, no attributes, not a view into autograd, not conjugated or negated),
    the steps ``Tensor.__deepcopy__`` takes: its storage deep-copied with the memo (so buffers
    sharing one share the copy), and a tensor set on it at the same offset, size and stride."""
    if (type(tensor) is not torch.Tensor or tensor.device.type not in ("cpu", "cuda") or tensor.is_sparse or tensor.is_quantized
            or not tensor.is_leaf or tensor.requires_grad or tensor.grad is not None or tensor.is_conj() or tensor.is_neg() or tensor.__dict__):
        return None if tensor is None else copy.deepcopy(tensor, memo)
    found = memo.get(id(tensor))
    if found is None:
        with torch.no_grad():
            storage = copy.deepcopy(tensor.untyped_storage(), memo)
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
