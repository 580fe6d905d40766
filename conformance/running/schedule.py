"""A whole run: every (model, strategy) unit not yet written, on an executor, its rows handed
to a writer (``evidence.results.ResultsWriter``) in model order, unit by unit."""

from __future__ import annotations

from typing import Any, Collection, Iterable, Protocol

from conformance.core.timing import Timings
from conformance.judging.context import CheckResult
from conformance.running.executors import Executor, ModelTask, SerialExecutor
from conformance.running.runner import RunConfig

__all__ = ["RowWriter", "run"]


class RowWriter(Protocol):
    """Where a run's rows go: the units already written, and one unit at a time."""

    done: Collection[tuple[str, str]]

    def write_unit(self, *, model: str, family: str, strategy: str, results: Iterable[CheckResult]) -> None: ...


def run(config: RunConfig, *, writer: RowWriter, timings: Timings, progress: Any = None, executor: Executor | None = None) -> None:
    """Run every (model, strategy) unit not already in ``writer`` on ``executor`` (default: in
    this process), timing the phases in ``timings``; rows are written in model order, unit by unit."""
    tasks = [
        ModelTask(spec, tuple(s for s in config.strategies if (spec.id, s) not in writer.done))
        for spec in config.models
    ]
    tasks = [task for task in tasks if task.strategies]
    for task, strategy_name, results in (executor or SerialExecutor()).run_models(tasks, config=config, timings=timings):
        writer.write_unit(model=task.spec.id, family=task.spec.family, strategy=strategy_name, results=results)
        if progress is not None:
            progress.update(1)
