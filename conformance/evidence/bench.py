"""Speed and memory: what each strategy costs for one model and one layer request.

Three kinds of *contestant* run on the same input, under ``torch.no_grad()``:

* ``(forward)``: the plain model's forward pass;
* ``(floor)``: the same forward stopped as soon as every requested layer has returned,
  the least work that answers the request (the harness's own, see :class:`Floor`);
* each strategy's extractor, attached to its own deep copy of the model.

They are timed in interleaved rounds (A B C, B C A, C A B, ...) with :mod:`timeit` and
torch's accelerator-synchronising clock, so that drift of the machine falls on all alike.
Ratios are taken within a round (strategy over forward: ``overhead``; strategy over floor:
``floor_ratio``) and summarised by their median with a distribution-free 95 % confidence
interval. Rounds go on until every ratio is known to ``precision`` or ``max_time`` is
spent. Memory is measured in separate, untimed calls. Only one timing run holds the
machine at a time (:func:`timing_lock`).

Example::

    >>> import torchvision
    >>> costs = measure_costs(torchvision.models.resnet18(), layers=["layer1"], strategies=["hooks", "fx"])
    >>> costs.rows.query("metric == 'overhead'")[["strategy", "value", "ci_low", "ci_high"]]
"""

from __future__ import annotations

import contextlib
import copy
import ctypes
import ctypes.util
import functools
import gc
import math
import os
import re
import statistics
import tempfile
import time
import timeit
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import pandas as pd
import torch
from torch import nn

from strategies import StrategyUnavailable, Tap, Unsupported, get_strategy

from conformance.core.errors import ConformanceError
from conformance.truth.layers import resolve_layers
from conformance.truth.nodes import record
from conformance.evidence.results import BenchWriter
from conformance.zoo.specs import ModelSpec, build_model

__all__ = [
    "FLOOR",
    "FORWARD",
    "METRIC_UNITS",
    "ORACLE",
    "REFERENCES",
    "BenchConfig",
    "BenchCosts",
    "Floor",
    "bench",
    "contestant_call",
    "measure_costs",
    "median_interval",
    "summarise_timing",
    "tie_ranks",
    "timing_lock",
]

FORWARD = "(forward)"
FLOOR = "(floor)"
ORACLE = "(oracle)"  # the op-level oracle's pass: every op named, the requested nodes cloned
#: Contestants that are no strategy: timed for comparison, never ranked.
REFERENCES = (FORWARD, FLOOR, ORACLE)
METRIC_UNITS = {
    "latency": "s",
    "overhead": "ratio",
    "floor_ratio": "ratio",
    "rank": "rank",
    "build_time": "s",
    "peak_memory": "bytes",
    "retained_memory": "bytes",
    "params_retained": "ratio",
}
STRATEGY_METRICS = tuple(METRIC_UNITS)
REFERENCE_METRICS = ("latency", "peak_memory", "retained_memory")

_BLOCK_SECONDS = 0.02  # one timed block: enough calls to dwarf the clock's own cost
_WARMUP_CALLS = 2
_MIN_BUILDS, _MAX_BUILDS, _BUILD_SECONDS = 3, 10, 0.5
_MEMORY_CALLS = 3


class _FloorReached(Exception):
    """Raised by :class:`Floor`'s hooks once the last requested layer has returned."""


class Floor(nn.Module):
    """The model's forward pass, stopped once every requested layer has returned.

    Its cost is the least any strategy can pay for the request: the work up to the layer
    that completes last. A forward hook on each requested module ends the pass with an
    exception once the call asked for has returned (the first, for a module path); an op
    counts as returned when the module whose code runs it returns, and an op of the model's
    own forward when the pass ends. When a requested layer never runs, the pass goes to the end.
    """

    def __init__(self, model: nn.Module, *, layers: Sequence[str]) -> None:
        super().__init__()
        self.model = model
        self.layers = [layer if isinstance(layer, Tap) else Tap(layer) for layer in layers]
        self._waiting: dict[str, int] = {}
        for tap in self.layers:
            path = tap.scope if tap.is_op else tap.module
            if path:
                model.get_submodule(path).register_forward_hook(functools.partial(self._returned, tap))

    def _returned(self, tap: Tap, module: nn.Module, args: Any, output: Any) -> None:
        if tap in self._waiting:
            self._waiting[tap] -= 1
            if self._waiting[tap] <= 0:
                del self._waiting[tap]
        if not self._waiting:
            raise _FloorReached

    def forward(self, x: torch.Tensor) -> Any:
        self._waiting = {tap: 1 if tap.is_op else tap.call or 1 for tap in self.layers}
        try:
            return self.model(x)
        except _FloorReached:
            return None


# -- statistics ----------------------------------------------------------------------


def median_interval(values: Sequence[float], *, confidence: float = 0.95) -> tuple[float, float, float]:
    """The median and a distribution-free confidence interval for it.

    The interval is the pair of order statistics whose binomial coverage is at least
    ``confidence``; it is ``nan`` where there are too few values for one (fewer than 6 at 95 %).
    """
    ordered = sorted(values)
    n = len(ordered)
    if n == 0:
        return math.nan, math.nan, math.nan
    median = statistics.median(ordered)
    tail, k = 0.0, 0
    while tail + math.comb(n, k) / 2**n <= (1 - confidence) / 2:
        tail += math.comb(n, k) / 2**n
        k += 1
    if k == 0:
        return median, math.nan, math.nan
    return median, ordered[k - 1], ordered[n - k]


def _relative_halfwidth(values: Sequence[float]) -> float:
    median, low, high = median_interval(values)
    return math.inf if math.isnan(low) else (high - low) / (2 * median)


def _ratios(numerator: Sequence[float], denominator: Sequence[float]) -> list[float]:
    return [a / b for a, b in zip(numerator, denominator)]


def summarise_timing(samples: dict[str, list[float]]) -> list[dict]:
    """Latency, overhead, floor_ratio and rank rows from per-round seconds per call.

    ``samples`` maps each contestant to its seconds per call, one value per round; the
    ratios pair values of the same round. Strategies are ranked by median overhead; one
    whose overhead interval overlaps that of the leader of its group shares the leader's
    rank: the two are indistinguishable at this precision, and no order is claimed.
    """
    rows = []
    strategies = [name for name in samples if name not in REFERENCES]
    for name, seconds in samples.items():
        median, low, high = median_interval(seconds)
        quartiles = statistics.quantiles(seconds, n=4) if len(seconds) > 1 else [median, median, median]
        rows.append(_row(name, "latency", median, low=low, high=high, iqr=quartiles[2] - quartiles[0], rounds=len(seconds)))
    overhead = {}
    for name in strategies:
        for metric, reference in (("overhead", FORWARD), ("floor_ratio", FLOOR)):
            median, low, high = median_interval(_ratios(samples[name], samples[reference]))
            rows.append(_row(name, metric, median, low=low, high=high, rounds=len(samples[name]), detail=f"paired with {reference} round by round"))
            if metric == "overhead":
                overhead[name] = (median, low, high)
    if ORACLE in samples:
        median, low, high = median_interval(_ratios(samples[ORACLE], samples[FORWARD]))
        rows.append(_row(ORACLE, "overhead", median, low=low, high=high, rounds=len(samples[ORACLE]), detail=f"paired with {FORWARD} round by round"))
    for name, rank, leader in tie_ranks(overhead):
        detail = f"indistinguishable from {leader}: overhead intervals overlap" if leader else ""
        rows.append(_row(name, "rank", rank, rounds=len(samples[name]), detail=detail))
    return rows


def tie_ranks(intervals: dict[str, tuple[float, float, float]]) -> list[tuple[str, int, str | None]]:
    """``(name, rank, leader)`` by ascending median, from ``name: (median, low, high)``.

    A name whose interval overlaps that of the leader of its group shares the leader's rank
    (``leader`` names it; ``None`` for a leader): no order is claimed between them. Missing
    medians come last.
    """
    ordered = sorted(intervals, key=lambda n: (math.isnan(intervals[n][0]), intervals[n][0]))
    ranked, leader, rank = [], None, 0
    for position, name in enumerate(ordered, start=1):
        if leader is not None and intervals[name][1] <= intervals[leader][2]:
            ranked.append((name, rank, leader))
            continue
        leader, rank = name, position
        ranked.append((name, rank, None))
    return ranked


def _row(strategy: str, metric: str, value: float, *, low: float = math.nan, high: float = math.nan, iqr: float = math.nan,
         rounds: int = 0, method: str = "", status: str = "ok", detail: str = "") -> dict:
    return {
        "strategy": strategy, "metric": metric, "status": status, "value": value, "unit": METRIC_UNITS[metric],
        "ci_low": low, "ci_high": high, "iqr": iqr, "rounds": rounds, "method": method, "detail": detail,
    }


def _failed_rows(strategy: str, metrics: Sequence[str], status: str, detail: str) -> list[dict]:
    return [_row(strategy, metric, math.nan, status=status, detail=detail) for metric in metrics]


# -- memory --------------------------------------------------------------------------


def _libc_trim() -> Callable[[], None]:
    """glibc's ``malloc_trim(0)``, which hands freed heap pages back to the system."""
    try:
        trim = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return lambda: None
    return lambda: trim(0)


class _MemoryProbe:
    """Memory taken by one call above what was in use before it, and kept after it.

    On CUDA from the caching allocator's statistics; on Linux CPUs from the process's
    resident set, with its high-water mark reset before the call (``/proc/self/clear_refs``)
    and freed heap pages trimmed, so that the peak counts the call's own allocations.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self._trim = _libc_trim()
        if device.type == "cuda":
            self.method = "cuda_allocator"
        elif Path("/proc/self/clear_refs").exists():
            self.method = "rss_high_water_mark"
        else:
            self.method = ""

    @staticmethod
    def _status(key: str) -> int:
        text = Path("/proc/self/status").read_text()
        return int(re.search(rf"^{key}:\s+(\d+) kB", text, re.MULTILINE).group(1)) * 1024

    def _settle(self) -> None:
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        else:
            self._trim()

    def measure(self, call: Callable[[], Any]) -> tuple[int, int]:
        """Peak bytes during ``call()`` and bytes still held once its result is dropped."""
        self._settle()
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            base = torch.cuda.memory_allocated(self.device)
            result = call()
            torch.cuda.synchronize(self.device)
            peak = torch.cuda.max_memory_allocated(self.device) - base
        else:
            base = self._status("VmRSS")
            Path("/proc/self/clear_refs").write_text("5")
            result = call()
            peak = self._status("VmHWM") - base
        del result
        self._settle()
        held = torch.cuda.memory_allocated(self.device) if self.device.type == "cuda" else self._status("VmRSS")
        return peak, held - base


def _parameter_bytes(module: nn.Module) -> dict[int, int]:
    """Bytes of each storage behind ``module``'s parameters and buffers, by address."""
    tensors = [*module.parameters(), *module.buffers()]
    return {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in tensors}


def _params_retained(extractor_module: nn.Module, model: nn.Module) -> dict:
    held, whole = _parameter_bytes(extractor_module), _parameter_bytes(model)
    shared = sum(size for address, size in held.items() if address in whole)
    total = sum(held.values())
    detail = f"{total} of the model's {sum(whole.values())} parameter and buffer bytes; {shared / total if total else 0:.0%} of them shared with the model"
    return _row("", "params_retained", total / sum(whole.values()), detail=detail)


# -- the timing lock ----------------------------------------------------------------


@contextlib.contextmanager
def timing_lock(*, path: Path | None = None, timeout: float | None = None, on_wait: Callable[[str], None] | None = None) -> Iterator[None]:
    """Hold the machine-wide timing lock: timing runs never overlap, even across processes.

    Waits for a run that holds it (``on_wait`` is told who), or raises ``TimeoutError``
    after ``timeout`` seconds. Where ``fcntl`` is missing (Windows) it does nothing.
    """
    try:
        import fcntl
    except ImportError:
        yield
        return
    path = path or Path(tempfile.gettempdir()) / "feature-conformance-timing.lock"
    with open(path, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            if on_wait:
                on_wait(f"waiting for another timing run to finish ({handle.read().strip() or 'unknown holder'}, lock {path})")
            deadline = None if timeout is None else time.monotonic() + timeout
            while True:
                try:
                    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if deadline is not None and time.monotonic() > deadline:
                        raise TimeoutError(f"the timing lock {path} is still held after {timeout:g} s") from None
                    time.sleep(0.1)
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()}")
        handle.flush()
        try:
            yield
        finally:
            handle.seek(0)
            handle.truncate()
            fcntl.flock(handle, fcntl.LOCK_UN)


# -- contestants ---------------------------------------------------------------------


@dataclass
class _Contestant:
    name: str
    call: Callable[[torch.Tensor], Any]
    close: Callable[[], None] = lambda: None
    calls_per_block: int = 1


@dataclass
class BenchCosts:
    """What :func:`measure_costs` found: metric rows and the per-round timing samples."""

    rows: pd.DataFrame
    samples: pd.DataFrame


def _sharing_weights(model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` whose parameters and buffers are the model's own tensors.

    Each contestant needs its own modules (a strategy's hooks must not fire in another's
    calls), but separate copies of the weights would put them at different addresses, and
    memory placement alone moves a forward's latency by several per cent, for the whole run.
    """
    memo = {id(t): t for t in (*model.parameters(), *model.buffers())}
    return copy.deepcopy(model, memo)


def contestant_call(name: str, model: nn.Module, *, layers: Sequence[str], tracer_kwargs: Mapping[str, Any] | None = None,
                    ) -> tuple[Callable[[torch.Tensor], Any], Callable[[], None]]:
    """What is timed for ``name`` (:data:`FORWARD`, :data:`FLOOR` or a strategy), on a deep
    copy of ``model`` (sharing its weights), and how to close it. Raises :class:`~strategies.Unsupported` as the strategy does."""
    target = _sharing_weights(model)
    if name == FORWARD:
        return target, lambda: None
    if name == FLOOR:
        return Floor(target, layers=layers), lambda: None
    if name == ORACLE:
        wanted = [str(layer) for layer in layers]
        return (lambda x: record(target, x, wanted=wanted, tracer_kwargs=tracer_kwargs).values), lambda: None
    extractor = get_strategy(name).attach(target, layers=list(layers), tracer_kwargs=tracer_kwargs)
    return extractor, extractor.close


def synchronised_clock() -> float:
    """torch's accelerator-synchronising clock, from ``torch.utils.benchmark``; imported on first
    use because importing it logs a warning on machines without CUDA, whatever the command."""
    from torch.utils.benchmark.utils.timer import timer

    return timer()


def _build_strategy(name: str, model: nn.Module, layers: list[str], tracer_kwargs: Mapping[str, Any] | None) -> tuple[_Contestant, list[dict]]:
    """The strategy's extractor on a copy of ``model``, with its build_time and params_retained rows.

    Builds (attach, then close) are repeated and timed; the last one is kept.
    """
    strategy = get_strategy(name)
    target = _sharing_weights(model)
    seconds: list[float] = []
    while True:
        start = synchronised_clock()
        extractor = strategy.attach(target, layers=layers, tracer_kwargs=tracer_kwargs)
        seconds.append(synchronised_clock() - start)
        if len(seconds) >= _MAX_BUILDS or (len(seconds) >= _MIN_BUILDS and sum(seconds) >= _BUILD_SECONDS):
            break
        extractor.close()
    median, low, high = median_interval(seconds)
    rows = [
        _row(name, "build_time", median, low=low, high=high, rounds=len(seconds), detail="attach, median over builds"),
        {**_params_retained(extractor.module, target), "strategy": name},
    ]
    return _Contestant(name, extractor, close=extractor.close), rows


def _warm(contestant: _Contestant, x: torch.Tensor) -> None:
    """Warm-up calls, then the calls per timed block that make it last ``_BLOCK_SECONDS``."""
    for _ in range(_WARMUP_CALLS):
        contestant.call(x)
    seconds = timeit.Timer(lambda: contestant.call(x), timer=synchronised_clock).timeit(1)
    contestant.calls_per_block = max(1, math.ceil(_BLOCK_SECONDS / max(seconds, 1e-9)))


def _precise(samples: dict[str, list[float]], strategies: Sequence[str], precision: float) -> bool:
    return all(
        _relative_halfwidth(_ratios(samples[name], samples[reference])) <= precision
        for name in strategies for reference in (FORWARD, FLOOR)
    )


def _time_rounds(contestants: list[_Contestant], x: torch.Tensor, *, max_time: float, precision: float, min_rounds: int,
                 max_rounds: int) -> dict[str, list[float]]:
    """Seconds per call of each contestant, one value per interleaved round."""
    timers = {c.name: timeit.Timer("call(x)", globals={"call": c.call, "x": x}, timer=synchronised_clock) for c in contestants}
    samples: dict[str, list[float]] = {c.name: [] for c in contestants}
    strategies = [c.name for c in contestants if c.name not in (FORWARD, FLOOR)]
    started = time.monotonic()
    for round_ in range(max_rounds):
        shift = round_ % len(contestants)
        for contestant in contestants[shift:] + contestants[:shift]:
            samples[contestant.name].append(timers[contestant.name].timeit(contestant.calls_per_block) / contestant.calls_per_block)
        if round_ + 1 >= min_rounds and (time.monotonic() - started > max_time or _precise(samples, strategies, precision)):
            break
    return samples


def measure_costs(
    model: nn.Module,
    *,
    layers: Sequence[str],
    strategies: Sequence[str],
    input_shape: Sequence[int] = (2, 3, 224, 224),
    device: str = "cpu",
    seed: int = 0,
    threads: int | None = None,
    max_time: float = 30.0,
    precision: float = 0.01,
    min_rounds: int = 8,
    max_rounds: int = 1000,
    tracer_kwargs: Mapping[str, Any] | None = None,
    log: Callable[[str], None] | None = None,
) -> BenchCosts:
    """Latency, overhead, floor_ratio, rank, build_time and memory of each strategy on one request.

    The caller's model is not touched: the forward, the floor and every strategy run on
    deep copies. A strategy that cannot express the request, fails to build or fails to
    run gets rows with status ``unsupported`` or ``error`` and a reason; the others go on.
    """
    from torch.utils.benchmark.utils.common import set_torch_threads

    log = log or (lambda message: None)
    layers = list(layers)
    threads = threads or torch.get_num_threads()
    dev = torch.device(device)
    model = copy.deepcopy(model).eval().to(dev)
    x = torch.randn(*input_shape, generator=torch.Generator().manual_seed(seed)).to(dev)
    probe = _MemoryProbe(dev)
    rows: list[dict] = []
    contestants = [_Contestant(FORWARD, model), *(_Contestant(name, contestant_call(name, model, layers=layers, tracer_kwargs=tracer_kwargs)[0])
                                                 for name in (FLOOR, ORACLE))]
    built: list[_Contestant] = []
    with set_torch_threads(threads), torch.no_grad(), _frozen_garbage_collector():
        _warm(contestants[0], x)
        for name in strategies:
            log(f"building {name}")
            try:
                contestant, build_rows = _build_strategy(name, model, layers, tracer_kwargs)
            except (Unsupported, StrategyUnavailable) as exc:
                rows += _failed_rows(name, STRATEGY_METRICS, "unsupported", str(exc))
                continue
            except Exception as exc:
                rows += _failed_rows(name, STRATEGY_METRICS, "error", f"build_failed: {type(exc).__name__}: {exc}")
                continue
            try:  # the first call of a fresh extractor: what it keeps once the features are dropped
                _, retained = probe.measure(lambda: contestant.call(x)) if probe.method else (0, math.nan)
                _warm(contestant, x)
            except Exception as exc:
                contestant.close()
                rows += _failed_rows(name, STRATEGY_METRICS, "error", f"call_failed: {type(exc).__name__}: {exc}")
                continue
            rows += build_rows
            rows.append(_memory_row(name, "retained_memory", retained, probe, detail="first call of a fresh extractor, features dropped"))
            built.append(contestant)
        for reference in contestants[1:]:
            _warm(reference, x)
        contestants += built
        log(f"timing {len(contestants)} contestants in interleaved rounds (up to {max_time:g} s)")
        with timing_lock(on_wait=log):
            samples = _time_rounds(contestants, x, max_time=max_time, precision=precision, min_rounds=min_rounds, max_rounds=max_rounds)
        rows += summarise_timing(samples)
        log("measuring memory")
        for contestant in contestants:
            measured = [probe.measure(lambda: contestant.call(x)) for _ in range(_MEMORY_CALLS)] if probe.method else []
            peak = statistics.median(p for p, _ in measured) if measured else math.nan
            rows.append(_memory_row(contestant.name, "peak_memory", peak, probe, detail=f"median of {len(measured)} calls above the memory in use before each"))
            if contestant.name in REFERENCES:
                retained = statistics.median(r for _, r in measured) if measured else math.nan
                rows.append(_memory_row(contestant.name, "retained_memory", retained, probe, detail="steady state, output dropped"))
            contestant.close()
    for row in rows:
        row["threads"] = threads
    calls = {c.name: c.calls_per_block for c in contestants}
    samples_frame = pd.DataFrame(
        [{"strategy": name, "round": index, "seconds": value, "calls": calls[name]}
         for name, values in samples.items() for index, value in enumerate(values)]
    )
    return BenchCosts(rows=pd.DataFrame(rows), samples=samples_frame)


@contextlib.contextmanager
def _frozen_garbage_collector() -> Iterator[None]:
    """Leave the objects that exist now out of garbage collection, so that the collections
    before each memory measurement take milliseconds instead of a scan of every object."""
    gc.collect()
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


def _memory_row(strategy: str, metric: str, value: float, probe: _MemoryProbe, *, detail: str) -> dict:
    if not probe.method:
        return _row(strategy, metric, math.nan, status="skipped", detail="no memory probe on this platform: needs CUDA or Linux /proc")
    return _row(strategy, metric, value, method=probe.method, detail=detail)


@dataclass
class BenchConfig:
    """What to bench: each model with each layer request, every strategy."""

    models: list[ModelSpec]
    requests: list[list[str]]
    strategies: list[str]
    device: str = "cpu"
    seed: int = 0
    threads: int = 1
    max_time: float = 30.0
    precision: float = 0.01


def bench(config: BenchConfig, *, writer: BenchWriter, log: Callable[[str], None]) -> None:
    """Measure every (model, layer request) and write its rows as soon as it is done.

    A model that cannot be built or run, or lacks a requested layer, gives rows saying why
    (with a single model, a missing layer is the user's error and raises).
    """
    for spec in config.models:
        try:
            model = build_model(spec=spec, seed=config.seed)
        except ConformanceError:
            raise
        except Exception as exc:
            _write_failure(writer, spec, ["?"], f"model_build_failed: {type(exc).__name__}: {exc}")
            continue
        resolved = []
        for request in config.requests:  # every request first, so that a bad one stops the bench before any timing
            try:
                resolved.append(resolve_layers(model, spec, request))
            except ConformanceError as exc:
                if len(config.models) == 1:
                    raise
                _write_failure(writer, spec, request, f"no_such_layer: {exc}".replace("\n", "; "), status="skipped")
        for layers in resolved:
            log(f"{spec.id} [{' '.join(layers)}]")
            try:
                costs = measure_costs(
                    model, layers=layers, strategies=config.strategies, input_shape=spec.input_shape, device=config.device,
                    seed=config.seed, threads=config.threads, max_time=config.max_time, precision=config.precision,
                    tracer_kwargs=spec.tracer_kwargs, log=lambda message: log(f"  {message}"),
                )
            except Exception as exc:  # the plain forward or the floor failed: nothing to compare with
                _write_failure(writer, spec, layers, f"forward_failed: {type(exc).__name__}: {exc}")
                continue
            writer.write_request(model=spec.id, family=spec.family, layers=layers, rows=costs.rows, samples=costs.samples)
        del model
        gc.collect()


def _write_failure(writer: BenchWriter, spec: ModelSpec, layers: Sequence[str], detail: str, *, status: str = "error") -> None:
    rows = pd.DataFrame([_row(FORWARD, "latency", math.nan, status=status, detail=detail)])
    writer.write_request(model=spec.id, family=spec.family, layers=layers, rows=rows, samples=pd.DataFrame())
