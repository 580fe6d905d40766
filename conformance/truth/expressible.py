"""Which strategies can express which layers: measured by attaching each strategy, never declared.

A strategy can express a layer when attaching it to a copy of the model for that layer
raises no :class:`~strategies.Unsupported`; when it refuses a request, the layers it names
are left out and the rest asked again (a refusal that names none is asked layer by layer).

Example::

    >>> node_listing(model, spec)   # every node, what it is, train/eval, the strategies that can express it
"""

from __future__ import annotations

from typing import Sequence

import pandas as pd
from torch import nn

from strategies import StrategyUnavailable, Tap, Unsupported, get_strategy, list_strategies

from conformance.truth.layers import example_input, node_table, node_tap
from conformance.core.timing import own_copy
from conformance.zoo.specs import ModelSpec

__all__ = ["node_listing"]


def _attach(name: str, model: nn.Module, spec: ModelSpec, layers: list[Tap]) -> None:
    get_strategy(name).attach(own_copy(model), layers=layers, tracer_kwargs=spec.tracer_kwargs).close()


def _refusals(name: str, model: nn.Module, spec: ModelSpec, taps: list[Tap]) -> dict[str, str]:
    """``{layer: why not}`` for the layers of ``taps`` the strategy refuses."""
    try:
        get_strategy(name)
    except StrategyUnavailable as exc:
        return {tap: str(exc) for tap in taps}
    reasons: dict[str, str] = {}
    remaining = list(taps)
    while remaining:
        try:
            _attach(name, model, spec, remaining)
            return reasons
        except Unsupported as exc:
            refused = exc.layers if exc.layers else []
            if not refused and len(remaining) > 1:  # refused as a whole: ask layer by layer
                for tap in remaining:
                    try:
                        _attach(name, model, spec, [tap])
                    except Exception as single:
                        reasons[tap] = f"{type(single).__name__}: {single}" if not isinstance(single, Unsupported) else str(single)
                return reasons
            for layer in refused or remaining:
                reasons[str(layer)] = str(exc)
            remaining = [tap for tap in remaining if tap not in set(map(str, refused or remaining))]
        except Exception as exc:  # the strategy cannot be built at all for this model
            reasons.update({tap: f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}" for tap in remaining})
            return reasons
    return reasons


def node_listing(model: nn.Module, spec: ModelSpec, *, strategies: Sequence[str] | None = None) -> pd.DataFrame:
    """Every node with a tensor value, in eval-mode order then the train-only ones: its name, what
    it is, the modes it runs in, and the strategies that can express it (in eval mode)."""
    tables = {mode: node_table(model, example=example_input(spec), tracer_kwargs=spec.tracer_kwargs, train=mode == "train") for mode in ("eval", "train")}
    rows: dict[str, dict] = {}
    for mode, table in tables.items():
        for node in table.nodes:
            if node.tensor and node.kind in ("module", "function"):
                rows.setdefault(node.name, {"node": node.name, "what": node.describe(), "modes": []})["modes"].append(mode)
    eval_taps = [node_tap(node) for node in tables["eval"].nodes if node.tensor and node.kind in ("module", "function")]
    names = list(strategies or list_strategies())
    refused = {name: _refusals(name, model, spec, eval_taps) for name in names}
    for row in rows.values():
        in_eval = "eval" in row["modes"]
        row["strategies"] = " ".join(name for name in names if in_eval and row["node"] not in refused[name]) or "-"
        row["modes"] = " ".join(sorted(row["modes"], reverse=True))
    return pd.DataFrame(list(rows.values()), columns=["node", "what", "modes", "strategies"])
