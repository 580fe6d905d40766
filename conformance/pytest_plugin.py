"""pytest plugin: the ``[tool.conformance]`` of a project as ordinary pytest items.

Registered through the ``pytest11`` entry point. When the rootdir's ``pyproject.toml`` has a
``[tool.conformance]`` table (``conformance/config.py``), a plain ``pytest`` run collects it
beside the project's tests, one item per (model, strategy, layer, check)::

    pyproject.toml::torchvision:resnet18::hooks::values[bn1]
    pyproject.toml::torchvision:resnet18::hooks::model_untouched

so ``-k "hooks and bn1"``, ``-x``, ``--lf``, ``-n auto`` and ``--junitxml`` work as usual.
``pytest tests/`` runs the project's tests only; ``pytest pyproject.toml`` the conformance items
only. A failing item shows its row (status, diagnosis, detail, error) and the ``conformance run``
command that reproduces it. An accepted failure is ``xfail`` with its diagnosis; one that passes
fails (strict), as does one that fails with another diagnosis. With ``baseline`` set, a cell
that regressed against it (``conformance diff``'s rules: status, drift) fails too.

A (model, strategy) unit runs once per process, when its first item runs; torch's global
settings are left as the project has them. ``-p no:conformance`` turns the plugin off.
"""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

import pytest

from conformance.config import Accepted, ConformanceConfig, load_config
from conformance.core.errors import ConformanceError

if TYPE_CHECKING:  # torch and pandas are imported when the items run, not at every pytest start
    import pandas as pd

    from conformance.judging.context import CheckResult

ALL_LAYERS = "*"  # conformance.judging.context.ALL_LAYERS: the layer of a request-wide row

__all__ = ["ConformanceFailure"]

_CONFIG = pytest.StashKey[ConformanceConfig]()
_UNITS = pytest.StashKey["_Units"]()


class ConformanceFailure(Exception):
    """A cell that is not the truth, or not what the project accepted."""


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("conformance", "feature-extraction conformance")
    group.addoption("--conformance-config", default=None, metavar="PYPROJECT",
                    help="the pyproject.toml whose [tool.conformance] becomes test items (default: the rootdir's)")


def pytest_configure(config: pytest.Config) -> None:
    path = Path(config.getoption("conformance_config") or config.rootpath / "pyproject.toml").resolve()
    try:
        conformance = load_config(path)
    except ConformanceError as exc:
        raise pytest.UsageError(str(exc)) from None
    if conformance.path is None:
        return
    config.stash[_CONFIG] = conformance
    config.addinivalue_line("markers", "conformance: an item of the feature-conformance plugin")
    # the items carry it for `--dist loadgroup`; registered here too, for --strict-markers without pytest-xdist
    config.addinivalue_line("markers", "xdist_group(name): run the items of one group in one pytest-xdist worker")
    if config.args_source != pytest.Config.ArgsSource.ARGS and not any(_covers(arg, path) for arg in config.args):
        config.args.append(str(path))  # a plain `pytest` collects the configuration too


def _covers(arg: str, path: Path) -> bool:
    target = Path(arg.split("::")[0]).resolve()
    return target == path or target in path.parents


def pytest_collect_file(file_path: Path, parent: pytest.Collector) -> pytest.Collector | None:
    conformance = parent.config.stash.get(_CONFIG, None)
    if conformance is not None and file_path.resolve() == conformance.path:
        return ConformanceFile.from_parent(parent, path=file_path)
    return None


class ConformanceFile(pytest.File):
    """The ``[tool.conformance]`` table: one collector per model."""

    def collect(self) -> Iterator[pytest.Collector]:
        from conformance.cli import run_arguments, run_config

        conformance = self.config.stash[_CONFIG]
        try:
            run, references = run_config(run_arguments(conformance.options))
        except ConformanceError as exc:
            raise self.CollectError(f"[tool.conformance] of {conformance.path}: {exc}") from None
        baseline = None
        if conformance.baseline is not None:
            from conformance.evidence.diff import load_side

            try:
                baseline = load_side(conformance.baseline).results
            except ConformanceError as exc:
                raise self.CollectError(f"baseline of [tool.conformance]: {exc}") from None
        self.config.stash[_UNITS] = _Units(run)
        for spec, reference in zip(run.models, references):
            yield ModelCollector.from_parent(self, name=reference, spec=spec, run=run, baseline=baseline)


class ModelCollector(pytest.Collector):
    """One model: its layers resolved as ``conformance run`` resolves them, one collector per strategy."""

    def __init__(self, *, spec: Any, run: Any, baseline: pd.DataFrame | None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.spec, self.run, self.baseline = spec, run, baseline

    def collect(self) -> Iterator[pytest.Collector]:
        from conformance.truth.layers import resolve_layers
        from conformance.zoo.specs import build_model

        try:
            layers = [str(layer) for layer in resolve_layers(build_model(spec=self.spec, seed=self.run.seed), self.spec, self.run.layers)]
        except Exception as exc:  # a model that cannot be built or has no such layer: its collection error, not the session's
            raise self.CollectError(f"{self.name}: {type(exc).__name__}: {exc}") from None
        for strategy in self.run.strategies:
            yield StrategyCollector.from_parent(self, name=strategy, layers=layers)


class StrategyCollector(pytest.Collector):
    """One (model, strategy) unit: one item per (layer, check)."""

    def __init__(self, *, layers: list[str], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.layers = layers

    def collect(self) -> Iterator[pytest.Item]:
        from conformance.judging.profiles import PER_LAYER_CHECKS

        model: ModelCollector = self.parent
        for check in model.run.checks:
            for layer in (self.layers if check in PER_LAYER_CHECKS else [ALL_LAYERS]):
                name = f"{check}[{layer}]" if layer != ALL_LAYERS else check
                item = ConformanceItem.from_parent(self, name=name, check=check, layer=layer)
                item.add_marker(pytest.mark.conformance)
                item.add_marker(pytest.mark.xdist_group(model.name))  # `--dist loadgroup` runs a model's units in one worker
                yield item


class ConformanceItem(pytest.Item):
    """One cell: (model, strategy, layer, check)."""

    def __init__(self, *, check: str, layer: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.check, self.layer = check, layer
        self.row: CheckResult | None = None

    @property
    def model(self) -> str:
        return self.parent.parent.name

    @property
    def strategy(self) -> str:
        return self.parent.name

    def runtest(self) -> None:
        model: ModelCollector = self.parent.parent
        rows = self.config.stash[_UNITS].rows(model.spec, self.strategy)
        self.row = _row_for(rows, layer=self.layer, check=self.check)
        conformance = self.config.stash[_CONFIG]
        accepted = conformance.accepted_for(model=self.model, strategy=self.strategy, layer=self.layer, check=self.check)
        row = self.row
        if accepted is not None:
            self._judge_accepted(accepted, row)
        if row.status in ("fail", "error"):
            raise ConformanceFailure(f"{row.status}: {row.diagnosis}".rstrip(": "))
        regressions = _regressions(model.baseline, self, row)
        if regressions:
            raise ConformanceFailure("regressed against the baseline: " + "; ".join(regressions))
        if row.status != "pass":
            pytest.skip(": ".join(part for part in (row.status, row.diagnosis, row.detail) if part)[:300])

    def _judge_accepted(self, accepted: Accepted, row: CheckResult) -> None:
        where = f"accepted in [tool.conformance] as {accepted.diagnosis}"
        if row.status == "pass":
            raise ConformanceFailure(f"[XPASS(strict)] {where}, and it passes now: remove the accept entry")
        if row.diagnosis == accepted.diagnosis:
            pytest.xfail(f"{accepted.diagnosis}: {row.detail}"[:300] + (f" ({accepted.reason})" if accepted.reason else ""))
        raise ConformanceFailure(f"{where}, but it is {row.status}: {row.diagnosis or 'no diagnosis'}")

    def repr_failure(self, excinfo: pytest.ExceptionInfo[BaseException], style: Any = None) -> str:
        if not isinstance(excinfo.value, ConformanceFailure):
            return super().repr_failure(excinfo)
        return f"{excinfo.value}\n\n{_table(self)}\n\nreproduce: {reproduce_command(self)}"

    def reportinfo(self) -> tuple[Path, int | None, str]:
        return self.path, None, f"conformance {self.model} {self.strategy} {self.layer} {self.check}"


class _Units:
    """The rows of each (model, strategy) unit, computed when first asked for, once per process."""

    def __init__(self, run: Any) -> None:
        self.run = run
        self.rows_by_unit: dict[tuple[str, str], list[CheckResult]] = {}
        self.pending: dict[str, Iterator[tuple[str, list[CheckResult]]]] = {}

    def rows(self, spec: Any, strategy: str) -> list[CheckResult]:
        from conformance.running.runner import model_units
        from conformance.core.timing import Timings

        key = (spec.id, strategy)
        if spec.id not in self.pending and key not in self.rows_by_unit:
            self.pending[spec.id] = model_units(spec, list(self.run.strategies), self.run, Timings())
        while key not in self.rows_by_unit and spec.id in self.pending:
            try:
                name, rows = next(self.pending[spec.id])
            except StopIteration:
                del self.pending[spec.id]
                break
            self.rows_by_unit[(spec.id, name)] = rows
        return self.rows_by_unit.get(key, [])  # none: the item reports that the run wrote no row


def _row_for(rows: list[CheckResult], *, layer: str, check: str) -> CheckResult:
    """The cell's row: its own, else the request-wide row of the check (a unit that failed as
    a whole), else the worst of the check's rows."""
    from conformance.judging.context import CheckResult

    for wanted in (layer, ALL_LAYERS):
        found = [row for row in rows if row.check == check and row.layer == wanted]
        if found:
            return found[0]
    found = [row for row in rows if row.check == check]
    if not found:
        return CheckResult(check, layer, "error", "no_row", "the run wrote no row for this cell")
    order = ("error", "fail", "unsupported", "skipped", "pass")
    return min(found, key=lambda row: order.index(row.status) if row.status in order else 0)


def _regressions(baseline: pd.DataFrame | None, item: ConformanceItem, row: CheckResult) -> list[str]:
    if baseline is None:
        return []
    import pandas as pd

    from conformance.evidence.diff import Side, diff

    cell = {"model": item.model, "strategy": item.strategy, "layer": item.layer, "check": item.check}
    base = baseline[(baseline["model"] == item.model) & (baseline["strategy"] == item.strategy)
                    & (baseline["layer"] == item.layer) & (baseline["check"] == item.check)]
    if base.empty:
        return []
    new = pd.DataFrame([{**cell, "family": base["family"].iloc[0], "status": row.status, "diagnosis": row.diagnosis,
                         "detail": row.detail, "max_abs_err": row.max_abs_err, "scale": row.scale}], columns=base.columns)
    found = diff(Side(base, pd.DataFrame(), {}), Side(new, pd.DataFrame(), {})).regressions
    return [f"{change.kind}: {change.base} -> {change.new} ({change.detail})" for change in found.itertuples()]


def _table(item: ConformanceItem) -> str:
    row = item.row
    fields = {"model": item.model, "strategy": item.strategy, "layer": item.layer, "check": item.check,
              "status": row.status, "diagnosis": row.diagnosis or "-", "detail": row.detail or "-"}
    if row.max_abs_err is not None:
        fields["max abs err"] = f"{row.max_abs_err:.3g}" + (f" (scale {row.scale:.3g})" if row.scale else "")
    width = max(map(len, fields))
    return "\n".join(f"  {key:<{width}}  {value}" for key, value in fields.items())


def reproduce_command(item: ConformanceItem) -> str:
    """The ``conformance run`` command that gives this cell's row."""
    run = item.config.stash[_UNITS].run
    layers = [item.layer] if item.layer != ALL_LAYERS else run.layers
    words = ["conformance", "run", "--model", item.model, "--strategies", item.strategy, "--layers", *layers, "--checks", item.check]
    spec = item.parent.parent.spec
    words += ["--input-shape", ",".join(map(str, spec.input_shape)), "--seed", str(run.seed), "--device", run.device]
    return shlex.join(words)
