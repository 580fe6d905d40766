"""Tables derived from the tidy rows: the capability matrix and what lies behind a cell.

The capability matrix has checks as rows and strategies as columns; each cell counts the
models on which the strategy passes the check, e.g. ``5/7 pass (2 fail)``. A model takes
the first of fail, error, pass, unsupported, skipped found among the rows of its (model,
strategy, check): it passes when nothing fails or errs and a row passes. A pass with some
layers the strategy cannot express is counted ``partial``.

Example::

    >>> from conformance.results import load_results
    >>> frame = load_results("reports/quick-cpu")
    >>> capability_matrix(frame)                               # checks x strategies
    >>> cell_models(frame, strategy="fx", check="set_independence")
"""

from __future__ import annotations

import pandas as pd

from .errors import ConformanceError

__all__ = ["capability_matrix", "cell_models", "model_verdicts"]

#: The status a model takes in a cell when its rows disagree: the first found.
_PRECEDENCE = ("fail", "error", "pass", "unsupported", "skipped")
#: The order models are listed behind a cell.
_LISTING = ("fail", "error", "unsupported", "pass", "skipped")


def model_verdicts(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per (check, strategy, model): its status in the matrix and the layers behind it."""
    def verdict(group: pd.DataFrame) -> pd.Series:
        statuses = set(group["status"])
        status = next(s for s in _PRECEDENCE if s in statuses)
        worst = group[group["status"] == status]
        return pd.Series({
            "status": status,
            "partial": status == "pass" and "unsupported" in statuses,
            "layers": ", ".join(layer for layer in worst["layer"] if layer != "*") or "*",
            "diagnosis": ", ".join(dict.fromkeys(d for d in worst["diagnosis"] if d)),
            "detail": worst["detail"].iloc[0],
        })

    grouped = frame.groupby(["check", "strategy", "model"], sort=False)[["status", "layer", "diagnosis", "detail"]]
    if frame.empty:
        return pd.DataFrame(columns=["check", "strategy", "model", "status", "partial", "layers", "diagnosis", "detail"])
    return grouped.apply(verdict).reset_index()


def capability_matrix(frame: pd.DataFrame) -> pd.DataFrame:
    """Checks (rows) by strategies (columns), each cell ``passed/judged pass`` with the
    other statuses counted and partial passes noted; ``-`` where every model was skipped."""
    verdicts = model_verdicts(frame)
    checks = list(dict.fromkeys(frame["check"]))
    strategies = list(dict.fromkeys(frame["strategy"]))
    matrix = pd.DataFrame("-", index=pd.Index(checks, name="check"), columns=pd.Index(strategies, name="strategy"))
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
