"""Tables derived from the tidy rows: the capability matrix, what lies behind a cell, and
the cost table of a bench.

The capability matrix has checks as rows and strategies as columns; each cell counts the
models on which the strategy passes the check, e.g. ``5/7 pass (2 fail)``. A model takes
the first of fail, error, pass, unsupported, skipped found among the rows of its (model,
strategy, check): it passes when nothing fails or errs and a row passes. A pass with some
layers the strategy cannot express is counted ``partial``.

Example::

    >>> from conformance.evidence.results import load_results
    >>> frame = load_results("reports/quick-cpu")
    >>> capability_matrix(frame)                               # checks x strategies
    >>> cell_models(frame, strategy="fx", check="set_independence")
    >>> rows, samples = load_bench("runs/bench")
    >>> cost_tables(rows)                                     # one table per (model, layers)
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import pandas as pd

from strategies.hf_hidden_states import read_as

from conformance.evidence.bench import REFERENCES
from conformance.judging.causes import GENERIC_ERRORS
from conformance.judging.diagnoses import UNEXPLAINED
from conformance.core.errors import ConformanceError
from conformance.evidence.results import strategy_order

__all__ = [
    "NEEDS", "Finding", "answers", "capability_matrix", "cell_models", "cell_text", "cost_tables", "failing_models", "family_table", "findings", "headline",
    "hf_readings", "markdown_table", "model_verdicts", "unexplained",
]

#: The status a model takes in a cell when its rows disagree: the first found.
_PRECEDENCE = ("fail", "error", "pass", "unsupported", "skipped")
#: The order models are listed behind a cell.
_LISTING = ("fail", "error", "unsupported", "pass", "skipped")


def model_verdicts(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per (check, strategy, model): its status in the matrix and the layers behind it."""
    groups: dict[tuple[str, str, str], list[tuple[str, str, str, str]]] = {}
    columns = [frame[name].tolist() for name in ("check", "strategy", "model", "status", "layer", "diagnosis", "detail")]
    for check, strategy, model, *row in zip(*columns):
        groups.setdefault((check, strategy, model), []).append(row)
    records = []
    for (check, strategy, model), rows in groups.items():
        statuses = {status for status, *_ in rows}
        status = next(s for s in _PRECEDENCE if s in statuses)
        worst = [row for row in rows if row[0] == status]
        records.append({
            "check": check, "strategy": strategy, "model": model, "status": status,
            "partial": status == "pass" and "unsupported" in statuses,
            "layers": ", ".join(layer for _, layer, _, _ in worst if layer != "*") or "*",
            "diagnosis": ", ".join(dict.fromkeys(d for _, _, d, _ in worst if isinstance(d, str) and d)),
            "detail": worst[0][3],
        })
    return pd.DataFrame(records, columns=["check", "strategy", "model", "status", "partial", "layers", "diagnosis", "detail"])


def capability_matrix(frame: pd.DataFrame) -> pd.DataFrame:
    """Checks (rows) by strategies (columns), each cell ``passed/judged pass`` with the
    other statuses counted and partial passes noted; ``n/a`` where no model has a verdict."""
    verdicts = model_verdicts(frame)
    checks = list(dict.fromkeys(frame["check"]))
    strategies = strategy_order(frame["strategy"])
    matrix = pd.DataFrame("n/a", index=pd.Index(checks, name="check"), columns=pd.Index(strategies, name="strategy"))
    for (check, strategy), cell in verdicts.groupby(["check", "strategy"], sort=False):
        counts = cell["status"].value_counts()
        judged = int(counts.drop("skipped", errors="ignore").sum())
        if not judged:
            continue
        partial = int(cell["partial"].sum())
        others = ", ".join([f"{int(counts[s])} {s}" for s in ("fail", "error", "unsupported") if s in counts]
                           + ([f"{partial} partial"] if partial else []))
        matrix.loc[check, strategy] = f"{int(counts.get('pass', 0))}/{judged} pass" + (f" ({others})" if others else "")
    return matrix


#: What a user needs of a strategy, and the checks that must pass for it.
NEEDS: dict[str, tuple[str, ...]] = {
    "values only": ("values", "shape", "dtype", "keys"),
    "gradients": ("values", "gradients"),
    "train mode": ("values", "train_mode"),
    "script": ("values", "jit_script"),
    "export": ("values", "export"),
}


def answers(frame: pd.DataFrame) -> pd.DataFrame:
    """For each need (:data:`NEEDS`), the strategy to use: the one that passes every check of the
    need on the most models (a model's verdict in a check as in the matrix), ties listed; the
    runner-up; and the query that selects the rows behind the answer. ``n/a`` where the run has
    none of the need's own checks."""
    verdicts = model_verdicts(frame).pivot_table(index=["strategy", "model"], columns="check", values="status", aggfunc="first")
    models = frame["model"].nunique()
    records = []
    for need, checks in NEEDS.items():
        if checks[-1] not in verdicts.columns:
            records.append({"need": need, "use": "n/a", "passes on": f"not run: add --checks {checks[-1]}", "then": "", "rows": ""})
            continue
        present = [check for check in checks if check in verdicts.columns]
        passed = (verdicts[present] == "pass").all(axis=1).groupby(level="strategy").sum()
        ranked = sorted((s for s in strategy_order(frame["strategy"]) if passed.get(s, 0)), key=lambda s: -passed[s])
        best = [s for s in ranked if passed[s] == passed[ranked[0]]] if ranked else []
        rest = [s for s in ranked if s not in best]
        records.append({
            "need": need,
            "use": ", ".join(best) or "none",
            "passes on": f"{passed[best[0]]} of {models} models" if best else f"none of {models} models",
            "then": f"{rest[0]} ({passed[rest[0]]} of {models})" if rest else "",
            "rows": f"strategy in {best!r} and check in {present!r}" if best else f"check in {present!r}",
        })
    return pd.DataFrame(records, columns=["need", "use", "passes on", "then", "rows"])


def cell_models(frame: pd.DataFrame, *, strategy: str, check: str) -> pd.DataFrame:
    """The models behind one cell, failing ones first, with the layers and diagnosis."""
    for column, value in (("strategy", strategy), ("check", check)):
        known = list(dict.fromkeys(frame[column]))
        if value not in known:
            raise ConformanceError(f"no {column} {value!r} in these results", hint=f"choose from {', '.join(known)}")
    verdicts = model_verdicts(frame)
    cell = verdicts[(verdicts["strategy"] == strategy) & (verdicts["check"] == check)].drop(columns=["check", "strategy"])
    order = cell["status"].map({status: rank for rank, status in enumerate(_LISTING)})
    return cell.assign(_order=order).sort_values(["_order", "model"]).drop(columns="_order").reset_index(drop=True)


def _interval(value: float, low: float, high: float) -> str:
    if math.isnan(value):
        return ""
    return f"{value:.3f}" if math.isnan(low) else f"{value:.3f} [{low:.3f}, {high:.3f}]"


def _scaled(value: float, scale: float, digits: int = 1) -> str:
    return "" if math.isnan(value) else f"{round(value / scale, digits) + 0.0:.{digits}f}"  # + 0.0: no "-0.00"


def cost_tables(rows: pd.DataFrame) -> dict[tuple[str, str], tuple[pd.DataFrame, list[str]]]:
    """For each (model, layers): the cost table, fastest strategy first, and notes on the
    strategies that could not be measured.

    Ratios carry their 95 % interval; ``rank`` is shared by strategies indistinguishable
    from the leader of their group, named in ``same as``.
    """
    tables = {}
    for (model, layers), request in rows.groupby(["model", "layers"], sort=False):
        measured = request[request["status"] == "ok"]
        value = measured.set_index(["strategy", "metric"])
        order = [*REFERENCES] + list(
            measured[measured["metric"] == "rank"].sort_values("value", kind="stable")["strategy"]
        )

        def get(strategy: str, metric: str, column: str = "value") -> float:
            return float(value[column].get((strategy, metric), math.nan))

        leaders: dict[float, str] = {}  # the first strategy of each rank leads its group
        for strategy in order[len(REFERENCES):]:
            leaders.setdefault(get(strategy, "rank"), strategy)
        lines = []
        for strategy in order:
            if (strategy, "latency") not in value.index:
                continue
            leader = leaders.get(get(strategy, "rank"), strategy)
            lines.append({
                "rank": "" if math.isnan(get(strategy, "rank")) else f"{get(strategy, 'rank'):.0f}",
                "strategy": strategy,
                "same as": "" if leader == strategy else leader,
                "latency ms": _scaled(get(strategy, "latency"), 1e-3, 2),
                "IQR ms": _scaled(get(strategy, "latency", "iqr"), 1e-3, 2),
                "overhead [95% CI]": _interval(get(strategy, "overhead"), get(strategy, "overhead", "ci_low"), get(strategy, "overhead", "ci_high")),
                "floor_ratio [95% CI]": _interval(get(strategy, "floor_ratio"), get(strategy, "floor_ratio", "ci_low"), get(strategy, "floor_ratio", "ci_high")),
                "build ms": _scaled(get(strategy, "build_time"), 1e-3, 2),
                "peak MiB": _scaled(get(strategy, "peak_memory"), 2**20),
                "retained MiB": _scaled(get(strategy, "retained_memory"), 2**20, 2),
                "params": _scaled(get(strategy, "params_retained"), 0.01, 0) + ("%" if (strategy, "params_retained") in value.index else ""),
            })
        failed = request[request["status"] != "ok"].drop_duplicates("strategy")
        notes = [f"{r.strategy}: {r.status}: {r.detail}" for r in failed.itertuples()]
        tables[(model, layers)] = (pd.DataFrame(lines), notes)
    return tables


def failing_models(frame: pd.DataFrame) -> pd.DataFrame:
    """Every (check, strategy) cell with failing or erring models, and those models."""
    verdicts = model_verdicts(frame)
    bad = verdicts[verdicts["status"].isin(["fail", "error"])]
    table = bad.groupby(["check", "strategy"], sort=False).agg(
        models=("model", lambda m: ", ".join(sorted(m))), count=("model", "size")).reset_index()
    rank = {strategy: index for index, strategy in enumerate(strategy_order(frame["strategy"]))}
    table = table.sort_values("strategy", key=lambda column: column.map(rank), kind="stable").reset_index(drop=True)
    return table[["check", "strategy", "count", "models"]]


def family_table(frame: pd.DataFrame, *, check: str = "values") -> pd.DataFrame:
    """Model families (rows) by strategies (columns): layers passing ``check`` over layers judged."""
    rows = frame[(frame["check"] == check) & frame["status"].isin(["pass", "fail", "error"])]
    strategies = strategy_order(frame["strategy"])
    table = pd.DataFrame("-", index=pd.Index(sorted(set(frame["family"])), name="family"), columns=pd.Index(strategies, name="strategy"))
    for (family, strategy), cell in rows.groupby(["family", "strategy"]):
        passed = int((cell["status"] == "pass").sum())
        table.loc[family, strategy] = f"{passed}/{len(cell)} ({passed / len(cell):.0%})"
    return table


_HF = {"hf-hidden-states": "hidden_states", "hf-backbone": "backbone"}


def _verdict(row: pd.Series | None) -> str:
    """A values row in a few words: what the strategy's feature is, measured."""
    if row is None:
        return ""
    if row["status"] == "pass":
        return "the module's output"
    parts = [part for part in cell_text(row["detail"]).split("; ")
             if not part.startswith(("requested alone", "requested without", "requested in", "shape ", "got "))]  # how it was requested, what differs
    detail = "; ".join(parts)
    if row["status"] == "unsupported":
        return f"unsupported: {detail.split(': ', 1)[0]}"
    return f"{row['status']}{' ' + row['diagnosis'] if cell_text(row['diagnosis']) else ''}: {detail[:160]}"


def hf_readings(frame: pd.DataFrame) -> pd.DataFrame:
    """Per Hugging Face model and module: what ``hidden_states[i]`` / ``last_hidden_state`` and the
    backbone's ``out_features`` stage read for it are, from the ``values`` rows of ``hf-hidden-states``
    and ``hf-backbone`` (empty where neither ran)."""
    rows = frame[frame["strategy"].isin(list(_HF)) & (frame["check"] == "values")]
    table = []
    for (model, layer), group in rows.groupby(["model", "layer"], sort=False):
        reading = read_as(str(layer))
        if reading is None:
            continue
        by_strategy = {strategy: row for strategy, row in zip(group["strategy"], (r for _, r in group.iterrows()))}
        index = reading.removeprefix("hidden_states[").removesuffix("]")
        table.append({
            "model": model, "module": layer, "read as": reading, "hidden_states gives": _verdict(by_strategy.get("hf-hidden-states")),
            "out_features": ("stem" if index == "0" else f"stage{index}") if index.isdigit() else "",
            "backbone gives": _verdict(by_strategy.get("hf-backbone")) if index.isdigit() else "",
        })
    order = lambda reading: int(reading[14:-1]) if reading.startswith("hidden_states[") else 1 << 30  # noqa: E731
    table.sort(key=lambda entry: (entry["model"], order(entry["read as"])))
    return pd.DataFrame(table, columns=["model", "module", "read as", "hidden_states gives", "out_features", "backbone gives"])


@dataclass(frozen=True)
class Finding:
    """One statement about the results, with the query that selects the rows behind it."""

    text: str
    query: str
    rows: int
    models: int


def _model_pattern(models: list[str]) -> str:
    """``resnet*`` for resnet18 and resnet50; ``*`` where the names share no prefix."""
    names = sorted({m.split(":", 1)[-1] for m in models})
    common = os.path.commonprefix(names)
    return names[0] if len(names) == 1 else f"{common if len(common) >= 3 else ''}*"


def _some(models: list[str], shown: int = 4) -> str:
    return ", ".join(models[:shown]) + (f" and {len(models) - shown} more" if len(models) > shown else "")


def _join(names: list[str]) -> str:
    names = list(names)
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} and {names[-1]}"


def findings(frame: pd.DataFrame, *, limit: int = 12) -> list[Finding]:
    """The largest failures in plain words, most models first, each with the query behind it.

    Wrong values are grouped by diagnosis and layer name (``bn1`` across every ResNet);
    other checks by check and diagnosis.
    """
    failed = frame[frame["status"] == "fail"].copy()
    failed["tap"] = failed["layer"].where(failed["check"] == "values", "")
    merged: dict[tuple, list] = {}  # taps failing the same way for the same strategies and models are one finding
    for (check, diagnosis, tap), group in failed.groupby(["check", "diagnosis", "tap"], sort=False):
        key = (check, diagnosis, tuple(dict.fromkeys(group["strategy"])), tuple(sorted(set(group["model"]))))
        merged.setdefault(key, []).append((tap, group))
    found = []
    for (check, diagnosis, strategies, models), parts in merged.items():
        taps = [tap for tap, _ in parts if tap]
        group = pd.concat([g for _, g in parts])
        conditions = [f"check == {check!r}", "status == 'fail'", f"diagnosis == {diagnosis!r}"]
        if taps:
            conditions.append(f"layer == {taps[0]!r}" if len(taps) == 1 else f"layer in {taps!r}")
        what = f"`{check}` fails" + (f" ({diagnosis})" if diagnosis else "")
        where = f" for `{_model_pattern(list(models))}.{taps[0] if len(taps) == 1 else '{' + ', '.join(taps) + '}'}`" if taps else ""
        count = f"{len(models)} model{'s' if len(models) > 1 else ''} ({_some(list(models))})"
        example = str(group["detail"].iloc[0])
        text = f"{_join(list(strategies))}: {what}{where} on {count}. E.g. {group['model'].iloc[0]}, {group['strategy'].iloc[0]}: {example[:160]}"
        found.append(Finding(text=text, query=" and ".join(conditions), rows=len(group), models=len(models)))
    found.sort(key=lambda f: ("check == 'values'" not in f.query, -f.models, -f.rows))  # wrong values first
    return found[:limit]


def unexplained(frame: pd.DataFrame) -> pd.DataFrame:
    """The failing rows no diagnosis explains."""
    return frame[(frame["status"] == "fail") & frame["diagnosis"].isin(["", UNEXPLAINED])]


def headline(frame: pd.DataFrame) -> pd.DataFrame:
    """One table to read first: models, cells, failures by mechanism, unexplained failures (the
    target is none) and errors by cause, each with the query that selects its rows."""
    failed, errors = frame[frame["status"] == "fail"], frame[frame["status"] == "error"]
    lines = [
        ("models", frame["model"].nunique(), ""),
        ("cells (model, strategy, layer, check)", len(frame), ""),
        ("failures", len(failed), "status == 'fail'"),
        ("  unexplained", len(unexplained(frame)), f"status == 'fail' and diagnosis in ['', {UNEXPLAINED!r}]"),
    ]
    for diagnosis, count in failed[~failed.index.isin(unexplained(frame).index)]["diagnosis"].value_counts().items():
        lines.append((f"  {diagnosis}", count, f"status == 'fail' and diagnosis == {diagnosis!r}"))
    lines.append(("errors", len(errors), "status == 'error'"))
    generic = errors["diagnosis"].isin(GENERIC_ERRORS)
    lines.append(("  unexplained (what raised, no cause measured)", int(generic.sum()), f"status == 'error' and diagnosis in {list(GENERIC_ERRORS)!r}"))
    for diagnosis, count in errors["diagnosis"].value_counts().items():
        lines.append((f"  {diagnosis or 'no cause given'}", count, f"status == 'error' and diagnosis == {diagnosis!r}"))
    return pd.DataFrame(lines, columns=["what", "rows", "query"])


def cell_text(value: object) -> str:
    """A table cell as text; missing values are empty."""
    if isinstance(value, float) and math.isnan(value):
        return ""
    return str(value)


def markdown_table(frame: pd.DataFrame) -> str:
    """A GitHub-flavoured Markdown table (pipes escaped, no index)."""
    escape = lambda text: cell_text(text).replace("|", "\\|").replace("\n", " ")  # noqa: E731
    lines = ["| " + " | ".join(escape(c) for c in frame.columns) + " |", "|" + " --- |" * len(frame.columns)]
    lines += ["| " + " | ".join(escape(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join(lines)
