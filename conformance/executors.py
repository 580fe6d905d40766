"""Where a run's models run: in this process, in local worker processes, or on Ray.

Every executor takes the same model tasks and gives back each model's units in the order
of the models, so :func:`conformance.runner.run` writes the rows a serial run writes, one
unit at a time, whichever executor ran them. The work of one model (build, oracle, every
strategy's unit) is one task; remote tasks name the model by its reference and build it
where they run, with the run's seed and torch threads.

``--jobs N`` uses :class:`ProcessExecutor` (N processes on this machine, the cores shared out
as torch threads; ``--jobs auto``, the default, is one per core, at most one per model), ``--executor ray`` :class:`RayExecutor` (one Ray task per model, on a local
Ray instance or the cluster at ``--ray-address``; ``num_gpus=1`` per task for CUDA runs).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import multiprocessing
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Protocol, Sequence

from .allocator import release_freed_memory, reuse_freed_memory
from .errors import ConformanceError
from .zoo import ModelSpec

if TYPE_CHECKING:
    from .checks import CheckResult
    from .runner import RunConfig
    from .timing import Timings

__all__ = [
    "EXECUTORS", "WORKER_MODULES", "Executor", "ModelTask", "main_process_only", "ProcessExecutor", "RayExecutor", "SerialExecutor", "make_executor",
    "start_worker_server", "worker_context",
]

EXECUTORS = ("serial", "processes", "ray")

@dataclass(frozen=True)
class ModelTask:
    """One model of a run and the strategies still to run on it."""

    spec: ModelSpec
    strategies: tuple[str, ...]


class Executor(Protocol):
    """Runs model tasks; yields ``(task, strategy, rows)`` in task order, unit by unit."""

    def run_models(self, tasks: Sequence[ModelTask], *, config: RunConfig, timings: Timings) -> Iterator[tuple[ModelTask, str, list[CheckResult]]]: ...

    def close(self) -> None: ...


class SerialExecutor:
    """Every model in this process, one after the other; each unit is yielded as it finishes."""

    def run_models(self, tasks: Sequence[ModelTask], *, config: RunConfig, timings: Timings) -> Iterator[tuple[ModelTask, str, list[CheckResult]]]:
        for task in tasks:
            for strategy_name, results in _units_here(task.spec, task.strategies, config, timings):
                yield task, strategy_name, results

    def close(self) -> None:
        pass


def _units_here(spec: ModelSpec, strategies: Sequence[str], config: RunConfig, timings: Timings) -> Iterator[tuple[str, list[CheckResult]]]:
    """One model's units run in this process, its phases charged to the model."""
    from .runner import model_units

    before = timings.snapshot()
    yield from model_units(spec, list(strategies), config, timings)
    release_freed_memory()
    after = timings.snapshot()
    timings.add_model(spec.id, {name: seconds - before.get(name, 0.0) for name, seconds in after.items()})


def main_process_only(strategy_name: str) -> str:
    """Why ``strategy_name`` must run in the run's own process (:attr:`Strategy.main_process_only`),
    or ``""``; a strategy whose package is missing runs anywhere (its rows say it is unavailable)."""
    from strategies import StrategyUnavailable, get_strategy

    try:
        return get_strategy(strategy_name).main_process_only
    except (KeyError, StrategyUnavailable):
        return ""


def _portable_reference(spec: ModelSpec) -> str:
    """The reference another process resolves to the same model (a model file by its absolute path)."""
    if spec.source != "user":
        return spec.id
    location, sep, attribute = spec.name.rpartition(":")
    if not sep:
        raise ConformanceError(f"model {spec.name!r} exists only in this process", hint="run it without --jobs or --executor ray")
    return f"{Path(location).resolve()}:{attribute}" if location.endswith(".py") else spec.name


@dataclass(frozen=True)
class _Payload:
    """What a worker needs to run one model: plain data, picklable."""

    reference: str
    input_shape: tuple[int, ...]
    strategies: tuple[str, ...]
    config: Any  # RunConfig without models
    threads: int
    strict_layers: bool


def run_payload(payload: _Payload) -> dict[str, Any]:
    """Run one model in a worker: its units and the seconds of each phase."""
    from .runner import make_deterministic, model_units
    from .timing import Timings
    from .zoo import resolve_model

    make_deterministic(seed=payload.config.seed, threads=payload.threads)
    timings = Timings()
    try:
        with timings.phase("model_build"):
            spec = resolve_model(payload.reference, input_shape=payload.input_shape)
        units = list(model_units(spec, list(payload.strategies), payload.config, timings, strict_layers=payload.strict_layers))
    except ConformanceError as exc:  # bad input ends the run, as it does in a serial run
        return {"error": str(exc)}
    finally:
        release_freed_memory()
    return {"units": units, "seconds": timings.worker_seconds(), "strategy_seconds": dict(timings.by_strategy)}


class _PoolExecutor:
    """Submits one payload per model up front and yields the outcomes in task order.

    Units of the strategies ``here`` picks run in this process instead, while the workers run
    the rest, with the workers' torch threads; each model's units come out in the task's order.
    """

    def __init__(
        self, *, threads: int, submit: Callable[[_Payload], Any], outcome: Callable[[Any], dict[str, Any]],
        alone: Callable[[_Payload], dict[str, Any]] | None = None, here: Callable[[str], bool] = lambda strategy_name: False,
    ) -> None:
        self.threads = threads
        self._submit = submit
        self._outcome = outcome
        self._alone = alone  # runs a payload again by itself, where one dead worker fails the others' results too
        self._here = here

    def run_models(self, tasks: Sequence[ModelTask], *, config: RunConfig, timings: Timings) -> Iterator[tuple[ModelTask, str, list[CheckResult]]]:
        portable = replace(config, models=[])
        strict = len(config.models) == 1
        local = {name for name in dict.fromkeys(s for task in tasks for s in task.strategies) if self._here(name)}
        remote = [tuple(name for name in task.strategies if name not in local) for task in tasks]
        payloads = [_Payload(_portable_reference(task.spec), task.spec.input_shape, names, portable, self.threads, strict) if names else None
                    for task, names in zip(tasks, remote)]
        handles = [self._submit(payload) if payload else None for payload in payloads]
        for task, payload, handle in zip(tasks, payloads, handles):
            here = [name for name in task.strategies if name in local]
            with _torch_threads(self.threads):
                units = dict(_units_here(task.spec, here, config, timings)) if here else {}
            if payload is not None:
                units.update(self._worker_units(task, payload, handle, config, timings))
            for strategy_name in task.strategies:
                yield task, strategy_name, units[strategy_name]

    def _worker_units(self, task: ModelTask, payload: _Payload, handle: Any, config: RunConfig, timings: Timings) -> list[tuple[str, list[CheckResult]]]:
        """The units a worker ran for ``task``; a model whose worker died is run again alone first."""
        from .runner import crashed_units

        try:
            outcome = self._outcome(handle)
        except Exception as exc:  # the worker died (out of memory, a crash in native code)
            outcome = self._again_alone(payload)
            if outcome is None:
                outcome = {"units": crashed_units(list(payload.strategies), config, f"{type(exc).__name__}: {exc}"), "seconds": {}}
        if "error" in outcome:
            raise ConformanceError(outcome["error"])
        timings.add_worker(outcome["seconds"], outcome.get("strategy_seconds", {}))
        timings.add_model(task.spec.id, outcome["seconds"])
        return outcome["units"]

    def _again_alone(self, payload: _Payload) -> dict[str, Any] | None:
        """The outcome of the payload run by itself, or None where it kills its worker again."""
        if self._alone is None:
            return None
        try:
            return self._alone(payload)
        except Exception:
            return None


@contextlib.contextmanager
def _torch_threads(threads: int) -> Iterator[None]:
    """torch's intra-op threads set to ``threads`` inside, as they were after."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


#: What every worker imports: loaded once by the fork server the workers are forked from.
WORKER_MODULES = ("conformance.runner",)


def worker_context() -> multiprocessing.context.BaseContext:
    """Where worker processes come from: forked from a fork server, a process that imported
    :data:`WORKER_MODULES` and ran nothing else (no tensor op, no thread, no CUDA), so each
    worker starts clean without importing torch again; spawned where there is no fork server."""
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(list(WORKER_MODULES))
    return context


def start_worker_server() -> None:
    """Start the fork server now, so that it imports the runner while this process still
    resolves the models (seconds off every run in processes)."""
    if worker_context().get_start_method() == "forkserver":
        from multiprocessing import forkserver

        forkserver.ensure_running()


class ProcessExecutor(_PoolExecutor):
    """``--jobs N``: N worker processes on this machine (:func:`worker_context`: each starts
    clean), whose allocator keeps freed memory for the next model copy (``allocator.py``).

    A strategy whose package refuses to run in a child process (:func:`main_process_only`:
    TorchLens) has its units run in this process while the workers run the others.

    A worker that dies breaks the whole pool, failing every model still in it; each of
    those runs again alone in a fresh process, so only the model that kills its worker is
    rows of ``worker_crashed``.
    """

    def __init__(self, *, jobs: int, threads: int) -> None:
        self.pool = self._pool(jobs)
        super().__init__(threads=threads, submit=lambda payload: self.pool.submit(run_payload, payload),
                         outcome=lambda future: future.result(), alone=self._run_alone, here=lambda name: bool(main_process_only(name)))

    @staticmethod
    def _pool(workers: int) -> concurrent.futures.ProcessPoolExecutor:
        return concurrent.futures.ProcessPoolExecutor(max_workers=workers, mp_context=worker_context(), initializer=reuse_freed_memory)

    def _run_alone(self, payload: _Payload) -> dict[str, Any]:
        with self._pool(1) as pool:
            return pool.submit(run_payload, payload).result()

    def close(self) -> None:
        self.pool.shutdown(cancel_futures=True)


RAY_HINT = "pip install 'feature-conformance[ray]'"


class RayExecutor(_PoolExecutor):
    """``--executor ray``: one Ray task per model, ``num_cpus`` = the torch threads, and one GPU each on CUDA."""

    def __init__(self, *, threads: int, address: str | None, gpus: int) -> None:
        try:
            import ray
        except ImportError:
            raise ConformanceError("--executor ray needs Ray, which is not installed", hint=RAY_HINT) from None
        self.ray = ray
        self.started_here = not ray.is_initialized()
        if self.started_here:
            try:
                ray.init(address=address, include_dashboard=False, log_to_driver=False)
            except ConnectionError as exc:
                raise ConformanceError(f"cannot reach the Ray cluster at {address!r}: {exc}",
                                       hint="check --ray-address (ray://HOST:10001 or HOST:6379), or leave it out for a local Ray") from None
        remote = ray.remote(num_cpus=threads, num_gpus=gpus, max_retries=0)(run_payload)
        super().__init__(threads=threads, submit=remote.remote, outcome=ray.get)

    def close(self) -> None:
        if self.started_here:
            self.ray.shutdown()


def make_executor(*, name: str, jobs: int, threads: int, device: str, ray_address: str | None) -> SerialExecutor | ProcessExecutor | RayExecutor:
    """The executor for ``--executor``/``--jobs``; ``threads`` is the torch threads of each task."""
    if name not in EXECUTORS:
        raise ConformanceError(f"unknown executor {name!r}", hint=f"choose one of {', '.join(EXECUTORS)}")
    if ray_address and name != "ray":
        raise ConformanceError("--ray-address needs --executor ray", hint=f"conformance run --executor ray --ray-address {ray_address}")
    if name == "ray":
        return RayExecutor(threads=threads, address=ray_address, gpus=1 if device.startswith("cuda") else 0)
    if name == "processes" or jobs > 1:
        return ProcessExecutor(jobs=max(jobs, 1), threads=threads)
    return SerialExecutor()
