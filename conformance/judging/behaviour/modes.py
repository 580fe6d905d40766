"""Behaviour checks on the modes a model runs in: train mode (and the RNG it draws), the graphs of each
mode, autocast, channels-last memory, inference mode."""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Mapping

import torch
from torch import nn

from strategies import Tap

from conformance.core.compare import compare
from conformance.core.rng import PinnedExtractor
from conformance.core.timing import deep_copy, strategy_copy
from conformance.judging.behaviour.probe import _all_layers, _at_size, _attached, _failure, _judge, ModelRejects, _on_reduced_input, _other_nodes, _per_layer, Probe
from conformance.judging.checks import snapshot
from conformance.judging.context import ALL_LAYERS, CheckResult
from conformance.judging.diagnoses import UNEXPLAINED
from conformance.truth.layers import node_table, runs_in
from conformance.truth.oracle import capture, OracleCapture

__all__ = ["check_autocast", "check_channels_last", "check_inference_mode", "check_mode_graphs", "check_train_mode"]


def check_train_mode(probe: Probe) -> list[CheckResult]:
    """In train mode (batch statistics, dropout at a fixed seed) the values are the truth,
    and switching back to eval after that is honoured."""
    check = "train_mode"

    def oracle(layers: list[str]) -> tuple[OracleCapture, OracleCapture]:
        model = deep_copy(probe.model).train()
        in_train = capture(model, probe.input, layers=layers, on_copy=False, tracer_kwargs=probe.tracer_kwargs)
        model.eval()
        return in_train, capture(model, probe.input, layers=layers, on_copy=False, tracer_kwargs=probe.tracer_kwargs)

    try:
        train_truth, eval_truth = probe.oracle_for_layers(check, oracle)
    except ModelRejects as exc:
        return _all_layers(check, probe, "skipped", "model_rejects", f"the model itself fails in train mode: {exc}")
    try:
        with _attached(probe) as extractor:
            extractor.module.train()
            get_state, states = _rng(probe.input.device)[0], {}  # for _rng_diagnosis: read-only pre-hooks
            with _on_module_calls(extractor.module, lambda path, call: states.setdefault((path, call), get_state())):
                in_train = snapshot(extractor(probe.input).features)
            extractor.module.eval()
            back = snapshot(extractor(probe.input).features)
    except Exception as exc:
        return _all_layers(check, probe, "fail", "call_failed", f"train mode: {_failure(exc)}")

    def judge(layer: str) -> CheckResult:
        train_row = _judge(check, layer, in_train, train_truth.layers[layer].value, context="train mode")
        if train_row.diagnosis == UNEXPLAINED:
            train_row = _train_node_diagnosis(probe, layer, in_train[layer], train_row)
        if train_row.diagnosis == UNEXPLAINED:
            train_row = _rng_diagnosis(probe, layer, in_train[layer], train_row, states)
        eval_row = _judge(check, layer, back, eval_truth.layers[layer].value, context="back in eval")
        failed = [row for row in (train_row, eval_row) if row.status == "fail"]
        detail = f"{train_row.detail}; {eval_row.detail}"
        if failed:
            return CheckResult(check, layer, "fail", failed[0].diagnosis, detail, max_abs_err=failed[0].max_abs_err, scale=failed[0].scale)
        return CheckResult(check, layer, "pass", "", detail, max_abs_err=train_row.max_abs_err, scale=train_row.scale, bitwise=train_row.bitwise)

    return _per_layer(check, probe, judge)


def _train_node_diagnosis(probe: Probe, layer: str, value: Any, row: CheckResult) -> CheckResult:
    """A wrong train-mode value that is another node's value in a train-mode pass (same seed):
    the strategy returned that node (``wrong_node``), which eval mode can hide within tolerance
    (a BatchNorm with fresh running statistics is nearly the identity)."""
    if not isinstance(value, torch.Tensor):
        return row
    nodes = _other_nodes(probe, layer, value, close=lambda a, b: compare(a, b).close, train=True)
    if not nodes:
        return row
    return CheckResult(row.check, layer, "fail", "wrong_node", f"{row.detail}, and matches node {nodes[0]!r} of the train-mode pass",
                       max_abs_err=row.max_abs_err, scale=row.scale, bitwise=False)


@contextlib.contextmanager
def _on_module_calls(module: nn.Module, on_call: Callable[[str, int], None]):
    """Call ``on_call(path, call)`` as each call of each submodule of ``module`` starts."""
    calls: dict[str, int] = {}

    def pre_hook(path: str) -> Callable[..., None]:
        def hook(mod: nn.Module, args: Any) -> None:
            calls[path] = calls.get(path, 0) + 1
            on_call(path, calls[path])
        return hook

    handles = [sub.register_forward_pre_hook(pre_hook(path)) for path, sub in module.named_modules()]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def _rng(device: torch.device) -> tuple[Callable[[], torch.Tensor], Callable[[torch.Tensor], None]]:
    if device.type == "cuda":
        return (lambda: torch.cuda.get_rng_state(device)), (lambda state: torch.cuda.set_rng_state(state, device))
    return torch.get_rng_state, torch.set_rng_state


def _rng_diagnosis(probe: Probe, layer: str, value: Any, row: CheckResult, states: Mapping[tuple[str, int], torch.Tensor]) -> CheckResult:
    """A wrong train-mode value that the true train-mode pass gives when each module call starts
    from the RNG state it had in the strategy's pass (same seed): the strategy drew from the
    global RNG during its pass, so dropout and other random ops did not get the seeded model's
    numbers (``rng_shifted``)."""
    if not states or not isinstance(value, torch.Tensor):
        return row
    _, set_state = _rng(probe.input.device)

    def restore(path: str, call: int) -> None:
        if (path, call) in states:
            set_state(states[(path, call)])

    model = deep_copy(probe.model).train()
    with _on_module_calls(model, restore):
        replay = capture(model, probe.input, layers=[tap for tap in probe.layers if tap == layer], on_copy=False,
                         tracer_kwargs=probe.tracer_kwargs).layers[layer].value
    if replay is None or not compare(value, replay).close:
        return row
    return CheckResult(row.check, layer, "fail", "rng_shifted",
                       f"{row.detail}, and the train-mode pass gives it when each module call starts from the RNG state "
                       "of the strategy's pass: the strategy draws from the global RNG, so random ops (dropout) get other numbers",
                       max_abs_err=row.max_abs_err, scale=row.scale, bitwise=False)


def check_mode_graphs(probe: Probe) -> list[CheckResult]:
    """Where the model's train and eval passes run other nodes, a strategy that takes other layers
    in each mode (FX's train_return_nodes and eval_return_nodes) gives the truth in both modes."""
    check = "mode_graphs"
    try:
        tables = probe.oracle(check, lambda: {mode: node_table(probe.model, example=probe.input, tracer_kwargs=probe.tracer_kwargs, train=mode == "train")
                                              for mode in ("train", "eval")})
    except ModelRejects as exc:
        return [CheckResult(check, ALL_LAYERS, "skipped", "model_rejects", f"the model itself fails in one of the modes: {exc}")]
    if [n.name for n in tables["train"].nodes if n.tensor] == [n.name for n in tables["eval"].nodes if n.tensor]:
        return [CheckResult(check, ALL_LAYERS, "skipped", "", "the model runs the same nodes in train and eval mode")]
    attach_per_mode = getattr(probe.strategy, "attach_per_mode", None)
    if attach_per_mode is None:
        return [CheckResult(check, ALL_LAYERS, "unsupported", "", "the strategy takes one list of layers for both modes (train_mode judges the layers that run in both)")]
    taps = [layer if isinstance(layer, Tap) else Tap(layer) for layer in probe.requested]
    layers = {mode: [tap for tap in taps if runs_in(tap, tables[mode])] for mode in tables}
    try:
        extractor = PinnedExtractor(attach_per_mode(strategy_copy(probe.model), train_layers=layers["train"], eval_layers=layers["eval"], tracer_kwargs=probe.tracer_kwargs))
        extractor.module.train()
        features = {"train": snapshot(extractor(probe.input).features)}
        extractor.module.eval()
        features["eval"] = snapshot(extractor(probe.input).features)
        extractor.close()
    except Exception as exc:
        return [CheckResult(check, ALL_LAYERS, "fail", "call_failed", f"attached per mode: {_failure(exc)}")]

    def truth(mode: str) -> OracleCapture:
        model = deep_copy(probe.model).train(mode == "train")
        return capture(model, probe.input, layers=layers[mode], on_copy=False, tracer_kwargs=probe.tracer_kwargs)

    truths = probe.oracle(f"{check}:truths", lambda: {mode: truth(mode) for mode in tables})
    verdicts = [(mode, _judge(check, tap, features[mode], truths[mode].layers[tap].value, context=f"{mode} mode")) for mode in tables for tap in layers[mode]]
    failed = [row for _, row in verdicts if row.status == "fail"]
    counts = ", ".join(f"{len(layers[mode])} in {mode} mode" for mode in tables)
    if failed:
        shown = "; ".join(row.detail for row in failed[:4])
        return [CheckResult(check, ALL_LAYERS, "fail", failed[0].diagnosis, f"{len(failed)} of {len(verdicts)} wrong ({counts}): {shown}")]
    return [CheckResult(check, ALL_LAYERS, "pass", "", f"the truth in both modes: {counts}")]


def _autocast_dtype(device: torch.device) -> torch.dtype:
    return torch.float16 if device.type == "cuda" else torch.bfloat16


@_on_reduced_input(per_layer=True)
def check_autocast(probe: Probe) -> list[CheckResult]:
    """Under ``torch.autocast`` (bfloat16 on CPU, float16 on CUDA) the features equal the
    oracle's under the same autocast, in value and dtype, within that dtype's tolerance
    (``compare.tolerance``: rtol 1.6e-2 for bfloat16, 1e-3 for float16; ten times on CUDA).

    It runs on the reduced input (:meth:`Probe.on_reduced_input`): autocast changes dtypes, not how the
    examples of a batch meet (``batch_consistency`` asks that) nor what the size does
    (``input_size``), and a bfloat16 forward on a CPU without native bfloat16 kernels costs
    many float32 ones (46 for a ResNet-18 on an AVX2 CPU)."""
    check, device = "autocast", probe.input.device
    dtype = _autocast_dtype(device)
    x = probe.input
    context = f"under autocast({device.type}, {str(dtype).removeprefix('torch.')}){_at_size(x)}"

    def autocast() -> Any:
        return torch.autocast(device_type=device.type, dtype=dtype)

    def oracle(layers: list[str]) -> OracleCapture:
        with autocast():
            return capture(probe.model, x, layers=layers, tracer_kwargs=probe.tracer_kwargs)

    try:
        truth = probe.oracle_for_layers(check, oracle)
    except ModelRejects as exc:
        return _all_layers(check, probe, "skipped", "model_rejects", f"the model itself fails {context}: {exc}")
    try:
        with _attached(probe) as extractor, autocast():
            got = snapshot(extractor(x).features)
    except Exception as exc:
        return _all_layers(check, probe, "fail", "call_failed", f"{context}: {_failure(exc)}")

    def judge(layer: str) -> CheckResult:
        row = _judge(check, layer, got, truth.layers[layer].value, context=context)
        value, true = got.get(layer), truth.layers[layer].value
        if row.diagnosis == UNEXPLAINED and isinstance(value, torch.Tensor) and isinstance(true, torch.Tensor) and value.dtype != true.dtype:
            if compare(value.to(true.dtype), true).close:  # the autocast value, cast: reproduced by casting it back
                return CheckResult(check, layer, "fail", "cast", f"{context}: the autocast value, in {str(value.dtype).removeprefix('torch.')} "
                                   f"instead of {str(true.dtype).removeprefix('torch.')}", max_abs_err=row.max_abs_err, scale=row.scale, bitwise=False)
        return row

    return _per_layer(check, probe, judge)


def _memory_format(value: Any) -> str:
    if not isinstance(value, torch.Tensor) or value.dim() != 4:
        return ""
    if value.is_contiguous(memory_format=torch.channels_last) and not value.is_contiguous():
        return "channels_last"
    return "contiguous" if value.is_contiguous() else "strided"


@_on_reduced_input(per_layer=True)
def check_channels_last(probe: Probe) -> list[CheckResult]:
    """With the model and the input in ``channels_last`` the features are the truth there; the
    detail says whether each feature keeps the memory format the model's own output has.

    On the reduced input (:meth:`Probe.on_reduced_input`)."""
    check = "channels_last"
    if probe.input.dim() != 4:
        return _all_layers(check, probe, "skipped", "", "the input is not a 4-d image batch")
    x = probe.input.contiguous(memory_format=torch.channels_last)

    try:
        truth = probe.oracle_for_layers(check, lambda layers: capture(deep_copy(probe.model).to(memory_format=torch.channels_last), x, layers=layers, on_copy=False, tracer_kwargs=probe.tracer_kwargs))
    except ModelRejects as exc:
        return _all_layers(check, probe, "skipped", "model_rejects", f"the model itself fails in channels_last: {exc}")
    try:
        with _attached(probe, model=strategy_copy(probe.model).to(memory_format=torch.channels_last)) as extractor:
            raw = extractor(x).features
            formats = {layer: _memory_format(value) for layer, value in raw.items()}
            got = snapshot(raw)
    except Exception as exc:
        return _all_layers(check, probe, "fail", "call_failed", f"in channels_last: {_failure(exc)}")

    def judge(layer: str) -> CheckResult:
        row = _judge(check, layer, got, truth.layers[layer].value, context="in channels_last")
        true_format, returned = _memory_format(truth.layers[layer].value), formats.get(layer, "")
        if true_format and returned:
            row.detail += "; memory format kept" if returned == true_format else f"; memory format {true_format} returned as {returned}"
        return row

    return _per_layer(check, probe, judge)


@_on_reduced_input(per_layer=True)
def check_inference_mode(probe: Probe) -> list[CheckResult]:
    """Under ``torch.inference_mode()`` the extractor runs and gives the truth; afterwards its
    features work as values (read, cloned, used in new ops: in-place updates and autograd on
    inference tensors are refused by torch by design, and not asked) and the extractor works
    again outside it.

    On the reduced input (:meth:`Probe.on_reduced_input`)."""
    check = "inference_mode"
    try:
        with _attached(probe) as extractor:
            with torch.inference_mode():
                features = extractor(probe.input).features
            try:
                inside = {layer: _used(value) for layer, value in dict(features).items()}
            except Exception as exc:
                return _all_layers(check, probe, "fail", "unusable_after", f"a feature from inference_mode, used after it: {_failure(exc)}")
            try:
                after = snapshot(extractor(probe.input).features)
            except Exception as exc:
                return _all_layers(check, probe, "fail", "call_failed", f"called again after inference_mode: {_failure(exc)}")
    except Exception as exc:
        return _all_layers(check, probe, "fail", "call_failed", f"under inference_mode: {_failure(exc)}")

    def judge(layer: str) -> CheckResult:
        true = probe.truth.layers[layer].value
        row = _judge(check, layer, inside, true, context="under inference_mode")
        if row.status != "pass":
            return row
        again = _judge(check, layer, after, true, context="called again after it")
        return again if again.status != "pass" else CheckResult(check, layer, "pass", "", f"{row.detail}; {again.detail}",
                                                                  max_abs_err=row.max_abs_err, scale=row.scale, bitwise=row.bitwise)

    return _per_layer(check, probe, judge)


def _used(value: Any) -> Any:
    """``value`` used as a user would after ``inference_mode``: a new tensor computed from it."""
    return value * 1 if isinstance(value, torch.Tensor) else value
