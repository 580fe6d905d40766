"""Where a run's models run: in this process, in local worker processes, or on Ray.

Every executor takes the same model tasks and gives back each model's units in the order
of the models, so :func:`conformance.running.schedule.run` writes the rows a serial run writes, one
unit at a time, whichever executor ran them. The work of one model (build, oracle, every
strategy's unit) is one task; remote tasks name the model by its reference and build it
where they run, with the run's seed and torch threads.

``--jobs N`` uses :class:`ProcessExecutor` (N processes on this machine, the cores shared out
as torch threads; ``--jobs auto``, the default, is one per core, at most one per model), ``--executor ray`` :class:`RayExecutor` (one Ray task per model, on a local
Ray instance or the cluster at ``--ray-address``; ``num_gpus=1`` per task for CUDA runs).
The workers of a run with a strategy that refuses multiprocessing children (TorchLens) are
interpreters of their own (:class:`FreshInterpreters`), as Ray's are.
"""

from __future__ import annotations

import concurrent.futures
import os
import pickle
import signal
import subprocess
import sys
import threading
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Protocol, Sequence

from conformance.core.allocator import one_models_memory, reuse_freed_memory
from conformance.core.errors import ConformanceError
from conformance.running.workers import WORKER_MODULES, start_worker_server, worker_context
from conformance.zoo.specs import ModelSpec

if TYPE_CHECKING:
    from conformance.judging.context import CheckResult
    from conformance.running.runner import RunConfig
    from conformance.core.timing import Timings

__all__ = [
    "EXECUTORS", "WORKER_MODULES", "Executor", "FreshInterpreters", "ModelTask", "main_process_only", "ProcessExecutor", "RayExecutor",
    "SerialExecutor", "make_executor", "serve_payloads", "start_worker_server", "worker_context",
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

    def close(self, *, at_once: bool = False) -> None:
        """End the workers: after their running models (``at_once``: now, on Ctrl-C)."""
        ...


class SerialExecutor:
    """Every model in this process, one after the other; its units are yielded as the model finishes."""

    def run_models(self, tasks: Sequence[ModelTask], *, config: RunConfig, timings: Timings) -> Iterator[tuple[ModelTask, str, list[CheckResult]]]:
        from conformance.running.runner import model_units

        for task in tasks:
            before = timings.snapshot()
            with one_models_memory():
                for strategy_name, results in model_units(task.spec, list(task.strategies), config, timings):
                    yield task, strategy_name, results
            after = timings.snapshot()
            timings.add_model(task.spec.id, {name: seconds - before.get(name, 0.0) for name, seconds in after.items()})

    def close(self, *, at_once: bool = False) -> None:
        pass


def main_process_only(strategy_name: str) -> str:
    """Why ``strategy_name`` must run in the main process of an interpreter, no multiprocessing
    child (:attr:`Strategy.main_process_only`), or ``""``; a strategy whose package is missing
    runs anywhere (its rows say it is unavailable)."""
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
    from conformance.running.runner import make_deterministic, model_units
    from conformance.core.timing import Timings
    from conformance.zoo.specs import resolve_model

    make_deterministic(seed=payload.config.seed, threads=payload.threads)
    timings = Timings()
    with one_models_memory():
        try:
            with timings.phase("model_build"):
                spec = resolve_model(payload.reference, input_shape=payload.input_shape)
            units = list(model_units(spec, list(payload.strategies), payload.config, timings, strict_layers=payload.strict_layers))
        except ConformanceError as exc:  # bad input ends the run, as it does in a serial run
            return {"error": str(exc)}
    return {"units": units, "seconds": timings.worker_seconds(), "strategy_seconds": dict(timings.by_strategy)}


class _PoolExecutor:
    """Submits one payload per model up front and yields the outcomes in task order."""

    def __init__(
        self, *, threads: int, submit: Callable[[_Payload], Any], outcome: Callable[[Any], dict[str, Any]],
        alone: Callable[[_Payload], dict[str, Any]] | None = None,
    ) -> None:
        self.threads = threads
        self._submit = submit
        self._outcome = outcome
        self._alone = alone  # runs a payload again by itself, where one dead worker fails the others' results too

    def run_models(self, tasks: Sequence[ModelTask], *, config: RunConfig, timings: Timings) -> Iterator[tuple[ModelTask, str, list[CheckResult]]]:
        from conformance.running.runner import crashed_units

        portable = replace(config, models=[])
        strict = len(config.models) == 1
        payloads = [_Payload(_portable_reference(task.spec), task.spec.input_shape, task.strategies, portable, self.threads, strict) for task in tasks]
        handles = [self._submit(payload) for payload in payloads]
        for task, payload, handle in zip(tasks, payloads, handles):
            try:
                outcome = self._outcome(handle)
            except Exception as exc:  # the worker died (out of memory, a crash in native code)
                outcome = self._again_alone(payload)
                if outcome is None:
                    outcome = {"units": crashed_units(list(task.strategies), config, f"{type(exc).__name__}: {exc}"), "seconds": {}}
            if "error" in outcome:
                raise ConformanceError(outcome["error"])
            timings.add_worker(outcome["seconds"], outcome.get("strategy_seconds", {}))
            timings.add_model(task.spec.id, outcome["seconds"])
            for strategy_name, results in outcome["units"]:
                yield task, strategy_name, results

    def _again_alone(self, payload: _Payload) -> dict[str, Any] | None:
        """The outcome of the payload run by itself, or None where it kills its worker again."""
        if self._alone is None:
            return None
        try:
            return self._alone(payload)
        except Exception:
            return None


class FreshInterpreters:
    """Worker processes that are interpreters of their own (``python -c``), not multiprocessing
    children: a package that refuses to capture in a child (TorchLens) runs in them, as in Ray's
    workers. Each pool thread keeps one worker, sends it a payload on its stdin and reads the
    outcome from its stdout (:func:`serve_payloads`); each worker imports torch itself."""

    def __init__(self, *, workers: int) -> None:
        self._threads = concurrent.futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="fresh-interpreter")
        self._mine = threading.local()
        self._started: list[subprocess.Popen] = []
        self._lock = threading.Lock()

    def submit(self, payload: _Payload) -> concurrent.futures.Future:
        return self._threads.submit(self._run, payload)

    def _run(self, payload: _Payload) -> dict[str, Any]:
        worker = getattr(self._mine, "worker", None)
        if worker is None:
            worker = self._mine.worker = self._start()
        try:
            pickle.dump(payload, worker.stdin)
            worker.stdin.flush()
            outcome = pickle.load(worker.stdout)
        except (EOFError, OSError, pickle.UnpicklingError):
            self._mine.worker = None
            worker.kill()
            raise ChildProcessError(f"the worker process exited (code {worker.wait()}) while running {payload.reference}") from None
        if "raised" in outcome:
            raise RuntimeError(outcome["raised"])
        return outcome

    def _start(self) -> subprocess.Popen:
        # the run's import path, so that the worker finds what this process finds (a model module beside the run)
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(path for path in sys.path if path)}
        worker = subprocess.Popen([sys.executable, "-c", "from conformance.running.executors import serve_payloads; serve_payloads()"],
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env)
        with self._lock:
            self._started.append(worker)
        return worker

    def shutdown(self, *, at_once: bool = False) -> None:
        """Cancel the payloads not started, wait for the running ones (``at_once``: end them), then
        end every worker."""
        if at_once:
            for worker in self._started:
                worker.kill()
        self._threads.shutdown(cancel_futures=True)
        for worker in self._started:
            worker.stdin.close()  # the worker's loop ends at the end of its input
            try:
                worker.wait(timeout=30)
            except subprocess.TimeoutExpired:
                worker.kill()
                worker.wait()
            worker.stdout.close()


def _start_worker() -> None:
    """A worker's set-up: Ctrl-C, which the terminal sends to every process of the run, is the
    driver's to answer (it writes the finished units and ends the workers), and freed memory is
    kept for the next model copy."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    reuse_freed_memory()


def serve_payloads() -> None:
    """A :class:`FreshInterpreters` worker: run each payload read from stdin, write its outcome
    to stdout, until stdin ends. Whatever the models and packages print goes to stderr."""
    requests, replies = os.fdopen(os.dup(0), "rb"), os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    with open(os.devnull, "rb") as nothing:
        os.dup2(nothing.fileno(), 0)
    _start_worker()
    while True:
        try:
            payload = pickle.load(requests)
        except EOFError:
            return
        try:
            outcome = run_payload(payload)
        except Exception as exc:  # a failure outside the cells, as a pool's worker hands it back
            outcome = {"raised": f"{type(exc).__name__}: {exc}"}
        pickle.dump(outcome, replies)
        replies.flush()


class ProcessExecutor(_PoolExecutor):
    """``--jobs N``: N worker processes on this machine (:func:`worker_context`: each starts
    clean), whose allocator keeps freed memory for the next model copy (``allocator.py``).

    With ``fresh_interpreters`` (a run with a strategy that refuses multiprocessing children,
    :func:`main_process_only`: TorchLens) the workers are :class:`FreshInterpreters` instead.

    A worker that dies fails the model it ran (in a pool of forked workers, every model still
    in it); each of those runs again alone in a fresh process, so only the model that kills its
    worker is rows of ``worker_crashed``.
    """

    def __init__(self, *, jobs: int, threads: int, fresh_interpreters: bool = False) -> None:
        self.fresh_interpreters = fresh_interpreters
        self.pool = self._pool(jobs)
        super().__init__(threads=threads, submit=lambda payload: self.pool.submit(payload),
                         outcome=lambda future: future.result(), alone=self._run_alone)

    def _pool(self, workers: int) -> FreshInterpreters | _ForkedPool:
        return FreshInterpreters(workers=workers) if self.fresh_interpreters else _ForkedPool(workers=workers)

    def _run_alone(self, payload: _Payload) -> dict[str, Any]:
        pool = self._pool(1)
        try:
            return pool.submit(payload).result()
        finally:
            pool.shutdown()

    def close(self, *, at_once: bool = False) -> None:
        self.pool.shutdown(at_once=at_once)


class _ForkedPool:
    """Workers forked from the fork server (:func:`worker_context`), payloads run with :func:`run_payload`."""

    def __init__(self, *, workers: int) -> None:
        self._pool = concurrent.futures.ProcessPoolExecutor(max_workers=workers, mp_context=worker_context(), initializer=_start_worker)

    def submit(self, payload: _Payload) -> concurrent.futures.Future:
        return self._pool.submit(run_payload, payload)

    def shutdown(self, *, at_once: bool = False) -> None:
        if at_once:  # ProcessPoolExecutor has no public way to end running work before Python 3.14
            for process in list((getattr(self._pool, "_processes", None) or {}).values()):
                process.kill()
        self._pool.shutdown(cancel_futures=True)


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

    def close(self, *, at_once: bool = False) -> None:
        if self.started_here:
            self.ray.shutdown()


def make_executor(
    *, name: str, jobs: int, threads: int, device: str, ray_address: str | None, fresh_interpreters: bool = False,
) -> SerialExecutor | ProcessExecutor | RayExecutor:
    """The executor for ``--executor``/``--jobs``; ``threads`` is the torch threads of each task;
    ``fresh_interpreters``: local workers that are no multiprocessing children (:class:`FreshInterpreters`)."""
    if name not in EXECUTORS:
        raise ConformanceError(f"unknown executor {name!r}", hint=f"choose one of {', '.join(EXECUTORS)}")
    if ray_address and name != "ray":
        raise ConformanceError("--ray-address needs --executor ray", hint=f"conformance run --executor ray --ray-address {ray_address}")
    if name == "ray":
        return RayExecutor(threads=threads, address=ray_address, gpus=1 if device.startswith("cuda") else 0)
    if name == "processes" or jobs > 1:
        return ProcessExecutor(jobs=max(jobs, 1), threads=threads, fresh_interpreters=fresh_interpreters)
    return SerialExecutor()
