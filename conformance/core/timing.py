"""Where a run's wall time goes: phases, each strategy's units, and the model copies.

:class:`Timings` is the tally; code that does not hold it (the oracle, the behaviour checks,
the layer sets) charges the run being timed through :func:`phase`, and every deep copy of a
model goes through :func:`deep_copy`, so that the ``copy`` phase holds all of them, wherever
they are made; the oracle's truths are charged to ``oracle`` the same way.
"""

from __future__ import annotations

import contextlib
import time
from collections import defaultdict
from contextvars import ContextVar
from typing import Any, Iterator, TypeVar

import torch
from torch import nn

from conformance.core.copies import SharedParameters, copy_model

__all__ = ["HARNESS_PHASES", "Timings", "deep_copy", "harness_share", "heaviest_models", "meta_copy", "oracle_sharing", "own_copy", "phase", "sharing_parameters",
           "strategy_copy"]

#: Phases that are the harness's own work rather than the models' and the strategies': the
#: truth (``oracle``: its captures, replays and gradients, wherever they are asked for), the
#: copies, the hashing, the checks and the diagnoses. Not among them: ``model_build``,
#: ``imports`` (a strategy's package, on its first use in a process), ``tracing`` and
#: ``forward`` (the strategies' attach and calls) and the behaviour checks' phases.
HARNESS_PHASES = ("oracle", "copy", "hashing", "checks", "diagnoses", "rest")

_ACTIVE: ContextVar[Timings | None] = ContextVar("conformance_timings", default=None)
_SHARED: ContextVar[SharedParameters | None] = ContextVar("conformance_shared_parameters", default=None)
_ORACLE_SHARED: ContextVar[SharedParameters | None] = ContextVar("conformance_oracle_parameters", default=None)

Copied = TypeVar("Copied")


class Timings:
    """Wall time of a run by phase; ``rest`` is the harness's own overhead.

    Phases are exclusive: a phase entered inside another pauses the outer one, so no
    second is counted twice. ``by_strategy`` is a second, independent tally: the wall time
    of each strategy's units (model build and oracle capture, shared by all, are in none);
    ``by_model`` a third: each model's phases (:meth:`add_model`).
    """

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self.by_strategy: dict[str, float] = defaultdict(float)
        self.by_model: dict[str, dict[str, float]] = {}
        self._stack: list[str] = []
        self._started = self._since = time.perf_counter()

    def _charge(self) -> None:
        now = time.perf_counter()
        if self._stack:
            self.seconds[self._stack[-1]] += now - self._since
        self._since = now

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        self._charge()
        self._stack.append(name)
        try:
            yield
        finally:
            self._charge()
            self._stack.pop()

    @contextlib.contextmanager
    def strategy(self, name: str) -> Iterator[None]:
        """Charge the wall time inside to strategy ``name`` (phases go on counting as well)."""
        started = time.perf_counter()
        try:
            yield
        finally:
            self.by_strategy[name] += time.perf_counter() - started

    @contextlib.contextmanager
    def active(self) -> Iterator[Timings]:
        """Make this the run whose phases :func:`phase` and :func:`deep_copy` charge, inside."""
        token = _ACTIVE.set(self)
        try:
            yield self
        finally:
            _ACTIVE.reset(token)

    def strategy_split(self) -> dict[str, float]:
        """Seconds by strategy, most expensive first."""
        return {name: round(seconds, 3) for name, seconds in sorted(self.by_strategy.items(), key=lambda item: -item[1])}

    def split(self) -> dict[str, float]:
        """Seconds by phase since this object was made, with ``rest`` (the time in no phase, and
        the workers' ``rest`` added in by :meth:`add_worker`) and ``total``."""
        total = time.perf_counter() - self._started
        measured = {k: round(v, 3) for k, v in self.seconds.items()}
        measured["rest"] = round(self.seconds.get("rest", 0.0) + max(total - sum(self.seconds.values()), 0.0), 3)
        measured["total"] = round(total, 3)
        return measured

    def snapshot(self) -> dict[str, float]:
        """Seconds by phase so far (the phase running now charged up to this moment)."""
        self._charge()
        return dict(self.seconds)

    def add_model(self, name: str, seconds: dict[str, float]) -> None:
        """Charge ``seconds`` by phase (a worker's, or the difference of two :meth:`snapshot`
        taken around the model) to model ``name``; its ``rest`` aside, as a serial run's time
        between phases is also the writing of other units."""
        tally = self.by_model.setdefault(name, defaultdict(float))
        for phase_name, value in seconds.items():
            if phase_name not in ("rest", "total") and value > 0:
                tally[phase_name] += value

    def model_split(self) -> dict[str, dict[str, float]]:
        """Seconds by phase of each model, the model with the most harness work first."""
        ordered = sorted(self.by_model.items(), key=lambda item: -sum(_harness_phases(item[1]).values()))
        return {name: {phase_name: round(value, 3) for phase_name, value in phases.items()} for name, phases in ordered}

    def worker_seconds(self) -> dict[str, float]:
        """What a worker gives back for :meth:`add_worker`: seconds by phase, its ``rest`` included."""
        return {name: seconds for name, seconds in self.split().items() if name != "total"}

    def add_worker(self, seconds: dict[str, float], by_strategy: dict[str, float]) -> None:
        """Add the phases and strategies of work done in another process."""
        for name, value in seconds.items():
            self.seconds[name] += value
        for name, value in by_strategy.items():
            self.by_strategy[name] += value


def harness_share(split: dict[str, float]) -> str:
    """The harness's own work in a :meth:`Timings.split`, in seconds and as a share of the time
    the phases account for (the wall time of a serial run; the workers' time summed otherwise)."""
    accounted = max(split["total"], sum(seconds for name, seconds in split.items() if name != "total"))
    harness = sum(split.get(name, 0.0) for name in HARNESS_PHASES)
    return f"{harness:.1f}s of {accounted:.1f}s, {100 * harness / accounted if accounted else 0.0:.1f} % ({', '.join(HARNESS_PHASES)})"


def _harness_phases(phases: dict[str, float]) -> dict[str, float]:
    """The harness's phases among ``phases``, those with time in them."""
    return {name: phases[name] for name in HARNESS_PHASES if phases.get(name)}


def heaviest_models(model_seconds: dict[str, dict[str, float]], *, count: int = 3) -> str:
    """The ``count`` models with the most harness work in a :meth:`Timings.model_split`, each
    with its harness seconds and the harness phase that took most of them."""
    parts = []
    for name, phases in list(model_seconds.items())[:count]:
        harness = _harness_phases(phases)
        if harness:
            largest = max(harness, key=harness.get)
            parts.append(f"{name} {sum(harness.values()):.1f}s ({largest} {harness[largest]:.1f}s)")
    return ", ".join(parts)


@contextlib.contextmanager
def phase(name: str) -> Iterator[None]:
    """Charge the time inside to phase ``name`` of the active :class:`Timings` (none: not timed)."""
    timings = _ACTIVE.get()
    if timings is None:
        yield
        return
    with timings.phase(name):
        yield


def deep_copy(model: Copied) -> Copied:
    """``copy.deepcopy(model)`` (by :func:`conformance.core.copies.copy_model`), charged to the
    ``copy`` phase of the run being timed: the oracle's copies. Where :func:`oracle_sharing` shares
    ``model``'s parameters, the copy holds them (the oracle's own set, which no strategy's copy
    holds); a caller that writes into a copy's weights takes :func:`own_copy`."""
    return _copy_holding(_ORACLE_SHARED, model)


def own_copy(model: Copied) -> Copied:
    """``copy.deepcopy(model)``, charged to the ``copy`` phase, with parameters of its own always."""
    with phase("copy"):
        return copy_model(model)


def meta_copy(model: nn.Module) -> nn.Module:
    """``deep_copy(model).to("meta")``, charged to the ``copy`` phase, without copying the bytes of
    the parameters and buffers first: each (``nn.Parameter`` itself, a plain tensor) enters the
    copy as a meta tensor of its shape, strides and dtype. Tied parameters stay tied (``.to("meta")``
    gives each module a parameter of its own). Raises what ``.to("meta")`` raises (a quantized
    module's packed weights)."""
    with phase("copy"):
        memo: dict[int, Any] = {}
        for parameter in model.parameters():
            if type(parameter) is nn.Parameter:
                memo[id(parameter)] = nn.Parameter(torch.empty_like(parameter, device="meta"), parameter.requires_grad)
        for buffer in model.buffers():
            if type(buffer) is torch.Tensor:
                memo[id(buffer)] = torch.empty_like(buffer, device="meta")
        return copy_model(model, memo).to("meta")


def oracle_sharing(shared: SharedParameters | None) -> contextlib.AbstractContextManager[None]:
    """Inside, :func:`deep_copy` of ``shared.model`` holds the shared parameters (None: its own)."""
    return _setting(_ORACLE_SHARED, shared)


def sharing_parameters(shared: SharedParameters | None) -> contextlib.AbstractContextManager[None]:
    """Inside, :func:`strategy_copy` of ``shared.model`` holds the shared parameters (None: its own)."""
    return _setting(_SHARED, shared)


def strategy_copy(model: Copied) -> Copied:
    """A deep copy of ``model`` for a strategy to attach to, charged to the ``copy`` phase: holding
    the parameters :func:`sharing_parameters` shares where they are ``model``'s, else as
    :func:`own_copy`. The oracle's copies never hold these: no truth rests on bytes a strategy can reach."""
    return _copy_holding(_SHARED, model)


@contextlib.contextmanager
def _setting(variable: ContextVar[SharedParameters | None], shared: SharedParameters | None) -> Iterator[None]:
    token = variable.set(shared)
    try:
        yield
    finally:
        variable.reset(token)


def _copy_holding(variable: ContextVar[SharedParameters | None], model: Copied) -> Copied:
    """A copy of ``model``, charged to the ``copy`` phase, holding the parameters ``variable``'s set
    shares where they are ``model``'s."""
    with phase("copy"):
        shared = variable.get()
        if shared is not None and shared.model is model:
            return copy_model(model, shared.memo())
        return copy_model(model)
