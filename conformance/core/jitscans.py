"""TorchScript's scans of a module's methods, done once per function: ``torch.jit.script``, remembered.

``torch.jit.script`` walks every submodule of what it scripts and, for each one, reads the
source of each method it compiles and parses it again (``get_jit_def``), and looks at every
attribute of the module's class for overloads (``get_overload_annotations``), even where the
same class was scripted a moment before. The ``jit_script`` check scripts each strategy's
extractor of one model, so about half its cost was those two scans, repeated.

Inside :func:`reusing_script_scans`, both answer from what they found before: a method's parsed
definition by the function object itself (with the name it is compiled under and the modifier
TorchScript reads from it), and "no overloads" by the class, the plain function the attribute
is and the size of TorchScript's registry of overloads. An attribute the instance sets itself,
a property, or anything but a plain function of the class is looked at as before, by
TorchScript's own code. Everything else (the concrete types, the compilation, the scripted
module and its values) is TorchScript's work, done on every call. ``tests/test_jitscans.py``
proves the scripted modules equal to fresh ones, in code and graph and bitwise in value. The
bench never uses it: costs stay those users pay.
"""

from __future__ import annotations

import contextlib
import types
from typing import Any, Hashable, Iterator

from torch import _jit_internal
from torch.jit import _recursive, frontend

__all__ = ["ScanCache", "reusing_script_scans"]


class ScanCache:
    """Parsed method definitions by function, and the attributes without overloads by class."""

    def __init__(self) -> None:
        self.definitions: dict[Hashable, Any] = {}
        self.no_overloads: dict[Hashable, dict[str, types.FunctionType]] = {}
        self.hits = 0  # scans answered from the cache


def _definition_key(fn: Any, def_name: str, self_name: str | None, is_classmethod: bool) -> Hashable | None:
    """What ``get_jit_def`` reads: the function, the modifier set on it, and the names it compiles
    under; ``None`` where it reads more (MonkeyType's recorded types, a callable that is no function)."""
    function = getattr(fn, "__func__", fn)
    if frontend.monkeytype_trace or not isinstance(function, types.FunctionType):
        return None
    return function, _jit_internal.get_torchscript_modifier(fn), def_name, self_name, is_classmethod


def _overloads_key(cls: type) -> Hashable:
    """The class, and how many overloads TorchScript's registry holds (it grows as classes are defined)."""
    return cls, sum(len(overloads) for by_class in _jit_internal._overloaded_methods.values() for overloads in by_class.values())


@contextlib.contextmanager
def reusing_script_scans(cache: ScanCache | None = None) -> Iterator[ScanCache]:
    """Inside, ``torch.jit.script`` parses a method's source once per function and looks for
    overloads once per class and attribute; ``cache`` keeps both across uses."""
    cache = ScanCache() if cache is None else cache
    original_definition, original_overloads = _recursive.get_jit_def, _recursive.get_overload_annotations

    def get_jit_def(fn: Any, def_name: str, self_name: str | None = None, is_classmethod: bool = False) -> Any:
        key = _definition_key(fn, def_name, self_name, is_classmethod)
        if key is None:
            return original_definition(fn, def_name, self_name=self_name, is_classmethod=is_classmethod)
        if key in cache.definitions:
            cache.hits += 1
        else:
            cache.definitions[key] = original_definition(fn, def_name, self_name=self_name, is_classmethod=is_classmethod)
        return cache.definitions[key]

    def get_overload_annotations(mod: Any, jit_ignored_properties: Any) -> dict:
        cls, own, key = type(mod), vars(mod), _overloads_key(type(mod))
        known = cache.no_overloads.get(key)
        if known is None:
            found = original_overloads(mod, jit_ignored_properties)
            overloaded = {getattr(item, "__func__", None) for item in found}
            cache.no_overloads[key] = {
                name: function for name in dir(cls)
                if name not in own and name not in jit_ignored_properties
                and isinstance(function := getattr(cls, name, None), types.FunctionType) and function not in overloaded
            }
            return found
        cache.hits += 1
        # TorchScript's own scan, told to pass over the names it found no overloads for that still give the
        # same function: its answer depends only on the function's qualified name, the class's name and the registry
        seen = {name for name, function in known.items() if name not in own and getattr(cls, name, None) is function}
        return original_overloads(mod, seen.union(jit_ignored_properties))

    _recursive.get_jit_def, _recursive.get_overload_annotations = get_jit_def, get_overload_annotations
    try:
        yield cache
    finally:
        _recursive.get_jit_def, _recursive.get_overload_annotations = original_definition, original_overloads
