"""One timm build per architecture and arguments: ``timm.create_model``, remembered.

The ``timm`` strategy attaches by building the architecture again
(``timm.create_model(arch, features_only=True, out_indices=...)``) and loading the model's
tensors into the new module. The behaviour checks attach it a dozen times per model with the
same arguments, and the build (every module constructed, every weight drawn and initialised)
was half of the strategy's cost. What a build gives depends on its arguments, the registered
architecture, timm's layer options and torch's default dtype and device; its weights are drawn
at random, and the load that follows replaces every tensor of its state dict.

Inside :func:`reusing_timm_builds`, a call with the arguments and options of an earlier call
returns a copy (:func:`~conformance.core.copies.copy_model`, which is what ``copy.deepcopy``
gives) of what that call built, kept unused since: the same classes, modules, hooks and
attributes a fresh build has; a build that cannot be copied (timm's hook-based wrapper holds
hook handles ``copy.deepcopy`` fails on) is built every time. Tensors that a load does not replace (a non-persistent buffer such
as a position index, a tensor kept as a plain attribute) are reused only once a second build was
found to give them bitwise the same; until then, and for good where it did not, each call
builds afresh. Everything after the build (the load, the device, the mode, the forward pass) is
the strategy's own code, run on every call. A copy draws nothing from torch's random generator
where a build would; each of the harness's passes seeds its own. ``tests/test_timmbuilds.py``
proves the modules, their states and their outputs equal to fresh builds'. The bench never uses
it: costs stay those users pay.
"""

from __future__ import annotations

import contextlib
from typing import Any, Hashable, Iterator

import torch
from torch import nn

from conformance.core.compare import bitwise_equal
from conformance.core.copies import copy_model

__all__ = ["BuildCache", "reusing_timm_builds", "unloaded_tensors"]

_PLAIN = (bool, int, float, str, type(None))

#: timm's global layer options (``timm.layers.config``), which modules read as they are built.
_LAYER_OPTIONS = ("_SCRIPTABLE", "_EXPORTABLE", "_NO_JIT", "_NO_ACTIVATION_JIT", "_USE_FUSED_ATTN", "_USE_REENTRANT_CKPT")


class BuildCache:
    """Unused first builds by arguments and options, and what is known of their other tensors."""

    def __init__(self) -> None:
        self.builds: dict[Hashable, nn.Module] = {}
        self.unproven: set[Hashable] = set()  # builds holding tensors no load replaces, not yet built twice
        self.fresh: set[Hashable] = set()  # builds whose second build gave other such tensors: built every time
        self.hits = 0
        self.misses = 0


def _plain(value: Any) -> bool:
    return isinstance(value, _PLAIN) or (isinstance(value, tuple) and all(_plain(item) for item in value))


def _key(args: tuple, kwargs: dict[str, Any]) -> Hashable | None:
    """The call's arguments, the architecture's entry point, timm's layer options and torch's
    defaults; ``None`` for a call the key cannot vouch for (an argument that is not a plain value,
    a name timm does not resolve to a registered architecture)."""
    import timm.models
    from timm.layers import config

    if not (args and isinstance(args[0], str)) or not all(_plain(value) for value in (*args, *kwargs.values())):
        return None
    try:
        entrypoint = timm.models.model_entrypoint(timm.models.split_model_name_tag(args[0])[0])
    except Exception:  # a hub name, an unknown one: as timm builds it
        return None
    options = tuple(getattr(config, flag, None) for flag in _LAYER_OPTIONS)
    return args, tuple(sorted(kwargs.items())), entrypoint, options, torch.get_default_dtype(), torch.get_default_device()


def _tensors_in(value: Any, path: str, found: dict[str, torch.Tensor]) -> None:
    if isinstance(value, torch.Tensor):
        found[path] = value
    elif isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            _tensors_in(item, f"{path}[{index}]", found)
    elif isinstance(value, dict):
        for key, item in value.items():
            _tensors_in(item, f"{path}[{key!r}]", found)


def unloaded_tensors(module: nn.Module) -> dict[str, torch.Tensor]:
    """The tensors ``module`` holds that loading a state dict into it does not replace: parameters
    and buffers its state dict leaves out, and tensors kept in other attributes, by path."""
    state = module.state_dict(keep_vars=True).keys()
    found = {name: tensor for name, tensor in (*module.named_parameters(remove_duplicate=False), *module.named_buffers(remove_duplicate=False))
             if name not in state}
    for prefix, submodule in module.named_modules(remove_duplicate=False):
        for attribute, value in vars(submodule).items():
            if attribute not in ("_parameters", "_buffers", "_modules"):
                _tensors_in(value, f"{prefix}.{attribute}".lstrip("."), found)
    return found


def _same_unloaded(first: nn.Module, second: nn.Module) -> bool:
    mine, theirs = unloaded_tensors(first), unloaded_tensors(second)
    return mine.keys() == theirs.keys() and all(
        type(mine[name]) is type(theirs[name]) and mine[name].dtype == theirs[name].dtype and mine[name].shape == theirs[name].shape
        and bitwise_equal(mine[name], theirs[name]) for name in mine)


@contextlib.contextmanager
def reusing_timm_builds(cache: BuildCache | None = None) -> Iterator[BuildCache]:
    """Inside, ``timm.create_model`` gives a copy of its unused first build for arguments and
    options it built before (where the tensors no load replaces were proven the same);
    ``cache`` keeps the builds across uses."""
    import timm

    cache = BuildCache() if cache is None else cache
    original = timm.create_model

    def create_model(*args: Any, **kwargs: Any) -> Any:
        key = _key(args, kwargs)
        if key is None or key in cache.fresh:
            return original(*args, **kwargs)
        known = cache.builds.get(key)
        if known is None:
            cache.misses += 1
            built = original(*args, **kwargs)
            try:
                cache.builds[key] = copy_model(built)
            except Exception:  # a build copy.deepcopy cannot copy (timm's hook-based wrapper): built every time
                cache.fresh.add(key)
                return built
            if unloaded_tensors(built):
                cache.unproven.add(key)
            return built
        if key in cache.unproven:
            cache.misses += 1
            built = original(*args, **kwargs)
            cache.unproven.discard(key)
            if not _same_unloaded(known, built):
                cache.fresh.add(key)
                del cache.builds[key]
            return built
        cache.hits += 1
        return copy_model(known)

    timm.create_model = create_model
    try:
        yield cache
    finally:
        timm.create_model = original
