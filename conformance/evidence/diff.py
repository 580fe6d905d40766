"""Baselines and diffs: what changed between two runs, and which changes are regressions.

A baseline is one JSON file holding a run's conformance rows, its bench rows and its
metadata. :func:`diff` compares two sides (baselines or run directories) cell by cell
(model, strategy, layer, check) and cost by cost (model, layers, strategy, metric):

* ``regressed``: pass became fail, error or unsupported; ``fixed``: the other way;
* ``new_failure``: a cell only in the new run, failing; ``only_in_base``/``only_in_new``;
* ``shape_or_dtype``: a ``shape`` or ``dtype`` cell changed status;
* ``diagnosis``: a cell kept its status but its diagnosis (the named cause) changed;
* ``drift``: the error in units of the feature's scale (``max_abs_err / scale``, the scale
  being the true value's RMS) grew by more than :data:`DRIFT_BOUND` (status unchanged);
* ``cost``: a metric named in ``--fail-on`` grew past its threshold, and, where the rows
  carry intervals, the intervals separate (a change inside the noise is no regression); costs
  from two different machines are listed but never counted, as the machine alone moves them.

Thresholds use pytest-benchmark's grammar: ``overhead:10%`` (relative) or
``peak_memory:1048576`` (absolute, in the metric's unit).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import pandas as pd

from conformance.core.environment import environment_changes
from conformance.core.errors import ConformanceError
from conformance.evidence.reports import markdown_table
from conformance.evidence.results import BENCH_CSV, RESULTS_CSV, _json_rows, load_bench, load_results, read_document, read_metadata, write_document

__all__ = ["Diff", "Threshold", "diff", "load_side", "markdown", "parse_fail_on", "plain_text", "save_baseline"]

BASELINE_FORMAT = "feature-conformance-baseline/1"
_CELL = ["model", "strategy", "layer", "check"]
_COST = ["model", "layers", "strategy", "metric"]
_RESULT_FIELDS = [*_CELL, "family", "status", "diagnosis", "detail", "max_abs_err", "scale"]
_BAD = ("fail", "error", "unsupported")
#: How much ``max_abs_err / scale`` may grow before it is drift. Between machines, float noise
#: moves single elements of a feature by up to 2.1e-5 of its RMS (ATen's scalar kernels against
#: AVX-512, the worst machine simulated in :mod:`.noise`); on the quick zoo's rows (``fast`` and
#: ``default`` checks, an AVX2 CPU on 1 thread) it moved ``max_abs_err / scale`` by at most
#: 2.5e-6 and changed no status and no diagnosis.
DRIFT_BOUND = 1e-4


@dataclass
class Side:
    """One side of a diff: conformance rows, bench rows and run metadata."""

    results: pd.DataFrame
    bench: pd.DataFrame
    metadata: dict


@dataclass(frozen=True)
class Threshold:
    metric: str
    limit: float
    relative: bool

    def exceeded(self, base: float, new: float) -> bool:
        return new - base > (abs(base) * self.limit if self.relative else self.limit)


@dataclass
class Diff:
    changes: pd.DataFrame  # kind, model, strategy, layer, check, base, new, detail, regression
    warnings: list[str]

    @property
    def regressions(self) -> pd.DataFrame:
        return self.changes[self.changes["regression"]]


def parse_fail_on(text: str) -> Threshold:
    """``metric:10%`` or ``metric:0.5`` (pytest-benchmark's ``--benchmark-compare-fail`` grammar)."""
    match = re.fullmatch(r"([a-z_]+):([0-9]*\.?[0-9]+)(%?)", text.strip())
    if not match:
        raise ConformanceError(f"cannot read --fail-on {text!r}", hint="write METRIC:PERCENT% or METRIC:AMOUNT, e.g. overhead:10% or peak_memory:1048576")
    metric, amount, percent = match.groups()
    from conformance.evidence.bench import METRIC_UNITS

    if metric not in METRIC_UNITS:
        raise ConformanceError(f"--fail-on names no bench metric {metric!r}", hint=f"choose from {', '.join(METRIC_UNITS)}")
    return Threshold(metric, float(amount) / 100 if percent else float(amount), bool(percent))


def save_baseline(*, source: Path, out: Path) -> int:
    """Write ``source``'s rows (conformance and bench) and metadata to one baseline file (gzip
    when its name ends in ``.gz``); return the row count."""
    side = load_side(source)
    document = {
        "format": BASELINE_FORMAT,
        "metadata": side.metadata,
        "results": _json_rows(side.results[[c for c in _RESULT_FIELDS if c in side.results]]) if not side.results.empty else [],
        "bench": _json_rows(side.bench) if not side.bench.empty else [],
    }
    write_document(out, document)
    return len(document["results"]) + len(document["bench"])


def load_side(path: str | Path) -> Side:
    """A baseline file (``.json`` or ``.json.gz``), or a directory written by ``run``/``bench``."""
    path = Path(path)
    if path.is_file() and path.suffix in (".json", ".gz"):
        try:
            document = read_document(path)
        except (OSError, ValueError) as exc:
            raise ConformanceError(f"{path} is not JSON ({exc})", hint="give a baseline file or a results directory") from None
        if document.get("format") == BASELINE_FORMAT:
            results = pd.DataFrame(document["results"], columns=_RESULT_FIELDS)
            for column in ("max_abs_err", "scale"):
                results[column] = pd.to_numeric(results[column], errors="coerce")
            return Side(results.fillna({"diagnosis": "", "detail": ""}), pd.DataFrame(document["bench"]), document.get("metadata", {}))
        path = path.parent
    if path.is_file():
        path = path.parent
    if not ((path / RESULTS_CSV).exists() or (path / BENCH_CSV).exists()):
        raise ConformanceError(f"no results or baseline at {path}", hint="give a baseline file ('conformance baseline save') or a run directory")
    results = load_results(path).reindex(columns=_RESULT_FIELDS) if (path / RESULTS_CSV).exists() else pd.DataFrame(columns=_RESULT_FIELDS)
    bench = load_bench(path)[0] if (path / BENCH_CSV).exists() else pd.DataFrame()
    documents = read_metadata(path)
    return Side(results, bench, documents[0][1] if documents else {})


def _change(kind: str, key: dict, base: str, new: str, detail: str, regression: bool) -> dict:
    return {"kind": kind, **key, "base": base, "new": new, "detail": detail, "regression": regression}


def _text(value: object) -> str:
    return "" if value is None or (isinstance(value, float) and math.isnan(value)) else str(value)


def _scaled_error(error: float, scale: float) -> float:
    return error / scale if scale else (0.0 if error == 0 else math.inf)


def _cell_changes(base: pd.DataFrame, new: pd.DataFrame) -> list[dict]:
    merged = base.merge(new, on=_CELL, how="outer", suffixes=("_base", "_new"), indicator="side")
    changes = []
    for row in merged.itertuples(index=False):
        cell = {"model": row.model, "strategy": row.strategy, "layer": row.layer, "check": row.check}
        if row.side == "left_only":
            changes.append(_change("only_in_base", cell, row.status_base, "", "", False))
            continue
        if row.side == "right_only":
            failing = row.status_new in ("fail", "error")
            changes.append(_change("new_failure" if failing else "only_in_new", cell, "", row.status_new, row.detail_new, failing))
            continue
        before, after = row.status_base, row.status_new
        errors = (row.max_abs_err_base, row.scale_base, row.max_abs_err_new, row.scale_new)
        if before != after and row.check in ("shape", "dtype"):
            changes.append(_change("shape_or_dtype", cell, before, after, row.detail_new or row.detail_base, after in _BAD))
        elif before == "pass" and after in _BAD:
            changes.append(_change("regressed", cell, before, after, f"{row.diagnosis_new} {row.detail_new}".strip(), True))
        elif before in ("fail", "error") and after == "pass":
            changes.append(_change("fixed", cell, before, after, "", False))
        elif before != after:
            changes.append(_change("status", cell, before, after, row.detail_new, False))
        elif _text(row.diagnosis_base) != _text(row.diagnosis_new):
            changes.append(_change("diagnosis", cell, _text(row.diagnosis_base), _text(row.diagnosis_new), _text(row.detail_new), False))
        elif not any(math.isnan(value) for value in errors):
            grown = _scaled_error(row.max_abs_err_new, row.scale_new) - _scaled_error(row.max_abs_err_base, row.scale_base)
            if grown > DRIFT_BOUND:
                changes.append(_change("drift", cell, f"{row.max_abs_err_base:.3g}", f"{row.max_abs_err_new:.3g}",
                                       f"max_abs_err grew by {grown:.3g} of the feature's scale (RMS {row.scale_new:.3g}); noise bound {DRIFT_BOUND:g}", False))
    return changes


def _cost_changes(base: pd.DataFrame, new: pd.DataFrame, thresholds: Sequence[Threshold], *, same_machine: bool) -> list[dict]:
    if base.empty or new.empty or not thresholds:
        return []
    ok = lambda frame: frame[frame["status"] == "ok"]  # noqa: E731
    merged = ok(base).merge(ok(new), on=_COST, suffixes=("_base", "_new"))
    changes = []
    for threshold in thresholds:
        for row in merged[merged["metric"] == threshold.metric].itertuples(index=False):
            if not threshold.exceeded(row.value_base, row.value_new):
                continue
            separated = math.isnan(row.ci_low_new) or math.isnan(row.ci_high_base) or row.ci_low_new > row.ci_high_base
            key = {"model": row.model, "strategy": row.strategy, "layer": row.layers, "check": row.metric}
            limit = f"{threshold.limit:.0%}" if threshold.relative else f"{threshold.limit:g}"
            why = "" if separated else "; inside the intervals: noise, not counted"
            why = why or ("" if same_machine else "; measured on different machines: not counted")
            detail = f"grew {row.value_new / row.value_base - 1:+.1%} (limit {limit})" + why
            changes.append(_change("cost", key, f"{row.value_base:.4g}", f"{row.value_new:.4g}", detail, separated and same_machine))
    return changes


def diff(base: Side, new: Side, *, fail_on: Sequence[Threshold] = ()) -> Diff:
    """Every change from ``base`` to ``new``, with which of them are regressions."""
    columns = ["kind", *_CELL, "base", "new", "detail", "regression"]
    machine, versions = environment_changes(base.metadata, new.metadata)
    changes = _cell_changes(base.results[_RESULT_FIELDS], new.results[_RESULT_FIELDS]) + _cost_changes(base.bench, new.bench, fail_on, same_machine=not machine)
    warnings = []
    if machine:
        warnings.append("the runs come from different machines (" + ", ".join(f"{k} {a} -> {b}" for k, (a, b) in machine.items())
                        + "): cost changes are listed but not counted; status and error changes are beyond what the machine moves")
    if versions:
        warnings.append("versions changed: " + ", ".join(f"{k} {a} -> {b}" for k, (a, b) in versions.items()))
    for name, side in (("BASE", base), ("NEW", new)):
        if side.results["scale"].isna().all() and side.results["max_abs_err"].notna().any():
            warnings.append(f"{name} records no feature scale (written before feature-conformance 0.2.0): drift not judged; save it again")
    frame = pd.DataFrame(changes, columns=columns)
    order = {kind: i for i, kind in enumerate(["regressed", "new_failure", "shape_or_dtype", "cost", "diagnosis", "drift", "fixed", "status", "only_in_new", "only_in_base"])}
    frame = frame.assign(_order=frame["kind"].map(order), _bad=~frame["regression"]).sort_values(["_bad", "_order", *_CELL], kind="stable")
    return Diff(frame.drop(columns=["_order", "_bad"]).reset_index(drop=True), warnings)


def plain_text(result: Diff) -> str:
    """The changes as a table (or "no change") and the count of regressions and changes."""
    body = "no change" if result.changes.empty else result.changes.to_string(index=False, max_colwidth=80)
    return f"{body}\n\n{len(result.regressions)} regression(s), {len(result.changes)} change(s)"


def markdown(result: Diff, *, base: str, new: str) -> str:
    """The diff as a pull-request comment."""
    counts = result.changes["kind"].value_counts()
    lines = [f"## Conformance diff: `{base}` -> `{new}`", ""]
    lines += [f"> **warning:** {w}" for w in result.warnings] + ([""] if result.warnings else [])
    verdict = f"**{len(result.regressions)} regression(s)**" if len(result.regressions) else "**no regression**"
    lines.append(verdict + (": " + ", ".join(f"{n} {k}" for k, n in counts.items()) if len(counts) else ""))
    for title, part in (("Regressions", result.regressions), ("Other changes", result.changes[~result.changes["regression"]])):
        if not part.empty:
            lines += ["", f"### {title}", "", markdown_table(part.drop(columns="regression"))]
    return "\n".join(lines) + "\n"
