"""What a check sees and what it gives: the context of one extraction request and one verdict.

Shared by the value checks (``checks.py``), which make the context and judge it, and the
diagnoses (``diagnoses.py``), which read it to reproduce a wrong value.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import torch

from conformance.core.compare import Comparison, compare
from conformance.truth.nodes import Node
from conformance.truth.oracle import OracleCapture

__all__ = ["ALL_LAYERS", "STATUSES", "CheckContext", "CheckResult", "StrategyPass", "nondeterministic"]

ALL_LAYERS = "*"  # the layer of a request-wide row
STATUSES = ("pass", "fail", "error", "unsupported", "skipped")


@dataclass
class CheckResult:
    """One verdict: a future row of the results table."""

    check: str
    layer: str
    status: str
    diagnosis: str = ""
    detail: str = ""
    max_abs_err: float | None = None
    scale: float | None = None  # RMS of the true value: max_abs_err / scale is the error in the feature's units
    bitwise: bool | None = None


@dataclass
class StrategyPass:
    """What a strategy's own modules did in one pass of it, for the diagnoses."""

    norm_calls: list[tuple[str, str, list[tuple[Any, Any]]]] = field(default_factory=list)  # (name, class, each call's input and output)
    inputs: dict[str, Any] = field(default_factory=dict)  # a model path: the first input of the strategy's module standing for it


@dataclass
class CheckContext:
    """What the checks see of one extraction request."""

    layers: list[str]
    truth: OracleCapture  # for the input the features were extracted from
    previous_truth: OracleCapture  # for the input of the call before it
    features: Mapping[str, Any]  # what the call on the input returned, cloned as it returned
    returned_output: Any  # the model output the strategy returned, or None
    attached_output: Any  # the model called directly while the strategy was attached
    model_digests: dict[str, str]  # the model's state-dict tensors, by name
    strategy_digests: dict[str, str]  # the strategy's module state-dict tensors, by name
    replayed: Mapping[str, Any] = field(default_factory=dict)  # values when the children are replayed in order
    replayed_after: Mapping[str, Any] = field(default_factory=dict)  # the same, as the rest of the replay left them
    aliases: Mapping[str, list[str]] = field(default_factory=dict)  # a layer's module: every name it is registered under, where more than one
    locate: Callable[..., list[str]] = lambda value, exact=False: []  # modules that produce a value, for the input
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    first_features: Mapping[str, Any] = field(default_factory=dict)  # the call on the previous input, as it returned
    first_after_next: Mapping[str, Any] = field(default_factory=dict)  # that call's returned container, after the next call
    same_container: bool = False  # the second call returned the very object the first did
    repeat_features: Mapping[str, Any] = field(default_factory=dict)  # the third call, on the previous input again
    measure_model_changes: Callable[[], list[str]] = lambda: []  # costs a forward: run when first read
    # What the diagnoses measure, each run only when a failure needs it:
    strategy_pass: Callable[[], StrategyPass] = lambda: StrategyPass()  # what the strategy's own modules did in a pass of it
    model_inputs: Callable[[tuple[str, ...]], dict[str, Any]] = lambda paths: {}  # the first input of the model's modules, by path
    random_draws: list[tuple[str, Any]] = field(default_factory=list)  # what random ops drew in the call on the input (models that draw)
    graph_ops: Callable[[], list[str] | None] = lambda: None  # the ops of the traced graph the strategy runs, if it runs one
    droppable_nodes: Callable[[], list[Node]] = lambda: []  # the eager pass's in-place ops and functions FX keeps whole
    counterfactual: Callable[..., dict[str, Any] | None] = lambda **change: {}  # the layers' values with one change to the model (shapes_only: their shapes, or None)
    locate_nodes: Callable[..., list[str]] = lambda value, exact=False, skip_nodes=(): []  # nodes of the pass whose value is this
    diagnosed: dict[str, tuple[str, str]] = field(default_factory=dict)  # each layer's feature, diagnosed once for every check
    compared: dict[str, Comparison] = field(default_factory=dict)  # each layer's feature against its truth, compared once for every check

    def against_truth(self, layer: str) -> Comparison:
        """The layer's feature compared with its truth (the module's last call), once per layer."""
        if layer not in self.compared:
            self.compared[layer] = compare(self.features[layer], self.truth.layers[layer].value)
        return self.compared[layer]

    @functools.cached_property
    def model_changes(self) -> list[str]:
        """How the model differs after the extractor is closed (measured once, on first use)."""
        return self.measure_model_changes()


def nondeterministic(check: str, layer: str, how: str) -> CheckResult:
    """The row of a layer the model itself gives another value on another pass from the same
    random state (``OracleCapture.unsteady``: ``how``): no strategy can be judged on it, so every
    strategy gets this row, in the value checks and the behaviour checks alike."""
    return CheckResult(check, layer, "skipped", "nondeterministic_model", f"the model is nondeterministic here: {how}")
