"""What a behaviour check may use (:class:`Probe`: the strategy, the pristine model, the oracle), and the
helpers every family shares: judging a value under a condition, rows per layer or per request,
attaching, the reduced input."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import torch
from torch import nn

from strategies import Extractor, Strategy

from conformance.core.compare import compare
from conformance.core.rng import PinnedExtractor
from conformance.core.timing import strategy_copy
from conformance.judging.context import ALL_LAYERS, CheckResult, nondeterministic
from conformance.judging.diagnoses import UNEXPLAINED
from conformance.truth.oracle import capture, locate_nodes, OracleCapture

__all__ = ["GENERATED_CODE_SCALE", "GRADIENT_SCALE", "ModelRejects", "Probe", "REDUCED_INPUT_CHECKS", "reductions"]


#: Gradients are compared relative to their largest element, times this multiple of the
#: dtype's rtol: they are sums over many terms, accumulated in a strategy-dependent order.
GRADIENT_SCALE = 100.0


#: Tolerance multiplier for values from generated kernels (torch.compile, onnxruntime),
#: which fuse and reorder floating-point operations.
GENERATED_CODE_SCALE = 100.0


class ModelRejects(Exception):
    """The plain model itself fails under a check's condition (the check is skipped)."""


@dataclass
class Probe:
    """What a behaviour check may use: the strategy, the pristine model and the oracle."""

    strategy: Strategy
    model: nn.Module  # the pristine model; checks act on deep copies
    layers: list[str]  # the request the strategy can serve (taps)
    requested: list[str]  # the whole request, layers the strategy refused included
    untrusted: dict[str, str]  # layer -> why its eval-mode values are wrong
    tracer_kwargs: Mapping[str, Any]  # the model's FX options, for the strategy and the oracle
    input: torch.Tensor
    previous_input: torch.Tensor
    truth: OracleCapture  # eval mode, for the input
    previous_truth: OracleCapture  # eval mode, for the previous input
    model_digests: dict[str, str] = field(default_factory=dict)  # the model's state-dict tensors, by name
    leaves_model_untouched: bool = False  # measured on the main request: closing restores the model
    seed: int = 0
    memo: dict = field(default_factory=dict)  # oracle results shared by the strategies of one model
    unsteady: Mapping[str, str] = field(default_factory=dict)  # layers the model itself changes from pass to pass (OracleCapture.unsteady)

    @property
    def trusted(self) -> list[str]:
        return [layer for layer in self.layers if layer not in self.untrusted]

    def attach(self, *, layers: Sequence[str] | None = None, model: nn.Module | None = None) -> Extractor:
        """The strategy attached to a fresh deep copy of the model (:func:`strategy_copy`), or to ``model``."""
        target = strategy_copy(self.model) if model is None else model
        return PinnedExtractor(self.strategy.attach(target, layers=list(self.layers if layers is None else layers), tracer_kwargs=self.tracer_kwargs))

    def on_reduced_input(self) -> Probe:
        """This probe on the reduced input: the first example of the input and of the previous
        input at half their height and width (every other pixel) where both are 64 or more and
        the model takes that size, else the first examples as they are, with the oracle's
        eval-mode truths for them. Raises :class:`ModelRejects` when the model fails on both.

        For checks whose question does not involve the batch or the size (is a value the same
        requested alone, under autocast, from a copy), this costs an eighth of the input's
        passes on a convolutional network; a model with a fixed input size (a ViT) keeps it."""
        def compute(layers: list[str]) -> tuple[torch.Tensor, torch.Tensor, OracleCapture, OracleCapture]:
            def truths(x: torch.Tensor, earlier: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, OracleCapture, OracleCapture]:
                return (x, earlier, capture(self.model, x, layers=layers, tracer_kwargs=self.tracer_kwargs),
                        capture(self.model, earlier, layers=layers, tracer_kwargs=self.tracer_kwargs))

            *smaller, first = zip(reductions(self.input), reductions(self.previous_input))
            for x, earlier in smaller:
                with contextlib.suppress(Exception):
                    return truths(x, earlier)
            return truths(*first)

        x, earlier, truth, previous_truth = self.oracle_for_layers("reduced", compute)
        return dataclasses.replace(self, input=x, previous_input=earlier, truth=truth, previous_truth=previous_truth)

    def oracle(self, key: str, compute: Callable[[], Any]) -> Any:
        """``compute()`` once per model and ``key``, shared by every strategy (the key names
        what the result depends on); raises :class:`ModelRejects` when the plain model fails."""
        if key not in self.memo:
            try:
                self.memo[key] = compute()
            except Exception as exc:
                self.memo[key] = ModelRejects(f"{type(exc).__name__}: {_first_line(exc)}")
        if isinstance(self.memo[key], ModelRejects):
            raise self.memo[key]
        return self.memo[key]

    def oracle_for_layers(self, key: str, compute: Callable[[list[str]], Any]) -> Any:
        """``compute(layers)``, a truth under a check's condition, taken once per model for the
        whole request and shared by every strategy, whose layers are part of it (a capture of more
        layers records the same values for these); where the whole request fails, for this
        strategy's layers alone. Raises :class:`ModelRejects` when the plain model fails."""
        whole = list(self.requested)
        try:
            return self.oracle(f"{key}@{whole}", lambda: compute(whole))
        except ModelRejects:
            if set(self.layers) >= set(whole):
                raise
        return self.oracle(f"{key}@{list(self.layers)}", lambda: compute(list(self.layers)))


def reductions(x: torch.Tensor) -> list[torch.Tensor]:
    """The reduced inputs to try in turn, for a question that the batch and the input size do not
    enter into: the first example at half its height and width (every other pixel) where both
    are 64 or more, then the first example as it is."""
    first = x[:1]
    if first.dim() >= 4 and min(first.shape[-2:]) >= 64:
        return [first[..., ::2, ::2].contiguous(), first]
    return [first]


def _at_size(x: torch.Tensor) -> str:
    """`` at HxW`` for an input with spatial dimensions."""
    return f" at {'x'.join(map(str, x.shape[2:]))}" if x.dim() > 2 else ""


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else ""


def _failure(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {_first_line(exc)}"


def _judge(check: str, layer: str, features: Mapping[str, Any], truth: Any, *, context: str, scale: float = 1.0, previous: Any = None) -> CheckResult:
    """One layer's value under a condition against the truth under it (``None``: not run);
    ``previous`` is the value for an input given earlier, to recognise a stale one."""
    if truth is None:
        if layer in features:
            return CheckResult(check, layer, "fail", "not_called", f"{context}: the module does not run, yet a value was returned")
        return CheckResult(check, layer, "pass", "", f"{context}: the module does not run and nothing was returned")
    if layer not in features:
        return CheckResult(check, layer, "fail", "missing", f"{context}: no value returned")
    comparison = compare(features[layer], truth, scale=scale)
    if comparison.close:
        return CheckResult(check, layer, "pass", "", f"{context}: equals the truth", max_abs_err=comparison.max_abs_err,
                           scale=comparison.scale, bitwise=comparison.bitwise)
    diagnosis = f"{comparison.mismatch}_mismatch" if comparison.mismatch else UNEXPLAINED
    detail = comparison.detail or f"max abs err {comparison.max_abs_err:.3g}"
    if previous is not None and compare(features[layer], previous).close:
        diagnosis, detail = "stale", "holds the value for the input given before"
    return CheckResult(check, layer, "fail", diagnosis, f"{context}: {detail}", max_abs_err=comparison.max_abs_err,
                       scale=comparison.scale, bitwise=False)


def _per_layer(check: str, probe: Probe, judge: Callable[[str], CheckResult], *, trusted_only: bool = True) -> list[CheckResult]:
    rows = []
    for layer in probe.layers:
        if layer in probe.unsteady:
            rows.append(nondeterministic(check, layer, probe.unsteady[layer]))
        elif trusted_only and layer in probe.untrusted:
            rows.append(CheckResult(check, layer, "skipped", "values_wrong", f"eval-mode values are already wrong ({probe.untrusted[layer]}); not judged again"))
        else:
            rows.append(judge(layer))
    return rows


def _all_layers(check: str, probe: Probe, status: str, diagnosis: str, detail: str, *, trusted_only: bool = True) -> list[CheckResult]:
    return _per_layer(check, probe, lambda layer: CheckResult(check, layer, status, diagnosis, detail), trusted_only=trusted_only)


def _request_verdict(check: str, probe: Probe, features: Mapping[str, Any], *, context: str, scale: float = 1.0, notes: Sequence[str] = ()) -> list[CheckResult]:
    """One request-wide row: every trusted layer's value against the eval truth."""
    verdicts = [
        _judge(check, layer, features, probe.truth.layers[layer].value, context=context, scale=scale,
               previous=probe.previous_truth.layers[layer].value)
        for layer in probe.trusted
    ]
    failed = [row for row in verdicts if row.status == "fail"]
    left_out = f"{len(probe.untrusted)} layers with wrong eval-mode values not judged" if probe.untrusted else ""
    if failed:
        shown = "; ".join(f"{row.layer}: {row.detail.removeprefix(context + ': ')}" for row in failed[:4])
        more = f"; and {len(failed) - 4} more" if len(failed) > 4 else ""
        detail = "; ".join(filter(None, [f"{context}: {len(failed)} of {len(verdicts)} layers wrong: {shown}{more}", *notes, left_out]))
        return [CheckResult(check, ALL_LAYERS, "fail", failed[0].diagnosis, detail, max_abs_err=failed[0].max_abs_err, scale=failed[0].scale)]
    worst = max((row for row in verdicts if row.max_abs_err is not None and row.scale), key=lambda row: row.max_abs_err / row.scale, default=None)
    detail = "; ".join(filter(None, [f"{context}: all {len(verdicts)} layers equal the truth", *notes, left_out]))
    return [CheckResult(check, ALL_LAYERS, "pass", "", detail, max_abs_err=worst.max_abs_err if worst else None, scale=worst.scale if worst else None,
                        bitwise=all(row.bitwise for row in verdicts) if verdicts else None)]


@contextlib.contextmanager
def _attached(probe: Probe, **kwargs: Any):
    extractor = probe.attach(**kwargs)
    try:
        yield extractor
    finally:
        extractor.close()


def _other_nodes(probe: Probe, layer: str, value: torch.Tensor, *, close: Callable[[Any, Any], bool], train: bool | None = None) -> list[str]:
    """The nodes of the model's pass, other than ``layer``, whose value is ``value``."""
    return [node for node in locate_nodes(probe.model, probe.input, [value], close=close, tracer_kwargs=probe.tracer_kwargs, train=train)[0]
            if node != layer]


#: Behaviour checks asked on :meth:`Probe.on_reduced_input` (those decorated with ``_on_reduced_input``).
REDUCED_INPUT_CHECKS: list[str] = []


def _on_reduced_input(*, per_layer: bool) -> Callable[[Callable[[Probe], list[CheckResult]]], Callable[[Probe], list[CheckResult]]]:
    """Run the decorated check on :meth:`Probe.on_reduced_input`: for a question that the batch
    and the input size do not enter into. Skipped where the model fails on its first example."""
    def decorate(check_fn: Callable[[Probe], list[CheckResult]]) -> Callable[[Probe], list[CheckResult]]:
        check = check_fn.__name__.removeprefix("check_")
        REDUCED_INPUT_CHECKS.append(check)

        @functools.wraps(check_fn)
        def run(probe: Probe) -> list[CheckResult]:
            try:
                small = probe.on_reduced_input()
            except ModelRejects as exc:
                detail = f"the model itself fails on its input's first example: {exc}"
                return _all_layers(check, probe, "skipped", "model_rejects", detail) if per_layer else [
                    CheckResult(check, ALL_LAYERS, "skipped", "model_rejects", detail)]
            return check_fn(small)
        return run
    return decorate
