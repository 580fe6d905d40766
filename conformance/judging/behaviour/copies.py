"""Behaviour checks on copies of the extractor: ``copy.deepcopy`` and its state dict loaded into a fresh one."""

from __future__ import annotations

import contextlib
import copy
import functools
from collections import OrderedDict

import torch
from torch import nn

from conformance.core.timing import own_copy
from conformance.judging.behaviour.probe import _attached, _failure, _on_reduced_input, Probe, _request_verdict
from conformance.judging.checks import snapshot
from conformance.judging.context import ALL_LAYERS, CheckResult
from conformance.judging.diagnoses import UNEXPLAINED

__all__ = ["check_deepcopy", "check_state_dict"]


def _parameter_storages(module: nn.Module) -> set[int]:
    return {p.untyped_storage().data_ptr() for p in module.parameters()}


@_on_reduced_input(per_layer=False)
def check_deepcopy(probe: Probe) -> list[CheckResult]:
    """``copy.deepcopy`` of a used extractor gives an independent one with the true values
    and as many parameters, and the original keeps working.

    On the reduced input (:meth:`Probe.on_reduced_input`)."""
    check = "deepcopy"
    twin = None
    try:
        with _attached(probe) as extractor:
            extractor(probe.previous_input)
            try:
                twin = copy.deepcopy(extractor)
            except Exception as exc:
                return [CheckResult(check, ALL_LAYERS, "fail", "deepcopy_failed", _failure(exc))]
            try:
                got_twin = snapshot(twin(probe.input).features)
            except Exception as exc:
                return [CheckResult(check, ALL_LAYERS, "fail", "call_failed", f"the copy: {_failure(exc)}")]
            got_original = snapshot(extractor(probe.input).features)
            mine, theirs = _parameter_storages(extractor.module), _parameter_storages(twin.module)
            modes = (extractor.module.training, twin.module.training)
            kinds = (type(extractor.module).__name__, type(twin.module).__name__)
            got_in_original_mode = None
            if modes[0] != modes[1]:  # the mechanism to measure: another copy, set to the original's mode before its first call
                fresh = copy.deepcopy(extractor)
                fresh.module.train(modes[0])
                got_in_original_mode = snapshot(fresh(probe.input).features)
                fresh.close()
    finally:
        if twin is not None:
            with contextlib.suppress(Exception):
                twin.close()
    notes = []  # (diagnosis, what was seen)
    if len(theirs) != len(mine):
        notes.append(("parameters_not_copied", f"the copy holds {len(theirs)} parameter tensors, the original {len(mine)}"))
    if mine & theirs:
        notes.append(("parameters_shared", f"the copy shares {len(mine & theirs)} parameter tensors with the original"))
    if modes[0] != modes[1]:
        mode = {True: "train", False: "eval"}
        notes.append(("mode_changed", f"the copy ({kinds[1]}) is in {mode[modes[1]]} mode, the original ({kinds[0]}) in {mode[modes[0]]} mode"))
    rows = _request_verdict(check, probe, got_twin, context="the copy")
    original = _request_verdict(check, probe, got_original, context="the original after the copy ran")
    row = rows[0]
    if original[0].status == "fail":
        row.status, row.diagnosis = "fail", row.diagnosis or original[0].diagnosis
        row.detail = f"{row.detail}; {original[0].detail}"
    if got_in_original_mode is not None and row.status == "fail":
        again = _request_verdict(check, probe, got_in_original_mode, context="the copy set to the original's mode")[0]
        if again.status == "pass":
            row.diagnosis = "mode_changed"
            notes.append(("mode_changed", "another copy, set to the original's mode before its first call, gives the truth"))
    if notes:
        row.status, row.diagnosis = "fail", row.diagnosis if row.diagnosis not in ("", UNEXPLAINED) else notes[0][0]
        row.detail = "; ".join([row.detail, *(text for _, text in notes)])
    return rows


@functools.cache
def _uniform_sequence() -> torch.Tensor:
    """The other weights of the state-dict check: a fixed uniform sequence in [0.5, 1.5), drawn
    once (drawing new numbers for every weight of every copy cost more than copying the model)."""
    return torch.rand(2**20, generator=torch.Generator().manual_seed(0)) + 0.5


def _other_values(like: torch.Tensor) -> torch.Tensor:
    """New values of ``like``'s shape, strides, dtype and device, from :func:`_uniform_sequence` (repeated
    for a larger tensor)."""
    count, sequence = like.numel(), _uniform_sequence()
    values = sequence if count <= len(sequence) else sequence.repeat(-(-count // len(sequence)))
    return torch.empty_like(like).copy_(values[:count].view(like.shape))  # laid out as ``like`` is


def _scramble(model: nn.Module) -> nn.Module:
    """``model`` with other floating-point weights (:func:`_other_values`), loaded as new tensors
    rather than written into its own: a quantized module's state dict returns the bias its packed
    weights hold, which ``copy.deepcopy`` shares with the original model."""
    state = model.state_dict()
    scrambled = OrderedDict((key, _other_values(value) if isinstance(value, torch.Tensor) and value.is_floating_point() else value)
                            for key, value in state.items())
    scrambled._metadata = getattr(state, "_metadata", None)  # the modules' state versions, which quantized modules read
    model.load_state_dict(scrambled)
    return model


def _scrambled(probe: Probe) -> nn.Module:
    """The model on other weights (:func:`_scramble`), made once per model and kept unused: each
    strategy's check attaches to a deep copy of it, which is what a deep copy of the model,
    scrambled, is (scrambling cost three times what copying does)."""
    if "scrambled" not in probe.memo:
        probe.memo["scrambled"] = _scramble(own_copy(probe.model))
    return probe.memo["scrambled"]


@_on_reduced_input(per_layer=False)
def check_state_dict(probe: Probe) -> list[CheckResult]:
    """The extractor's state dict loads into a fresh extractor (built on other weights),
    which then gives the true values; key names are compared with the model's.

    On the reduced input (:meth:`Probe.on_reduced_input`)."""
    check = "state_dict"
    with _attached(probe) as extractor:
        state = extractor.module.state_dict()
    model_keys = list(probe.model.state_dict())
    absent = [key for key in model_keys if key not in state]
    extra = [key for key in state if key not in set(model_keys)]
    if absent or extra:
        keys_note = (f"keys differ from the model's, so the model's checkpoint does not load strictly: "
                     f"{len(absent)} of the model's absent{f' (e.g. {absent[0]})' if absent else ''}, "
                     f"{len(extra)} others{f' (e.g. {extra[0]})' if extra else ''}")
    else:
        keys_note = "the same keys as the model's state dict"
    try:
        with _attached(probe, model=own_copy(_scrambled(probe))) as fresh:  # parameters of its own: the load writes into them
            try:
                fresh.module.load_state_dict(state)
            except Exception as exc:
                return [CheckResult(check, ALL_LAYERS, "fail", "load_failed", f"{_failure(exc)}; {keys_note}")]
            got = snapshot(fresh(probe.input).features)
    except Exception as exc:
        return [CheckResult(check, ALL_LAYERS, "fail", "call_failed", f"the fresh extractor: {_failure(exc)}")]
    return _request_verdict(check, probe, got, context="loaded into a fresh extractor", notes=[keys_note])
