"""Tidy results, written as produced; every table, summary and report is derived from them.

Conformance: one row per (model, strategy, layer, check). ``results.csv`` grows one unit
(a model and a strategy) at a time, so an interrupted run keeps every finished unit and
``--resume`` carries on from there (``--redo QUERY`` runs again the units with a row the
query selects, after the suite learned a diagnosis, say). ``run.json`` holds the run metadata from the start
(after ``--resume``, with ``earlier``: the metadata of the invocations that wrote the rows before);
``results.json`` holds the metadata and all rows at the end.

Costs (``conformance bench``): one row per (model, layer request, strategy, metric) with a
unit, in ``bench.csv``, and the per-round timing samples the ratios come from in
``bench_samples.csv``; ``bench.json`` holds the metadata and both. They can sit in the same
directory as a conformance run, and join it on model and strategy.
"""

from __future__ import annotations

import csv
import gzip
import json
import math
from dataclasses import fields
from pathlib import Path
from typing import Iterable, Sequence

import pandas as pd

from strategies import list_strategies

from conformance.judging.context import CheckResult
from conformance.core.errors import ConformanceError

__all__ = [
    "BENCH_COLUMNS", "COLUMNS", "SAMPLE_COLUMNS", "BenchWriter", "ResultsWriter", "load_bench", "load_results", "merge_runs",
    "read_document", "read_metadata", "strategy_order", "summary_table", "write_document",
]

COLUMNS = (
    "run_id", "model", "family", "strategy", "layer", "check", "status", "diagnosis", "detail",
    "max_abs_err", "scale", "bitwise", "device",
)
#: A verdict's own columns, read straight off it (``dataclasses.asdict`` copies each value deeply).
_RESULT_FIELDS = tuple(field.name for field in fields(CheckResult))
RESULTS_CSV = "results.csv"
RESULTS_JSON = "results.json"
RUN_JSON = "run.json"

BENCH_COLUMNS = (
    "run_id", "model", "family", "layers", "strategy", "metric", "status", "value", "unit",
    "ci_low", "ci_high", "iqr", "rounds", "method", "detail", "device", "threads",
)
SAMPLE_COLUMNS = ("run_id", "model", "layers", "strategy", "round", "seconds", "calls", "device")
BENCH_CSV = "bench.csv"
SAMPLES_CSV = "bench_samples.csv"
BENCH_JSON = "bench.json"


def _append_csv(path: Path, columns: Sequence[str], rows: Iterable[dict]) -> None:
    """Append ``rows`` to ``path`` (writing the header first for a new file) and flush."""
    new_file = not path.exists()
    with path.open("a", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns, extrasaction="ignore")
        if new_file:
            writer.writeheader()
        writer.writerows(rows)


def _json_rows(frame: pd.DataFrame) -> list[dict]:
    return [{k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in row.items()} for row in frame.to_dict("records")]


_EARLIER_KEYS = ("datetime", "command", "commit_info", "versions", "executor", "timings", "redo")


class ResultsWriter:
    """Appends rows to ``DIR/results.csv`` and writes the JSON documents."""

    def __init__(self, out: Path, *, metadata: dict, resume: bool, overwrite: bool, redo: str | None = None) -> None:
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
            # the invocations that wrote the rows kept, newest last: rows may come from other commits
            metadata["earlier"] = [*(previous or {}).get("earlier", []),
                                   *([{key: previous.get(key) for key in _EARLIER_KEYS}] if previous else [])]
            rows = self._read_rows()
            if redo:
                metadata["redo"] = redo
                again = self._units_matching(redo)
                rows = [row for row in rows if (row["model"], row["strategy"]) not in again]
                self._rewrite(rows)
            self.done = {(row["model"], row["strategy"]) for row in rows}
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

    def _units_matching(self, query: str) -> set[tuple[str, str]]:
        """The (model, strategy) units with a row that ``query`` selects."""
        frame = load_results(self.csv_path)
        try:
            selected = frame.query(query)
        except Exception as exc:
            raise ConformanceError(f"--redo {query!r} is no query of the results: {type(exc).__name__}: {exc}",
                                   hint=f"a pandas query over the columns {', '.join(frame.columns)}, e.g. \"diagnosis == 'unexplained'\"") from exc
        return set(zip(selected["model"], selected["strategy"]))

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
                "device": self.metadata["device"], **{name: getattr(result, name) for name in _RESULT_FIELDS},
            }
            for result in results
        ]
        _append_csv(self.csv_path, COLUMNS, rows)
        self.done.add((model, strategy))

    def finish(self, *, extra: dict) -> pd.DataFrame:
        """Write ``results.json`` (metadata, ``extra`` and every row) and return the rows."""
        self.metadata.update(extra)
        frame = load_results(self.csv_path) if self.csv_path.exists() else pd.DataFrame(columns=COLUMNS)
        materialised = materialised_models(frame)
        if materialised:
            self.metadata["materialised"] = materialised
        _write_json(self.out / RUN_JSON, self.metadata)
        _write_json(self.out / RESULTS_JSON, {**self.metadata, "rows": _json_rows(frame)})
        return frame


#: What a row's detail says of a model whose first pass, made before any copy, set its state (``zoo.materialise``).
MATERIALISED = "by one pass before copying"


def materialised_models(frame: pd.DataFrame) -> dict[str, str]:
    """The models whose lazy modules or first-call state were materialised before copying, with what was done."""
    if frame.empty:
        return {}
    rows = frame[frame["detail"].fillna("").str.contains(MATERIALISED, regex=False)]
    return {model: next(part for part in detail.split("; ") if MATERIALISED in part)
            for model, detail in rows.groupby("model", sort=False)["detail"].first().items()}


class BenchWriter:
    """Appends cost rows to ``DIR/bench.csv`` and timing samples to ``DIR/bench_samples.csv``,
    one finished request at a time, and writes ``DIR/bench.json`` at the end.

    Earlier bench files in ``DIR`` are refused unless ``overwrite``, and even then replaced
    only when the first request is written, so that a bench stopped by bad input loses nothing.
    """

    def __init__(self, out: Path, *, metadata: dict, overwrite: bool) -> None:
        self.out = out
        self.metadata = metadata
        self.rows_path, self.samples_path = out / BENCH_CSV, out / SAMPLES_CSV
        self._started = False
        if self.rows_path.exists() and not overwrite:
            raise ConformanceError(
                f"{self.rows_path} already holds bench results",
                hint="pass --overwrite to replace them, or choose another --out",
            )

    def _start(self) -> None:
        if not self._started:
            for path in (self.rows_path, self.samples_path):
                path.unlink(missing_ok=True)
            self.out.mkdir(parents=True, exist_ok=True)
            self._started = True

    def write_request(self, *, model: str, family: str, layers: Sequence[str], rows: pd.DataFrame, samples: pd.DataFrame) -> None:
        """Append the rows and samples of one (model, layer request)."""
        self._start()
        key = {"run_id": self.metadata["run_id"], "model": model, "layers": " ".join(layers), "device": self.metadata["device"]}
        _append_csv(self.rows_path, BENCH_COLUMNS, ({**row, **key, "family": family} for row in rows.to_dict("records")))
        _append_csv(self.samples_path, SAMPLE_COLUMNS, ({**row, **key} for row in samples.to_dict("records")))

    def finish(self, *, extra: dict) -> tuple[pd.DataFrame, pd.DataFrame]:
        """Write ``bench.json`` (metadata, ``extra``, rows and samples) and return rows and samples."""
        self.metadata.update(extra)
        self._start()
        rows, samples = load_bench(self.out) if self.rows_path.exists() else (pd.DataFrame(columns=BENCH_COLUMNS), pd.DataFrame(columns=SAMPLE_COLUMNS))
        _write_json(self.out / BENCH_JSON, {**self.metadata, "rows": _json_rows(rows), "samples": _json_rows(samples)})
        return rows, samples


def _write_json(path: Path, document: dict) -> None:
    temporary = path.with_suffix(".json.tmp")
    temporary.write_text(json.dumps(document, indent=2, default=str) + "\n")
    temporary.replace(path)


def write_document(path: Path, document: dict, *, sort_keys: bool = False) -> None:
    """A JSON document (baseline, manifest), gzip-compressed when the name ends in ``.gz``."""
    data = (json.dumps(document, indent=1, sort_keys=sort_keys, default=str) + "\n").encode()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(data, mtime=0) if path.suffix == ".gz" else data)


def read_document(path: Path) -> dict:
    """A JSON document written by :func:`write_document`; ``OSError`` or ``ValueError`` when unreadable."""
    data = path.read_bytes()
    return json.loads(gzip.decompress(data) if path.suffix == ".gz" else data)


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _located(path: str | Path, name: str, what: str) -> Path:
    """``path`` itself, or ``path/name`` for a directory; an error naming ``what`` when missing."""
    path = Path(path)
    path = path / name if path.is_dir() else path
    if not path.exists():
        stem = name.split(".")[0]
        raise ConformanceError(f"no {what} at {path}", hint=f"give the command's --out directory, its {stem}.csv or {stem}.json")
    return path


def read_metadata(directory: Path) -> list[tuple[Path, dict]]:
    """The run metadata of a directory: ``run.json`` and ``bench.json`` where present, without their rows."""
    documents = []
    for name in (RUN_JSON, BENCH_JSON):
        document = _read_json(directory / name)
        if document is not None:
            documents.append((directory / name, {k: v for k, v in document.items() if k not in ("rows", "samples")}))
    return documents


def load_results(path: str | Path) -> pd.DataFrame:
    """Rows from a results directory, ``results.csv`` or ``results.json``."""
    path = _located(path, RESULTS_CSV, "results")
    if path.suffix == ".json":
        frame = pd.DataFrame(json.loads(path.read_text())["rows"])
    else:
        frame = pd.read_csv(path, keep_default_na=False, na_values={"max_abs_err": [""], "scale": [""]})
    for column in ("max_abs_err", "scale"):
        if column in frame:  # results written before 0.2 have no scale
            frame[column] = pd.to_numeric(frame[column], errors="coerce")
    return frame


def load_bench(path: str | Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Cost rows and timing samples from a bench directory, its ``bench.csv`` or ``bench.json``."""
    path = _located(path, BENCH_CSV, "bench results")
    if path.suffix == ".json":
        document = json.loads(path.read_text())
        rows, samples = pd.DataFrame(document["rows"], columns=BENCH_COLUMNS), pd.DataFrame(document["samples"], columns=SAMPLE_COLUMNS)
    else:
        rows = pd.read_csv(path, keep_default_na=False, na_values={c: [""] for c in ("value", "ci_low", "ci_high", "iqr")})
        samples_path = path.with_name(SAMPLES_CSV)
        samples = pd.read_csv(samples_path) if samples_path.exists() else pd.DataFrame(columns=SAMPLE_COLUMNS)
    for column in ("value", "ci_low", "ci_high", "iqr"):
        rows[column] = pd.to_numeric(rows[column], errors="coerce")
    return rows, samples


def merge_runs(sources: Sequence[Path], *, out: Path, force: bool = False) -> pd.DataFrame:
    """Combine the results of runs on several machines (``--shard K/N``) into ``out``.

    Refuses runs of different package versions or devices unless ``force``, and always
    refuses two runs that hold the same cell.
    """
    frames, documents = [], []
    for source in sources:
        frames.append(load_results(source))
        documents.append(_read_json((source if source.is_dir() else source.parent) / RUN_JSON) or {})
    signatures = {json.dumps({"versions": {k: v for k, v in d.get("versions", {}).items() if k != "conformance"}, "device": d.get("device")}, sort_keys=True) for d in documents}
    if len(signatures) > 1 and not force:
        raise ConformanceError("the runs differ in package versions or device", hint="merge runs of one environment, or pass --force to merge anyway")
    frame = pd.concat(frames, ignore_index=True)
    duplicated = frame.duplicated(["model", "strategy", "layer", "check"], keep=False)
    if duplicated.any():
        first = frame[duplicated].iloc[0]
        raise ConformanceError(f"two runs hold the cell {first['model']} / {first['strategy']} / {first['layer']} / {first['check']}",
                               hint="merge the shards of one run (--shard K/N), each given once")
    if (out / RESULTS_CSV).exists():
        raise ConformanceError(f"{out / RESULTS_CSV} already holds results", hint="choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    frame.to_csv(out / RESULTS_CSV, index=False, columns=list(COLUMNS))
    metadata = {**documents[0], "merged_from": [{"source": str(s), "run_id": d.get("run_id"), "shard": d.get("shard"), "node": d.get("machine_info", {}).get("node")} for s, d in zip(sources, documents)]}
    _write_json(out / RUN_JSON, metadata)
    _write_json(out / RESULTS_JSON, {**metadata, "rows": _json_rows(frame)})
    return frame


def strategy_order(names: Iterable[str]) -> list[str]:
    """The strategies among ``names`` in the registry's order (``conformance list strategies``),
    then any others as they first come: a table's columns do not depend on the order in which
    workers or a resumed run wrote the units."""
    present = list(dict.fromkeys(names))
    registered = [name for name in list_strategies() if name in set(present)]
    return registered + [name for name in present if name not in set(registered)]


def summary_table(frame: pd.DataFrame) -> pd.DataFrame:
    """Status counts per strategy, in the registry's order (:func:`strategy_order`), with a pass rate."""
    order = strategy_order(frame["strategy"])
    table = frame.pivot_table(index="strategy", columns="status", values="check", aggfunc="count", fill_value=0)
    table = table.reindex(index=order, columns=[s for s in ("pass", "fail", "error", "unsupported", "skipped") if s in table.columns])
    table = table.fillna(0).astype(int)
    judged = table.drop(columns=[c for c in ("unsupported", "skipped") if c in table.columns]).sum(axis=1)
    table["pass_rate"] = (table.get("pass", 0) / judged.where(judged > 0)).map(lambda r: "-" if pd.isna(r) else f"{r:.0%}")
    return table
