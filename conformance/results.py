"""Tidy results: one row per (model, strategy, layer, check), written as produced.

``results.csv`` grows one unit (a model and a strategy) at a time, so an interrupted run
keeps every finished unit and ``--resume`` carries on from there. ``run.json`` holds the
run metadata from the start; ``results.json`` holds the metadata and all rows at the end.
Every table, summary and report is derived from these rows.
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import asdict
from pathlib import Path
from typing import Iterable

import pandas as pd

from .checks import CheckResult
from .errors import ConformanceError

__all__ = ["COLUMNS", "ResultsWriter", "load_results", "summary_table"]

COLUMNS = (
    "run_id", "model", "family", "strategy", "layer", "check", "status", "diagnosis", "detail",
    "max_abs_err", "max_rel_err", "bitwise", "device",
)
RESULTS_CSV = "results.csv"
RESULTS_JSON = "results.json"
RUN_JSON = "run.json"


class ResultsWriter:
    """Appends rows to ``DIR/results.csv`` and writes the JSON documents."""

    def __init__(self, out: Path, *, metadata: dict, resume: bool, overwrite: bool) -> None:
        self.out = out
        self.csv_path = out / RESULTS_CSV
        self.metadata = metadata
        self.done: set[tuple[str, str]] = set()
        if self.csv_path.exists() and not (resume or overwrite):
            raise ConformanceError(
                f"{self.csv_path} already holds results",
                hint="pass --resume to carry on with that run, --overwrite to replace it, or another --out",
            )
        if self.csv_path.exists() and resume:
            previous = _read_json(out / RUN_JSON)
            if previous and previous.get("device") != metadata["device"]:
                raise ConformanceError(
                    f"{out} holds a run on {previous.get('device')}, not {metadata['device']}",
                    hint="resume with the same --device, or choose another --out",
                )
            metadata["run_id"] = (previous or {}).get("run_id", metadata["run_id"])
            self.done = {(row["model"], row["strategy"]) for row in self._read_rows()}
        elif self.csv_path.exists():
            self.csv_path.unlink()
        out.mkdir(parents=True, exist_ok=True)
        _write_json(out / RUN_JSON, metadata)

    def _read_rows(self) -> list[dict]:
        with self.csv_path.open(newline="") as handle:
            rows = list(csv.DictReader(handle))
        # A run killed mid-write can leave a short last line. It belongs to the last unit
        # written, so that unit (the one of the row before it) is dropped whole and redone.
        if rows and None in rows[-1].values():
            rows.pop()
            if rows:
                broken = (rows[-1]["model"], rows[-1]["strategy"])
                rows = [r for r in rows if (r["model"], r["strategy"]) != broken]
            self._rewrite(rows)
        return rows

    def _rewrite(self, rows: list[dict]) -> None:
        with self.csv_path.open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=COLUMNS)
            writer.writeheader()
            writer.writerows(rows)

    def write_unit(self, *, model: str, family: str, strategy: str, results: Iterable[CheckResult]) -> None:
        """Append the rows of one finished (model, strategy) unit, and flush them to disk."""
        rows = [
            {
                "run_id": self.metadata["run_id"], "model": model, "family": family, "strategy": strategy,
                "device": self.metadata["device"], **asdict(result),
            }
            for result in results
        ]
        new_file = not self.csv_path.exists()
        with self.csv_path.open("a", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=COLUMNS)
            if new_file:
                writer.writeheader()
            writer.writerows(rows)
        self.done.add((model, strategy))

    def finish(self, *, extra: dict) -> pd.DataFrame:
        """Write ``results.json`` (metadata, ``extra`` and every row) and return the rows."""
        self.metadata.update(extra)
        _write_json(self.out / RUN_JSON, self.metadata)
        frame = load_results(self.csv_path) if self.csv_path.exists() else pd.DataFrame(columns=COLUMNS)
        rows = [{k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in row.items()} for row in frame.to_dict("records")]
        _write_json(self.out / RESULTS_JSON, {**self.metadata, "rows": rows})
        return frame


def _write_json(path: Path, document: dict) -> None:
    temporary = path.with_suffix(".json.tmp")
    temporary.write_text(json.dumps(document, indent=2, default=str) + "\n")
    temporary.replace(path)


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def load_results(path: str | Path) -> pd.DataFrame:
    """Rows from a results directory, ``results.csv`` or ``results.json``."""
    path = Path(path)
    if path.is_dir():
        path = path / RESULTS_CSV
    if not path.exists():
        raise ConformanceError(f"no results at {path}", hint="give a run's --out directory, its results.csv or results.json")
    if path.suffix == ".json":
        frame = pd.DataFrame(json.loads(path.read_text())["rows"])
    else:
        frame = pd.read_csv(path, keep_default_na=False, na_values={"max_abs_err": [""], "max_rel_err": [""]})
    for column in ("max_abs_err", "max_rel_err"):
        frame[column] = pd.to_numeric(frame[column], errors="coerce")
    return frame


def summary_table(frame: pd.DataFrame) -> pd.DataFrame:
    """Status counts per strategy, in strategy order of appearance, with a pass rate."""
    order = list(dict.fromkeys(frame["strategy"]))
    table = frame.pivot_table(index="strategy", columns="status", values="check", aggfunc="count", fill_value=0)
    table = table.reindex(index=order, columns=[s for s in ("pass", "fail", "error", "unsupported", "skipped") if s in table.columns])
    table = table.fillna(0).astype(int)
    judged = table.drop(columns=[c for c in ("unsupported", "skipped") if c in table.columns]).sum(axis=1)
    table["pass_rate"] = (table.get("pass", 0) / judged.where(judged > 0)).map(lambda r: "-" if pd.isna(r) else f"{r:.0%}")
    return table
