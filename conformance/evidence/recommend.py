"""Which strategy to use for one model and one layer request, with the evidence behind it.

A strategy is eligible when it passes every required check (``values`` and the ``needs``)
on every requested layer; eligible ones are ordered by measured overhead and ranked as the
bench ranks them (:func:`~conformance.evidence.bench.tie_ranks`: overlapping intervals share a rank). The others are listed
with the reason they are excluded. Everything comes from conformance rows and bench rows.

Example::

    >>> eligible, excluded = recommend(results, costs, model="torchvision:resnet18", layers=["layer1"], needs=["gradients"])
"""

from __future__ import annotations

import math
from typing import Sequence

import pandas as pd

from conformance.evidence.bench import tie_ranks

__all__ = ["recommend"]


def _verdict(rows: pd.DataFrame, check: str) -> str:
    """``""`` when ``check`` passes on every layer, else why not."""
    judged = rows[rows["check"] == check]
    if judged.empty:
        return f"{check}: not measured"
    for status in ("fail", "error", "unsupported", "skipped"):
        bad = judged[judged["status"] == status]
        if not bad.empty:
            layers = ", ".join(layer for layer in dict.fromkeys(bad["layer"]) if layer != "*")
            reason = bad["diagnosis"].iloc[0] or str(bad["detail"].iloc[0])[:100]
            return f"{check}: {status}" + (f" on {layers}" if layers else "") + (f" ({reason})" if reason else "")
    return ""


def recommend(results: pd.DataFrame, costs: pd.DataFrame, *, model: str, layers: Sequence[str], needs: Sequence[str]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Eligible strategies, cheapest first, with their evidence; and the excluded ones, with why."""
    required = list(dict.fromkeys(["values", *needs]))
    rows = results[(results["model"] == model) & results["layer"].isin([*layers, "*"])]
    measured = costs[(costs["model"] == model) & (costs["layers"] == " ".join(layers)) & (costs["status"] == "ok")] if not costs.empty else costs
    value = measured.set_index(["strategy", "metric"]) if not measured.empty else pd.DataFrame(columns=["value", "ci_low", "ci_high"])

    def cost(strategy: str, metric: str, column: str = "value") -> float:
        return float(value[column].get((strategy, metric), math.nan)) if not value.empty else math.nan

    eligible, excluded = [], []
    for strategy, strategy_rows in rows.groupby("strategy", sort=False):
        reasons = [reason for reason in (_verdict(strategy_rows, check) for check in required) if reason]
        if reasons:
            excluded.append({"strategy": strategy, "why": "; ".join(reasons)})
            continue
        other_failures = sorted(set(strategy_rows.loc[strategy_rows["status"] == "fail", "check"]) - set(required))
        eligible.append({
            "strategy": strategy,
            "overhead": cost(strategy, "overhead"), "ci_low": cost(strategy, "overhead", "ci_low"), "ci_high": cost(strategy, "overhead", "ci_high"),
            "floor_ratio": round(cost(strategy, "floor_ratio"), 3),
            "peak MiB": round(cost(strategy, "peak_memory") / 2**20, 1),
            "passes": ", ".join(required),
            "also fails": ", ".join(other_failures),
        })
    table = pd.DataFrame(eligible, columns=["strategy", "overhead", "ci_low", "ci_high", "floor_ratio", "peak MiB", "passes", "also fails"])
    ranked = tie_ranks({row.strategy: (row.overhead, row.ci_low, row.ci_high) for row in table.itertuples()})
    table = table.set_index("strategy").loc[[name for name, _, _ in ranked]].reset_index()
    table.insert(0, "rank", [rank for _, rank, _ in ranked])
    return table, pd.DataFrame(excluded, columns=["strategy", "why"])
