"""Behaviour checks on what one request returns under other requests and inputs: a layer alone or
with the others, another input size, a batch of one."""

from __future__ import annotations

from typing import Any, Sequence

import torch

from strategies import Unsupported

from conformance.core.compare import compare
from conformance.core.timing import strategy_copy
from conformance.judging.behaviour.probe import _all_layers, _at_size, _attached, _failure, _judge, ModelRejects, _on_reduced_input, _per_layer, Probe
from conformance.judging.checks import snapshot
from conformance.judging.context import CheckResult
from conformance.truth.oracle import capture

__all__ = ["check_batch_consistency", "check_input_size", "check_set_independence"]


@_on_reduced_input(per_layer=True)
def check_set_independence(probe: Probe) -> list[CheckResult]:
    """A layer's value is the same requested alone as requested with the other layers.

    Judged on the reduced input (:meth:`Probe.on_reduced_input`): one extraction of the whole request
    and one per layer, where the question does not involve the batch or the size."""
    check = "set_independence"
    if len(probe.layers) < 2:
        return [CheckResult(check, layer, "skipped", "", "only one layer requested") for layer in probe.layers]
    x, truth = probe.input, probe.truth
    # A strategy measured to leave the model as it found it attaches to one shared copy.
    shared = strategy_copy(probe.model) if probe.leaves_model_untouched else None

    def extract(layers: Sequence[str]) -> dict[str, Any]:
        model = shared if shared is not None else strategy_copy(probe.model)
        with _attached(probe, layers=layers, model=model) as extractor:
            return snapshot(extractor(x).features)

    try:
        together = extract(probe.layers)
    except Exception as exc:
        return _all_layers(check, probe, "fail", "call_failed", f"the whole request on one example{_at_size(x)}: {_failure(exc)}", trusted_only=False)

    def judge(layer: str) -> CheckResult:
        try:
            alone = extract([layer])
        except Unsupported as exc:
            return CheckResult(check, layer, "unsupported", "", f"requested alone: {exc}")
        except Exception as exc:
            return CheckResult(check, layer, "fail", "fails_alone", f"requested alone: {_failure(exc)}")
        others = len(probe.layers) - 1
        if layer not in alone or layer not in together:
            if layer not in alone and layer not in together:
                return CheckResult(check, layer, "pass", "", "returned neither alone nor with the others")
            where = "alone" if layer in alone else f"with the {others} other layers"
            return CheckResult(check, layer, "fail", "depends_on_request", f"returned only when requested {where}")
        comparison = compare(alone[layer], together[layer])
        if comparison.close:
            return CheckResult(check, layer, "pass", "", f"the same alone as with the {others} other layers (one example{_at_size(x)})",
                               max_abs_err=comparison.max_abs_err, scale=comparison.scale, bitwise=comparison.bitwise)
        true = truth.layers[layer].value

        def right(value: Any) -> str:
            return "right" if true is not None and compare(value, true).close else "wrong"

        return CheckResult(check, layer, "fail", "depends_on_request",
                           f"alone: {right(alone[layer])}; with the {others} other layers: {right(together[layer])}",
                           max_abs_err=comparison.max_abs_err, scale=comparison.scale, bitwise=False)

    return _per_layer(check, probe, judge, trusted_only=False)


def _other_size(shape: Sequence[int]) -> tuple[int, ...]:
    batch, channels, *spatial = shape
    return (batch, channels, *(size + 32 if size >= 64 else 2 * size for size in spatial))


def _other_input_verdict(check: str, probe: Probe, x: torch.Tensor, *, condition: str, use_input_first: bool = False) -> list[CheckResult]:
    """Each trusted layer's value for ``x`` against the oracle's for ``x`` (``condition``
    names how ``x`` differs from the input); with ``use_input_first`` the extractor is
    first called on the input."""
    try:
        truth = probe.oracle_for_layers(check, lambda layers: capture(probe.model, x, layers=layers, tracer_kwargs=probe.tracer_kwargs))
    except ModelRejects as exc:
        return _all_layers(check, probe, "skipped", "model_rejects", f"the model itself fails {condition}: {exc}")
    try:
        with _attached(probe) as extractor:
            if use_input_first:
                extractor(probe.input)
            got = snapshot(extractor(x).features)
    except Exception as exc:
        return _all_layers(check, probe, "fail", "call_failed", f"{condition}: {_failure(exc)}")
    return _per_layer(check, probe, lambda layer: _judge(check, layer, got, truth.layers[layer].value, context=condition))


def check_input_size(probe: Probe) -> list[CheckResult]:
    """An extractor used at one input size works at another and gives the truth there."""
    if probe.input.dim() < 3:
        return _all_layers("input_size", probe, "skipped", "", "the input has no spatial dimensions")
    shape = _other_size(probe.input.shape)
    other = torch.randn(*shape, generator=torch.Generator().manual_seed(probe.seed + 1)).to(probe.input.device)
    return _other_input_verdict("input_size", probe, other, condition=f"at {'x'.join(map(str, shape[2:]))}", use_input_first=True)


def check_batch_consistency(probe: Probe) -> list[CheckResult]:
    """A sample's features do not depend on the batch it is in (eval mode): at batch size 1
    they are the truth at batch size 1."""
    if probe.input.shape[0] < 2:
        return _all_layers("batch_consistency", probe, "skipped", "", "the input is a single sample already")
    return _other_input_verdict("batch_consistency", probe, probe.input[:1], condition="at batch size 1")
